"""Regex matches without the clock: what the regex module's timeout costs, what a step costs.

apitokens matches a rule regex without the ``regex`` module's timeout when it can bound
the match's backtracking steps (``src/apitokens/_rules_bound.py``): the timeout reads the
process CPU clock twice per call. Two things are measured here:

- the saving: one fullmatch of the benchmark token's combined URL pattern with and
  without the timeout;
- the assumption: patterns that backtrack as much as the bound allows, each matched
  against the longest text it is matched without the clock, made of the characters
  that make it backtrack most and ending so that the match fails. The worst time per
  match must stay far below ``STEP_LIMIT_SECONDS``, the budget a request must have left
  for an unclocked match.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import regex

from apitokens.rules._bound import STEP_LIMIT, STEP_LIMIT_SECONDS, max_unclocked_length, work
from benchmarks.common import QUICK, Section, median, us

COMBINED = (
    "(?:.*/rest/api/2/project/[A-Z]+)|(?:.*/rest/agile/1.0/board/[0-9]+/sprint.*)"
    "|(?:.*/rest/api/2/issue/[A-Z]+-[0-9]+)|(?:.*/rest/api/2/search.*)"
)
PATH = "/rest/api/2/issue/JRA-123"

# (pattern, the text's repeated unit, its last character): each backtracks about as
# much as its bound allows on such a text, or is a rule shape seen in practice.
WORST_CASES = [
    (".*a.*b", "a", "a"),
    (".*a.*a.*b", "a", "a"),
    (".*x.*x.*x.*y", "x", "x"),
    ("\\w*\\w*\\w*\\d", "a", "a"),
    ("[a-z]*[a-z]*[a-z]*c", "a", "a"),
    ("a?" * 12 + "a" * 12, "a", "b"),
    ("(?:a|ab|abc)?.*.*x", "ab", "c"),
    (".*aaaaaa.*b", "a", "a"),
    ("(?:a|a)(?:a|a)(?:a|a)(?:a|a)(?:a|a)(?:a|a).*b", "a", "a"),
    ("(?:.*/a)?(?:.*/a)?(?:.*/a)?.*b", "/a", "/"),
    (".*/rest/api/2/issue/[A-Z]+-[0-9]+", "/rest/api/2/issue/A", "-"),
    (COMBINED, "/rest/api/2/", "x"),
    # Per character rather than per backtrack: classes whose members are tested in
    # turn (a class escape is a Unicode property lookup), lazy repeats, and capturing
    # groups, which cost every call their set-up (found by an adversarial search).
    ("[\\d\\w]*", "\u4e00", "\u4e00"),
    ("[\\d\\d\\d\\d\\w]*", "\u4e00", "\u4e00"),
    ("[\\s\\d\\s\\d\\s\\d\\s\\d\\w]*", "\uac00", "\uac00"),
    ("[" + "\\s\\d" * 256 + "\\w]*", "\u4e00", "\u4e00"),
    ("[\\d\\s\\w]+", "\U00020000", "\U00020000"),
    ("[\\w\\s]*", "\u00a0", "\u00a0"),
    ("[\\w.-]+", "a", "a"),
    ("\\w*?", "a", "a"),
    (".*?", "a", "a"),
    ("()" * 2000 + "a", "a", "b"),
    ("(a|b)?" * 300, "a", "c"),
    # A group tried at many places: the module keeps those places in a sorted list,
    # inserting by moving what follows, so its cost grows with their square (found by
    # a second adversarial search, 24 ms at the bound before it was counted).
    (".*ab()?()?", "ab", "x"),
    (".*ab(c)?", "ab", "x"),
    ("\\w*ab()", "ab", "x"),
    (".*a(?:\\d)?x", "ac", "c"),
]


def seconds_per_call(call: Callable[[], object], *, least: float) -> float:
    """Median over five runs of the time per call, each run at least ``least`` seconds."""
    runs = []
    for _ in range(5):
        count, start = 0, time.perf_counter()
        while True:
            call()
            count += 1
            elapsed = time.perf_counter() - start
            if elapsed >= least:
                break
        runs.append(elapsed / count)
    return median(runs)


def main() -> None:
    least = 0.01 if QUICK else 0.05
    section = Section(
        "regex",
        "Rule regexes without the clock",
        intro=(
            "The `regex` module's `timeout` reads the process CPU clock twice per call. "
            "apitokens skips it for a regex whose backtracking it can bound, on texts short "
            "enough that the bound stays under "
            f"{STEP_LIMIT:,} steps, when the request has at least "
            f"{STEP_LIMIT_SECONDS * 1000:.0f} ms of its budget left "
            "([docs/rules.md](rules.md#time-budget)). First the saving, on the benchmark "
            "token's combined URL pattern; then the worst cases: patterns that backtrack "
            "about as much as the bound allows, each against the longest text it is "
            "matched without the clock, made to fail. Medians of five runs."
        ),
    )
    pattern = regex.compile(COMBINED, regex.VERSION0)
    assert pattern.fullmatch(PATH)
    clocked = seconds_per_call(
        lambda: pattern.fullmatch(PATH, None, None, False, False, 0.05), least=least
    )
    unclocked = seconds_per_call(lambda: pattern.fullmatch(PATH, None, None, False), least=least)
    section.table(
        ["one fullmatch of the combined pattern", "time"],
        [
            ["with the timeout (clock read twice)", us(clocked * 1e6)],
            ["without", us(unclocked * 1e6)],
            ["**saved per call**", us((clocked - unclocked) * 1e6)],
        ],
    )
    rows, worst, worst_step = [], 0.0, 0.0
    for source, unit, last in WORST_CASES:
        length = max_unclocked_length(source)
        steps = work(source)
        assert length >= 0 and steps is not None, f"{source[:40]}... is not bounded"
        length = min(length, 100_000)
        text = (unit * (length // len(unit) + 1))[: length - 1] + last if length else ""
        compiled = regex.compile(source, regex.VERSION0)
        taken = seconds_per_call(functools.partial(compiled.fullmatch, text), least=least)
        bound = steps(len(text))
        worst = max(worst, taken)
        if bound >= 10_000:  # below that, the call itself costs more than its steps
            worst_step = max(worst_step, taken / bound)
        rows.append(
            [
                f"`{source if len(source) < 48 else source[:45] + '...'}`"
                + (f" ({len(source):,} characters)" if len(source) >= 48 else ""),
                f"{len(text):,}",
                f"{bound:,}",
                us(taken * 1e6),
                f"{taken / bound * 1e9:.2f} ns",
            ]
        )
    section.table(["pattern", "text length", "bound (steps)", "time", "per bound step"], rows)
    section.notes.append(
        "The bound counts the steps of a backtracking matcher with no optimisation at all; "
        "the `regex` module prunes much of that search, so most rows take far less than "
        "their bound. The rows that come closest show what a step costs at worst."
    )
    target = STEP_LIMIT_SECONDS / 5
    section.verdict(
        f"worst unclocked match <= {target * 1000:.0f} ms (a fifth of the budget it needs)",
        f"{us(worst * 1e6)}; at most {worst_step * 1e9:.2f} ns per bound step, "
        f"so {STEP_LIMIT:,} steps take at most {us(worst_step * STEP_LIMIT * 1e6)}",
        worst <= target,
    )
    section.verdict(
        "the clock costs more than it is worth on a typical rule",
        f"{us((clocked - unclocked) * 1e6)} saved per call; the match itself takes "
        f"{us(unclocked * 1e6)}",
        clocked > unclocked,
    )
    section.save()


if __name__ == "__main__":
    main()
