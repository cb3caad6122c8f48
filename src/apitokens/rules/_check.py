"""Checking one request against one rule, as ``apitokens rule check`` and the token pages do."""

from __future__ import annotations

from apitokens._request import AuthRequest
from apitokens.rules._match import DEFAULT_RULE_TIMEOUT, Deadline, RuleMatch
from apitokens.rules._rule import RestrictionRule

__all__ = ["check_request"]


def check_request(
    rule: RestrictionRule,
    method: str,
    path: str,
    *,
    query: str | None = None,
    body: bytes = b"",
    timeout: float | Deadline = DEFAULT_RULE_TIMEOUT,
) -> RuleMatch:
    """Tell whether a request matches ``rule`` and, if not, which part failed.

    The one reading of a test request that the command line's ``rule check`` and
    the token pages' rule tester share, so that both always give the same answer.

    Args:
        rule: the parsed rule.
        method: the request's HTTP method.
        path: the path, percent-encoded as sent; a ``?query`` in it is the query
            unless ``query`` is given.
        query: the raw query string, without ``?``.
        body: the request body, read as JSON (``JsonData`` clauses read only a
            JSON ``Content-Type``, and the body a tester types is JSON).
        timeout: the regex budget (seconds), or a :class:`Deadline` shared by the
            checks of one test request against several rules.
    """
    if query is None:
        path, _, query = path.partition("?")
    headers = [("content-type", "application/json")]
    request = AuthRequest(method, path, query=query, headers=headers, body=body)
    return rule.explain(request, timeout=timeout)
