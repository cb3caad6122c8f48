"""A restriction rule (DESIGN §3): one line, parsed, in its canonical form.

A rule is an optional method list, a URL regex that must fullmatch the decoded request
path, and QueryParam / JsonData clauses::

    [GET,HEAD].*/rest/api/2/search[QueryParam::jql==project = JRA.*]

The grammar is read by ``_syntax``; matching a request is ``_match``'s. Every regex uses
the ``regex`` module in VERSION0 syntax, compiled once when the rule is parsed.
"""

from __future__ import annotations

from typing import Any, final

from apitokens._errors import RuleSyntaxError
from apitokens._request import AuthRequest
from apitokens.rules._match import (
    BUDGET_EXCEEDED,
    DEFAULT_RULE_TIMEOUT,
    MATCHED,
    BudgetExceededError,
    Deadline,
    RequestView,
    RuleMatch,
    failure,
)
from apitokens.rules._syntax import ParsedRule, parse_rule

__all__ = ["RestrictionRule"]


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

    def explain(
        self, request: AuthRequest, *, timeout: float | Deadline = DEFAULT_RULE_TIMEOUT
    ) -> RuleMatch:
        """Like :meth:`matches`, and say which part failed.

        Args:
            request: the request; ``path`` still percent-encoded.
            timeout: seconds all regex matching of this call may take together, or
                a :class:`Deadline` shared with other calls (one budget for all).

        Returns:
            ``RuleMatch(True, "")`` or ``RuleMatch(False, reason)``.
        """
        deadline = timeout if isinstance(timeout, Deadline) else Deadline(timeout)
        view = RequestView(request, deadline)
        if view.path_error:
            return RuleMatch(False, view.path_error)
        try:
            found = failure(self._parsed, view)
        except BudgetExceededError:
            return RuleMatch(False, BUDGET_EXCEEDED)
        return MATCHED if found is None else RuleMatch(False, found[1])
