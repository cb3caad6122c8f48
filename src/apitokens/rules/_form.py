"""The simple form of regex the step bound covers, read into items (see ``_rules_bound``).

The form (the VERSION0 syntax rules use, no flags): literal characters; ``.``; escapes
of punctuation and ``\\d \\D \\w \\W \\s \\S``; the zero-width ``^ $ \\b \\B \\A \\Z``;
classes ``[...]`` without nested ``[``; the repeats ``* + ? {m} {m,} {m,n} {,n}``,
greedy or lazy, on those atoms; groups ``(...)`` and ``(?:...)`` of alternatives, alone
or with ``?``. Anything else raises :class:`OutsideForm`.

Each atom carries the characters it may match (an over-approximation: exact for ASCII,
all of the rest as soon as a member is not spelled out) and its weight, what reading
one character with it costs the ``regex`` module in steps.
"""

from __future__ import annotations

import re
import string
from typing import Final, NamedTuple

__all__ = [
    "NOTHING",
    "Atom",
    "Chars",
    "Group",
    "Item",
    "Literal",
    "OutsideForm",
    "ZeroWidth",
    "captures",
    "read_form",
    "starts",
]


class Chars(NamedTuple):
    """A set of characters, or more: ASCII ones exactly, others as a set or all (None)."""

    ascii: frozenset[str]
    others: frozenset[str] | None

    def union(self, other: Chars) -> Chars:
        """The characters of either."""
        if self.others is None or other.others is None:
            return Chars(self.ascii | other.ascii, None)
        return Chars(self.ascii | other.ascii, self.others | other.others)

    def disjoint(self, other: Chars) -> bool:
        """Whether no character is in both (as far as the over-approximations tell)."""
        if self.ascii & other.ascii:
            return False
        if self.others is None:
            return other.others is not None and not other.others
        if other.others is None:
            return not self.others
        return not self.others & other.others


_ASCII: Final = frozenset(chr(code) for code in range(128))
_ANY: Final = Chars(_ASCII, None)
# No character: what an anchor starts with, and what may follow the whole pattern
# (a fullmatch ends there, so only the end of the text may follow).
NOTHING: Final = Chars(frozenset(), frozenset())
_DIGITS: Final = frozenset(string.digits)
_WORD: Final = frozenset(string.ascii_letters + string.digits + "_")
_SPACE_MOST: Final = frozenset(" \t\n\r\v\f\x1c\x1d\x1e\x1f")  # \s may match these
_SPACE_LEAST: Final = frozenset(" \t\n\r\v\f")  # \s matches at least these
# Over-approximations: a class escape's ASCII members, and any other character.
_CLASS_ESCAPES: Final = {
    "d": Chars(_DIGITS, None),
    "D": Chars(_ASCII - _DIGITS, None),
    "w": Chars(_WORD, None),
    "W": Chars(_ASCII - _WORD, None),
    "s": Chars(_SPACE_MOST, None),
    "S": Chars(_ASCII - _SPACE_LEAST, None),
}
_ZERO_WIDTH_ESCAPES: Final = frozenset("bBAZ")
# What reading one character costs, in steps (a literal's read is one). The regex module
# tests a class's members in turn, and a class escape is a Unicode property lookup; a
# lazy repeat returns to the matcher between characters. Measured with bench_regex.
_ESCAPE_WEIGHT: Final = 4
_LAZY_WEIGHT: Final = 6
_COUNTED: Final = re.compile(r"\{([0-9]{0,6})(,([0-9]{0,6}))?\}")


class OutsideForm(Exception):
    """The pattern uses something the bound does not cover."""


class Atom(NamedTuple):
    """A one-character atom repeated ``lo`` to ``hi`` times (``hi`` None: no limit)."""

    lo: int
    hi: int | None
    chars: Chars
    weight: int  # steps per character it reads


class Literal(NamedTuple):
    """Literal characters, each matched once: one item, so long rules stay cheap to bound."""

    text: str


class Group(NamedTuple):
    """A group of alternatives, each a sequence of items; ``optional``: followed by ``?``."""

    alternatives: list[list[Item]]
    optional: bool
    capturing: bool


class ZeroWidth(NamedTuple):
    """An anchor: consumes nothing, reads at most the characters on either side."""


Item = Atom | Literal | Group | ZeroWidth


def read_form(source: str) -> Group:
    """The pattern ``source`` as one group of alternatives.

    Raises:
        OutsideForm: it uses something outside the form.
    """
    try:
        alternatives, _ = _alternatives(source, 0, depth=0)
    except IndexError:  # the source ended inside an escape, class or repeat
        raise OutsideForm from None
    return Group(alternatives, optional=False, capturing=False)


def starts(item: Item) -> tuple[Chars, bool]:
    """The characters ``item`` may start with, and whether it may match nothing."""
    if isinstance(item, Atom):
        return item.chars, item.lo == 0
    if isinstance(item, Literal):
        return _single(item.text[0]), False
    if isinstance(item, ZeroWidth):
        return NOTHING, True
    chars, nullable = NOTHING, item.optional
    for alternative in item.alternatives:
        empty = True
        for inner in alternative:
            first, inner_nullable = starts(inner)
            chars = chars.union(first)
            if not inner_nullable:
                empty = False
                break
        nullable = nullable or empty
    return chars, nullable


def _alternatives(source: str, pos: int, depth: int) -> tuple[list[list[Item]], int]:
    """Parse alternatives up to an unmatched ``)`` or the end; return them and where."""
    alternatives: list[list[Item]] = [[]]
    while pos < len(source):
        char = source[pos]
        if char == "|":
            alternatives.append([])
            pos += 1
            continue
        if char == ")":
            if not depth:
                raise OutsideForm  # unbalanced
            return alternatives, pos
        item: Item
        if char == "(":
            item, pos = _group(source, pos, depth)
        elif char in "^$":
            item, pos = ZeroWidth(), pos + 1
        elif char in "*+?{":
            raise OutsideForm  # nothing to repeat, a literal "{", or a fuzzy constraint
        else:
            if char == "\\" and source[pos + 1] in _ZERO_WIDTH_ESCAPES:
                item, pos = ZeroWidth(), pos + 2
            else:
                chars, literal, weight, pos = _one_character(source, pos)
                (lo, hi), lazy, pos = _repeat(source, pos)
                if literal and (lo, hi) == (1, 1):
                    sequence = alternatives[-1]
                    last = sequence[-1] if sequence else None
                    if isinstance(last, Literal):
                        sequence.pop()
                        literal = last.text + literal
                    item = Literal(literal)
                else:
                    item = Atom(lo, hi, chars, weight * _LAZY_WEIGHT if lazy else weight)
        alternatives[-1].append(item)
    if depth:
        raise OutsideForm  # an unclosed group
    return alternatives, pos


def _group(source: str, pos: int, depth: int) -> tuple[Group, int]:
    capturing = not source.startswith("(?", pos)
    if source.startswith("(?:", pos):
        pos += 3
    elif not capturing:
        raise OutsideForm  # flags, lookarounds, named and atomic groups, ...
    else:
        pos += 1
    inner, pos = _alternatives(source, pos, depth + 1)
    repeat, _, pos = _repeat(source, pos + 1)  # after the ")"
    if repeat not in ((1, 1), (0, 1)):
        raise OutsideForm  # a repeated group
    return Group(inner, optional=repeat == (0, 1), capturing=capturing), pos


def captures(group: Group) -> int:
    """How many capturing groups ``group`` is or holds."""
    return int(group.capturing) + sum(
        captures(item)
        for alternative in group.alternatives
        for item in alternative
        if isinstance(item, Group)
    )


def _one_character(source: str, pos: int) -> tuple[Chars, str, int, int]:
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
            raise OutsideForm  # \p{..}, \x41, \N{..}, backreferences, ...
        char, pos = escaped, pos + 1
    return _single(char), char, 1, pos + 1


def _single(char: str) -> Chars:
    if char in _ASCII:
        return Chars(frozenset(char), frozenset())
    return Chars(frozenset(), frozenset(char))


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
            raise OutsideForm  # a literal "{", or a fuzzy constraint
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
        raise OutsideForm  # possessive, or a repeat of a repeat
    return bounds, lazy, pos


def _class(source: str, pos: int) -> tuple[Chars, int, int]:
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
            raise OutsideForm  # POSIX classes, nested sets
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
                raise OutsideForm  # regex refuses it too
        ascii_members |= {chr(code) for code in range(ord(low), min(ord(high), 127) + 1)}
        if ord(high) > 127 and others is not None:
            if ord(high) - max(ord(low), 128) < 256:
                others |= {chr(code) for code in range(max(ord(low), 128), ord(high) + 1)}
            else:
                others, exact = None, False
    end = pos + 1
    if not negated:
        found = Chars(frozenset(ascii_members), None if others is None else frozenset(others))
    elif not exact:
        found = _ANY
    else:
        found = Chars(_ASCII - ascii_members, None)
    return found, weight, end


def _class_char(source: str, pos: int) -> tuple[str, int]:
    """One literal character of a class at ``pos`` and the index after it."""
    char = source[pos]
    if char == "\\":
        escaped = source[pos + 1]
        if escaped.isalnum():
            raise OutsideForm  # \x41, \p{..}, \N{..} and friends
        return escaped, pos + 2
    if char == "[":
        raise OutsideForm
    return char, pos + 1
