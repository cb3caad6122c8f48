"""The combined rule matcher agrees with matching the rules one by one.

``RuleSet.match`` joins the URL regexes of clause-free rules into one pattern per
method (``rules._combine``). These properties compare it with the plain algorithm:
every rule in order, the first match allows, otherwise the reason of the rule that got
furthest. Rules are built from pieces that include every construct the combiner must
refuse (inline flags, backreferences, named groups, verbs, ``\\K``, fuzzy matching).
"""

from __future__ import annotations

from urllib.parse import urlencode

import regex
from hypothesis import example, given
from hypothesis import strategies as st

from apitokens._request import AuthRequest
from apitokens.rules import Deadline, RuleMatch, RuleSet
from apitokens.rules._combine import CombinedMatcher, combinable
from apitokens.rules._match import (
    AT_METHOD,
    BUDGET_EXCEEDED,
    BudgetExceededError,
    RequestView,
    failure,
)
from apitokens.rules._syntax import METHODS, parse_rule

TIMEOUT = 30.0

PIECES = [
    "/",
    "a",
    "b",
    "A",
    "api",
    "/rest",
    ".*",
    ".+",
    "[a-z]+",
    "[^/]*",
    "[A-Z]",
    "(a|b)",
    "(a|ab)",
    "(?:/x)?",
    "a*+",
    "(?>a+)",
    "(?=a)",
    "(?!b)",
    "(?<=/)",
    "\\d",
    "[0-9]{2}",
    "$",
    "^",
    "\\Z",
    "(?i:a)",
    "(?i)",
    "(?i)a",
    "(a)\\1",
    "(?P<n>a)(?P=n)",
    "(?<m>b)",
    "(*PRUNE)",
    "(*SKIP)(*FAIL)|",
    "a\\K",
    "(?:ab){e<=1}",
    "(?|(a)|(b))",
    "(?(1)a|b)",
    "(?#c)",
    "(?s)",
]
PATH_PARTS = ["/", "a", "b", "A", "B", "ab", "api", "rest", "x", "12", "é", "%41", "%2F", "."]

piece_regex = st.lists(st.sampled_from(PIECES), min_size=1, max_size=5).map("".join)
methods = st.lists(st.sampled_from(["GET", "post", "PUT", "head"]), max_size=2, unique=True)
clause = st.sampled_from(["", "", "", "[QueryParam::q==a.*]", "[QueryParam::q==b]"])


@st.composite
def rule_texts(draw: st.DrawFn) -> str:
    chosen = draw(methods)
    return (f"[{','.join(chosen)}]" if chosen else "") + draw(piece_regex) + draw(clause)


def valid(texts: list[str]) -> list[str]:
    """The texts, each that does not parse (the pieces can make bad regexes) made literal."""
    result = []
    for text in texts:
        try:
            parse_rule(text)
        except Exception:
            text = "/literal"
        result.append(text)
    return result


paths = st.lists(st.sampled_from(PATH_PARTS), max_size=6).map("".join)
request_methods = st.sampled_from([*METHODS, "get", "PROPFIND", "", "G\u0130T"])
queries = st.sampled_from(["", "q=a", "q=abc", "q=b", "q=a&q=b", "x=1"])


def one_by_one(rules: RuleSet, request: AuthRequest) -> RuleMatch:
    """The reference: each rule in order, as RuleSet.match did before rules were joined."""
    if not rules.rules:
        return RuleMatch(True)
    view = RequestView(request, Deadline(TIMEOUT))
    if view.path_error:
        return RuleMatch(False, view.path_error)
    best: tuple[int, int, str] | None = None
    try:
        for number, rule in enumerate(rules.rules, 1):
            found = failure(rule._parsed, view)
            if found is None:
                return RuleMatch(True)
            if best is None or found[0] > best[0]:
                best = (found[0], number, found[1])
    except BudgetExceededError:
        return RuleMatch(False, BUDGET_EXCEEDED)
    assert best is not None
    return RuleMatch(False, f"no rule matched; rule {best[1]}: {best[2]}")


@given(st.lists(rule_texts(), max_size=8), request_methods, paths, queries)
@example(["(?i)a", "/b"], "GET", "A", "")
@example(["/x(?i)", "a"], "GET", "A", "")
@example(["(a)\\1", "(b)\\1"], "GET", "bb", "")
@example(["a(*PRUNE)b", "ac"], "GET", "ac", "")
@example(["[get]/a", "[post]/b", "/c[QueryParam::q==a.*]"], "POST", "/a", "q=a")
def test_joined_rules_decide_like_rules_one_by_one(
    texts: list[str], method: str, path: str, query: str
) -> None:
    rules = RuleSet.parse(valid(texts))
    request = AuthRequest(method, path, query=query)
    assert rules.match(request, timeout=TIMEOUT) == one_by_one(rules, request)


@given(st.lists(rule_texts(), min_size=1, max_size=8), request_methods, paths)
def test_a_joined_pattern_matches_when_one_of_its_rules_does(
    texts: list[str], method: str, path: str
) -> None:
    parsed = [parse_rule(text) for text in valid(texts)]
    joinable = [(index, rule) for index, rule in enumerate(parsed) if combinable(rule)]
    matcher = CombinedMatcher(joinable)
    view = RequestView(AuthRequest(method, path), Deadline(TIMEOUT))
    if view.path_error:
        return
    joined = any(p.fullmatch(view.path) for p in matcher.patterns(view.method))
    alone = any(
        (not rule.methods or view.method in rule.methods) and rule.url_pattern.fullmatch(view.path)
        for _, rule in joinable
    )
    assert joined == alone


def test_unsafe_constructs_are_not_joined() -> None:
    for source in [
        "(?i).*",
        ".*(?s)",
        "(a)\\1",
        "(?P<n>a)",
        "(?<n>a)",
        "(?P=n)",
        "(?1)",
        "(?R)",
        "(?&n)",
        "(?(1)a|b)",
        "(?|a|b)",
        "(?#c)a",
        "(*PRUNE)a",
        "a\\K",
        "(?:ab){e<=1}",
        "(?-i:a)",
    ]:
        try:
            rule = parse_rule(source)
        except Exception:  # noqa: S112 - the regex module refuses it anyway
            continue
        assert not combinable(rule), source
    for source in [".*/rest/.*", "(?i:a).*", "[A-Z]{2}(?=x)x", "(?>a+)b", "(a|b)+", "a{2,3}"]:
        assert combinable(parse_rule(source)), source
    assert not combinable(parse_rule(".*[QueryParam::a==1]"))


def test_many_rules_are_one_pattern_per_method() -> None:
    rules = RuleSet.parse([f"[get].*/rest/api/2/project{i}/.*" for i in range(100)] + ["/x"])
    assert len(rules._combined.patterns("GET")) == 1
    parsed = rules.rules[-1]._parsed
    assert rules._combined.patterns("POST") == (parsed.url_pattern,)
    assert rules.match(AuthRequest("GET", "/a/rest/api/2/project57/b")).matched
    denied = rules.match(AuthRequest("POST", "/a/rest/api/2/project57/b"))
    assert denied == RuleMatch(False, "no rule matched; rule 101: path does not match '/x'")
    assert AT_METHOD == 0


def test_counted_repeats_split_the_joined_pattern() -> None:
    rules = RuleSet.parse([f"/{i}a{{9000}}" for i in range(20)])
    patterns = rules._combined.patterns("GET")
    assert 1 < len(patterns) < 20
    assert rules.match(AuthRequest("GET", "/7" + "a" * 9000)).matched
    assert all(isinstance(p, regex.Pattern) for p in patterns)


def test_query_is_still_read_for_rules_with_clauses() -> None:
    rules = RuleSet.parse([".*/a", ".*/b[QueryParam::q==1]"])
    assert rules.match(AuthRequest("GET", "/b", query=urlencode({"q": "1"}))).matched
    assert not rules.match(AuthRequest("GET", "/b", query="q=2")).matched
