"""Restriction rules (DESIGN §3): which requests a token may make.

A rule is one line: an optional method list, a URL regex that must fullmatch the
decoded request path, and QueryParam / JsonData clauses::

    [GET,HEAD].*/rest/api/2/search[QueryParam::jql==project = JRA.*]

Parsing lives in ``_rules_syntax``, request decoding in ``_rules_match``; this module
is the public surface and the matching decision. Every regex uses the ``regex`` module
in VERSION0 syntax, compiled once when the rule is parsed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, final

from apitokens._errors import RuleSyntaxError
from apitokens._request import AuthRequest
from apitokens.rules._body import json_media_type_problem
from apitokens.rules._combine import CombinedMatcher, combinable
from apitokens.rules._match import (
    BUDGET_EXCEEDED,
    MISSING,
    BudgetExceededError,
    RequestView,
    lookup,
)
from apitokens.rules._syntax import ParsedRule, parse_rule

__all__ = ["DEFAULT_RULE_TIMEOUT", "RestrictionRule", "RuleMatch", "RuleSet"]

DEFAULT_RULE_TIMEOUT: Final = 0.05
"""Seconds of regex matching one match call may spend (``Policy.rule_timeout``)."""

# How far a rule got before it failed: the furthest failure best explains a denial.
_AT_METHOD, _AT_PATH, _AT_QUERY, _AT_JSON = range(4)


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


_MATCHED: Final = RuleMatch(True)


@final
class RestrictionRule:
    """One parsed restriction rule; immutable, hashable, equal by parsed content.

    Create rules with :meth:`parse` (``RestrictionRule(text)`` does the same).

    Attributes:
        methods: allowed methods, upper-case, deduplicated, in the order given;
            ``()`` allows any method.
        url: the URL regex source, fullmatched against the decoded path.
        query: ``(parameter name, regex source)`` pairs, in the order given.
        json: ``(dotted path as written, regex source)`` pairs, in the order given.
    """

    __slots__ = ("_key", "_parsed", "_text", "json", "methods", "query", "url")

    methods: tuple[str, ...]
    url: str
    query: tuple[tuple[str, str], ...]
    json: tuple[tuple[str, str], ...]
    _parsed: ParsedRule
    _key: tuple[object, ...]
    _text: str

    def __init__(self, text: str) -> None:
        """Parse ``text``; see :meth:`parse`."""
        if not isinstance(text, str):
            raise RuleSyntaxError(repr(text), 1, f"a rule must be a str, not {type(text).__name__}")
        parsed = parse_rule(text)
        query = tuple((clause.name, clause.source) for clause in parsed.query)
        json = tuple((clause.path, clause.source) for clause in parsed.json)
        parts = (f"[{','.join(parsed.methods)}]" if parsed.methods else "", parsed.url)
        clauses = [f"[QueryParam::{name}=={source}]" for name, source in query]
        clauses += [f"[JsonData::{path}=={source}]" for path, source in json]
        setattr_ = object.__setattr__
        setattr_(self, "methods", parsed.methods)
        setattr_(self, "url", parsed.url)
        setattr_(self, "query", query)
        setattr_(self, "json", json)
        setattr_(self, "_parsed", parsed)
        setattr_(self, "_key", (parsed.methods, parsed.url, query, json))
        setattr_(self, "_text", "".join(parts) + "".join(clauses))

    @classmethod
    def parse(cls, text: str) -> RestrictionRule:
        """Parse one rule and compile its regexes.

        Args:
            text: one rule, e.g. ``"[post].*/rest/api/2/issue/KANBAN-100/comment.*"``.
                Spaces and tabs around the rule, after the method list, and around
                clauses are ignored.

        Returns:
            The rule. ``RestrictionRule.parse(str(rule)) == rule``.

        Raises:
            RuleSyntaxError: the text is not a valid rule; ``.column`` (1-based) says
                where in ``text``, ``.reason`` what is wrong.
        """
        return cls(text)

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"RestrictionRule({self._text!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RestrictionRule):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"RestrictionRule is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"RestrictionRule is immutable; cannot delete {name!r}")

    def __reduce__(self) -> tuple[type[RestrictionRule], tuple[str]]:
        return (type(self), (self._text,))

    def matches(self, request: AuthRequest, *, timeout: float = DEFAULT_RULE_TIMEOUT) -> bool:
        """Tell whether this rule allows ``request``; never raises for any request.

        Args:
            request: the request; ``path`` still percent-encoded.
            timeout: seconds all regex matching of this call may take together;
                running out denies.

        Returns:
            ``True`` if the rule matches, ``False`` otherwise and in every
            fail-closed case (unsafe path, unreadable query or body, time budget).
        """
        return self.explain(request, timeout=timeout).matched

    def explain(self, request: AuthRequest, *, timeout: float = DEFAULT_RULE_TIMEOUT) -> RuleMatch:
        """Like :meth:`matches`, and say which part failed.

        Args:
            request: the request; ``path`` still percent-encoded.
            timeout: seconds all regex matching of this call may take together.

        Returns:
            ``RuleMatch(True, "")`` or ``RuleMatch(False, reason)``.
        """
        view = RequestView(request, timeout)
        if view.path_error:
            return RuleMatch(False, view.path_error)
        try:
            failure = _failure(self._parsed, view)
        except BudgetExceededError:
            return RuleMatch(False, BUDGET_EXCEEDED)
        return _MATCHED if failure is None else RuleMatch(False, failure[1])


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules of one token, compiled once: a request is allowed if any rule matches.

    An empty rule set allows every request. The URL regexes of rules without clauses
    are also joined, per method, into one pattern (see ``_rules_combine``), so a request
    costs about one regex call however many such rules the token has.

    Attributes:
        rules: the rules, in order.
        needs_body: whether any rule has a JsonData clause, i.e. whether the
            request body must be read before matching.
    """

    rules: tuple[RestrictionRule, ...] = ()
    needs_body: bool = field(init=False)
    _combined: CombinedMatcher = field(init=False, repr=False, compare=False)
    _individual: tuple[tuple[int, ParsedRule], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rules = tuple(self.rules)
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "needs_body", any(rule.json for rule in rules))
        parsed = [(index, rule._parsed) for index, rule in enumerate(rules)]
        combined = [(index, rule) for index, rule in parsed if combinable(rule)]
        individual = tuple((index, rule) for index, rule in parsed if not combinable(rule))
        object.__setattr__(self, "_combined", CombinedMatcher(combined))
        object.__setattr__(self, "_individual", individual)

    def __reduce__(self) -> tuple[type[RuleSet], tuple[tuple[RestrictionRule, ...]]]:
        return (type(self), (self.rules,))

    @classmethod
    def parse(cls, lines: Iterable[str]) -> RuleSet:
        """Parse one rule per item; blank and whitespace-only items are skipped.

        Args:
            lines: the rules. A single ``str`` is read as text with one rule per line.

        Returns:
            The compiled rule set.

        Raises:
            RuleSyntaxError: an item is not a valid rule. ``.reason`` starts with
                ``"rule N: "`` (N counts items from 1, blank ones included) and
                ``.column`` is relative to that item.
        """
        items = lines.splitlines() if isinstance(lines, str) else lines
        rules: list[RestrictionRule] = []
        for number, line in enumerate(items, 1):
            if isinstance(line, str) and not line.strip():
                continue
            try:
                rules.append(RestrictionRule.parse(line))
            except RuleSyntaxError as exc:
                raise RuleSyntaxError(
                    exc.rule, exc.column, f"rule {number}: {exc.reason}"
                ) from None
        return cls(tuple(rules))

    def reads_body(self, request: AuthRequest) -> bool:
        """Whether matching ``request`` reads its body.

        True when a rule has a JsonData clause (:attr:`needs_body`) and the request's
        ``Content-Type`` is JSON. Otherwise every JsonData clause fails on the
        ``Content-Type`` alone, whatever the body: it need not be read, nor held to
        ``max_body_bytes``.
        """
        return self.needs_body and not json_media_type_problem(request.headers)

    def match(self, request: AuthRequest, *, timeout: float = DEFAULT_RULE_TIMEOUT) -> RuleMatch:
        """Decide whether any rule allows ``request``; never raises for any request.

        The request is decoded once for all rules, and ``timeout`` is one budget for
        the whole call.

        Args:
            request: the request; ``path`` still percent-encoded, ``body`` read if
                :attr:`needs_body`.
            timeout: seconds all regex matching of this call may take together;
                running out denies.

        Returns:
            ``RuleMatch(True, "")`` if a rule matches (or there are none); otherwise
            the reason of the rule that got furthest, e.g.
            ``"no rule matched; rule 2: query parameter 'x' is missing"``.
        """
        if not self.rules:
            return _MATCHED
        view = RequestView(request, timeout)
        if view.path_error:
            return RuleMatch(False, view.path_error)
        try:
            for pattern, unclocked in self._combined.patterns(view.method):
                if view.fullmatch(pattern, view.path, unclocked):
                    return _MATCHED
            failures: dict[int, tuple[int, str]] = {}  # made only once a match failed
            for index, rule in self._individual:
                failure = _failure(rule, view)
                if failure is None:
                    return _MATCHED
                failures[index] = failure
        except BudgetExceededError:
            return RuleMatch(False, BUDGET_EXCEEDED)
        # Denied. A combined rule failed on its method or, since its method was tried
        # and nothing matched, on its path: say which without matching again.
        for index, rule in self._combined.rules:
            failures[index] = _method_failure(rule, view) or (_AT_PATH, _path_reason(rule))
        best: tuple[int, int, str] | None = None
        for index in range(len(self.rules)):
            failure = failures[index]
            if best is None or failure[0] > best[0]:
                best = (failure[0], index + 1, failure[1])
        assert best is not None
        return RuleMatch(False, f"no rule matched; rule {best[1]}: {best[2]}")


def _method_failure(rule: ParsedRule, view: RequestView) -> tuple[int, str] | None:
    if rule.methods and view.method not in rule.methods:
        shown = view.method if view.method.isalpha() and len(view.method) <= 16 else "(invalid)"
        return _AT_METHOD, f"method {shown} not in [{','.join(rule.methods)}]"
    return None


def _path_reason(rule: ParsedRule) -> str:
    return f"path does not match '{rule.url}'"


def _failure(rule: ParsedRule, view: RequestView) -> tuple[int, str] | None:
    """Why ``rule`` does not match (how far it got, reason), or None if it matches.

    Raises:
        BudgetExceededError: the shared time budget ran out.
    """
    method_failure = _method_failure(rule, view)
    if method_failure is not None:
        return method_failure
    if not view.fullmatch(rule.url_pattern, view.path, rule.url_unclocked):
        return _AT_PATH, _path_reason(rule)
    if rule.query:
        params = view.query()
        if isinstance(params, str):
            return _AT_QUERY, params
        for clause in rule.query:
            values = params.get(clause.name)
            if values is None:
                return _AT_QUERY, f"query parameter '{clause.name}' is missing"
            for item in values:
                if not view.fullmatch(clause.pattern, item, clause.unclocked):
                    return (
                        _AT_QUERY,
                        f"query parameter '{clause.name}' does not match '{clause.source}'",
                    )
    if rule.json:
        root = view.json()
        if isinstance(root, str):
            return _AT_JSON, root
        for json_clause in rule.json:
            value = lookup(root, json_clause.keys)
            if value is MISSING:
                return _AT_JSON, f"JSON value '{json_clause.path}' is missing"
            try:
                texts = view.texts(value)
            except RecursionError:
                return _AT_JSON, "JSON body is nested too deeply"
            if texts is None:
                return _AT_JSON, f"JSON value '{json_clause.path}' is an empty array"
            for text in texts:
                if not view.fullmatch(json_clause.pattern, text, json_clause.unclocked):
                    return (
                        _AT_JSON,
                        f"JSON value '{json_clause.path}' does not match '{json_clause.source}'",
                    )
    return None
