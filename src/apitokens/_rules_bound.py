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
and everything else outside the form below, get no bound, and the clock stays.

A step is about what reading one character with a literal costs the ``regex`` module.
Some reads cost more, and are counted so (an adversarial search found each): a class
tests its members one after another, and a class escape such as ``\\w`` is a Unicode
property lookup (``[\\d\\w]*`` on CJK text ran at 15-27 ns a read when each read was
one step); a lazy repeat goes back to the matcher between characters; and each
capturing group costs every call its set-up, however short the text.

The form (the VERSION0 syntax rules use, no flags): literal characters; ``.``; escapes
of punctuation and ``\\d \\D \\w \\W \\s \\S``; the zero-width ``^ $ \\b \\B \\A \\Z``;
classes ``[...]`` without nested ``[``; the repeats ``* + ? {m} {m,} {m,n} {,n}``,
greedy or lazy, on those atoms; groups ``(...)`` and ``(?:...)`` of alternatives, alone
or with ``?``. A property test checks the bound against a backtracking matcher that
counts its steps and agrees with ``regex`` on every match.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable
from typing import Final, NamedTuple

__all__ = ["STEP_LIMIT", "STEP_LIMIT_SECONDS", "UNBOUNDED", "max_unclocked_length", "work"]

# Most steps a match may take without the clock. On texts built to cost the most per
# step, the regex module took at most about 3 ns a step on the benchmark machine
# (bench_regex in docs/performance.md), so this many take about 0.3 ms there.
STEP_LIMIT: Final = 100_000
# The remaining budget a request needs for an unclocked match: what STEP_LIMIT steps
# may take, with a wide margin for a machine several times slower than that one.
STEP_LIMIT_SECONDS: Final = 0.005
UNBOUNDED: Final = -1
# Longest text a bound is given for; longer texts are always matched with the clock.
MAX_TEXT: Final = 1 << 20


class _Chars(NamedTuple):
    """A set of characters, or more: ASCII ones exactly, others as a set or all (None)."""

    ascii: frozenset[str]
    others: frozenset[str] | None

    def union(self, other: _Chars) -> _Chars:
        if self.others is None or other.others is None:
            return _Chars(self.ascii | other.ascii, None)
        return _Chars(self.ascii | other.ascii, self.others | other.others)

    def disjoint(self, other: _Chars) -> bool:
        if self.ascii & other.ascii:
            return False
        if self.others is None:
            return other.others is not None and not other.others
        if other.others is None:
            return not self.others
        return not self.others & other.others


_ASCII: Final = frozenset(chr(code) for code in range(128))
_ANY: Final = _Chars(_ASCII, None)
# No character: what an anchor starts with, and what may follow the whole pattern
# (a fullmatch ends there, so only the end of the text may follow).
_NOTHING: Final = _Chars(frozenset(), frozenset())
_DIGITS: Final = frozenset(string.digits)
_WORD: Final = frozenset(string.ascii_letters + string.digits + "_")
_SPACE_MOST: Final = frozenset(" \t\n\r\v\f\x1c\x1d\x1e\x1f")  # \s may match these
_SPACE_LEAST: Final = frozenset(" \t\n\r\v\f")  # \s matches at least these
# Over-approximations: a class escape's ASCII members, and any other character.
_CLASS_ESCAPES: Final = {
    "d": _Chars(_DIGITS, None),
    "D": _Chars(_ASCII - _DIGITS, None),
    "w": _Chars(_WORD, None),
    "W": _Chars(_ASCII - _WORD, None),
    "s": _Chars(_SPACE_MOST, None),
    "S": _Chars(_ASCII - _SPACE_LEAST, None),
}
_ZERO_WIDTH_ESCAPES: Final = frozenset("bBAZ")
# What reading one character costs, in steps (a literal's read is one). The regex module
# tests a class's members in turn, and a class escape is a Unicode property lookup; a
# lazy repeat returns to the matcher between characters. Measured with bench_regex.
_ESCAPE_WEIGHT: Final = 4
_LAZY_WEIGHT: Final = 6
# A capturing group costs each call its capture state, however short the text.
_CAPTURE_COST: Final = 40
_COUNTED: Final = re.compile(r"\{([0-9]{0,6})(,([0-9]{0,6}))?\}")


class _OutsideForm(Exception):
    """The pattern uses something the bound does not cover."""


class _Atom(NamedTuple):
    """A one-character atom repeated ``lo`` to ``hi`` times (``hi`` None: no limit)."""

    lo: int
    hi: int | None
    chars: _Chars
    weight: int  # steps per character it reads


class _Literal(NamedTuple):
    """Literal characters, each matched once: one item, so long rules stay cheap to bound."""

    text: str


class _Group(NamedTuple):
    """A group of alternatives, each a sequence of items; ``optional``: followed by ``?``."""

    alternatives: list[list[_Item]]
    optional: bool
    capturing: bool


class _ZeroWidth(NamedTuple):
    """An anchor: consumes nothing, reads at most the characters on either side."""


_Item = _Atom | _Literal | _Group | _ZeroWidth


@functools.lru_cache(maxsize=4096)  # tokens share rules; a bound takes about 0.4 ms
def max_unclocked_length(source: str) -> int:
    """The longest text ``source`` fullmatches within :data:`STEP_LIMIT` steps.

    Returns:
        A length from 0 to :data:`MAX_TEXT`, or :data:`UNBOUNDED` (-1) when the
        pattern is outside the form this module bounds, or when even an empty
        text could take more steps.
    """
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
        alternatives, end = _alternatives(source, 0, depth=0)
    except (_OutsideForm, IndexError):
        return None
    if end != len(source):  # pragma: no cover - _alternatives refuses a stray ")"
        return None
    top = _Group(alternatives, optional=False, capturing=False)
    # What follows the whole pattern: the end of the text, one step to check.
    whole = _plan([top], _NOTHING, 1)
    setup = _CAPTURE_COST * _captures(top)

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


_Plan = _Repeat | _Alternatives | _Literal | _ZeroWidth


def _plan(items: list[_Item], then: _Chars, then_fail: int) -> list[_Plan]:
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
        if isinstance(item, _Atom):
            narrowed = item.chars.disjoint(follow)
            after = items[index + 1] if index + 1 < len(items) else None
            run = after.text if isinstance(after, _Literal) and not narrowed else ""
            plan = _Repeat(
                item.lo, item.hi, item.weight, fail if narrowed else None, len(run), _period(run)
            )
        elif isinstance(item, _Group):
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
        chars, nullable = _starts(item)
        follow = chars.union(follow) if nullable else chars
    plans.reverse()
    return plans


def _starts(item: _Item) -> tuple[_Chars, bool]:
    """The characters ``item`` may start with, and whether it may match nothing."""
    if isinstance(item, _Atom):
        return item.chars, item.lo == 0
    if isinstance(item, _Literal):
        return _single(item.text[0]), False
    if isinstance(item, _ZeroWidth):
        return _NOTHING, True
    chars, nullable = _NOTHING, item.optional
    for alternative in item.alternatives:
        empty = True
        for inner in alternative:
            first, inner_nullable = _starts(inner)
            chars = chars.union(first)
            if not inner_nullable:
                empty = False
                break
        nullable = nullable or empty
    return chars, nullable


def _evaluate(plans: list[_Plan], n: int) -> tuple[int, int]:
    """(work, continuations) of a sequence entered once, in a text of ``n`` characters."""
    total, entries = 0, 1
    for plan in plans:
        cost, choices = _evaluate_one(plan, n)
        total += entries * cost
        entries *= choices
        if not entries:
            break
    return total, entries


def _evaluate_one(plan: _Plan, n: int) -> tuple[int, int]:
    """(work, continuations) of one item entered once."""
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
    if isinstance(plan, _Literal):
        # Each character entered and read, up to the first that differs.
        length = len(plan.text)
        return 2 * min(length, n) + 2, 1 if n >= length else 0
    if isinstance(plan, _ZeroWidth):
        return 3, 1  # entering it, reading the characters on either side
    total, leaves = 1, 1 if plan.optional else 0
    for alternative in plan.plans:
        cost, ends = _evaluate(alternative, n)
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


# -- reading the form ----------------------------------------------------------------


def _alternatives(source: str, pos: int, depth: int) -> tuple[list[list[_Item]], int]:
    """Parse alternatives up to an unmatched ``)`` or the end; return them and where."""
    alternatives: list[list[_Item]] = [[]]
    while pos < len(source):
        char = source[pos]
        if char == "|":
            alternatives.append([])
            pos += 1
            continue
        if char == ")":
            if not depth:
                raise _OutsideForm  # unbalanced
            return alternatives, pos
        item: _Item
        if char == "(":
            item, pos = _group(source, pos, depth)
        elif char in "^$":
            item, pos = _ZeroWidth(), pos + 1
        elif char in "*+?{":
            raise _OutsideForm  # nothing to repeat, a literal "{", or a fuzzy constraint
        else:
            if char == "\\" and source[pos + 1] in _ZERO_WIDTH_ESCAPES:
                item, pos = _ZeroWidth(), pos + 2
            else:
                chars, literal, weight, pos = _one_character(source, pos)
                (lo, hi), lazy, pos = _repeat(source, pos)
                if literal and (lo, hi) == (1, 1):
                    sequence = alternatives[-1]
                    last = sequence[-1] if sequence else None
                    if isinstance(last, _Literal):
                        sequence.pop()
                        literal = last.text + literal
                    item = _Literal(literal)
                else:
                    item = _Atom(lo, hi, chars, weight * _LAZY_WEIGHT if lazy else weight)
        alternatives[-1].append(item)
    if depth:
        raise _OutsideForm  # an unclosed group
    return alternatives, pos


def _group(source: str, pos: int, depth: int) -> tuple[_Group, int]:
    capturing = not source.startswith("(?", pos)
    if source.startswith("(?:", pos):
        pos += 3
    elif not capturing:
        raise _OutsideForm  # flags, lookarounds, named and atomic groups, ...
    else:
        pos += 1
    inner, pos = _alternatives(source, pos, depth + 1)
    repeat, _, pos = _repeat(source, pos + 1)  # after the ")"
    if repeat not in ((1, 1), (0, 1)):
        raise _OutsideForm  # a repeated group
    return _Group(inner, optional=repeat == (0, 1), capturing=capturing), pos


def _captures(group: _Group) -> int:
    """How many capturing groups ``group`` is or holds."""
    return int(group.capturing) + sum(
        _captures(item)
        for alternative in group.alternatives
        for item in alternative
        if isinstance(item, _Group)
    )


def _one_character(source: str, pos: int) -> tuple[_Chars, str, int, int]:
    """The atom at ``pos``: its characters, the one it matches ("" if several), its
    weight (steps per character read), and its end."""
    char = source[pos]
    if char == ".":
        return _ANY, "", 1, pos + 1
    if char == "[":
        chars, weight, pos = _class(source, pos + 1)
        return chars, "", weight, pos
    if char == "\\":
        escaped = source[pos + 1]
        if escaped in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[escaped], "", _ESCAPE_WEIGHT, pos + 2
        if escaped.isalnum():
            raise _OutsideForm  # \p{..}, \x41, \N{..}, backreferences, ...
        char, pos = escaped, pos + 1
    return _single(char), char, 1, pos + 1


def _single(char: str) -> _Chars:
    if char in _ASCII:
        return _Chars(frozenset(char), frozenset())
    return _Chars(frozenset(), frozenset(char))


def _repeat(source: str, pos: int) -> tuple[tuple[int, int | None], bool, int]:
    """The repeat at ``pos`` ((1, 1) when there is none), whether lazy, and its end."""
    char = source[pos] if pos < len(source) else ""
    bounds: tuple[int, int | None]
    if char == "*":
        bounds, pos = (0, None), pos + 1
    elif char == "+":
        bounds, pos = (1, None), pos + 1
    elif char == "?":
        bounds, pos = (0, 1), pos + 1
    elif char == "{":
        counted = _COUNTED.match(source, pos)
        if counted is None or not (counted.group(1) or counted.group(3)):
            raise _OutsideForm  # a literal "{", or a fuzzy constraint
        low = int(counted.group(1) or "0")
        if counted.group(2) is None:
            bounds = (low, low)
        else:
            bounds = (low, int(counted.group(3)) if counted.group(3) else None)
        pos = counted.end()
    else:
        return (1, 1), False, pos
    lazy = source.startswith("?", pos)  # the same choices, tried in the other order
    pos += lazy
    if pos < len(source) and source[pos] in "*+?{":
        raise _OutsideForm  # possessive, or a repeat of a repeat
    return bounds, lazy, pos


def _class(source: str, pos: int) -> tuple[_Chars, int, int]:
    """The class whose body starts at ``pos``: its characters, weight and end."""
    negated = source.startswith("^", pos)
    pos += negated
    weight = 1  # the module tests the members of a class one after another
    ascii_members: set[str] = set()
    others: set[str] | None = set()
    exact = True  # members known exactly: the complement is then known too
    first = True  # VERSION0 reads a "]" right after "[" or "[^" as a literal
    while True:
        char = source[pos]  # IndexError past the end: outside the form
        if char == "]" and not first:
            break
        first = False
        if char == "[":
            raise _OutsideForm  # POSIX classes, nested sets
        if char == "\\" and source[pos + 1] in _CLASS_ESCAPES:
            member = _CLASS_ESCAPES[source[pos + 1]]
            ascii_members |= member.ascii
            others, exact, pos = None, False, pos + 2
            weight += _ESCAPE_WEIGHT
            continue
        weight += 1
        low, pos = _class_char(source, pos)
        high = low
        if source[pos] == "-" and source[pos + 1] != "]":
            high, pos = _class_char(source, pos + 1)
            if high < low:
                raise _OutsideForm  # regex refuses it too
        ascii_members |= {chr(code) for code in range(ord(low), min(ord(high), 127) + 1)}
        if ord(high) > 127 and others is not None:
            if ord(high) - max(ord(low), 128) < 256:
                others |= {chr(code) for code in range(max(ord(low), 128), ord(high) + 1)}
            else:
                others, exact = None, False
    end = pos + 1
    if not negated:
        found = _Chars(frozenset(ascii_members), None if others is None else frozenset(others))
    elif not exact:
        found = _ANY
    else:
        found = _Chars(_ASCII - ascii_members, None)
    return found, weight, end


def _class_char(source: str, pos: int) -> tuple[str, int]:
    """One literal character of a class at ``pos`` and the index after it."""
    char = source[pos]
    if char == "\\":
        escaped = source[pos + 1]
        if escaped.isalnum():
            raise _OutsideForm  # \x41, \p{..}, \N{..} and friends
        return escaped, pos + 2
    if char == "[":
        raise _OutsideForm
    return char, pos + 1
