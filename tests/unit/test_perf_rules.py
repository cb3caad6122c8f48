"""Joined rules: one regex call for all clause-free rules, within the one time budget."""

from __future__ import annotations

import pytest

from apitokens._request import AuthRequest
from apitokens.rules import Deadline, RuleMatch, RuleSet
from apitokens.rules import _match as _rules_match


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_joined_rules_are_one_regex_call_within_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each clock read advances one second, and a regex call reads it before and after:
    # fifty clause-free rules are one call, charged one second of a 1.5 s budget...
    monkeypatch.setattr(_rules_match, "monotonic", FakeClock())
    rules = RuleSet.parse([f"/{i}" for i in range(50)])
    deadline = Deadline(1.5)
    assert rules.match(AuthRequest("GET", "/49"), timeout=deadline).matched
    assert deadline.left == pytest.approx(0.5)
    # ... and a budget that is spent denies.
    exceeded = RuleMatch(False, "regex time budget exceeded")
    assert rules.match(AuthRequest("GET", "/49"), timeout=Deadline(0.0)) == exceeded


def test_joined_rules_explain_a_denial_like_rules_one_by_one() -> None:
    rules = RuleSet.parse(["[GET]/a", "[POST]/b", "/c[QueryParam::q==1]"])
    assert rules.match(AuthRequest("PUT", "/c", query="q=2")) == RuleMatch(
        False, "no rule matched; rule 3: query parameter 'q' does not match '1'"
    )
    assert rules.match(AuthRequest("POST", "/x")) == RuleMatch(
        False, "no rule matched; rule 2: path does not match '/b'"
    )
    assert rules.match(AuthRequest("DELETE", "/a")) == RuleMatch(
        False, "no rule matched; rule 3: path does not match '/c'"
    )


def test_joined_patterns_are_compiled_with_the_rule_set_not_on_first_request() -> None:
    # Compiling a large joined pattern takes longer than a request's budget; it must
    # happen when the rule set is built (off the event loop), never inside match().
    rules = RuleSet.parse([f"/rest/api/2/issue/N{i}-[0-9]+/comment/.*" for i in range(400)])
    for method in ("GET", "POST", "PROPFIND"):
        request = AuthRequest(method, "/rest/api/2/issue/N399-1/comment/x")
        assert rules.match(request, timeout=0.05).matched, method
