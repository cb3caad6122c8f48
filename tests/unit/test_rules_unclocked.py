"""Which matches skip the regex module's clock, and that the budget still holds."""

from __future__ import annotations

from typing import Any

import pytest
import regex

from apitokens._request import AuthRequest
from apitokens.rules._bound import STEP_LIMIT_SECONDS, UNBOUNDED, max_unclocked_length
from apitokens.rules._match import RequestView
from apitokens.rules._rule import RuleSet
from apitokens.rules._syntax import parse_rule

RULE = ".*/rest/api/2/issue/[A-Z]+-[0-9]+"


class Recording:
    """A real compiled pattern that remembers the arguments of each fullmatch."""

    def __init__(self, source: str) -> None:
        self.pattern = regex.compile(source, regex.VERSION0)
        self.calls: list[tuple[Any, ...]] = []

    def fullmatch(self, *args: Any) -> regex.Match[str] | None:
        self.calls.append(args)
        return self.pattern.fullmatch(*args)


def clocked(pattern: Recording) -> bool:
    """Whether the last call passed a timeout (the module then reads the clock)."""
    args = pattern.calls[-1]
    return len(args) > 5 and args[5] is not None


def view(timeout: float = 0.05) -> RequestView:
    return RequestView(AuthRequest("GET", "/"), timeout)


def test_a_bounded_pattern_on_a_short_text_is_matched_without_the_clock() -> None:
    pattern = Recording(RULE)
    limit = max_unclocked_length(RULE)
    assert limit > 100
    assert view().fullmatch(pattern, "/rest/api/2/issue/JRA-1", limit)  # type: ignore[arg-type]
    assert not clocked(pattern)
    assert not view().fullmatch(pattern, "/rest/api/2/issue/JRA-x", limit)  # type: ignore[arg-type]
    assert not clocked(pattern)


def test_a_text_longer_than_the_bound_is_matched_with_the_clock() -> None:
    pattern = Recording(RULE)
    limit = max_unclocked_length(RULE)
    text = "/x" * limit + "/rest/api/2/issue/JRA-1"
    assert view().fullmatch(pattern, text, limit)  # type: ignore[arg-type]
    assert clocked(pattern)


def test_an_unbounded_pattern_is_always_matched_with_the_clock() -> None:
    pattern = Recording("/x/(a|aa)+")
    assert max_unclocked_length("/x/(a|aa)+") == UNBOUNDED
    assert view().fullmatch(pattern, "/x/aa", UNBOUNDED)  # type: ignore[arg-type]
    assert clocked(pattern)


def test_a_budget_too_small_for_the_bound_is_matched_with_the_clock() -> None:
    pattern = Recording(RULE)
    limit = max_unclocked_length(RULE)
    small = view(STEP_LIMIT_SECONDS / 2)
    assert small.fullmatch(pattern, "/rest/api/2/issue/JRA-1", limit)  # type: ignore[arg-type]
    assert clocked(pattern)


def test_rules_carry_the_bounds_of_their_patterns() -> None:
    parsed = parse_rule(f"[GET]{RULE}[QueryParam::q==[a-z]+][JsonData::a==(x|x)*]")
    assert parsed.url_unclocked == max_unclocked_length(RULE)
    assert parsed.query[0].unclocked == max_unclocked_length("[a-z]+") > 0
    assert parsed.json[0].unclocked == UNBOUNDED


def test_a_combined_pattern_carries_the_bound_of_the_joined_source() -> None:
    rules = RuleSet.parse([".*/a/[0-9]+", ".*/b/.*"])
    [(pattern, unclocked)] = rules._combined.patterns("GET")
    assert pattern.pattern == "(?:.*/a/[0-9]+)|(?:.*/b/.*)"
    assert unclocked == max_unclocked_length(pattern.pattern) > 100


@pytest.mark.parametrize(
    ("path", "allowed"),
    [("/rest/api/2/issue/JRA-1", True), ("/rest/api/2/issue/JRA-", False), ("/other", False)],
)
def test_unclocked_matching_decides_as_before(path: str, allowed: bool) -> None:
    # The same rules decided with the clock everywhere: a budget below STEP_LIMIT_SECONDS.
    rules = RuleSet.parse([RULE, ".*/b/[a-z]+[QueryParam::q==[0-9]+]"])
    request = AuthRequest("GET", path)
    assert rules.match(request).matched is allowed
    assert rules.match(request, timeout=STEP_LIMIT_SECONDS / 2).matched is allowed
