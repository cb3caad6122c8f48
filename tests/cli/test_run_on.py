"""``apitokens.cli.run_on``: the command's subcommands on an application's own ApiTokens
(what ``python manage.py apitokens`` runs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from apitokens import ApiTokens, AuthRequest, MemoryStore, Outcome, Policy, SQLiteStore
from apitokens.cli import run_on
from tests.support import CHEAP_HASHER, Monotonic


def run(
    tokens: ApiTokens, capsys: pytest.CaptureFixture[str], *argv: str, prog: str = "apitokens"
) -> tuple[int, str, str]:
    code = run_on(tokens, ["--actor", "root", *argv], prog=prog)
    out, err = capsys.readouterr()
    return code, out, err


def created(tokens: ApiTokens, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(tokens, capsys, "create", "--name", "ci", "--json", *argv)
    assert (code, err) == (0, ""), err
    secret: str = json.loads(out)["secret"]
    return secret


def request(secret: str) -> AuthRequest:
    return AuthRequest("GET", "/api/x", headers=[("Authorization", f"Bearer {secret}")])


@pytest.fixture
def members() -> Iterator[ApiTokens]:
    """An application whose policy lets only the group ``api`` hold tokens."""
    with ApiTokens(
        MemoryStore(),
        policy=Policy(token_users={"api"}),
        groups=lambda user: {"api"} if user in ("alice", "root") else set(),
        hasher=CHEAP_HASHER,
    ) as tokens:
        yield tokens


def test_the_applications_groups_decide_who_may_hold_a_token(
    members: ApiTokens, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = created(members, capsys, "--user", "alice")
    assert members.authenticate(request(secret)).outcome is Outcome.SUCCESS
    code, out, err = run(members, capsys, "create", "--name", "ci", "--user", "bob")
    assert (code, out) == (2, "")
    assert err == "apitokens: error: 'bob' is not in token_users\n"
    # The actor's own token: the actor keeps the application's groups too.
    assert members.authenticate(request(created(members, capsys))).user == "root"


def test_the_actor_needs_no_groups_of_the_application(capsys: pytest.CaptureFixture[str]) -> None:
    def groups(user: str) -> set[str]:
        if user != "alice":
            raise LookupError(f"no user {user}")  # a login name the application never saw
        return set()

    with ApiTokens(MemoryStore(), groups=groups, hasher=CHEAP_HASHER) as tokens:
        assert created(tokens, capsys, "--user", "alice")


def test_the_applications_lifetime_limit_holds(capsys: pytest.CaptureFixture[str]) -> None:
    policy = Policy(max_lifetime=timedelta(days=30))
    with ApiTokens(MemoryStore(), policy=policy, hasher=CHEAP_HASHER) as tokens:
        code, _, err = run(tokens, capsys, "create", "--name", "long", "--expires-in", "60d")
        assert code == 2
        assert err.startswith("apitokens: error: ") and err.count("\n") == 1
        assert created(tokens, capsys, "--expires-in", "20d")


def test_a_revocation_shows_at_once_in_the_applications_instance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # SQLite tells no other instance of a change; the clock never moves, so without the
    # command dropping the application's cached records the token stays good.
    store = SQLiteStore(tmp_path / "tokens.db")
    try:
        with ApiTokens(store, hasher=CHEAP_HASHER, monotonic=Monotonic(), journal=False) as app:
            secret = created(app, capsys, "--user", "alice")
            assert app.authenticate(request(secret)).outcome is Outcome.SUCCESS
            (token,) = app.list(actor="alice")
            code, _, err = run(app, capsys, "revoke", token.id)
            assert (code, err) == (0, "")
            assert app.authenticate(request(secret)).outcome is Outcome.FAILED
    finally:
        store.close()


def test_db_and_prefix_are_the_applications_and_not_in_the_help(
    members: ApiTokens, capsys: pytest.CaptureFixture[str]
) -> None:
    for option in ("--db", "--prefix"):
        code, out, err = run(members, capsys, option, "x", "list")
        assert (code, out) == (2, "")
        assert err == (
            "apitokens: error: --db and --prefix are the application's here (its ApiTokens)\n"
        )
    code, out, err = run(members, capsys, "--help", prog="manage.py apitokens")
    assert (code, err) == (0, "")
    assert out.startswith("usage: manage.py apitokens [-h] [--version] [--actor NAME] COMMAND")
    assert "--db" not in out and "--prefix" not in out
    code, out, _ = run(members, capsys, "create", "--help", prog="manage.py apitokens")
    assert out.startswith("usage: manage.py apitokens create")
    assert "--db" not in out and "--actor" in out
    code, out, err = run(members, capsys, "lst", prog="manage.py apitokens")
    assert (code, out) == (2, "")
    assert err.endswith("(see: manage.py apitokens --help)\n") and err.count("\n") == 1


def test_a_function_gives_the_instance_only_when_a_subcommand_needs_it(
    members: ApiTokens, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []

    def resolve() -> ApiTokens:
        calls.append("resolve")
        return members

    assert run_on(resolve, ["--help"]) == 0
    assert run_on(resolve, ["rule", "check", "[get].*", "GET", "/x"]) == 0
    assert calls == []
    assert run_on(resolve, ["--actor", "root", "list"]) == 0
    assert calls == ["resolve"]

    def broken() -> ApiTokens:
        raise ValueError("set APITOKENS to the dotted path of your ApiTokens")

    capsys.readouterr()
    assert run_on(broken, ["--actor", "root", "list"]) == 2
    assert capsys.readouterr() == (
        "",
        "apitokens: error: set APITOKENS to the dotted path of your ApiTokens\n",
    )


def test_the_command_sees_what_the_applications_instance_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The clock never moves: the application's writer holds its events until a flush.
    store = SQLiteStore(tmp_path / "tokens.db")
    try:
        with ApiTokens(store, hasher=CHEAP_HASHER, monotonic=Monotonic(), journal=False) as app:
            secret = created(app, capsys, "--user", "alice")
            assert app.authenticate(request(secret)).outcome is Outcome.SUCCESS
            code, out, _ = run(app, capsys, "audit", "--json")
            assert code == 0
            assert [e["action"] for e in json.loads(out)] == ["authenticate", "create"]
            code, out, _ = run(app, capsys, "list", "--json")
            assert [t["use_count"] for t in json.loads(out)] == [1]
    finally:
        store.close()
