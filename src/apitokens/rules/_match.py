"""Matching a request: the request as rules see it, the time budget, and one rule's verdict.

Everything here fails closed: input that cannot be read safely yields a reason string
instead of a value, and the caller denies with that reason. Nothing raises for any
request content.

Every regex match runs with the ``regex`` module's ``timeout``, against one deadline
(:class:`Deadline`) that every match call for one request shares. Reading the body
(``_body``), and formatting a JSON value for a clause, is not charged to it: the budget
bounds regex matching, and the body's size (``Policy.max_body_bytes``) bounds reading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic
from typing import Final, final
from urllib.parse import parse_qsl

import regex

from apitokens._request import AuthRequest, shown_method
from apitokens.rules._body import (
    MISSING,
    JsonObject,
    json_media_type_problem,
    load_json,
    lookup,
    value_texts,
)
from apitokens.rules._path import decode_path
from apitokens.rules._syntax import ParsedRule

__all__ = [
    "AT_PATH",
    "BUDGET_EXCEEDED",
    "DEFAULT_RULE_TIMEOUT",
    "MATCHED",
    "BudgetExceededError",
    "Deadline",
    "NeedsThreadError",
    "RequestView",
    "RuleMatch",
    "failure",
    "method_failure",
    "path_reason",
]

DEFAULT_RULE_TIMEOUT: Final = 0.05
"""Seconds of regex matching one request may spend (``Policy.rule_timeout``)."""
BUDGET_EXCEEDED: Final = "regex time budget exceeded"
MAX_QUERY_FIELDS: Final = 1000
# The regex module overflows to an immediate TimeoutError on huge timeouts.
_MAX_TIMEOUT: Final = 3600.0
# Seconds a regex call may hold the GIL before it is retried without it.
GIL_SLICE: Final = 0.002

# How far a rule got before it failed: the furthest failure best explains a denial.
AT_METHOD, AT_PATH, AT_QUERY, AT_JSON = range(4)


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """The outcome of matching a request against rules.

    Attributes:
        matched: whether the request is allowed.
        reason: ``""`` when matched; otherwise a short sentence naming what failed,
            e.g. ``"method POST not in [GET]"``, for the audit log.

    A ``RuleMatch`` is truthy exactly when ``matched`` is, so ``if rules.match(r):``
    cannot allow a denied request by accident.
    """

    matched: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.matched


MATCHED: Final = RuleMatch(True)


class BudgetExceededError(Exception):
    """The regex time budget of a request ran out."""


class NeedsThreadError(Exception):
    """A match needs more than a slice of time, on a thread that must not wait for it.

    Raised with a :class:`Deadline` made ``on_loop``: the caller decides again on a
    worker thread (where the match may take the rest of the budget), so a slow rule
    never holds an event loop for more than :data:`GIL_SLICE`.
    """


@final
class Deadline:
    """The regex matching budget of one request: one budget for every match call.

    Pass the same deadline to each ``RuleSet.match`` made for one request (the request
    as sent and as each method-override header makes it), so all of them together spend
    at most ``timeout`` seconds matching. Only the time inside the regex calls is
    charged: a request thread that waits (for the GIL, for a core on a loaded host,
    for the body to be parsed) between matches keeps its budget, so a good request is
    never refused for the host's load.

    Args:
        timeout: seconds of matching; zero, negative or NaN leaves no time at all.
        on_loop: the matching runs on an event loop: a match that needs more than
            :data:`GIL_SLICE` raises :class:`NeedsThreadError` instead of going on.
    """

    __slots__ = ("left", "on_loop")

    def __init__(self, timeout: float, *, on_loop: bool = False) -> None:
        self.on_loop = on_loop
        # "not timeout > 0" also catches NaN, which regex would read as "no limit".
        self.left = (timeout if timeout < _MAX_TIMEOUT else _MAX_TIMEOUT) if timeout > 0 else 0.0


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
        "_texts",
        "method",
        "path",
        "path_error",
    )

    def __init__(self, request: AuthRequest, deadline: Deadline) -> None:
        self._deadline = deadline
        method = request.method
        self.method = method.upper() if isinstance(method, str) and method.isascii() else ""
        self.path, self.path_error = decode_path(request.path)
        self._raw_query: object = request.query
        self._body: object = request.body
        self._headers: object = request.headers
        self._query: dict[str, list[str]] | str | None = None
        self._json: JsonObject | str | None = None
        self._texts: dict[int, list[str] | None] = {}  # by id() of a value of _json

    def fullmatch(self, pattern: regex.Pattern[str], text: str) -> bool:
        """Fullmatch within the budget left; raise BudgetExceededError when it runs out.

        The first try keeps the GIL for at most :data:`GIL_SLICE` seconds; a match that
        needs longer starts again with the GIL released, in what is left of the budget.
        The time the call takes is charged to the request's :class:`Deadline`.
        """
        deadline = self._deadline
        remaining = deadline.left
        if remaining <= 0:
            raise BudgetExceededError
        started = monotonic()
        # Positional: (string, pos, endpos, concurrent, partial, timeout). Keyword
        # arguments cost the regex module half a microsecond a call to parse.
        # concurrent=False keeps the GIL. By default the module lets it go for every
        # call, and with another thread waiting for it (the audit writer, a server's
        # other threads) each request then waits to get it back: a match of 1 µs cost
        # 20 to 500 µs that way in this machine's tests. Almost every match takes
        # microseconds, so it holds the GIL; only a slow one (a pathological pattern
        # or input) would stall the other threads, so that one gives the GIL up.
        try:
            try:
                return (
                    pattern.fullmatch(text, None, None, False, False, min(remaining, GIL_SLICE))
                    is not None
                )
            except TimeoutError:
                if remaining <= GIL_SLICE:
                    raise BudgetExceededError from None
                if deadline.on_loop:
                    raise NeedsThreadError from None
            left = remaining - (monotonic() - started)
            if left <= 0:
                raise BudgetExceededError
            try:
                return pattern.fullmatch(text, None, None, True, False, left) is not None
            except TimeoutError:
                raise BudgetExceededError from None
        finally:
            deadline.left = remaining - (monotonic() - started)

    def query(self) -> dict[str, list[str]] | str:
        """The query parameters (name -> every value), or why they cannot be read."""
        if self._query is None:
            self._query = _parse_query(self._raw_query)
        return self._query

    def json(self) -> JsonObject | str:
        """The JSON body object, or why the body is not one (its Content-Type too).

        The time this takes is not charged to the regex budget (no regex call).
        """
        if self._json is None:
            self._json = json_media_type_problem(self._headers) or load_json(self._body)
        return self._json

    def texts(self, value: object) -> list[str] | None:
        """``value_texts`` of ``value``; the time it takes is not charged to the budget.

        Each value of the body is formatted once per request, however many clauses
        (rules, method overrides) look at it: the body's size bounds the work.

        Raises:
            RecursionError: an object inside the value is nested too deeply to format.
        """
        if isinstance(value, str):  # most values: nothing to format, no clock to read
            return [value]
        key = id(value)  # the value lives in self._json, so its id is not reused
        if key in self._texts:
            return self._texts[key]
        texts = self._texts[key] = value_texts(value)
        return texts


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


def method_failure(rule: ParsedRule, view: RequestView) -> tuple[int, str] | None:
    """Why ``rule`` does not allow the request's method, or None if it does."""
    if rule.methods and view.method not in rule.methods:
        return AT_METHOD, f"method {shown_method(view.method)} not in [{','.join(rule.methods)}]"
    return None


def path_reason(rule: ParsedRule) -> str:
    """The reason given when ``rule``'s URL regex does not match the path."""
    return f"path does not match '{rule.url}'"


def failure(rule: ParsedRule, view: RequestView) -> tuple[int, str] | None:
    """Why ``rule`` does not match (how far it got, reason), or None if it matches.

    Raises:
        BudgetExceededError: the shared time budget ran out.
    """
    found = method_failure(rule, view)
    if found is not None:
        return found
    if not view.fullmatch(rule.url_pattern, view.path):
        return AT_PATH, path_reason(rule)
    if rule.query:
        params = view.query()
        if isinstance(params, str):
            return AT_QUERY, params
        for clause in rule.query:
            values = params.get(clause.name)
            if values is None:
                return AT_QUERY, f"query parameter '{clause.name}' is missing"
            for item in values:
                if not view.fullmatch(clause.pattern, item):
                    return (
                        AT_QUERY,
                        f"query parameter '{clause.name}' does not match '{clause.source}'",
                    )
    if rule.json:
        root = view.json()
        if isinstance(root, str):
            return AT_JSON, root
        for json_clause in rule.json:
            value = lookup(root, json_clause.keys)
            if value is MISSING:
                return AT_JSON, f"JSON value '{json_clause.path}' is missing"
            try:
                texts = view.texts(value)
            except RecursionError:
                return AT_JSON, "JSON body is nested too deeply"
            if texts is None:
                return AT_JSON, f"JSON value '{json_clause.path}' is an empty array"
            for text in texts:
                if not view.fullmatch(json_clause.pattern, text):
                    return (
                        AT_JSON,
                        f"JSON value '{json_clause.path}' does not match '{json_clause.source}'",
                    )
    return None
