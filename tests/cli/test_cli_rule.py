"""``apitokens rule check``: exit 0 on a match, 1 with the failing part, 2 with a caret."""

from __future__ import annotations

import pytest

from .conftest import Cli

RULE = ".*/rest/api/2/filter.*[QueryParam::expand==owner|viewers][JsonData::editable==false]"


def test_a_matching_request_exits_0(cli: Cli) -> None:
    result = cli.ok(
        "rule", "check", RULE, "put", "/rest/api/2/filter/10?expand=owner",
        "--json", '{"editable": false}',
    )  # fmt: skip
    assert result.lines == [
        f"rule:     {RULE}",
        "request:  PUT /rest/api/2/filter/10?expand=owner",
        'body:     {"editable": false}',
        "result:   match (the rule allows this request)",
    ]


@pytest.mark.parametrize(
    ("rule", "request_", "reason"),
    [
        ("[GET,HEAD].*/rest/.*", ["POST", "/rest/x"], "method POST not in [GET,HEAD]"),
        ("[get].*/rest/.*", ["GET", "/api/x"], "path does not match '.*/rest/.*'"),
        (RULE, ["GET", "/rest/api/2/filter/1"], "query parameter 'expand' is missing"),
        (
            RULE,
            ["GET", "/rest/api/2/filter/1", "--query", "expand=all"],
            "query parameter 'expand' does not match 'owner|viewers'",
        ),
        (
            RULE,
            ["PUT", "/rest/api/2/filter/1?expand=owner", "--json", '{"editable": true}'],
            "JSON value 'editable' does not match 'false'",
        ),
        (RULE, ["PUT", "/rest/api/2/filter/1?expand=owner"], "JSON body is empty"),
        (
            RULE,
            ["PUT", "/rest/api/2/filter/1?expand=owner", "--json", "{editable: false}"],
            "JSON body is not valid JSON",
        ),
        (".*", ["GET", "/rest/../admin"], "path contains a dot segment"),
    ],
)
def test_each_failing_part_exits_1_with_the_reason(
    cli: Cli, rule: str, request_: list[str], reason: str
) -> None:
    result = cli("rule", "check", rule, *request_, db=False, actor=None)
    assert (result.code, result.err) == (1, "")
    assert result.lines[0].startswith("rule:     ")
    assert result.lines[-1] == f"result:   no match: {reason}"


def test_the_body_can_come_from_a_file_or_stdin(cli: Cli) -> None:
    (cli.cwd / "body.json").write_text('{"editable": false}')
    by_file = cli("rule", "check", RULE, "PUT", "/rest/api/2/filter?expand=viewers",
                  "--json", "@body.json")  # fmt: skip
    by_stdin = cli.installed("rule", "check", RULE, "PUT", "/rest/api/2/filter?expand=viewers",
                             "--json", "@-", stdin='{"editable": false}')  # fmt: skip
    assert by_file.code == by_stdin.code == 0
    assert by_file.out == by_stdin.out
    assert by_file.lines[-1] == "result:   match (the rule allows this request)"


@pytest.mark.parametrize(
    ("rule", "column", "reason"),
    [
        ("[GET].*/rest/(.*", 17, "invalid URL regex: missing )"),
        (".*/x[QueryParm::a==b]", 5, "unknown clause 'QueryParm'"),
        ("[FETCH].*", 2, "unknown method 'FETCH'"),
    ],
)
def test_a_syntax_error_shows_the_rule_a_caret_and_the_message_and_exits_2(
    cli: Cli, rule: str, column: int, reason: str
) -> None:
    result = cli("rule", "check", rule, "GET", "/x", db=False, actor=None)
    assert (result.code, result.out) == (2, "")
    shown, caret, message = result.err.splitlines()
    assert shown == "  " + rule
    assert caret == " " * (2 + column - 1) + "^"
    assert message.startswith(f"apitokens: error: invalid rule: column {column}: {reason}")
    assert "Traceback" not in result.err


def test_rule_check_needs_no_database(cli: Cli) -> None:
    result = cli("rule", "check", ".*", "GET", "/", db=False, actor=None)
    assert result.code == 0
    assert not (cli.cwd / "apitokens.db").exists()
