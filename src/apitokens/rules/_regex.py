"""Read a regex embedded in a rule the way the ``regex`` module's VERSION0 parser does.

A rule embeds regexes, so the rule parser must know where each one ends. This scanner
follows backslash escapes, character classes (a ``]`` right after ``[`` or ``[^`` is
literal, POSIX classes such as ``[[:alpha:]]`` are one item), and ``(?#...)``
comments, so a clause start or a ``]`` inside a class or after a backslash stays part
of the regex. Syntax under which the two readings could differ (the verbose flag,
VERSION1 nested sets) is refused rather than guessed, and so are counted repeats that
would make compiling slow.
"""

from __future__ import annotations

import re
import string

import regex

__all__ = ["CLAUSE_HEAD", "KINDS", "LocatedError", "compile_regex", "is_clause_head", "scan_regex"]

# regex expands the mandatory copies of a counted repeat at compile time:
# "a{1000000}" takes half a second and "(?:a{1000}){1000000}" exhausts memory.
MAX_EXPANSION = 10_000
MAX_GROUP_DEPTH = 100

CLAUSE_HEAD = re.compile(r"\[([A-Za-z]+)(::?)")
KINDS = {"queryparam": "QueryParam", "jsondata": "JsonData"}
_PROPERTY_NAME = frozenset(string.ascii_letters + string.digits + " &_-.")
_PROPERTY_VALUE = _PROPERTY_NAME | {"/"}
_INLINE_FLAGS = re.compile(r"(?:[abefiLmprsuwx]|V[01])*")
_COUNTED = re.compile(r"\{([0-9]*)(?:,([0-9]*))?\}")


class LocatedError(Exception):
    """A syntax problem at a 0-based index of the rule text."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def is_clause_head(head: re.Match[str] | None) -> bool:
    """Whether a CLAUSE_HEAD match starts a clause: "[Name::", or a misspelt known one."""
    return head is not None and (head.group(2) == "::" or head.group(1).lower() in KINDS)


def compile_regex(source: str, offset: int, what: str) -> regex.Pattern[str]:
    """Compile a rule regex (VERSION0); raise LocatedError at the error's position."""
    try:
        return regex.compile(source, regex.VERSION0)
    except regex.error as exc:
        pos = getattr(exc, "pos", None)
        message = getattr(exc, "msg", None) or str(exc)
        index = offset + pos if isinstance(pos, int) and 0 <= pos <= len(source) else offset
        raise LocatedError(index, f"invalid {what}: {message}") from None
    except RecursionError:
        raise LocatedError(offset, f"invalid {what}: nested too deeply") from None


def scan_regex(text: str, start: int, end: int, *, in_clause: bool) -> int:
    """Return where the regex that starts at ``start`` ends.

    In a clause that is the index of the first ``]`` outside a character class (``end``
    if there is none); in the URL it is the index of the first clause-like ``[Name:``
    outside a class (``end`` if there is none). Also refuses inline flags that change
    how the regex is read, and counted repeats that would be costly to compile.
    """
    sizes = [[0, 0]]  # per open group: [expanded size so far, size of the last item]
    pos = start
    while pos < end:
        char = text[pos]
        item = 1
        if char == "\\":
            pos += 2
        elif char == "[":
            if not in_clause and is_clause_head(CLAUSE_HEAD.match(text, pos, end)):
                return pos
            pos = _scan_class(text, pos + 1, end)
        elif char == "]" and in_clause:
            return pos
        elif char == "(":
            pos = _open_group(text, pos, end, sizes)
            continue
        elif char == ")":
            pos += 1
            if len(sizes) > 1:
                item = sizes.pop()[0]
            else:
                continue
        elif char == "{" and (counted := _COUNTED.match(text, pos, end)):
            low, high = counted.group(1), counted.group(2)
            if low or high is not None:
                _repeat(sizes[-1], low, pos)
                pos = counted.end()
                continue
            pos += 1
        else:
            pos += 1
            if char in "*+?|":
                continue
        _grow(sizes[-1], item, item, pos - 1)
    return end


def _open_group(text: str, pos: int, end: int, sizes: list[list[int]]) -> int:
    if text.startswith("(?#", pos):
        pos += 3  # a comment runs to the first unescaped ')'
        while pos < end and text[pos] != ")":
            pos += 2 if text[pos] == "\\" else 1
        return pos + 1
    if text.startswith("(?", pos):
        flags = _INLINE_FLAGS.match(text, pos + 2, end)
        on = flags.group() if flags else ""
        if "x" in on:
            raise LocatedError(
                pos,
                "the verbose flag (?x) is not supported in rules; write the "
                "regex without spaces and comments",
            )
        if "V1" in on:
            raise LocatedError(
                pos,
                "VERSION1 regex syntax (?V1) is not supported in rules; rules "
                "use the VERSION0 syntax",
            )
    if len(sizes) > MAX_GROUP_DEPTH:
        raise LocatedError(pos, f"regex groups are nested too deeply (at most {MAX_GROUP_DEPTH})")
    sizes.append([0, 0])
    return pos + 1


def _repeat(frame: list[int], low: str, pos: int) -> None:
    # Only the mandatory copies are expanded: "{5,1000}" costs 5, "{0,65535}" nothing.
    digits = low.lstrip("0")
    count = int(digits or "0") if len(digits) < 10 else MAX_EXPANSION + 1
    extra = frame[1] * (max(count, 1) - 1)
    _grow(frame, extra, frame[1] + extra, pos)


def _grow(frame: list[int], added: int, last: int, pos: int) -> None:
    frame[0] += added
    frame[1] = last
    if frame[0] > MAX_EXPANSION:
        raise LocatedError(
            pos,
            f"regex too large: counted repeats would expand it to more than {MAX_EXPANSION} "
            "items; use an open repeat such as + or {1,n}",
        )


def _scan_class(text: str, pos: int, end: int) -> int:
    """Return the index after the ``]`` that closes the class whose body starts at pos."""
    if text.startswith("^", pos):
        pos += 1
    first = True  # VERSION0 reads a ']' right after '[' or '[^' as a literal
    while pos < end:
        char = text[pos]
        if char == "\\":
            pos += 2
        elif char == "[" and text.startswith(":", pos + 1):
            pos = _posix_class_end(text, pos + 2, end) or pos + 1
        elif char == "]" and not first:
            return pos + 1
        else:
            pos += 1
        first = False
    return end


def _posix_class_end(text: str, pos: int, end: int) -> int | None:
    """Index after a POSIX class such as ``[:alpha:]`` whose name starts at pos, else None."""
    if text.startswith("^", pos):
        pos += 1
    while pos < end and text[pos] in _PROPERTY_NAME:
        pos += 1
    if pos < end and text[pos] in ":=":
        value_end = pos + 1
        while value_end < end and text[value_end] in _PROPERTY_VALUE:
            value_end += 1
        if text[pos + 1 : value_end].strip():
            pos = value_end
    return pos + 2 if text.startswith(":]", pos) and pos + 2 <= end else None
