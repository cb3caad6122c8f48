"""Property tests for restriction rules: round trip, fuzzing, built-to-match requests."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import regex  # type: ignore[import-untyped,unused-ignore]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apitokens._errors import RuleSyntaxError
from apitokens._request import AuthRequest
from apitokens.rules import RestrictionRule, RuleMatch, RuleSet
from apitokens.rules._regex import CLAUSE_HEAD, LocatedError, is_clause_head, scan_regex
from apitokens.rules._syntax import METHODS

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A generous budget: these properties are about the decision, not about time.
TIMEOUT = 5.0

# --- rule texts from parts -----------------------------------------------------------------

URL_FRAGMENTS = [
    "api",
    "/",
    "-",
    "_",
    "x+",
    "(a)?",
    "(?:a|b)",
    "(?i:ab)",
    r"\.",
    r"\d",
    r"\ ",
    "a b",
    "é",
    "%",
    "[A-Z]",
    "[a-z]{2}",
    "[0-9]{1,3}",
    "[]]",
    "[]a-c]",
    "[^]/]*",
    "[^]]",
    "[[:alpha:]]",
    "[[]",
    "[[]QueryParam::a==b]",
    "[[]JsonData::a==b]",
    r"\[QueryParam::x==y]",
    r"\[JsonData::x==y\]",
    r"\]",
    "]",
    "(?#])",
    "(?#[)",
    "(?#[QueryParam::a==b])",
]
CLAUSE_FRAGMENTS = [
    "",
    "a",
    "==",
    " ",
    "x{2}",
    "a|b",
    "[A-Z]+",
    "[]]",
    "[^]]*",
    r"\]",
    r"\[",
    "[[:digit:]]",
    "[[]QueryParam::y==z[]]",
    "(?#])",
    r"\\",
    "true",
    "2018-01-01",
]
NAME_CHARS = string.ascii_letters + string.digits + "_-. "

blank = st.text(alphabet=" \t", max_size=2)


@st.composite
def method_lists(draw: st.DrawFn) -> tuple[str, tuple[str, ...]]:
    """(method list text as a user might write it, expected canonical methods)."""
    names = draw(st.lists(st.sampled_from(METHODS), max_size=4))
    if not names:
        return "", ()
    spelled = [draw(st.sampled_from([n, n.lower(), n.title()])) for n in names]
    items = [draw(blank) + s + draw(blank) for s in spelled]
    return "[" + ",".join(items) + "]", tuple(dict.fromkeys(names))


def regex_from(fragments: list[str], min_size: int = 0) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(fragments), min_size=min_size, max_size=5).map("".join)


json_key = st.text(alphabet="abz019_.\\ ", min_size=1, max_size=5)


def escape_key(key: str) -> str:
    return key.replace("\\", "\\\\").replace(".", "\\.")


@st.composite
def clauses(draw: st.DrawFn) -> tuple[str, str, str]:
    """(kind, name or path as written, regex source)."""
    kind = draw(st.sampled_from(["QueryParam", "JsonData"]))
    if kind == "QueryParam":
        name = draw(st.text(alphabet=NAME_CHARS, min_size=1, max_size=8))
    else:
        name = ".".join(escape_key(k) for k in draw(st.lists(json_key, min_size=1, max_size=3)))
    return kind, name, draw(regex_from(CLAUSE_FRAGMENTS))


@dataclass
class RuleParts:
    text: str
    methods: tuple[str, ...]
    url: str
    query: tuple[tuple[str, str], ...]
    json: tuple[tuple[str, str], ...]


@st.composite
def rule_parts(draw: st.DrawFn) -> RuleParts:
    methods_text, methods = draw(method_lists())
    url = draw(st.sampled_from(["/", ".*"])) + draw(regex_from(URL_FRAGMENTS))
    parts = draw(st.lists(clauses(), max_size=4))
    text = draw(blank) + methods_text + draw(blank) + url + draw(blank)
    for kind, name, source in parts:
        text += f"[{kind}::{name}=={source}]" + draw(blank)
    query = tuple((n, s) for k, n, s in parts if k == "QueryParam")
    json_ = tuple((n, s) for k, n, s in parts if k == "JsonData")
    return RuleParts(text, methods, url, query, json_)


@PROPERTY
@given(rule_parts())
def test_parse_reads_the_parts_and_round_trips(parts: RuleParts) -> None:
    rule = RestrictionRule.parse(parts.text)
    assert (rule.methods, rule.url, rule.query, rule.json) == (
        parts.methods,
        parts.url,
        parts.query,
        parts.json,
    )
    again = RestrictionRule.parse(str(rule))
    assert again == rule
    assert hash(again) == hash(rule)
    assert str(again) == str(rule)


# --- arbitrary text ------------------------------------------------------------------------

GRAMMAR_TOKENS = [
    "[",
    "]",
    "\\",
    "[QueryParam::",
    "[JsonData::",
    "[queryparam:",
    "[Foo::",
    "==",
    "=",
    ":",
    "GET",
    "post",
    ",",
    ".",
    ".*",
    "*",
    "(",
    ")",
    "(?#",
    "(?x)",
    "(?V1)",
    "[:alpha:]",
    "^",
    "{2}",
    "{99999}",
    "|",
    " ",
    "\t",
    "\n",
    "\x00",
    "a",
    "\\.",
    "é",
]
arbitrary_rules = st.one_of(
    st.text(),
    st.text(alphabet="[]\\:=.*,^(){}|?+ \tQueryParamJsonDataGETpost"),
    st.lists(st.sampled_from(GRAMMAR_TOKENS), max_size=20).map("".join),
)


@PROPERTY
@given(arbitrary_rules)
def test_arbitrary_text_parses_or_raises_rule_syntax_error(text: str) -> None:
    try:
        rule = RestrictionRule.parse(text)
    except RuleSyntaxError as exc:
        error = exc
    else:
        assert RestrictionRule.parse(str(rule)) == rule
        return
    assert error.rule == text
    assert 1 <= error.column <= len(text) + 1
    assert error.reason
    assert str(error) == f"column {error.column}: {error.reason}"


@PROPERTY
@given(st.lists(arbitrary_rules, max_size=4))
def test_arbitrary_lines_make_a_rule_set_or_raise_rule_syntax_error(lines: list[str]) -> None:
    try:
        rules = RuleSet.parse(lines)
    except RuleSyntaxError as exc:
        error = exc
    else:
        assert len(rules.rules) <= len(lines)
        return
    assert error.reason.startswith("rule ")


REGEX_TOKENS = [
    "[",
    "]",
    "[^",
    "[]",
    "\\",
    "\\]",
    "\\[",
    "^",
    ":",
    "[:",
    ":]",
    "[:alpha:]",
    "[:^digit:]",
    "[:script=latin:]",
    "(",
    ")",
    "(?#",
    "(?:",
    "(?i)",
    "a",
    "-",
    "{2}",
    "{,3}",
    "{e<=1:",
    "}",
    "?",
    "*",
    "|",
    ".",
    "#",
    " ",
]


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(REGEX_TOKENS), max_size=12).map("".join))
def test_scanner_agrees_with_the_regex_module_on_character_classes(source: str) -> None:
    # The scanner stops at a clause start only outside a character class. If it skipped
    # one that the regex module reads as outside a class, a clause could vanish into
    # the URL regex; so wherever regex compiles the text, the scanner must be outside.
    text = source + "[QueryParam::x==y]"
    try:
        stop = scan_regex(text, 0, len(text), in_clause=False)
    except LocatedError:
        return  # refused syntax (verbose, V1, size): never compiled
    try:
        regex.compile(source, regex.VERSION0)
    except regex.error as error:
        if "unterminated character set" in str(error):
            assert stop != len(source)
        return
    # "[a::" inside the regex itself is read as an (unknown) clause: an error, not a miss.
    assert stop == len(source) or is_clause_head(CLAUSE_HEAD.match(text, stop))


# --- requests built to match ---------------------------------------------------------------

safe_char = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"), exclude_characters="./%\\~")
literal = st.text(alphabet=safe_char, max_size=6)


@st.composite
def pieces(draw: st.DrawFn) -> tuple[str, str]:
    """A (regex, text it fullmatches) pair; no regex here matches a text with '~'."""
    kind = draw(st.sampled_from(["literal", "letters", "digits", "bracket"]))
    if kind == "literal":
        text = draw(literal)
        return regex.escape(text), text
    if kind == "letters":
        return "[a-z]+", draw(st.text(alphabet="abcxyz", min_size=1, max_size=5))
    if kind == "digits":
        return "[0-9]{1,4}", draw(st.text(alphabet="0123456789", min_size=1, max_size=4))
    return "[]]", "]"


def joined(items: list[tuple[str, str]]) -> tuple[str, str]:
    return "".join(r for r, _ in items), "".join(t for _, t in items)


piece_runs = st.lists(pieces(), min_size=1, max_size=3).map(joined)


@st.composite
def json_values(draw: st.DrawFn) -> tuple[str, object]:
    """(regex, JSON value it matches)."""
    kind = draw(st.sampled_from(["string", "int", "float", "bool", "null", "array"]))
    if kind == "string":
        source, text = draw(piece_runs)
        return source, text
    if kind == "int":
        number = draw(st.integers(-(10**20), 10**20))
        return regex.escape(str(number)), number
    if kind == "float":
        real = draw(st.floats(allow_nan=False, allow_infinity=False))
        return regex.escape(json.dumps(real)), real
    if kind == "bool":
        flag = draw(st.booleans())
        return ("true" if flag else "false"), flag
    if kind == "null":
        return "null", None
    items = draw(st.lists(st.text(alphabet="abc", max_size=3), min_size=1, max_size=3))
    return "[abc]*", items


_KEEP = object()


@dataclass
class Scenario:
    rule: str
    methods: tuple[str, ...]
    method: str
    path: str
    query: list[tuple[str, str]]
    query_names: list[str]
    body: dict[str, object] | None
    json_paths: list[list[str]] = field(default_factory=list)

    def request(
        self,
        *,
        method: str | None = None,
        path: str | None = None,
        query: list[tuple[str, str]] | None = None,
        body: object = _KEEP,
    ) -> AuthRequest:
        body = self.body if body is _KEEP else body
        return AuthRequest(
            self.method if method is None else method,
            self.path if path is None else path,
            urlencode(self.query if query is None else query),
            headers=[("Content-Type", "application/json")],
            body=b"" if body is None else json.dumps(body).encode(),
        )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    methods = tuple(draw(st.lists(st.sampled_from(METHODS), unique=True, max_size=3)))
    method = draw(st.sampled_from(methods or METHODS))
    method = draw(st.sampled_from([method, method.lower()]))
    # No empty segment: the rules see a path with repeated slashes collapsed.
    segments = draw(st.lists(piece_runs.filter(lambda run: run[1] != ""), max_size=3))
    url = "/api/" + "/".join(r for r, _ in segments)
    path = quote("/api/" + "/".join(t for _, t in segments), safe="/")
    rule = ("[" + ",".join(methods) + "]" if methods else "") + url

    names = draw(
        st.lists(st.from_regex(r"[A-Za-z0-9_]{1,6}", fullmatch=True), unique=True, max_size=3)
    )
    query: list[tuple[str, str]] = []
    for name in names:
        if draw(st.booleans()):
            source, text = draw(piece_runs)
            values = [text] * draw(st.integers(1, 2))
        else:
            source = "[a-z ]*"
            values = draw(st.lists(st.text(alphabet="ab z", max_size=4), min_size=1, max_size=3))
        rule += f"[QueryParam::{name}=={source}]"
        query += [(name, value) for value in values]
    query += [("unconstrained_param", draw(literal))]  # unconstrained parameters do not matter

    body: dict[str, object] | None = None
    json_paths: list[list[str]] = []
    firsts = draw(st.lists(json_key, unique=True, max_size=3))
    for first in firsts:
        body = {} if body is None else body
        keys = [first, *draw(st.lists(json_key, max_size=2))]
        source, value = draw(json_values())
        node = body
        for key in keys[:-1]:
            node = node.setdefault(key, {})  # type: ignore[assignment]
        node[keys[-1]] = value
        json_paths.append(keys)
        rule += f"[JsonData::{'.'.join(escape_key(k) for k in keys)}=={source}]"
    if body is not None:
        body["unconstrained"] = draw(literal)
    return Scenario(rule, methods, method, path, query, names, body, json_paths)


@PROPERTY
@given(scenarios())
def test_a_request_built_for_a_rule_matches_it(scenario: Scenario) -> None:
    rule = RestrictionRule.parse(scenario.rule)
    request = scenario.request()
    assert rule.explain(request, timeout=TIMEOUT) == RuleMatch(True, "")
    assert rule.matches(request, timeout=TIMEOUT)
    rules = RuleSet.parse([scenario.rule])
    assert rules.needs_body == (scenario.body is not None)
    assert rules.match(request, timeout=TIMEOUT).matched


def nested_set(body: dict[str, object], keys: list[str], value: object) -> dict[str, object]:
    copy = json.loads(json.dumps(body))
    node = copy
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return copy  # type: ignore[no-any-return]


@PROPERTY
@given(scenarios(), st.data())
def test_changing_a_constrained_part_stops_the_match(
    scenario: Scenario, data: st.DataObject
) -> None:
    rule = RestrictionRule.parse(scenario.rule)
    changes = [
        (scenario.request(path=scenario.path.replace("/api/", "/apx/", 1)), "path does not match")
    ]
    if scenario.methods:
        other = data.draw(st.sampled_from([m for m in METHODS if m not in scenario.methods]))
        changes.append((scenario.request(method=other), f"method {other} not in"))
    for name in scenario.query_names:
        without = [(n, v) for n, v in scenario.query if n != name]
        changes.append((scenario.request(query=without), f"query parameter '{name}' is missing"))
        extra = [*scenario.query, (name, "~")]
        changes.append((scenario.request(query=extra), f"query parameter '{name}' does not match"))
    for keys in scenario.json_paths:
        assert scenario.body is not None
        path = ".".join(escape_key(k) for k in keys)
        changed = nested_set(scenario.body, keys, "~")
        changes.append((scenario.request(body=changed), f"JSON value '{path}' does not match"))
        emptied = nested_set(scenario.body, keys, [])
        changes.append((scenario.request(body=emptied), f"JSON value '{path}' is an empty array"))
    if scenario.body is not None:
        changes.append((scenario.request(body=None), "JSON body is empty"))
        changes.append((scenario.request(body=[scenario.body]), "JSON body is not an object"))
    request, words = data.draw(st.sampled_from(changes))
    result = rule.explain(request, timeout=TIMEOUT)
    assert not result.matched
    assert words in result.reason
    assert not RuleSet.parse([scenario.rule]).match(request, timeout=TIMEOUT)


# --- matching never raises -----------------------------------------------------------------

FUZZ_RULES = RuleSet.parse(
    [
        "[GET,POST].*/rest/.*[QueryParam::a==[0-9]+][JsonData::x.y==.*]",
        "[PUT]/(a|b)+[JsonData::0==.*][JsonData::a\\.b==true]",
        ".*[QueryParam::b==][JsonData::arr.1==x]",
        "/exact",
    ]
)
path_like = st.lists(
    st.sampled_from(
        [
            "/",
            "rest",
            ".",
            "..",
            "%2e",
            "%2F",
            "%5c",
            "%00",
            "%",
            "%ff",
            "%C3%A9",
            "%25",
            ";",
            "\\",
            "\x00",
            "a",
            "é",
            "\udcff",
            "(a|aa)",
            "aaaaaaaa",
        ]
    ),
    max_size=12,
).map("".join)
json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["x", "y", "a.b", "arr", "0", "1"]), children, max_size=3)
    ),
    max_leaves=10,
).map(lambda value: json.dumps(value).encode())


@PROPERTY
@given(
    method=st.text(max_size=8) | st.sampled_from([*METHODS, "get", "po\u017ft"]),
    path=st.text() | path_like,
    query=st.text() | st.lists(st.tuples(st.text(max_size=3), st.text(max_size=3))).map(urlencode),
    body=st.binary() | json_like,
    content_types=st.lists(
        st.sampled_from(["application/json", "application/x-www-form-urlencoded"]) | st.text(),
        max_size=2,
    ),
)
def test_matching_never_raises(
    method: str, path: str, query: str, body: bytes, content_types: list[str]
) -> None:
    headers = [("Content-Type", value) for value in content_types]
    request = AuthRequest(method, path, query=query, headers=headers, body=body)
    result = FUZZ_RULES.match(request)
    assert isinstance(result, RuleMatch)
    assert result.matched == (result.reason == "")
    verdicts = [rule.explain(request) for rule in FUZZ_RULES.rules]
    assert all(isinstance(verdict, RuleMatch) for verdict in verdicts)
    assert result.matched == any(verdicts)
