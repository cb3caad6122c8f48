"""Unit tests for restriction rules: grammar, errors, matching, fail-closed cases."""

from __future__ import annotations

import copy
import json
import pickle
import sys
import threading
from typing import Any

import pytest
import regex

from apitokens._errors import RuleSyntaxError
from apitokens._request import AuthRequest
from apitokens.rules import DEFAULT_RULE_TIMEOUT, Deadline, RestrictionRule, RuleMatch, RuleSet
from apitokens.rules import _match as _rules_match
from apitokens.rules._match import BudgetExceededError, RequestView
from tests.support import bearer, last_event, make_tokens

JSON = [("Content-Type", "application/json")]
"""The header that makes a body JSON to JsonData clauses."""


def get(path: str, query: str = "", method: str = "GET") -> AuthRequest:
    return AuthRequest(method, path, query=query)


def post_json(path: str, body: object, method: str = "POST") -> AuthRequest:
    return AuthRequest(method, path, headers=JSON, body=json.dumps(body).encode())


def reason(rule: str, request: AuthRequest) -> str:
    result = RestrictionRule.parse(rule).explain(request)
    assert not result.matched
    return result.reason


# --- the example rules of DESIGN §3 and the reference documents -------------------------

EXAMPLES = [
    # (rule, canonical text, methods, url, query, json)
    (
        ".*/rest/api/2/issue/JRA.*",
        ".*/rest/api/2/issue/JRA.*",
        (),
        ".*/rest/api/2/issue/JRA.*",
        (),
        (),
    ),
    (
        "[post].*/rest/api/2/issue/KANBAN-100/comment.*",
        "[POST].*/rest/api/2/issue/KANBAN-100/comment.*",
        ("POST",),
        ".*/rest/api/2/issue/KANBAN-100/comment.*",
        (),
        (),
    ),
    (
        ".*/rest/extender/1.0/filter/user/.*[QueryParam::permissions==true]",
        ".*/rest/extender/1.0/filter/user/.*[QueryParam::permissions==true]",
        (),
        ".*/rest/extender/1.0/filter/user/.*",
        (("permissions", "true"),),
        (),
    ),
    (
        ".*rest/extender/1.0/worklog/user/.*"
        "[QueryParam::dateFrom==2018-01-01][QueryParam::dateTo==2018-12-01]",
        ".*rest/extender/1.0/worklog/user/.*"
        "[QueryParam::dateFrom==2018-01-01][QueryParam::dateTo==2018-12-01]",
        (),
        ".*rest/extender/1.0/worklog/user/.*",
        (("dateFrom", "2018-01-01"), ("dateTo", "2018-12-01")),
        (),
    ),
    (
        ".*/rest/api/2/filter[JsonData::editable==false]",
        ".*/rest/api/2/filter[JsonData::editable==false]",
        (),
        ".*/rest/api/2/filter",
        (),
        (("editable", "false"),),
    ),
    (
        ".*/rest/api/2/filter[JsonData::editable==false][JsonData::favourite==false]",
        ".*/rest/api/2/filter[JsonData::editable==false][JsonData::favourite==false]",
        (),
        ".*/rest/api/2/filter",
        (),
        (("editable", "false"), ("favourite", "false")),
    ),
    (
        "[get].*/rest/api/.*[QueryParam::paramName==Regexp][JsonData::nodeName==Regexp]",
        "[GET].*/rest/api/.*[QueryParam::paramName==Regexp][JsonData::nodeName==Regexp]",
        ("GET",),
        ".*/rest/api/.*",
        (("paramName", "Regexp"),),
        (("nodeName", "Regexp"),),
    ),
]


@pytest.mark.parametrize(("text", "canonical", "methods", "url", "query", "json_"), EXAMPLES)
def test_example_rules_parse(
    text: str,
    canonical: str,
    methods: tuple[str, ...],
    url: str,
    query: tuple[tuple[str, str], ...],
    json_: tuple[tuple[str, str], ...],
) -> None:
    rule = RestrictionRule.parse(text)
    assert (rule.methods, rule.url, rule.query, rule.json) == (methods, url, query, json_)
    assert str(rule) == canonical
    assert RestrictionRule.parse(str(rule)) == rule


def test_jra_issues() -> None:
    rule = RestrictionRule.parse(".*/rest/api/2/issue/JRA.*")
    assert rule.matches(get("/jira/rest/api/2/issue/JRA-9"))
    assert rule.matches(AuthRequest("DELETE", "/rest/api/2/issue/JRA-9/comment/1"))
    assert not rule.matches(get("/rest/api/2/issue/KANBAN-1"))
    assert not rule.matches(get("/rest/api/2/issue/jra-9"))  # regexes are case-sensitive
    assert not rule.matches(get("/rest/api/2/search", query="x=/rest/api/2/issue/JRA-1"))


def test_kanban_comment_post_only() -> None:
    rule = RestrictionRule.parse("[post].*/rest/api/2/issue/KANBAN-100/comment.*")
    assert rule.matches(AuthRequest("POST", "/rest/api/2/issue/KANBAN-100/comment"))
    assert rule.matches(AuthRequest("post", "/rest/api/2/issue/KANBAN-100/comment/5"))
    assert not rule.matches(AuthRequest("GET", "/rest/api/2/issue/KANBAN-100/comment"))
    assert not rule.matches(AuthRequest("POST", "/rest/api/2/issue/KANBAN-101/comment"))
    assert reason(
        "[post].*/rest/api/2/issue/KANBAN-100/comment.*",
        AuthRequest("PUT", "/rest/api/2/issue/KANBAN-100/comment"),
    ) == ("method PUT not in [POST]")


def test_filter_users_with_permissions() -> None:
    rule = RestrictionRule.parse(
        ".*/rest/extender/1.0/filter/user/.*[QueryParam::permissions==true]"
    )
    path = "/rest/extender/1.0/filter/user/alice"
    assert rule.matches(get(path, "permissions=true"))
    assert rule.matches(get(path, "permissions=true&other=1"))
    assert not rule.matches(get(path, "permissions=false"))
    assert not rule.matches(get(path, "permissions=true&permissions=false"))
    assert not rule.matches(get(path, "permissions=truex"))
    assert not rule.matches(get(path))
    assert rule.explain(get(path)).reason == "query parameter 'permissions' is missing"


def test_worklogs_in_date_range() -> None:
    rule = RestrictionRule.parse(
        ".*rest/extender/1.0/worklog/user/.*"
        "[QueryParam::dateFrom==2018-01-01][QueryParam::dateTo==2018-12-01]"
    )
    path = "/rest/extender/1.0/worklog/user/bob"
    assert rule.matches(get(path, "dateFrom=2018-01-01&dateTo=2018-12-01"))
    assert rule.matches(get(path, "dateTo=2018-12-01&dateFrom=2018-01-01"))
    assert not rule.matches(get(path, "dateFrom=2018-01-01"))
    assert not rule.matches(get(path, "dateFrom=2017-01-01&dateTo=2018-12-01"))


def test_uneditable_filter() -> None:
    rule = RestrictionRule.parse(".*/rest/api/2/filter[JsonData::editable==false]")
    assert rule.matches(post_json("/rest/api/2/filter", {"name": "f", "editable": False}))
    assert not rule.matches(post_json("/rest/api/2/filter", {"name": "f", "editable": True}))
    assert not rule.matches(post_json("/rest/api/2/filter", {"name": "f"}))
    assert not rule.matches(post_json("/rest/api/2/filter", {"editable": "False"}))


def test_uneditable_filter_not_favourite() -> None:
    rule = RestrictionRule.parse(
        ".*/rest/api/2/filter[JsonData::editable==false][JsonData::favourite==false]"
    )
    assert rule.matches(post_json("/rest/api/2/filter", {"editable": False, "favourite": False}))
    assert not rule.matches(post_json("/rest/api/2/filter", {"editable": False, "favourite": True}))
    assert not rule.matches(post_json("/rest/api/2/filter", {"editable": False}))


def test_generic_example_with_a_real_method() -> None:
    rule = RestrictionRule.parse(
        "[GET].*/rest/api/.*[QueryParam::paramName==Regexp][JsonData::nodeName==Regexp]"
    )
    body = json.dumps({"nodeName": "Regexp"}).encode()
    assert rule.matches(
        AuthRequest("GET", "/rest/api/x", "paramName=Regexp", headers=JSON, body=body)
    )
    assert not rule.matches(
        AuthRequest("POST", "/rest/api/x", "paramName=Regexp", headers=JSON, body=body)
    )
    assert not rule.matches(
        AuthRequest("GET", "/rest/api/x", "paramName=R", headers=JSON, body=body)
    )
    assert not rule.matches(
        AuthRequest("GET", "/rest/api/x", "paramName=Regexp", headers=JSON, body=b"{}")
    )
    assert not rule.matches(
        AuthRequest("GET", "/rest/other", "paramName=Regexp", headers=JSON, body=body)
    )


# --- parsing details -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        (
            "  [GET, post ,Get]  .*/x  [QueryParam::a==1]  [JsonData::b==2]  ",
            "[GET,POST].*/x[QueryParam::a==1][JsonData::b==2]",
        ),
        ("\t.*/x\t", ".*/x"),
        ("[JsonData::b==2].*", None),  # not a method list, see below
        (
            "[delete,OPTIONS,trace,connect,head,put,patch].*",
            "[DELETE,OPTIONS,TRACE,CONNECT,HEAD,PUT,PATCH].*",
        ),
        (".*[JsonData::a==1][QueryParam::b==2]", ".*[QueryParam::b==2][JsonData::a==1]"),
        (r".*/a\ ", r".*/a\ "),  # an escaped trailing space is part of the regex
        (r".*/a\  [QueryParam::x==y]", r".*/a\ [QueryParam::x==y]"),
        (".*[QueryParam::q== a b ]", ".*[QueryParam::q== a b ]"),  # clause regexes are verbatim
        (".*[QueryParam::a==]", ".*[QueryParam::a==]"),
        (".*[QueryParam::page[size]==[0-9]+]", ".*[QueryParam::page[size]==[0-9]+]"),
        (".*[QueryParam::a==b==c]", ".*[QueryParam::a==b==c]"),
    ],
)
def test_canonical_text(text: str, canonical: str | None) -> None:
    if canonical is None:
        with pytest.raises(RuleSyntaxError, match="URL regex is missing"):
            RestrictionRule.parse(text)
        return
    rule = RestrictionRule.parse(text)
    assert str(rule) == canonical
    assert RestrictionRule.parse(canonical) == rule


def test_rule_value_semantics() -> None:
    a = RestrictionRule.parse("[get] .*/x [QueryParam::a==1]")
    b = RestrictionRule("[GET].*/x[QueryParam::a==1]")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != RestrictionRule.parse("[GET].*/x[QueryParam::a==2]")
    assert a != RestrictionRule.parse(".*/x[QueryParam::a==1]")
    assert a != "[GET].*/x[QueryParam::a==1]"
    assert repr(a) == "RestrictionRule('[GET].*/x[QueryParam::a==1]')"
    assert pickle.loads(pickle.dumps(a)) == a  # noqa: S301 - our own object
    assert copy.deepcopy(a) == a
    with pytest.raises(AttributeError):
        a.url = ".*"
    with pytest.raises(AttributeError):
        del a.methods


def test_clause_order_does_not_change_equality() -> None:
    assert RestrictionRule.parse(".*[JsonData::a==1][QueryParam::b==2]") == RestrictionRule.parse(
        ".*[QueryParam::b==2][JsonData::a==1]"
    )


@pytest.mark.parametrize(
    ("text", "url", "path", "matches"),
    [
        ("/[A-Z]+", "/[A-Z]+", "/ABC", True),
        ("/[A-Z]+", "/[A-Z]+", "/AbC", False),
        ("/a[]]b", "/a[]]b", "/a]b", True),
        ("/a[^]]b", "/a[^]]b", "/a]b", False),
        ("/a[^]]b", "/a[^]]b", "/axb", True),
        ("/a[]x]+", "/a[]x]+", "/a]x]", True),
        (r"/a\]", r"/a\]", "/a]", True),
        ("/a]", "/a]", "/a]", True),
        (r".*\[QueryParam::x==y]", r".*\[QueryParam::x==y]", "/[QueryParam::x==y]", True),
        (r".*\[QueryParam::x==y]", r".*\[QueryParam::x==y]", "/p", False),
        ("/[[]QueryParam::x==y]", "/[[]QueryParam::x==y]", "/[QueryParam::x==y]", True),
        ("/[[:alpha:]]+", "/[[:alpha:]]+", "/abc", True),
        ("/[[:alpha:]]+", "/[[:alpha:]]+", "/a1", False),
        ("/[QueryParam:]", "/[QueryParam:]", "/Q", None),  # single colon after a known name
        ("/x(?#[)", "/x(?#[)", "/x", True),  # '[' inside a comment opens no class
        ("/[a-z]{2}-[0-9]{1,3}", "/[a-z]{2}-[0-9]{1,3}", "/ab-12", True),
        ("/(?i)abc", "/(?i)abc", "/ABC", True),
    ],
)
def test_character_classes_and_escapes_in_url(
    text: str, url: str, path: str, matches: bool | None
) -> None:
    if matches is None:
        with pytest.raises(RuleSyntaxError, match="malformed clause"):
            RestrictionRule.parse(text)
        return
    rule = RestrictionRule.parse(text)
    assert rule.url == url
    assert rule.query == ()
    assert rule.matches(get(path)) is matches


@pytest.mark.parametrize(
    ("text", "source", "value", "matches"),
    [
        ("/x[QueryParam::q==[A-Z]+]", "[A-Z]+", "ABC", True),
        ("/x[QueryParam::q==[A-Z]+]", "[A-Z]+", "AbC", False),
        ("/x[QueryParam::q==[]]+]", "[]]+", "]]", True),
        ("/x[QueryParam::q==[^]]+]", "[^]]+", "ab", True),
        ("/x[QueryParam::q==[^]]+]", "[^]]+", "a]", False),
        (r"/x[QueryParam::q==a\]]", r"a\]", "a]", True),
        ("/x[QueryParam::q==[[:digit:]]+]", "[[:digit:]]+", "42", True),
        ("/x[QueryParam::q==x(?#])]", "x(?#])", "x", True),
        (
            "/x[QueryParam::q==[[]QueryParam::y==z[]]]",
            "[[]QueryParam::y==z[]]",
            "[QueryParam::y==z]",
            True,
        ),
    ],
)
def test_character_classes_in_clause_regexes(
    text: str, source: str, value: str, matches: bool
) -> None:
    rule = RestrictionRule.parse(text)
    assert rule.query == (("q", source),)
    from urllib.parse import urlencode

    assert rule.matches(get("/x", urlencode({"q": value}))) is matches
    json_rule = RestrictionRule.parse(text.replace("[QueryParam::", "[JsonData::", 1))
    assert json_rule.json == (("q", source),)
    assert json_rule.matches(post_json("/x", {"q": value})) is matches


# --- syntax errors -------------------------------------------------------------------------

SYNTAX_ERRORS = [
    # (rule, column, words the reason contains)
    ("", 1, "rule is empty"),
    ("   \t ", 1, "rule is empty"),
    (".*/a\n.*/b", 5, "line break"),
    (".*/a\r", 5, "line break"),
    (".*/a\u2028", 5, "line break"),
    (".*/a\x00", 5, "control character U+0000"),
    ("[]", 1, "empty method list"),
    ("[].*", 1, "empty method list"),
    ("[ ].*", 1, "empty method list"),
    ("[GET", 1, "unclosed method list"),
    ("  [GET,POST", 3, "unclosed method list"),
    ("[GTE].*", 2, "unknown method 'GTE'"),
    ("[GET, FETCH].*", 7, "unknown method 'FETCH'"),
    ("[abc]def", 2, "unknown method 'abc'"),
    ("[GET,].*", 6, "empty method name"),
    ("[,GET].*", 2, "empty method name"),
    ("[GET,,POST].*", 6, "empty method name"),
    ("[GET]", 6, "URL regex is missing"),
    ("[GET]   ", 6, "URL regex is missing"),
    ("[QueryParam::a==b]", 1, "URL regex is missing"),
    (".*[Foo::x==y]", 3, "unknown clause 'Foo'"),
    (".*[QueryParam::a==b][Header::x==y]", 21, "unknown clause 'Header'"),
    (".*[queryparam::a==b]", 3, "malformed clause '[queryparam::'"),
    (".*[QueryParam:a==b]", 3, "malformed clause '[QueryParam:'"),
    (".*[JSONDATA::a==b]", 3, "write '[JsonData::'"),
    (".*[QueryParam::a==b", 3, "unclosed QueryParam clause"),
    (".*[JsonData::a==[b]", 3, "unclosed JsonData clause"),
    (r".*[QueryParam::a==b\]", 3, "unclosed QueryParam clause"),
    (".*[QueryParam::a==b] [JsonData::c==d", 22, "unclosed JsonData clause"),
    (".*[QueryParam::==b]", 16, "empty parameter name"),
    (".*[JsonData::==b]", 14, "empty JSON path"),
    (".*[QueryParam::a]", 17, "missing '=='"),
    (".*[QueryParam::a=b]", 19, "missing '=='"),
    (".*[JsonData::a", 15, "missing '=='"),
    (".*[JsonData::a..b==c]", 16, "empty key in JSON path"),
    (".*[JsonData::.a==c]", 14, "empty key in JSON path"),
    (".*[JsonData::a.==c]", 16, "empty key in JSON path"),
    (r".*[JsonData::a\b==c]", 15, "bad escape in JSON path"),
    (".*[QueryParam::a==b]x", 21, "unexpected text 'x' after a clause"),
    (".*[QueryParam::a==b] [x]", 22, "unexpected text"),
    ("a(", 3, "invalid URL regex: missing )"),
    ("/ab[", 5, "invalid URL regex: unterminated character set"),
    ("/a[z-a]", 7, "invalid URL regex: bad character range"),
    ("*a", 1, "invalid URL regex: nothing to repeat"),
    ("/a\\", 4, "invalid URL regex: bad escape"),
    (".*[QueryParam::x==(]", 20, "invalid QueryParam regex: missing )"),
    (".*[JsonData::x==ab[]", 3, "unclosed JsonData clause"),
    (".*[JsonData::x==ab)]", 19, "invalid JsonData regex"),
    ("   .*[QueryParam::x==a{2,1}]", 24, "invalid QueryParam regex: min repeat greater"),
    ("(?x).*", 1, "verbose flag"),
    ("/a(?ix:b)", 3, "verbose flag"),
    ("(?V1).*", 1, "VERSION1"),
    ("/a{100000}", 3, "regex too large"),
    ("/(?:a{1000}){1000}", 13, "regex too large"),
    ("(" * 101 + ")" * 101, 101, "nested too deeply"),
    ("/" + "a" * 5000, 4097, "rule is too long"),
]


@pytest.mark.parametrize(("text", "column", "words"), SYNTAX_ERRORS)
def test_syntax_errors(text: str, column: int, words: str) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        RestrictionRule.parse(text)
    error = caught.value
    assert words in error.reason
    assert error.column == column
    assert error.rule == text
    assert str(error) == f"column {column}: {error.reason}"
    assert isinstance(error, ValueError)


def test_syntax_error_messages_say_what_to_do() -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        RestrictionRule.parse("[GTE].*/x")
    assert str(caught.value) == (
        "column 2: unknown method 'GTE' (a leading [...] of letters and commas is a method "
        "list); use GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE, CONNECT"
    )
    with pytest.raises(RuleSyntaxError) as caught:
        RestrictionRule.parse(".*[Foo::x==y]")
    assert str(caught.value) == (
        "column 3: unknown clause 'Foo'; use [QueryParam::name==regex] or [JsonData::path==regex]"
    )


def test_non_string_rule_is_a_syntax_error() -> None:
    with pytest.raises(RuleSyntaxError, match="must be a str"):
        RestrictionRule.parse(b".*")  # type: ignore[arg-type]


# --- matching semantics --------------------------------------------------------------------


def test_url_fullmatches_the_decoded_path_only() -> None:
    rule = RestrictionRule.parse("/rest/api/issue/[A-Z]+-[0-9]+")
    assert rule.matches(get("/rest/api/issue/JRA-1"))
    assert not rule.matches(get("/rest/api/issue/JRA-1/comment"))  # fullmatch, not search
    assert not rule.matches(get("/x/rest/api/issue/JRA-1"))
    assert rule.matches(get("/rest/api/issue/JRA-1", query="a=/rest"))  # the query is ignored
    assert not RestrictionRule.parse(".*x=1.*").matches(get("/a", query="x=1"))
    assert RestrictionRule.parse("/caf\u00e9 menu").matches(get("/caf%C3%A9%20menu"))
    assert RestrictionRule.parse("/a%41").matches(get("/a%2541"))  # decoded exactly once
    assert not RestrictionRule.parse("/aA").matches(get("/a%2541"))
    assert RestrictionRule.parse("/a\\+b").matches(get("/a+b"))  # '+' is not a space in a path


def test_methods() -> None:
    rule = RestrictionRule.parse("[GET,PUT].*")
    assert rule.matches(AuthRequest("get", "/"))
    assert rule.matches(AuthRequest("Put", "/"))
    assert not rule.matches(AuthRequest("HEAD", "/"))  # GET does not imply HEAD
    assert not rule.matches(AuthRequest("po\u017ft", "/"))  # long s: upper() gives "POST"
    assert not RestrictionRule.parse("[POST].*").matches(AuthRequest("po\u017ft", "/"))
    assert RestrictionRule.parse(".*").matches(AuthRequest("BREW", "/"))
    assert (
        RestrictionRule.parse("[GET].*").explain(AuthRequest("DELETE", "/")).reason
        == "method DELETE not in [GET]"
    )
    assert (
        RestrictionRule.parse("[GET].*").explain(AuthRequest("G\u00c9T", "/")).reason
        == "method (not a method name) not in [GET]"
    )


@pytest.mark.parametrize(
    ("query", "matches"),
    [
        ("q=a+b", True),
        ("q=a%20b", True),
        ("q=a%2Bb", False),
        ("q=a b", True),
        ("x=1&q=a+b&y=2", True),
        ("q=a+b&q=a+b", True),
        ("q=a+b&q=", False),
        ("q", False),
        ("Q=a+b", False),
        ("", False),
        ("q=a+b;x=1", False),  # ';' is not a separator
    ],
)
def test_query_values(query: str, matches: bool) -> None:
    assert RestrictionRule.parse("/x[QueryParam::q==a b]").matches(get("/x", query)) is matches


def test_query_blank_values_and_names() -> None:
    assert RestrictionRule.parse("/x[QueryParam::flag==]").matches(get("/x", "flag"))
    assert RestrictionRule.parse("/x[QueryParam::flag==]").matches(get("/x", "flag="))
    assert RestrictionRule.parse("/x[QueryParam::a b==1]").matches(get("/x", "a+b=1"))
    assert RestrictionRule.parse("/x[QueryParam::page[size]==10]").matches(
        get("/x", "page%5Bsize%5D=10")
    )


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("q=%ff", "query string is not valid UTF-8"),
        ("q=1" + "&x=1" * 1000, "query string has more than 1000 parameters"),
        ("x=1", "query parameter 'q' is missing"),
        ("q=2", "query parameter 'q' does not match '1'"),
    ],
)
def test_query_failures(query: str, words: str) -> None:
    assert reason("/x[QueryParam::q==1]", get("/x", query)) == words


@pytest.mark.parametrize(
    ("body", "path", "regex", "matches"),
    [
        ({"a": "x y"}, "a", "x y", True),
        ({"a": True}, "a", "true", True),
        ({"a": False}, "a", "false", True),
        ({"a": None}, "a", "null", True),
        ({"a": None}, "a", "", False),
        ({"a": 3}, "a", "3", True),
        ({"a": -3.25}, "a", r"-3\.25", True),
        ({"a": "3"}, "a", "3", True),
        ({"a": ["x", "y"]}, "a", "[xy]", True),
        ({"a": ["x", "z"]}, "a", "[xy]", False),
        ({"a": [["x"], ["y", "x"]]}, "a", "[xy]", True),
        ({"a": []}, "a", ".*", False),
        ({"a": ["x", []]}, "a", ".*", False),
        ({"a": [1, True, None]}, "a", "1|true|null", True),
        ({"a": {"b": 1, "a": "é"}}, "a", r'\{"a":"\\u00e9","b":1\}', True),
        ({"a": [{"k": 1}]}, "a", r'\{"k":1\}', True),
        ({"a": {"b": {"c": "deep"}}}, "a.b.c", "deep", True),
        ({"a": {"b": 1}}, "a.b.c", ".*", False),
        ({"a": "s"}, "a.b", ".*", False),
        ({"a.b": "dotted"}, r"a\.b", "dotted", True),
        ({"a": {"b": "nested"}}, r"a\.b", ".*", False),
        ({"a\\b": "v"}, r"a\\b", "v", True),
        ({"a": ["x", "y"]}, "a.1", "y", True),
        ({"a": ["x", "y"]}, "a.2", ".*", False),
        ({"a": ["x", "y"]}, "a.01", ".*", False),
        ({"a": {"1": "key"}}, "a.1", "key", True),
        ({"items": [{"id": 7}]}, "items.0.id", "7", True),
        ({"items": [{"id": 7}]}, "items.id", ".*", False),  # no implicit mapping over arrays
        ({"page[size]": "10"}, "page[size]", "10", True),
    ],
)
def test_json_values(body: object, path: str, regex: str, matches: bool) -> None:
    rule = RestrictionRule.parse(f"/x[JsonData::{path}=={regex}]")
    assert rule.matches(post_json("/x", body)) is matches


def test_json_numbers_keep_their_text() -> None:
    rule = RestrictionRule.parse(r"/x[JsonData::price==1\.50][JsonData::n==1e3]")
    assert rule.matches(AuthRequest("POST", "/x", headers=JSON, body=b'{"price": 1.50, "n": 1e3}'))
    assert not rule.matches(
        AuthRequest("POST", "/x", headers=JSON, body=b'{"price": 1.5, "n": 1e3}')
    )
    assert not rule.matches(
        AuthRequest("POST", "/x", headers=JSON, body=b'{"price": 1.50, "n": 1000}')
    )
    big = "9" * 5000  # no int() conversion, so no digit limit
    assert RestrictionRule.parse("/x[JsonData::n==9+]").matches(
        AuthRequest("POST", "/x", headers=JSON, body=b'{"n": %s}' % big.encode())
    )
    obj = RestrictionRule.parse(r'/x[JsonData::o==\{"a":1\.50,"b":\[-0\]\}]')
    assert obj.matches(
        AuthRequest("POST", "/x", headers=JSON, body=b'{"o": {"b": [-0], "a": 1.50}}')
    )


def test_json_numbers_and_strings_stay_apart_inside_objects() -> None:
    # Alone, a string and a number with the same text match alike; inside an object a
    # string is quoted and a number is not.
    rule = RestrictionRule.parse(r'/x[JsonData::o==\{"a":1,"b":"2"\}]')
    assert rule.matches(post_json("/x", {"o": {"b": "2", "a": 1}}))
    assert not rule.matches(post_json("/x", {"o": {"b": 2, "a": "1"}}))
    assert not rule.matches(AuthRequest("POST", "/x", headers=JSON, body=b'{"o": {"a": 1.0}}'))
    plain = RestrictionRule.parse("/x[JsonData::a==1]")
    assert plain.matches(post_json("/x", {"a": "1"})) and plain.matches(post_json("/x", {"a": 1}))


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "JSON body is empty"),
        (b"not json", "JSON body is not valid JSON"),
        (b'{"a": 1', "JSON body is not valid JSON"),
        (b'["a"]', "JSON body is not an object"),
        (b'"a"', "JSON body is not an object"),
        (b"null", "JSON body is not an object"),
        (b'{"a": 1, "a": 1}', "JSON body has a duplicate key"),
        (b'{"b": {"a": 1, "a": 2}, "a": 1}', "JSON body has a duplicate key"),
        (b'{"a": NaN}', "JSON body contains NaN or Infinity"),
        (b'{"a": -Infinity}', "JSON body contains NaN or Infinity"),
        (b'{"a": "\xff"}', "JSON body is not valid UTF-8"),
        ('{"a": 1}'.encode("utf-16"), "JSON body is not valid UTF-8"),
        (b'\xef\xbb\xbf{"a": 1}', "JSON body is not valid JSON"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "JSON body is nested too deeply"),
        (b'{"b": 1}', "JSON value 'a' is missing"),
        (b'{"a": []}', "JSON value 'a' is an empty array"),
        (b'{"a": 2}', "JSON value 'a' does not match '1'"),
    ],
)
def test_json_failures(body: bytes, words: str) -> None:
    assert reason("/x[JsonData::a==1]", AuthRequest("POST", "/x", headers=JSON, body=body)) == words


def test_json_object_too_deep_to_format_denies() -> None:
    # 600 levels parse within the default recursion limit of 1000, but formatting the
    # object as compact text takes two frames a level.
    depth = 600
    body = b'{"a": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
    result = RestrictionRule.parse("/x[JsonData::a==.*]").explain(
        AuthRequest("POST", "/x", headers=JSON, body=body)
    )
    assert result == RuleMatch(False, "JSON body is nested too deeply")


# --- fail closed ---------------------------------------------------------------------------

FAIL_CLOSED_PATHS = [
    ("/rest/./x", "path contains a dot segment"),
    ("/rest/../x", "path contains a dot segment"),
    ("/rest/x/..", "path contains a dot segment"),
    ("/rest/%2e%2e/x", "path contains a dot segment"),
    ("/rest/%2E/x", "path contains a dot segment"),
    ("/rest/.%2e/x", "path contains a dot segment"),
    ("/rest/..;jsessionid=1/x", "path contains a dot segment"),
    ("/rest/a%2fb", "path contains an encoded slash or backslash"),
    ("/rest/a%2Fb", "path contains an encoded slash or backslash"),
    ("/rest/a%5cb", "path contains an encoded slash or backslash"),
    ("/rest/a%5Cb", "path contains an encoded slash or backslash"),
    ("/rest/a\\b", "path contains a backslash"),
    ("/rest/a%00b", "path contains a NUL or control character"),
    ("/rest/a\x00b", "path contains a NUL or control character"),
    ("/rest/a%0ab", "path contains a NUL or control character"),
    ("/rest/a%7Fb", "path contains a NUL or control character"),
    ("/rest/a%C2%85b", "path contains a NUL or control character"),
    ("/rest/a\tb", "path contains a NUL or control character"),
    ("/rest/a%zzb", "path has a malformed percent-escape"),
    ("/rest/a%2", "path has a malformed percent-escape"),
    ("/rest/a%", "path has a malformed percent-escape"),
    ("/rest/a%ffb", "path is not valid UTF-8"),
    ("/rest/a%C3", "path is not valid UTF-8"),
    ("/rest/\udcff", "path is not valid UTF-8"),
    ("/rest/%252e%252e/x", "path is encoded twice"),
    ("/rest/a%252fb", "path is encoded twice"),
    ("/rest/a%255cb", "path is encoded twice"),
    ("/rest/a%2500b", "path is encoded twice"),
]


@pytest.mark.parametrize(("path", "words"), FAIL_CLOSED_PATHS)
def test_fail_closed_paths(path: str, words: str) -> None:
    rule = RestrictionRule.parse(".*")  # would allow anything else
    result = rule.explain(get(path))
    assert result == RuleMatch(False, result.reason)
    assert result.reason.startswith(words)
    assert not rule.matches(get(path))
    assert RuleSet.parse([".*", "[GET].*"]).match(get(path)).reason == result.reason


@pytest.mark.parametrize(
    "path", ["/a.b/c", "/.well-known/x", "/a/..b", "/a/b..", "/a%2520b", "/100%25", "/a;b/c", "/"]
)
def test_dots_and_percents_that_are_not_dot_segments_are_fine(path: str) -> None:
    assert RestrictionRule.parse(".*").matches(get(path))


def test_catastrophic_backtracking_hits_the_time_budget() -> None:
    rule = RestrictionRule.parse("/x/(a|aa)+")
    request = get("/x/" + "a" * 60 + "b")
    result = rule.explain(request, timeout=0.05)
    assert result == RuleMatch(False, "regex time budget exceeded")
    assert not rule.matches(request)
    assert RuleSet.parse(["/x/(a|aa)+", ".*"]).match(request) == RuleMatch(
        False, "regex time budget exceeded"
    )
    clause = RestrictionRule.parse(".*[QueryParam::q==(a|aa)+]")
    assert clause.explain(get("/", "q=" + "a" * 60 + "b")).reason == "regex time budget exceeded"


def test_a_budget_shorter_than_the_gil_slice_is_not_retried() -> None:
    rule = RestrictionRule.parse("/x/(a|aa)+")
    request = get("/x/" + "a" * 60 + "b")
    assert _rules_match.GIL_SLICE > 0.001
    assert rule.explain(request, timeout=0.001) == RuleMatch(False, "regex time budget exceeded")


def test_a_slow_match_lets_other_threads_run() -> None:
    # The first try holds the GIL for at most GIL_SLICE; the retry must release it, or a
    # pathological rule would stall every thread of the process for the whole budget.
    # With a switch interval far longer than the test, a thread waiting for the GIL gets
    # it only when this one lets it go: it runs during the match only if the match does.
    # No speed is compared, so a busy machine cannot fail it.
    rule = RestrictionRule.parse("/x/(a|aa)+")
    request = get("/x/" + "a" * 60 + "b")
    go = threading.Event()
    matching = [False]
    seen: list[bool] = []

    def other() -> None:
        go.wait(10)  # then it waits for the GIL
        seen.append(matching[0])

    thread = threading.Thread(target=other)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        thread.start()  # returns once the thread has started, and waits for go
        go.set()
        matching[0] = True
        result = rule.explain(request, timeout=0.2)
        matching[0] = False
    finally:
        sys.setswitchinterval(interval)
        thread.join(10)
    assert result == RuleMatch(False, "regex time budget exceeded")
    assert seen == [True]


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan")])
def test_no_budget_denies(timeout: float) -> None:
    result = RestrictionRule.parse(".*").explain(get("/"), timeout=timeout)
    assert result == RuleMatch(False, "regex time budget exceeded")


def test_huge_budget_still_matches() -> None:
    assert RestrictionRule.parse(".*").explain(get("/"), timeout=float("inf")).matched


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_budget_is_one_deadline_for_the_whole_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each clock read advances one second, and a regex call reads it before and after:
    # each call is charged one second, and starts only with budget left. Rules with a
    # clause are matched one by one (rules without clauses are joined into one regex
    # call): /c takes four calls (three paths, a clause), which a 3.5 s budget lets
    # start; /d takes five, and the fifth finds none left.
    monkeypatch.setattr(_rules_match, "monotonic", FakeClock())
    rules = RuleSet.parse([f"/{name}[QueryParam::q==1]" for name in "abcd"])
    exceeded = RuleMatch(False, "regex time budget exceeded")
    assert rules.match(get("/d", "q=1"), timeout=3.5) == exceeded
    assert rules.match(get("/c", "q=1"), timeout=3.5).matched


def test_calls_given_one_deadline_share_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each regex call is charged one second (see above). One 1.5 s budget lets two
    # calls start (1.5 s left, then 0.5 s); a third on it runs out, while calls each
    # given 1.5 s of their own all match.
    monkeypatch.setattr(_rules_match, "monotonic", FakeClock())
    rules = RuleSet.parse(["/x"])
    for _ in range(3):
        assert rules.match(get("/x"), timeout=1.5).matched
    deadline = Deadline(1.5)
    assert rules.match(get("/x"), timeout=deadline).matched
    assert rules.match(get("/x"), timeout=deadline).matched
    exceeded = RuleMatch(False, "regex time budget exceeded")
    assert rules.match(get("/x"), timeout=deadline) == exceeded


def test_waiting_between_matches_is_not_charged(monkeypatch: pytest.MonkeyPatch) -> None:
    # A request thread that waits 100 s between two matches (for the GIL, for a core on
    # a loaded host) keeps its budget: only the regex calls are charged.
    clock = FakeClock()
    monkeypatch.setattr(_rules_match, "monotonic", clock)
    rules = RuleSet.parse(["/x"])
    deadline = Deadline(1.5)
    assert rules.match(get("/x"), timeout=deadline).matched
    clock.now += 100.0
    assert rules.match(get("/x"), timeout=deadline).matched
    assert deadline.left == pytest.approx(-0.5)


def test_a_method_override_header_does_not_double_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The request is matched as sent and as its override header makes it, on the one
    # budget of Policy.rule_timeout: each call charged 1 s, a 0.5 s budget lets one
    # start; with a fresh budget per method, both would match.
    with make_tokens(protected_paths=["/rest/"], rule_timeout=0.5) as tokens:
        issued = tokens.create(actor="alice", name="ci", restrictions=["/rest/x"])
        monkeypatch.setattr(_rules_match, "monotonic", FakeClock())
        plain = AuthRequest("GET", "/rest/x", headers=bearer(issued.secret))
        assert tokens.authenticate(plain).authenticated
        headers = [*bearer(issued.secret), ("X-HTTP-Method-Override", "GET")]
        overridden = tokens.authenticate(AuthRequest("GET", "/rest/x", headers=headers))
        assert overridden.status_code == 403
        assert last_event(tokens).reason == ("regex time budget exceeded (as method override GET)")


class Recording:
    """A real compiled pattern that remembers the arguments of each fullmatch."""

    def __init__(self, source: str) -> None:
        self.pattern = regex.compile(source, regex.VERSION0)
        self.timeouts: list[object] = []

    def fullmatch(self, *args: Any, **kwargs: Any) -> regex.Match[str] | None:
        # Positional (string, pos, endpos, concurrent, partial, timeout), or keywords.
        self.timeouts.append(args[5] if len(args) > 5 else kwargs.get("timeout"))
        return self.pattern.fullmatch(*args, **kwargs)


def test_every_match_runs_on_the_regex_module_clock() -> None:
    # Every regex call of the matcher goes through RequestView.fullmatch: each passes
    # the regex module a timeout, a short one first (the GIL slice), never none.
    view = RequestView(get("/"), Deadline(5.0))
    for source, text in [("/x/[a-z]+", "/x/abc"), (".*", ""), ("/x/(a|aa)+", "/x/aaa")]:
        pattern = Recording(source)
        assert view.fullmatch(pattern, text)  # type: ignore[arg-type]
        assert pattern.timeouts and all(
            isinstance(t, float) and 0 < t <= 5.0 for t in pattern.timeouts
        ), pattern.timeouts
    slow = Recording("/x/(a|aa)+")
    view = RequestView(get("/"), Deadline(0.05))
    with pytest.raises(BudgetExceededError):
        view.fullmatch(slow, "/x/" + "a" * 60 + "b")  # type: ignore[arg-type]
    assert len(slow.timeouts) == 2  # the GIL slice, then the rest of the budget
    assert all(isinstance(t, float) and 0 < t <= 0.05 for t in slow.timeouts)


def test_reading_the_body_is_not_charged_to_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # A parse (or a value's formatting) that takes 100 s of the clock leaves the
    # regex budget whole (each clock read is 1 s): the budget bounds regex matching, the
    # body limit bounds reading.
    clock = FakeClock()
    monkeypatch.setattr(_rules_match, "monotonic", clock)
    real_json, real_texts = _rules_match.load_json, _rules_match.value_texts

    def slow_json(body: object) -> _rules_match.JsonObject | str:
        clock.now += 100.0
        return real_json(body)

    def slow_texts(value: object) -> list[str] | None:
        clock.now += 100.0
        return real_texts(value)

    monkeypatch.setattr(_rules_match, "load_json", slow_json)
    monkeypatch.setattr(_rules_match, "value_texts", slow_texts)
    request = post_json("/x", {"a": 1, "b": {"c": 2}})
    rule = RestrictionRule.parse("/x[JsonData::a==1][JsonData::b=={.*}]")
    assert rule.explain(request, timeout=10) == RuleMatch(True)
    rules = RuleSet.parse(["/y", "/x[JsonData::a==2]", str(rule)])
    assert rules.match(request, timeout=30) == RuleMatch(True)


def test_the_budget_still_bounds_a_json_clause_after_a_large_body() -> None:
    big = {"pad": ["x" * 100] * 5000, "a": "a" * 60 + "b"}
    rule = RestrictionRule.parse("/x[JsonData::a==(a|aa)+]")
    assert rule.explain(post_json("/x", big), timeout=0.05) == RuleMatch(
        False, "regex time budget exceeded"
    )


def test_default_timeout() -> None:
    assert DEFAULT_RULE_TIMEOUT == 0.05


@pytest.mark.parametrize(
    "request_",
    [
        AuthRequest(None, None, None, body=None),  # type: ignore[arg-type]
        AuthRequest(b"GET", b"/x", b"q=1", body="{}"),  # type: ignore[arg-type]
        AuthRequest("", "", "", body=b""),
        AuthRequest("GET", "/x", "q=" + "%" * 100, body=b"\x00" * 10),
    ],
)
def test_matching_never_raises(request_: AuthRequest) -> None:
    rules = RuleSet.parse(["[GET].*[QueryParam::q==.*][JsonData::a==.*]", ".*"])
    result = rules.match(request_)
    assert isinstance(result, RuleMatch)
    for rule in rules.rules:
        assert rule.matches(request_) in (True, False)


# --- RuleMatch and RuleSet -----------------------------------------------------------------


def test_rule_match_truthiness() -> None:
    assert RuleMatch(True)
    assert not RuleMatch(False, "no")
    assert RuleMatch(True).reason == ""


def test_empty_rule_set_matches_everything() -> None:
    rules = RuleSet.parse([])
    assert rules.rules == ()
    assert not rules.needs_body
    assert rules.match(get("/a/../b")) == RuleMatch(True, "")
    assert RuleSet.parse(["", "  "]).rules == ()


def test_rule_set_parse() -> None:
    rules = RuleSet.parse(["[get].*/a", "", "   ", ".*/b[JsonData::x==1]"])
    assert rules.rules == (
        RestrictionRule.parse("[GET].*/a"),
        RestrictionRule.parse(".*/b[JsonData::x==1]"),
    )
    assert rules.needs_body
    assert not RuleSet.parse([".*[QueryParam::a==b]"]).needs_body
    assert RuleSet.parse("[GET].*/a\n\n.*/b\n") == RuleSet.parse(["[GET].*/a", ".*/b"])
    assert RuleSet((RestrictionRule.parse(".*"),)) == RuleSet.parse([".*"])
    assert hash(RuleSet.parse([".*"])) == hash(RuleSet.parse([".*"]))


def test_rule_set_parse_error_names_the_rule() -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        RuleSet.parse([".*/a", "", "[GTE].*"])
    assert caught.value.column == 2
    assert caught.value.rule == "[GTE].*"
    assert caught.value.reason.startswith("rule 3: unknown method 'GTE'")
    assert str(caught.value).startswith("column 2: rule 3: unknown method")


def test_rule_set_any_rule_matches() -> None:
    rules = RuleSet.parse(["[GET].*/a", ".*/b[QueryParam::x==1]"])
    assert rules.match(get("/a")).matched
    assert rules.match(AuthRequest("POST", "/b", "x=1")).matched
    assert not rules.match(AuthRequest("POST", "/a")).matched
    assert not rules.match(AuthRequest("POST", "/b", "x=2")).matched


def test_rule_set_reason_explains_the_closest_rule() -> None:
    rules = RuleSet.parse(["[GET].*/a", ".*/b[QueryParam::x==1]", "[PUT].*"])
    assert rules.match(AuthRequest("POST", "/a")).reason == (
        "no rule matched; rule 2: path does not match '.*/b'"
    )
    assert rules.match(AuthRequest("POST", "/b", "x=2")).reason == (
        "no rule matched; rule 2: query parameter 'x' does not match '1'"
    )
    single = RuleSet.parse(["[GET].*"])
    assert single.match(AuthRequest("POST", "/")).reason == (
        "no rule matched; rule 1: method POST not in [GET]"
    )


def test_rule_set_decodes_query_and_body_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"query": 0, "json": 0}
    real_query, real_json = _rules_match._parse_query, _rules_match.load_json

    def count_query(raw: object) -> dict[str, list[str]] | str:
        calls["query"] += 1
        return real_query(raw)

    def count_json(body: object) -> _rules_match.JsonObject | str:
        calls["json"] += 1
        return real_json(body)

    monkeypatch.setattr(_rules_match, "_parse_query", count_query)
    monkeypatch.setattr(_rules_match, "load_json", count_json)
    rules = RuleSet.parse(
        [
            ".*[QueryParam::a==1][JsonData::x==1]",
            ".*[QueryParam::a==2][JsonData::x==2]",
            ".*[QueryParam::a==3][JsonData::x==3]",
        ]
    )
    request = AuthRequest("POST", "/", "a=3", headers=JSON, body=b'{"x": 3}')
    assert rules.match(request).matched
    assert calls == {"query": 1, "json": 1}
    RuleSet.parse([".*/a", ".*/b"]).match(request)
    assert calls == {"query": 1, "json": 1}  # nothing parsed that no rule needs


def test_rules_without_clauses_ignore_unreadable_query_and_body() -> None:
    request = AuthRequest("GET", "/a", "q=%ff", body=b"\xff")
    assert RestrictionRule.parse("/a").matches(request)
    rules = RuleSet.parse(["/a[JsonData::x==1]", "/a"])
    assert rules.match(request).matched
