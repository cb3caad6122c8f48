"""Rate limits and credits through the command (DESIGN §11): ``create`` and ``edit`` set them,
``show`` and ``list`` show them, a malformed one is a usage error and creates nothing.

Most tests run the command's own code on a MemoryStore through ``run_on`` (what
``manage.py apitokens`` runs), with a clock the tests move; the last ones run the
installed command's ``main`` on a SQLite file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from apitokens import ApiTokens, AuthRequest, AuthResult, MemoryStore, Outcome
from apitokens.cli import run_on
from tests.support import CHEAP_HASHER, Clock

from .conftest import Cli, authenticate


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(clock: Clock) -> Iterator[ApiTokens]:
    with ApiTokens(MemoryStore(), hasher=CHEAP_HASHER, clock=clock) as tokens:
        yield tokens


def run(tokens: ApiTokens, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run_on(tokens, ["--actor", "root", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def ok(tokens: ApiTokens, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(tokens, capsys, *argv)
    assert (code, err) == (0, ""), err
    return out


def created(tokens: ApiTokens, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    """Create a standard-mode token with ``argv``; its id and secret."""
    issued = json.loads(ok(tokens, capsys, "create", "--name", "ci", "--standard", "--json", *argv))
    return issued["token"]["id"], issued["secret"]


def call(tokens: ApiTokens, secret: str) -> AuthResult:
    return tokens.authenticate(
        AuthRequest("GET", "/api/x", headers=[("Authorization", f"Bearer {secret}")])
    )


def test_create_sets_the_limits_and_requests_obey_them(
    tokens: ApiTokens, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    limits = ["--rate-limit", "2/minute", "--credits", "3", "--refill", "1000/d"]
    issued = json.loads(ok(tokens, capsys, "create", "--name", "ci", "--json", *limits))
    shown = {key: issued["token"][key] for key in ("rate_limit", "credits", "refill")}
    assert shown == {"rate_limit": "2/min", "credits": 3, "refill": "1000/day"}  # canonical
    secret = issued["secret"]
    assert [call(tokens, secret).outcome for _ in range(2)] == [Outcome.SUCCESS] * 2
    refused = call(tokens, secret)
    assert (refused.status_code, refused.outcome) == (429, Outcome.FORBIDDEN)
    assert ("RateLimit-Policy", '"rate";q=2;w=60') in refused.headers
    clock.advance(minutes=1)  # the next window
    assert call(tokens, secret).outcome is Outcome.SUCCESS  # the third credit
    spent = call(tokens, secret)
    assert spent.status_code == 429
    assert ("RateLimit-Policy", '"credits";q=3') in spent.headers


def test_create_says_the_limits_in_its_first_line(
    tokens: ApiTokens, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ok(tokens, capsys, "create", "--name", "ci", "--rate-limit", "100/min",
             "--credits", "5000", "--refill", "1000/day")  # fmt: skip
    first = out.splitlines()[0]
    assert re.fullmatch(
        r"Created token \w{12} \('ci', user root\): read_only, expires never, "
        r"limits 100/min, 5000 credits \+1000/day, secure mode\.",
        first,
    ), first
    plain = ok(tokens, capsys, "create", "--name", "plain").splitlines()[0]
    assert plain.endswith(": read_only, expires never, secure mode.")


def test_show_gives_the_limits_and_the_credits_left(
    tokens: ApiTokens, capsys: pytest.CaptureFixture[str]
) -> None:
    token_id, secret = created(tokens, capsys, "--rate-limit", "100/min", "--credits", "5")
    for _ in range(3):
        assert call(tokens, secret).outcome is Outcome.SUCCESS
    lines = ok(tokens, capsys, "show", token_id).splitlines()
    assert lines[-4:] == [
        "rate limit:   100/min",
        "credits:      5",
        "refill:       none",
        "credits left: 2",
    ]
    shown = json.loads(ok(tokens, capsys, "show", token_id, "--json"))
    assert (shown["rate_limit"], shown["credits"], shown["refill"]) == ("100/min", 5, None)
    assert shown["credits_left"] == 2

    plain_id, _ = created(tokens, capsys)
    lines = ok(tokens, capsys, "show", plain_id).splitlines()
    assert lines[-3:] == ["rate limit:   none", "credits:      none", "refill:       none"]
    assert "credits_left" not in json.loads(ok(tokens, capsys, "show", plain_id, "--json"))


def test_list_has_a_limits_column(tokens: ApiTokens, capsys: pytest.CaptureFixture[str]) -> None:
    created(tokens, capsys, "--rate-limit", "10/s")
    created(tokens, capsys, "--credits", "50", "--refill", "5/h", "--rate-limit", "1/day")
    created(tokens, capsys)
    lines = ok(tokens, capsys, "list").splitlines()
    limits = [re.split(r"  +", line)[-2] for line in lines]
    assert limits == ["LIMITS", "-", "1/day, 50 credits +5/h", "10/s"]
    listed = json.loads(ok(tokens, capsys, "list", "--json"))
    assert [(t["rate_limit"], t["credits"], t["refill"]) for t in listed] == [
        (None, None, None),
        ("1/day", 50, "5/h"),
        ("10/s", None, None),
    ]


MALFORMED = [
    (
        ["--rate-limit", "100/fortnight"],
        "argument --rate-limit: rate '100/fortnight' is not of the form N/s, N/min, N/h or N/day"
        " (see: apitokens create --help)",
    ),
    (
        ["--rate-limit", "0/min"],
        "argument --rate-limit: rate: the count must be between 1 and 1000000000"
        " (see: apitokens create --help)",
    ),
    (
        ["--credits", "0"],
        "argument --credits: credits must be between 1 and 1000000000"
        " (see: apitokens create --help)",
    ),
    (
        ["--credits", "5k"],
        "argument --credits: invalid credits '5k' (a whole number of uses)"
        " (see: apitokens create --help)",
    ),
    (
        ["--credits", "9" * 5000],
        "argument --credits: credits must be between 1 and 1000000000"
        " (see: apitokens create --help)",
    ),
    (
        ["--credits", "10", "--refill", "1000"],
        "argument --refill: rate '1000' is not of the form N/s, N/min, N/h or N/day"
        " (see: apitokens create --help)",
    ),
    (["--refill", "1000/day"], "refill needs credits: it gives back spent credits"),
]


@pytest.mark.parametrize(("args", "message"), MALFORMED)
def test_a_malformed_limit_is_a_usage_error_and_creates_nothing(
    tokens: ApiTokens, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(tokens, capsys, "create", "--name", "ci", *args)
    assert (code, out, err) == (2, "", f"apitokens: error: {message}\n")
    assert tokens.list(actor="root") == []


def test_edit_sets_and_removes_each_limit(
    tokens: ApiTokens, capsys: pytest.CaptureFixture[str]
) -> None:
    token_id, secret = created(tokens, capsys, "--credits", "2")
    assert [call(tokens, secret).status_code for _ in range(3)] == [200, 200, 429]

    out = ok(tokens, capsys, "edit", token_id, "--rate-limit", "5/h", "--credits", "10",
             "--refill", "1/day")  # fmt: skip
    assert out == (
        f"Edited token {token_id} ('ci', user root): rate limit 5/h, 10 credits, refill 1/day.\n"
    )
    token = tokens.get(token_id)
    assert token is not None
    assert (token.rate_limit, token.credits, token.refill) == ("5/h", 10, "1/day")
    assert tokens.credits_left(token_id) == 10  # new credits: a new allotment
    assert call(tokens, secret).outcome is Outcome.SUCCESS

    out = ok(tokens, capsys, "edit", token_id, "--no-rate-limit", "--no-credits")
    assert out == (
        f"Edited token {token_id} ('ci', user root): no rate limit, no credits, no refill.\n"
    )
    token = tokens.get(token_id)
    assert token is not None
    assert (token.rate_limit, token.credits, token.refill) == (None, None, None)

    ok(tokens, capsys, "edit", token_id, "--credits", "3", "--refill", "1/h")
    edited = json.loads(ok(tokens, capsys, "edit", token_id, "--no-refill", "--json"))
    assert (edited["credits"], edited["refill"]) == (3, None)


EDIT_ERRORS = [
    (
        ["--rate-limit", "5/h", "--no-rate-limit"],
        "argument --no-rate-limit: not allowed with argument --rate-limit"
        " (see: apitokens edit --help)",
    ),
    (
        ["--credits", "5", "--no-credits"],
        "argument --no-credits: not allowed with argument --credits (see: apitokens edit --help)",
    ),
    (
        ["--refill", "5/h", "--no-refill"],
        "argument --no-refill: not allowed with argument --refill (see: apitokens edit --help)",
    ),
    (
        ["--refill", "5/h", "--no-credits"],
        "--refill needs credits: give --credits, or leave out --no-credits",
    ),
    (["--refill", "5/h"], "refill needs credits: it gives back spent credits"),
    (
        ["--rate-limit", "5 per hour"],
        "argument --rate-limit: rate '5 per hour' is not of the form N/s, N/min, N/h or N/day"
        " (see: apitokens edit --help)",
    ),
]


@pytest.mark.parametrize(("args", "message"), EDIT_ERRORS)
def test_a_bad_limit_edit_is_a_usage_error_and_changes_nothing(
    tokens: ApiTokens, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    token_id, _ = created(tokens, capsys, "--rate-limit", "7/min")
    before = tokens.get(token_id)
    code, out, err = run(tokens, capsys, "edit", token_id, *args)
    assert (code, out, err) == (2, "", f"apitokens: error: {message}\n")
    assert tokens.get(token_id) == before


def test_limits_are_in_the_help(tokens: ApiTokens, capsys: pytest.CaptureFixture[str]) -> None:
    create_help = ok(tokens, capsys, "create", "--help")
    for option in ("--rate-limit RATE", "--credits N", "--refill RATE"):
        assert option in create_help
    edit_help = ok(tokens, capsys, "edit", "--help")
    for option in ("--no-rate-limit", "--no-credits", "--no-refill"):
        assert option in edit_help


# -- the installed command's main, on a SQLite file ----------------------------------------


def test_the_command_creates_and_shows_limits_on_sqlite(cli: Cli) -> None:
    token_id, secret = cli.create("--name", "ci", "--credits", "2", "--rate-limit", "100/min")
    assert authenticate(cli.db, secret).outcome is Outcome.SUCCESS
    shown = cli.json("show", token_id)
    assert (shown["rate_limit"], shown["credits"], shown["credits_left"]) == ("100/min", 2, 1)
    assert cli.ok("show", token_id).lines[-1] == "credits left: 1"
    assert authenticate(cli.db, secret).outcome is Outcome.SUCCESS
    spent = authenticate(cli.db, secret)
    assert (spent.status_code, spent.outcome) == (429, Outcome.FORBIDDEN)


def test_the_command_edits_limits_on_sqlite(cli: Cli) -> None:
    token_id, _ = cli.create("--name", "ci", "--standard", "--credits", "2")
    edited = cli.json("edit", token_id, "--credits", "9", "--rate-limit", "3/s")
    assert (edited["credits"], edited["rate_limit"]) == (9, "3/s")
    assert cli.json("show", token_id)["credits_left"] == 9


def test_the_command_refuses_a_malformed_limit_before_opening_the_store(cli: Cli) -> None:
    result = cli("create", "--name", "ci", "--rate-limit", "lots")
    assert result.code == 2
    assert result.err == (
        "apitokens: error: argument --rate-limit: rate 'lots' is not of the form N/s, N/min,"
        " N/h or N/day (see: apitokens create --help)\n"
    )
    assert cli.json("list") == []
