"""``apitokens edit`` changes only the fields given, and requests see the change at once."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from apitokens import Action, ApiTokens, Outcome, Policy, SQLiteStore

from .conftest import Cli, authenticate

INSIDE, OUTSIDE = "10.1.2.3", "192.0.2.7"


def test_edit_replaces_rules_addresses_and_expiry_and_requests_obey_them(cli: Cli) -> None:
    token_id, secret = cli.create("--name", "CI", "--standard")
    assert authenticate(cli.db, secret, path="/rest/api/x").outcome == Outcome.SUCCESS

    result = cli.ok(
        "edit",
        token_id,
        "--name",
        "CI v2",
        "--rule",
        "[get].*/rest/a/.*",
        "--rule",
        ".*/rest/b",
        "--ip",
        "10.0.0.0/8",
        "--expires-in",
        "30d",
    )
    expected = (
        rf"Edited token {token_id} \('CI v2', user admin\): renamed from 'CI', 2 rules, "
        r"usable from 10\.0\.0\.0/8, expires \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\.\n"
    )
    assert re.fullmatch(expected, result.out), result.out

    allowed = authenticate(cli.db, secret, path="/rest/a/1", client_ip=INSIDE)
    assert allowed.outcome == Outcome.SUCCESS
    assert allowed.token is not None
    assert allowed.token.name == "CI v2"
    assert allowed.token.restrictions == ("[GET].*/rest/a/.*", ".*/rest/b")
    assert allowed.token.expires_at is not None
    in_30_days = datetime.now(UTC) + timedelta(days=30)
    assert abs(allowed.token.expires_at - in_30_days) < timedelta(minutes=1)
    outside_rules = authenticate(cli.db, secret, path="/rest/api/x", client_ip=INSIDE)
    outside_ips = authenticate(cli.db, secret, path="/rest/a/1", client_ip=OUTSIDE)
    assert outside_rules.outcome == outside_ips.outcome == Outcome.FORBIDDEN

    cleared = cli.json("edit", token_id, "--no-rules", "--no-ips", "--no-expiry")
    assert (cleared["name"], cleared["restrictions"], cleared["allowed_ips"]) == ("CI v2", [], [])
    assert cleared["expires_at"] is None
    anywhere = authenticate(cli.db, secret, path="/rest/api/x", client_ip=OUTSIDE)
    assert anywhere.outcome == Outcome.SUCCESS


def test_edit_changes_only_the_options_given_for_any_owner(cli: Cli) -> None:
    # The command makes every actor a token admin, so carol may edit bob's token;
    # a whole token string works as the id, as for revoke.
    token_id, secret = cli.create(
        "--name", "deploy", "--user", "bob", "--standard", "--rule", ".*/x", "--ip", "10.0.0.0/8"
    )
    run = cli.ok(
        "edit",
        secret,
        "--name",
        "deploy v2",
        "--expires-at",
        "2999-01-31T12:00",
        "--json",
        actor="carol",
    )
    edited = json.loads(run.out)
    assert edited["id"] == token_id
    assert edited["name"] == "deploy v2"
    assert edited["expires_at"] == "2999-01-31T12:00:00+00:00"
    assert (edited["user"], edited["restrictions"], edited["allowed_ips"]) == (
        "bob",
        [".*/x"],
        ["10.0.0.0/8"],
    )

    with SQLiteStore(cli.db) as store:
        tokens = ApiTokens(store, policy=Policy())
        try:
            stored = tokens.get(token_id)
            events = tokens.audit(token_id=token_id, action=Action.EDIT)
        finally:
            tokens.close()
    assert stored is not None
    assert stored.name == "deploy v2"
    assert [(event.actor, event.outcome, event.reason) for event in events] == [
        ("carol", Outcome.SUCCESS, "changed expires_at, name")
    ]


def test_a_secure_mode_token_cannot_be_edited(cli: Cli) -> None:
    token_id, _ = cli.create("--name", "secure")
    result = cli("edit", token_id, "--name", "other")
    assert (result.code, result.out, result.err) == (
        2,
        "",
        f"apitokens: error: token {token_id} is in secure mode: only rotate or revoke\n",
    )


ERRORS = [
    (
        [],
        "nothing to change: give --name, --rule, --no-rules, --ip, --no-ips, --expires-in,"
        " --expires-at, --no-expiry, --rate-limit, --no-rate-limit, --credits, --no-credits,"
        " --refill or --no-refill (see: apitokens edit --help)",
    ),
    (
        ["--rule", ".*", "--no-rules"],
        "argument --no-rules: not allowed with argument --rule (see: apitokens edit --help)",
    ),
    (
        ["--rule", ".*/ok", "--rule", "[FETCH].*"],
        "--rule '[FETCH].*': column 2: unknown method 'FETCH' (a leading [...] of letters and"
        " commas is a method list); use GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE,"
        " CONNECT (see it marked: apitokens rule check RULE GET /)",
    ),
]


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=["nothing", "conflict", "bad-rule"])
def test_usage_errors_are_one_line_and_exit_2(cli: Cli, args: list[str], message: str) -> None:
    # Checked before the token is looked up: an id that does not exist is enough.
    result = cli("edit", "AAAAAAAAAAAA", *args)
    assert (result.code, result.out, result.err) == (2, "", f"apitokens: error: {message}\n")
