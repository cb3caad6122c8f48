"""Which rule regexes need no clock: a step bound for patterns of a simple form.

The ``regex`` module enforces a time budget by reading the process's CPU clock at the
start and end of every call: two system calls, about 2.5 µs on the benchmark machine,
more than a typical rule's match itself. For a pattern whose backtracking is provably
small on a short text, the clock buys nothing: the match ends long before a budget could
run out. :func:`max_unclocked_length` gives, per pattern, the longest text on which a
fullmatch takes at most :data:`STEP_LIMIT` steps; the matcher skips the clock for texts
no longer than that when the request's remaining budget covers
:data:`STEP_LIMIT_SECONDS`.

The bound. A backtracking matcher tries, at each item of a sequence, every choice the
items before it left open. A one-character atom repeated ``{lo,hi}`` times can stop at
``min(hi, n) - lo + 1`` places in a text of ``n`` characters, each a continuation; a
group tries each alternative, an optional group also none. So the item at index ``i`` is
entered at most as often as the product of the choices before it, and each entry costs
at most the atom's scan and back-off or the group's own work; work is the sum over items
of entries times cost. Two facts keep that product small for the usual rule:

- a repeat followed by literal text ``w`` continues only where ``w`` occurs, and
  occurrences of ``w`` are at least its period apart (``.*/rest/...``);
- a repeat of a class followed by an atom whose characters are all outside the class
  can continue at one place only: where its run ends (``[A-Z]+-``).

Repeated groups (``(a|a)*``, ``(a+)+``) are where exponential backtracking lives; they,
and everything else outside the form, get no bound, and the clock stays.

A step is about what reading one character with a literal costs the ``regex`` module.
Some reads cost more, and are counted so (an adversarial search found each): a class
tests its members one after another, and a class escape such as ``\\w`` is a Unicode
property lookup (``[\\d\\w]*`` on CJK text ran at 15-27 ns a read when each read was
one step); a lazy repeat goes back to the matcher between characters; each capturing
group costs every call its set-up, however short the text; and a group tried at ``k``
places costs about ``k * k`` (the module keeps those places in a sorted list).

The form is read by ``_rules_form``. A property test checks the bound against a
backtracking matcher that counts its steps and agrees with ``regex`` on every match.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Final, NamedTuple

from apitokens.rules._form import (
    NOTHING,
    Atom,
    Chars,
    Group,
    Item,
    Literal,
    OutsideForm,
    ZeroWidth,
    captures,
    read_form,
    starts,
)

__all__ = ["STEP_LIMIT", "STEP_LIMIT_SECONDS", "UNBOUNDED", "max_unclocked_length", "work"]

# Most steps a match may take without the clock. On texts built to cost the most per
# step, the regex module took at most about 3 ns a step on the benchmark machine
# (bench_regex in docs/performance.md), so this many take 0.2-0.3 ms there.
STEP_LIMIT: Final = 100_000
# The remaining budget a request needs for an unclocked match: what STEP_LIMIT steps
# may take, with a wide margin for a machine several times slower than that one.
STEP_LIMIT_SECONDS: Final = 0.005
UNBOUNDED: Final = -1
# Longest text a bound is given for; longer texts are always matched with the clock.
MAX_TEXT: Final = 1 << 20
# A capturing group costs each call its capture state, however short the text.
_CAPTURE_COST: Final = 40


@functools.lru_cache(maxsize=4096)  # tokens share rules; a bound takes about 0.4 ms
def max_unclocked_length(source: str) -> int:
    """The longest text ``source`` fullmatches within :data:`STEP_LIMIT` steps.

    Returns:
        A length from 0 to :data:`MAX_TEXT`, or :data:`UNBOUNDED` (-1) when the
        pattern is outside the form this module bounds, or when even an empty
        text could take more steps.
    """
    try:
        return _longest(source)
    except RecursionError:  # nested deeper than the reader can follow: keep the clock
        return UNBOUNDED


def _longest(source: str) -> int:
    steps = work(source)
    if steps is None or steps(0) > STEP_LIMIT:
        return UNBOUNDED
    if steps(MAX_TEXT) <= STEP_LIMIT:
        return MAX_TEXT
    low, high = 0, MAX_TEXT  # steps(low) <= STEP_LIMIT < steps(high); work grows with n
    while high - low > 1:
        middle = (low + high) // 2
        if steps(middle) <= STEP_LIMIT:
            low = middle
        else:
            high = middle
    return low


def work(source: str) -> Callable[[int], int] | None:
    """The most steps a fullmatch of ``source`` takes on a text of ``n`` characters.

    ``None`` when the pattern is outside the form (see the module's docstring).
    """
    try:
        top = read_form(source)
    except OutsideForm:
        return None
    # What follows the whole pattern: the end of the text, one step to check.
    whole = _plan([top], NOTHING, 1)
    setup = _CAPTURE_COST * captures(top)

    def steps(n: int) -> int:
        cost, leaves = _evaluate(whole, n)
        return setup + cost + leaves

    return steps


# -- the bound ---------------------------------------------------------------------


class _Repeat(NamedTuple):
    """How an atom is counted: its repeat, and what narrows its continuations."""

    lo: int
    hi: int | None
    weight: int
    fail: int | None  # what follows cannot start inside its run; a failed try costs this
    run: int  # else: the length of the literal text that must follow it (0 if none)
    period: int  # the smallest period of that text


class _Alternatives(NamedTuple):
    plans: list[list[_Plan]]
    optional: bool


_Plan = _Repeat | _Alternatives | Literal | ZeroWidth


def _plan(items: list[Item], then: Chars, then_fail: int) -> list[_Plan]:
    """How each item of a sequence is counted, given what may follow the sequence.

    ``then`` holds the characters the text may go on with after the sequence (the end
    of the text may follow only if it is empty), ``then_fail`` the most a try that
    reads nothing there costs.
    """
    plans: list[_Plan] = []
    follow, fail = then, then_fail  # of items[index + 1:] followed by then
    for index in range(len(items) - 1, -1, -1):
        item = items[index]
        plan: _Plan
        if isinstance(item, Atom):
            narrowed = item.chars.disjoint(follow)
            after = items[index + 1] if index + 1 < len(items) else None
            run = after.text if isinstance(after, Literal) and not narrowed else ""
            plan = _Repeat(
                item.lo, item.hi, item.weight, fail if narrowed else None, len(run), _period(run)
            )
        elif isinstance(item, Group):
            plan = _Alternatives(
                [_plan(alternative, follow, fail) for alternative in item.alternatives],
                item.optional,
            )
        else:
            plan = item
        plans.append(plan)
        # A try of items[index:] that reads nothing: the text's next character starts
        # none of it. Its items then match only empty, as they would in an empty text.
        cost, leaves = _evaluate_one(plan, 0)
        fail = cost + leaves * fail
        chars, nullable = starts(item)
        follow = chars.union(follow) if nullable else chars
    plans.reverse()
    return plans


def _evaluate(plans: list[_Plan], n: int, outer: int = 1) -> tuple[int, int]:
    """(work, continuations) of a sequence entered once, in a text of ``n`` characters.

    ``outer``: how often the sequence is entered in a whole match.
    """
    total, entries = 0, 1
    for plan in plans:
        if isinstance(plan, _Alternatives):
            cost, choices = _evaluate_one(plan, n, outer * entries)
            # The module notes each place a group was tried in a sorted list, inserting
            # by moving what follows: a group tried at k places costs about k * k.
            # (Found by an adversarial search: ".*ab()?" took 24 ms at a bound linear
            # in the text.) Charged so that the whole match pays (outer * entries) ** 2.
            total += outer * entries * entries
        else:
            cost, choices = _evaluate_one(plan, n)
        total += entries * cost
        entries *= choices
        if not entries:
            break
    return total, entries


def _evaluate_one(plan: _Plan, n: int, outer: int = 1) -> tuple[int, int]:
    """(work, continuations) of one item entered once (``outer`` times in a match)."""
    if isinstance(plan, _Repeat):
        top = n if plan.hi is None else min(plan.hi, n)
        # Entering it, then reading up to top characters and the one that stops it.
        cost, choices = (top + 1) * plan.weight + 1, max(0, top - plan.lo + 1)
        if choices > 1 and plan.fail is not None:
            # Before the end of the atom's run the next character is in its class
            # and starts nothing that may follow: only the end of the run goes on.
            return cost + (choices - 1) * plan.fail, 1
        if choices > 1 and plan.run:
            # One entry's continuations start at distinct places; few are where the
            # run occurs. A try elsewhere fails within the run.
            occurrences = (n - plan.run) // plan.period + 1 if n >= plan.run else 0
            kept = min(choices, occurrences)
            return cost + (choices - kept) * (2 * min(plan.run, n) + 2), kept
        return cost, choices
    if isinstance(plan, Literal):
        # Each character entered and read, up to the first that differs.
        length = len(plan.text)
        return 2 * min(length, n) + 2, 1 if n >= length else 0
    if isinstance(plan, ZeroWidth):
        return 3, 1  # entering it, reading the characters on either side
    total, leaves = 1, 1 if plan.optional else 0
    for alternative in plan.plans:
        cost, ends = _evaluate(alternative, n, outer)
        total += cost
        leaves += ends
    return total, leaves


def _period(word: str) -> int:
    """The smallest period of ``word`` (1 for the empty word).

    Two occurrences of a word closer than its length overlap, and their distance is
    then a period of it: occurrences are at least the smallest period apart, so a text
    of ``n`` characters holds at most ``(n - len(word)) // period + 1`` of them.
    """
    return next(
        (shift for shift in range(1, len(word)) if word[shift:] == word[: len(word) - shift]),
        max(len(word), 1),
    )
