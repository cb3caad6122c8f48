"""JsonData clauses read only a JSON body: its Content-Type decides (DESIGN §4, issue 13.2).

A body can be valid JSON and a valid form at once. Sent as a form, an app reading
``request.form`` acts on fields the JSON rule never saw, so the clause must fail unless
the request says the body is JSON: ``application/json`` or ``*/*+json``.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from urllib.parse import parse_qs

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apitokens import ApiTokens, AuthRequest, Outcome, Scope
from apitokens.rules import RestrictionRule, RuleMatch, RuleSet
from tests.support import last_event, make_tokens

# Valid JSON whose string value is also a form: x-www-form-urlencoded reads the fields
# '{"fields":{"project":{"key":"JRA"}},"x":"', 'project=EVIL' and 'z="}'.
POLYGLOT = b'{"fields":{"project":{"key":"JRA"}},"x":"&project=EVIL&z="}'
RULE = RestrictionRule.parse("[POST]/rest/issue[JsonData::fields.project.key==JRA]")
FORM = "application/x-www-form-urlencoded"
TCHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"


def post(*content_types: str, body: bytes = POLYGLOT) -> AuthRequest:
    headers = [("Content-Type", value) for value in content_types]
    return AuthRequest("POST", "/rest/issue", headers=headers, body=body)


def test_the_polyglot_is_a_form_too() -> None:
    assert json.loads(POLYGLOT)["fields"]["project"]["key"] == "JRA"
    assert parse_qs(POLYGLOT.decode())["project"] == ["EVIL"]


def test_the_polyglot_sent_as_a_form_fails_the_clause() -> None:
    assert RULE.explain(post(FORM)) == RuleMatch(False, f"body is not JSON (Content-Type {FORM})")
    assert RULE.matches(post("application/json"))


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "APPLICATION/JSON",
        "Application/Json; charset=utf-8",
        "application/json;charset=UTF-8",
        'application/json; charset="utf-8"; x=y',
        'application/json; CHARSET="UTF8"',
        " application/json ",
        "application/json\t;\tcharset=utf-8",
        "application/json;",
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/problem+json",
        "application/vnd.api+json",
        "APPLICATION/VND.API+JSON; charset=utf-8",
        "text/x-thing+json",
    ],
)
def test_json_media_types_are_read(content_type: str) -> None:
    assert RULE.explain(post(content_type)) == RuleMatch(True)


@pytest.mark.parametrize(
    ("content_type", "words"),
    [
        (FORM, f"Content-Type {FORM}"),
        (FORM + "; charset=utf-8", f"Content-Type {FORM}"),
        ("multipart/form-data; boundary=x", "Content-Type multipart/form-data"),
        ("text/plain", "Content-Type text/plain"),
        ("text/json", "Content-Type text/json"),
        ("application/jsonx", "Content-Type application/jsonx"),
        ("application/json5", "Content-Type application/json5"),
        ("application/x-json", "Content-Type application/x-json"),
        ("application/json+xml", "Content-Type application/json+xml"),
        ("application/javascript", "Content-Type application/javascript"),
        ("application/+json", "Content-Type application/+json"),
        ("*/*", "Content-Type */*"),
        ("application/*", "Content-Type application/*"),
        ("*/x+json", "Content-Type */x+json"),
        ("application/*+json", "Content-Type application/*+json"),
        ("", "malformed Content-Type"),
        ("   ", "malformed Content-Type"),
        ("application", "malformed Content-Type"),
        ("json", "malformed Content-Type"),
        ("/json", "malformed Content-Type"),
        ("application/", "malformed Content-Type"),
        (";application/json", "malformed Content-Type"),
        ("application /json", "malformed Content-Type"),
        ("application/ json", "malformed Content-Type"),
        ("application/json, " + FORM, "malformed Content-Type"),
        (FORM + ", application/json", "malformed Content-Type"),
        ("application/json application/json", "malformed Content-Type"),
        ("application/json/x", "malformed Content-Type"),
        ('"application/json"', "malformed Content-Type"),
        ("application/json\x00", "malformed Content-Type"),
        ("application/json\r\nX-A: b", "malformed Content-Type"),
        ("application/jso\u0144", "malformed Content-Type"),
        ("\u0430pplication/json", "malformed Content-Type"),  # Cyrillic "a"
        # The body is read as UTF-8; Django REST framework decodes by the charset.
        ("application/json;charset=utf-16", "a charset other than UTF-8"),
        ("application/json; charset=utf-7", "a charset other than UTF-8"),
        ('application/json; CHARSET="utf-7"', "a charset other than UTF-8"),
        ("application/json; charset = latin-1", "a charset other than UTF-8"),
        ("application/json; charset=utf-8; charset=utf-7", "a charset other than UTF-8"),
        ("application/json; charset*=UTF-8''utf-7", "a charset other than UTF-8"),
        ("application/vnd.api+json; x=y; charset=utf-7", "a charset other than UTF-8"),
        ("application/json; charset=", "a charset other than UTF-8"),
    ],
)
def test_other_media_types_fail_the_clause(content_type: str, words: str) -> None:
    assert RULE.explain(post(content_type)) == RuleMatch(False, f"body is not JSON ({words})")


def test_no_content_type_fails_the_clause() -> None:
    assert RULE.explain(post()) == RuleMatch(False, "body is not JSON (no Content-Type header)")


@pytest.mark.parametrize(
    "pair",
    [
        ("application/json", "application/json"),
        ("application/json", FORM),
        (FORM, "application/json"),
        ("application/json", ""),
    ],
)
def test_two_content_type_headers_fail_the_clause(pair: tuple[str, str]) -> None:
    # Servers and frameworks disagree about which of two headers counts: refuse both.
    assert RULE.explain(post(*pair)) == RuleMatch(
        False, "body is not JSON (more than one Content-Type header)"
    )


def test_a_utf16_body_is_not_read_whatever_the_charset() -> None:
    body = POLYGLOT.decode().encode("utf-16")
    assert RULE.explain(post("application/json", body=body)) == RuleMatch(
        False, "JSON body is not valid UTF-8"
    )
    assert RULE.explain(post("application/json; charset=utf-16", body=body)) == RuleMatch(
        False, "body is not JSON (a charset other than UTF-8)"
    )
    utf16le = POLYGLOT.decode().encode("utf-16-le")  # no BOM: NUL bytes are not JSON
    assert RULE.explain(post("application/json", body=utf16le)) == RuleMatch(
        False, "JSON body is not valid JSON"
    )


def test_the_reason_never_shows_a_token_or_a_long_value(tokens: ApiTokens) -> None:
    secret = tokens.create(actor="alice", name="t").secret
    for value in (f"x/{secret}", f"{secret}/json", "application/" + "x" * 200, "x/a_b"):
        result = RULE.explain(post(value))
        assert result == RuleMatch(
            False, "body is not JSON (Content-Type is not application/json or */*+json)"
        )
        assert secret not in result.reason


def test_rules_without_json_clauses_ignore_the_content_type() -> None:
    plain = RuleSet.parse(["[POST]/rest/issue", "/rest/x[QueryParam::a==1]"])
    for request in (post(FORM), post(), post("application/json", FORM)):
        assert plain.match(request).matched


def test_another_rule_can_still_allow_the_request() -> None:
    rules = RuleSet.parse([str(RULE), "[POST]/rest/issue[QueryParam::form==yes]"])
    form = AuthRequest(
        "POST", "/rest/issue", "form=yes", headers=[("Content-Type", FORM)], body=POLYGLOT
    )
    assert rules.match(form).matched
    assert rules.match(post(FORM)) == RuleMatch(
        False, f"no rule matched; rule 1: body is not JSON (Content-Type {FORM})"
    )


def test_the_body_is_read_only_for_a_json_content_type() -> None:
    rules = RuleSet.parse([str(RULE), "[POST]/rest/upload"])
    assert rules.reads_body(post("application/json"))
    assert rules.reads_body(post("application/vnd.api+json; charset=utf-8"))
    for request in (post(FORM), post(), post("application/json", "application/json")):
        assert not rules.reads_body(request)
        # Without reading it, the decision is the one the body would have given.
        assert rules.match(request) == rules.match(
            AuthRequest(request.method, request.path, headers=request.headers)
        )
    assert not RuleSet.parse(["[POST]/rest/issue"]).reads_body(post("application/json"))


# --- the law: any media type that is not JSON fails the clause, whatever the body --------

_token = st.text(alphabet=TCHARS, min_size=1, max_size=20)
_name = st.text(alphabet=TCHARS.replace("*", ""), min_size=1, max_size=20)
_params = st.lists(
    st.tuples(_token, _token | st.text(max_size=10).map(json.dumps)), max_size=3
).map(lambda pairs: "".join(f"; {name}={value}" for name, value in pairs))


def _is_json(kind: str, subtype: str) -> bool:
    kind, subtype = kind.lower(), subtype.lower()
    if "*" in kind or "*" in subtype:
        return False
    return (kind, subtype) == ("application", "json") or (
        subtype.endswith("+json") and subtype != "+json"
    )


@st.composite
def non_json_media_types(draw: st.DrawFn) -> str:
    kind = draw(_token | st.sampled_from(["application", "APPLICATION", "text", "multipart"]))
    subtype = draw(
        _token
        | st.sampled_from(["json", "JSON", "jsonx", "x-www-form-urlencoded", "json+xml", "+json"])
    )
    if _is_json(kind, subtype):
        subtype += "x"
    return f"{kind}/{subtype}{draw(_params)}"


@st.composite
def json_media_types(draw: st.DrawFn) -> str:
    kind, subtype = draw(
        st.sampled_from([("application", "json"), ("application", "vnd.a+json")])
        | st.tuples(_name, _name.map(lambda name: name + "+json"))
    )
    flip = draw(st.booleans())
    media_type = f"{kind}/{subtype}"
    return (media_type.upper() if flip else media_type) + draw(_params)


bodies = (
    st.just(POLYGLOT)
    | st.binary(max_size=50)
    | st.builds(
        lambda value: json.dumps({"fields": {"project": {"key": value}}}).encode(),
        st.just("JRA") | st.text(max_size=5),
    )
)


@given(content_type=non_json_media_types(), body=bodies)
def test_any_non_json_media_type_fails_the_clause(content_type: str, body: bytes) -> None:
    result = RULE.explain(post(content_type, body=body))
    assert not result.matched
    assert result.reason.startswith("body is not JSON (")
    assert not RuleSet((RULE,)).reads_body(post(content_type, body=body))


@given(content_type=json_media_types(), body=bodies)
def test_any_json_media_type_reads_the_body_as_application_json_does(
    content_type: str, body: bytes
) -> None:
    assert RULE.explain(post(content_type, body=body)) == RULE.explain(
        post("application/json", body=body)
    )


@given(value=st.text(max_size=40), body=bodies)
def test_any_content_type_value_either_reads_the_body_or_fails_the_clause(
    value: str, body: bytes
) -> None:
    result = RULE.explain(post(value, body=body))
    json_result = RULE.explain(post("application/json", body=body))
    assert result == json_result or result.reason.startswith("body is not JSON (")
    if result.matched:
        media_type = value.split(";", 1)[0].strip(" \t")
        kind, _, subtype = media_type.partition("/")
        assert _is_json(kind, subtype)


# --- through ApiTokens: the token is refused, with the reason in the audit log -------------


@pytest.fixture
def tokens() -> Iterator[ApiTokens]:
    with make_tokens(protected_paths=["/rest/"]) as tokens:
        yield tokens


def test_through_api_tokens_the_form_is_forbidden_and_audited(tokens: ApiTokens) -> None:
    issued = tokens.create(
        actor="alice", name="jira", scope=Scope.READ_WRITE, restrictions=[str(RULE)]
    )
    auth = ("Authorization", f"Bearer {issued.secret}")

    def request(content_type: str) -> AuthRequest:
        headers = [auth, ("Content-Type", content_type)]
        return AuthRequest("POST", "/rest/issue", headers=headers, body=POLYGLOT)

    assert tokens.authenticate(request("application/json; charset=utf-8")).authenticated
    refused = tokens.authenticate(request(FORM))
    assert (refused.status_code, refused.outcome) == (403, Outcome.FORBIDDEN)
    event = last_event(tokens)
    assert (event.outcome, event.token_id) == (Outcome.FORBIDDEN, issued.token.id)
    assert f"body is not JSON (Content-Type {FORM})" in event.reason
