"""Parse restriction rule text (DESIGN §3) into its parts with compiled regexes.

Where an embedded regex ends is decided by ``_regex``; this module reads the
rest of the grammar: the method list, clauses, names and JSON paths.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import regex

from apitokens._errors import RuleSyntaxError
from apitokens.rules._regex import CLAUSE_HEAD, KINDS, LocatedError, compile_regex, scan_regex

__all__ = ["METHODS", "JsonClause", "ParsedRule", "QueryClause", "parse_rule"]

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
MAX_RULE_LENGTH = 4096

_BLANK = " \t"
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # str.splitlines()
_METHOD_LIST_CHARS = frozenset(string.ascii_letters + "," + _BLANK)
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class QueryClause:
    name: str
    source: str
    pattern: regex.Pattern[str]


@dataclass(frozen=True, slots=True)
class JsonClause:
    path: str  # as written, escapes included
    keys: tuple[tuple[str, int | None], ...]  # (object key, array index if decimal)
    source: str
    pattern: regex.Pattern[str]


@dataclass(frozen=True, slots=True)
class ParsedRule:
    methods: tuple[str, ...]
    url: str
    url_pattern: regex.Pattern[str]
    query: tuple[QueryClause, ...]
    json: tuple[JsonClause, ...]


def parse_rule(text: str) -> ParsedRule:
    """Parse one rule; raise RuleSyntaxError (with a 1-based column) if it is malformed."""
    try:
        return _parse(text)
    except LocatedError as problem:
        raise RuleSyntaxError(text, problem.index + 1, problem.reason) from None


def _parse(text: str) -> ParsedRule:
    if len(text) > MAX_RULE_LENGTH:
        raise LocatedError(
            MAX_RULE_LENGTH, f"rule is too long ({len(text)} characters; at most {MAX_RULE_LENGTH})"
        )
    for index, char in enumerate(text):
        if char in _LINE_BREAKS:
            raise LocatedError(index, "line break inside a rule; put each rule on its own line")
    control = _CONTROL.search(text)
    if control:
        raise LocatedError(
            control.start(),
            f"control character U+{ord(control.group()):04X} in "
            "rule; write it as a regex escape such as \\x00",
        )
    start = len(text) - len(text.lstrip(_BLANK))
    end = _trim_end(text, start, len(text))
    if start == end:
        raise LocatedError(0, "rule is empty; write a URL regex such as .*/rest/.*")
    methods, pos = _parse_methods(text, start, end)
    while pos < end and text[pos] in _BLANK:
        pos += 1
    url_end = scan_regex(text, pos, end, in_clause=False)
    url = text[pos : _trim_end(text, pos, url_end)]
    if not url:
        raise LocatedError(pos, "URL regex is missing; write .* to allow any path")
    url_pattern = compile_regex(url, pos, "URL regex")
    query: list[QueryClause] = []
    json: list[JsonClause] = []
    pos = url_end
    while pos < end:
        if text[pos] in _BLANK:
            pos += 1
            continue
        pos = _parse_clause(text, pos, end, query, json)
    return ParsedRule(methods, url, url_pattern, tuple(query), tuple(json))


def _trim_end(text: str, start: int, end: int) -> int:
    """Index after the last character of text[start:end] that is not surrounding blank space."""
    trimmed = start + len(text[start:end].rstrip(_BLANK))
    backslashes = trimmed - start - len(text[start:trimmed].rstrip("\\"))
    # An odd run of backslashes escapes the first blank: "a\ " ends with a literal space.
    return trimmed + 1 if backslashes % 2 and trimmed < end else trimmed


def _parse_methods(text: str, start: int, end: int) -> tuple[tuple[str, ...], int]:
    if text[start] != "[":
        return (), start
    close = start + 1
    while close < end and text[close] in _METHOD_LIST_CHARS:
        close += 1
    if close == end:
        raise LocatedError(start, "unclosed method list: missing ']' after the methods")
    if text[close] != "]":
        return (), start  # not only letters and commas: a character class of the URL regex
    if not text[start + 1 : close].strip(_BLANK):
        raise LocatedError(start, "empty method list '[]'; name at least one method, e.g. [GET]")
    methods: list[str] = []
    item_start = start + 1
    for item in text[start + 1 : close].split(","):
        name = item.strip(_BLANK)
        column = item_start + len(item) - len(item.lstrip(_BLANK))
        if not name:
            raise LocatedError(column, "empty method name in the method list")
        method = name.upper()
        if method not in METHODS:
            raise LocatedError(
                column,
                f"unknown method '{name}' (a leading [...] of letters and commas is a method "
                f"list); use {', '.join(METHODS)}",
            )
        if method not in methods:
            methods.append(method)
        item_start += len(item) + 1
    return tuple(methods), close + 1


def _parse_clause(
    text: str, start: int, end: int, query: list[QueryClause], json: list[JsonClause]
) -> int:
    head = CLAUSE_HEAD.match(text, start, end)
    if head is None:
        raise LocatedError(
            start,
            f"unexpected text {text[start:end][:20]!r} after a clause; "
            "write clauses as [QueryParam::name==regex] or [JsonData::path==regex]",
        )
    kind = _clause_kind(head, start)
    name_start = head.end()
    name_end = _scan_name(text, name_start, end, kind)
    name = text[name_start:name_end]
    if not name:
        what = "parameter name" if kind == "QueryParam" else "JSON path"
        raise LocatedError(name_start, f"empty {what} in the {kind} clause")
    source_start = name_end + 2
    close = scan_regex(text, source_start, end, in_clause=True)
    if close == end:
        raise LocatedError(start, f"unclosed {kind} clause: missing ']' at its end")
    source = text[source_start:close]
    pattern = compile_regex(source, source_start, f"{kind} regex")
    if kind == "QueryParam":
        query.append(QueryClause(name, source, pattern))
    else:
        keys = _json_keys(text, name_start, name_end)
        json.append(JsonClause(name, keys, source, pattern))
    return close + 1


def _clause_kind(head: re.Match[str], start: int) -> str:
    word, colons = head.group(1), head.group(2)
    kind = KINDS.get(word.lower())
    if kind is not None and kind == word and colons == "::":
        return kind
    if kind is not None:
        raise LocatedError(start, f"malformed clause '[{word}{colons}'; write '[{kind}::'")
    raise LocatedError(
        start, f"unknown clause '{word}'; use [QueryParam::name==regex] or [JsonData::path==regex]"
    )


def _scan_name(text: str, start: int, end: int, kind: str) -> int:
    """Return the index of the '==' that ends a parameter name or JSON path."""
    depth = 0  # brackets in names ("page[size]") are fine while they balance
    pos = start
    while pos < end:
        char = text[pos]
        if text.startswith("==", pos):
            return pos
        if char == "\\" and kind == "JsonData":
            if text[pos + 1 : pos + 2] not in (".", "\\"):
                raise LocatedError(
                    pos,
                    "bad escape in JSON path; only \\. (a dot inside a key) "
                    "and \\\\ (a backslash) are allowed",
                )
            pos += 1
        elif char == "[":
            depth += 1
        elif char == "]":
            if depth == 0:
                raise LocatedError(
                    pos, f"missing '==' in the {kind} clause; write [{kind}::name==regex]"
                )
            depth -= 1
        pos += 1
    raise LocatedError(pos, f"missing '==' in the {kind} clause; write [{kind}::name==regex]")


def _json_keys(text: str, start: int, end: int) -> tuple[tuple[str, int | None], ...]:
    keys: list[tuple[str, int | None]] = []
    key: list[str] = []
    key_start = pos = start
    while pos <= end:
        char = text[pos] if pos < end else "."
        if char == "\\":
            key.append(text[pos + 1])
            pos += 2
            continue
        if char == ".":
            if not key:
                raise LocatedError(key_start, "empty key in JSON path; write keys as a.b.c")
            joined = "".join(key)
            index = int(joined) if _INDEX.fullmatch(joined) else None
            keys.append((joined, index))
            key, key_start = [], pos + 1
        else:
            key.append(char)
        pos += 1
    return tuple(keys)
