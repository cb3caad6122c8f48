"""The request as restriction rules see it: decoded path, parsed query and JSON body.

Everything here fails closed: input that cannot be read safely yields a reason string
instead of a value, and the caller denies with that reason. Nothing raises for any
request content.

Reading the body (``_rules_body``), and formatting a JSON value for a clause, is not
charged to the regex time budget: the budget bounds regex matching, and the body's size
(``Policy.max_body_bytes``) bounds reading it.
"""

from __future__ import annotations

import json
import re
from time import monotonic
from typing import Final, final
from urllib.parse import parse_qsl, unquote, unquote_to_bytes

import regex

from apitokens._request import AuthRequest
from apitokens.rules._body import JsonNumber, JsonObject, json_media_type_problem, load_json
from apitokens.rules._bound import STEP_LIMIT_SECONDS

__all__ = [
    "BUDGET_EXCEEDED",
    "MISSING",
    "BudgetExceededError",
    "JsonNumber",
    "RequestView",
    "lookup",
    "value_texts",
]

BUDGET_EXCEEDED: Final = "regex time budget exceeded"
MAX_QUERY_FIELDS: Final = 1000
# The regex module overflows to an immediate TimeoutError on huge timeouts.
_MAX_TIMEOUT: Final = 3600.0
# Seconds a regex call may hold the GIL before it is retried without it.
GIL_SLICE: Final = 0.002

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SEPARATOR = re.compile(r"%(?:2[fF]|5[cC])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

MISSING: Final = object()


class BudgetExceededError(Exception):
    """The shared regex time budget of one match call ran out."""


@final
class RequestView:
    """One request, decoded once and shared by every rule of a match call."""

    __slots__ = (
        "_body",
        "_deadline",
        "_headers",
        "_json",
        "_query",
        "_raw_query",
        "method",
        "path",
        "path_error",
    )

    def __init__(self, request: AuthRequest, timeout: float) -> None:
        now = monotonic()
        # "not timeout > 0" also catches NaN, which regex would read as "no limit".
        if timeout > 0:
            now += timeout if timeout < _MAX_TIMEOUT else _MAX_TIMEOUT
        self._deadline = now
        method = request.method
        self.method = method.upper() if isinstance(method, str) and method.isascii() else ""
        path = request.path
        # Most paths are printable ASCII with nothing to decode and no segment starting
        # with a dot: every check decode_path() makes passes and the path is its own
        # decoding. Telling that with a few string methods saves the call and its regex
        # scans (every request). A dot segment ("." or "..", maybe with ";params")
        # begins at the start or right after a "/", so a path with neither a leading "."
        # nor a "/." has none. A property test compares this with decode_path().
        if (
            isinstance(path, str)
            and path.isascii()
            and path.isprintable()
            and "%" not in path
            and "\\" not in path
            and ("." not in path or ("/." not in path and path[:1] != "."))
        ):
            self.path = path
            self.path_error = ""
        else:
            self.path, self.path_error = decode_path(path)
        self._raw_query: object = request.query
        self._body: object = request.body
        self._headers: object = request.headers
        self._query: dict[str, list[str]] | str | None = None
        self._json: JsonObject | str | None = None

    def fullmatch(self, pattern: regex.Pattern[str], text: str, unclocked: int) -> bool:
        """Fullmatch within the budget left; raise BudgetExceededError when it runs out.

        A text no longer than ``unclocked`` is matched without the regex module's clock
        when the budget left covers the most that match can take (``_rules_bound``).
        Otherwise the first try keeps the GIL for at most :data:`GIL_SLICE` seconds; a
        match that needs longer starts again with the GIL released, in what is left of
        the budget.
        """
        remaining = self._deadline - monotonic()
        if remaining <= 0:
            raise BudgetExceededError
        # Positional: (string, pos, endpos, concurrent, partial, timeout). Keyword
        # arguments cost the regex module half a microsecond a call to parse.
        # concurrent=False keeps the GIL. By default the module lets it go for every
        # call, and with another thread waiting for it (the audit writer, a server's
        # other threads) each request then waits to get it back: a match of 1 µs cost
        # 20 to 500 µs that way in this machine's tests. Almost every match takes
        # microseconds, so it holds the GIL; only a slow one (a pathological pattern
        # or input) would stall the other threads, so that one gives the GIL up.
        if len(text) <= unclocked and remaining >= STEP_LIMIT_SECONDS:
            # Its steps are bounded, and the budget left covers them: the clock's two
            # system calls would cost more than the match.
            return pattern.fullmatch(text, None, None, False) is not None
        try:
            return (
                pattern.fullmatch(text, None, None, False, False, min(remaining, GIL_SLICE))
                is not None
            )
        except TimeoutError:
            if remaining <= GIL_SLICE:
                raise BudgetExceededError from None
        remaining = self._deadline - monotonic()
        if remaining <= 0:
            raise BudgetExceededError
        try:
            return pattern.fullmatch(text, None, None, True, False, remaining) is not None
        except TimeoutError:
            raise BudgetExceededError from None

    def query(self) -> dict[str, list[str]] | str:
        """The query parameters (name -> every value), or why they cannot be read."""
        if self._query is None:
            self._query = _parse_query(self._raw_query)
        return self._query

    def json(self) -> JsonObject | str:
        """The JSON body object, or why the body is not one (its Content-Type too).

        The time this takes is not charged to the regex budget.
        """
        if self._json is None:
            started = monotonic()
            self._json = json_media_type_problem(self._headers) or load_json(self._body)
            self._deadline += monotonic() - started
        return self._json

    def texts(self, value: object) -> list[str] | None:
        """:func:`value_texts` of ``value``; the time it takes is not charged to the budget.

        Raises:
            RecursionError: an object inside the value is nested too deeply to format.
        """
        if isinstance(value, str):  # most values: nothing to format, no clock to read
            return [value]
        started = monotonic()
        try:
            return value_texts(value)
        finally:
            self._deadline += monotonic() - started


def decode_path(raw: object) -> tuple[str, str]:
    """Percent-decode a path exactly once: (decoded, "") or ("", reason to deny)."""
    if not isinstance(raw, str):
        return "", "path is not a string"
    decoded = raw
    try:
        if "%" in raw:
            if _BAD_ESCAPE.search(raw):
                return "", "path has a malformed percent-escape"
            if _ENCODED_SEPARATOR.search(raw):
                return "", "path contains an encoded slash or backslash"
            decoded = unquote_to_bytes(raw).decode("utf-8")
        elif not raw.isascii():
            raw.encode("utf-8")  # lone surrogates cannot have come from a real request
    except UnicodeError:
        return "", "path is not valid UTF-8"
    reason = _unsafe(decoded)
    if reason:
        return "", reason
    if "%" in decoded:
        # A server behind us that decodes again must not find a separator or ".." either.
        again = unquote(decoded, errors="surrogateescape")
        if again != decoded and (again.count("/") != decoded.count("/") or _unsafe(again)):
            return "", "path is encoded twice to hide a slash, dot segment or control character"
    return decoded, ""


def _unsafe(path: str) -> str:
    if _CONTROL.search(path):
        return "path contains a NUL or control character"
    if "\\" in path:
        return "path contains a backslash"
    # ";" starts path parameters that some servers drop: "/..;x/" is a ".." for them.
    if "." in path and any(part.split(";", 1)[0] in (".", "..") for part in path.split("/")):
        return "path contains a dot segment"
    return ""


def _parse_query(raw: object) -> dict[str, list[str]] | str:
    if not isinstance(raw, str):
        return "query string is not a string"
    try:
        pairs = parse_qsl(
            raw,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except UnicodeError:
        return "query string is not valid UTF-8"
    except ValueError:
        return f"query string has more than {MAX_QUERY_FIELDS} parameters"
    params: dict[str, list[str]] = {}
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    return params


def lookup(root: JsonObject, keys: tuple[tuple[str, int | None], ...]) -> object:
    """The value at a parsed JSON path, or MISSING."""
    value: object = root
    for key, index in keys:
        if isinstance(value, dict):
            if key not in value:
                return MISSING
            value = value[key]
        elif isinstance(value, list) and index is not None and index < len(value):
            value = value[index]
        else:
            return MISSING
    return value


def value_texts(value: object) -> list[str] | None:
    """The texts a JsonData regex must all match; None if an array (at any depth) is empty.

    Raises:
        RecursionError: an object inside the value is nested too deeply to format.
    """
    texts: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            if not item:
                return None
            stack.extend(reversed(item))
        elif isinstance(item, str):
            texts.append(item)
        else:
            texts.append(_compact(item))
    return texts


def _compact(value: object) -> str:
    """Compact JSON text with sorted keys; numbers keep the text they were written with."""
    if isinstance(value, JsonNumber):
        return value.decode()
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        items = (f"{json.dumps(key)}:{_compact(value[key])}" for key in sorted(value))
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_compact(item) for item in value) + "]"
    return "true" if value is True else "false" if value is False else "null"
