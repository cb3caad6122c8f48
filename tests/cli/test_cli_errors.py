"""User errors are one line on stderr and exit 2; settings come from options and the environment."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from apitokens import TOKEN_PATTERN

from .conftest import Cli, authenticate

ERRORS = [
    (
        ["create", "--name", "x", "--expires-in", "3x"],
        "argument --expires-in: invalid duration '3x' (e.g. 30d, 12h, 10m, 45s, 2w, or combined:"
        " 1h30m) (see: apitokens create --help)",
    ),
    (
        ["audit", "--since", "yesterday"],
        "argument --since: invalid duration or date 'yesterday' (a duration ago (90d) or an ISO"
        " 8601 date (2026-01-31, 2026-01-31T12:00Z)) (see: apitokens audit --help)",
    ),
    (["show", "nope"], "no token 'nope'"),
    (["revoke", "nope"], "no token with that id (an id is 12 base62 characters)"),
    (["rotate", "nope"], "no token with that id (an id is 12 base62 characters)"),
    (
        ["create", "--name", "x", "--rule", "[FETCH].*"],
        "--rule '[FETCH].*': column 2: unknown method 'FETCH' (a leading [...] of letters and"
        " commas is a method list); use GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE,"
        " CONNECT (see it marked: apitokens rule check RULE GET /)",
    ),
    (
        ["create", "--name", "x", "--ip", "10.0.0.300/8"],
        "argument --ip: '10.0.0.300/8' is not an IP address or CIDR network (e.g. 203.0.113.0/24,"
        " 2001:db8::/32) (see: apitokens create --help)",
    ),
    (["create", "--name", "x", "--expires-at", "2020-01-01"], "expires_at is in the past"),
    (
        ["create", "--name", "x", "--url", "ftp://example.com/"],
        "argument --url: snippet url must be an http(s) URL, got 'ftp://example.com/'"
        " (see: apitokens create --help)",
    ),
    (
        ["create", "--name", "x", "--user", "bob", "--unbound"],
        "argument --unbound: not allowed with argument --user (see: apitokens create --help)",
    ),
    (
        ["create", "--scope", "admin", "--name", "x"],
        "argument --scope: invalid scope 'admin' (choose read-only or read-write)"
        " (see: apitokens create --help)",
    ),
    (
        ["create"],
        "the following arguments are required: --name (see: apitokens create --help)",
    ),
    (
        ["--prefix", "APT", "list"],
        "token prefix must be 2-10 characters of [a-z0-9], got 'APT'",
    ),
    (
        ["list", "--limit", "-1"],
        "argument --limit: expected a whole number >= 0, got '-1' (see: apitokens list --help)",
    ),
    (["rule"], "the following arguments are required: COMMAND (see: apitokens rule --help)"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_a_user_error_is_one_line_on_stderr_and_exits_2(
    cli: Cli, args: list[str], message: str
) -> None:
    result = cli(*args)
    assert (result.code, result.out, result.err) == (2, "", f"apitokens: error: {message}\n")


def test_secure_and_revoked_tokens_refuse_what_they_cannot_do(cli: Cli) -> None:
    token_id = cli.json("create", "--name", "x")["token"]["id"]
    cli.ok("revoke", token_id)
    result = cli("rotate", token_id)
    assert (result.code, result.out, result.err) == (2, "", "apitokens: error: token is revoked\n")


def test_unknown_subcommand(cli: Cli) -> None:
    result = cli.installed("frob")
    assert result.code == 2
    assert result.err.startswith("apitokens: error: argument COMMAND: invalid choice: 'frob'")
    assert len(result.err.splitlines()) == 1


def test_database_errors(cli: Cli) -> None:
    newer = cli.cwd / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 999")
    conn.close()
    junk = cli.cwd / "junk.db"
    junk.write_text("not a database, just text" * 100)
    cases = {
        str(cli.cwd): f"database {str(cli.cwd)!r} is a directory, not a file",
        str(cli.cwd / "no" / "t.db"): (
            f"database {str(cli.cwd / 'no' / 't.db')!r}: "
            f"directory {str(cli.cwd / 'no')!r} does not exist"
        ),
        str(newer): "has schema version 999, but this apitokens supports schema versions up to",
        str(junk): "file is not a database",
    }
    for path, message in cases.items():
        result = cli("--db", path, "list", db=False)
        assert (result.code, result.out) == (2, ""), result
        assert result.err.startswith("apitokens: error: ")
        assert message in result.err
        assert len(result.err.splitlines()) == 1
        assert "Traceback" not in result.err
    assert not (cli.cwd / "no").exists()


def test_the_database_defaults_to_the_environment_then_the_working_directory(cli: Cli) -> None:
    first = cli("create", "--name", "here", db=False)
    assert first.code == 0
    assert first.err == "apitokens: created a new database 'apitokens.db'\n"
    assert (cli.cwd / "apitokens.db").is_file()
    assert [t["name"] for t in cli.json("list")] == []  # cli.db is another file

    listed = cli.installed("list", "--json", db=False, env={"APITOKENS_DB": str(cli.db)})
    assert (listed.code, listed.out, listed.err) == (0, "[]\n", "")
    assert "here" in cli.ok("list", db=False).out


def test_prefix_and_actor_come_from_options_or_the_environment(cli: Cli) -> None:
    by_env = cli("create", "--name", "p", "--json", env={"APITOKENS_PREFIX": "acme"})
    assert by_env.code == 0
    assert by_env.out.count('"secret": "acme_') == 1
    by_option = cli("--prefix", "zz9", "create", "--name", "p", env={"APITOKENS_PREFIX": "acme"})
    assert TOKEN_PATTERN.fullmatch(by_option.lines[4])
    assert by_option.lines[4].startswith("zz9_")

    login = cli("create", "--name", "mine", "--json", actor=None, env={"LOGNAME": "carol"})
    assert login.code == 0
    created = cli.json("show", login.out.split('"id": "')[1][:12])
    assert (created["user"], created["created_by"]) == ("carol", "carol")


def test_global_options_may_follow_the_subcommand(cli: Cli) -> None:
    other = cli.cwd / "other.db"
    result = cli("create", "--name", "late", "--db", str(other), "--actor", "dave", db=False)
    assert result.code == 0
    assert "('late', user dave)" in result.lines[0]
    assert "late" in cli("list", "--db", str(other), db=False).out
    assert "late" not in cli.ok("list").out


def test_names_and_paths_cannot_drive_the_terminal(cli: Cli) -> None:
    # The path of an HTTP request lands in the audit log as sent; an owner name is any string.
    _, secret = cli.create("--name", "ok", "--user", "\u202eeve")
    authenticate(cli.db, secret, path="/rest/\x1b]0;pwned\x07\nFAKE  row")
    for args in (["list"], ["audit"], ["audit", "--json"]):
        out = cli.ok(*args).out
        assert not {"\x1b", "\x07", "\u202e"} & set(out)
    audit = cli.ok("audit").lines
    assert len(audit) == 3
    assert "/rest/\\x1b]0;pwned\\x07\\nFAKE  row" in audit[1]
    assert "\\u202eeve" in cli.ok("list").lines[1]


def test_help_and_version(cli: Cli) -> None:
    help_ = cli.ok("--help", db=False, actor=None).out
    for command in ("create", "list", "show", "revoke", "rotate", "reveal", "snippet",
                    "revoke-unused", "audit", "prune-audit", "rule"):  # fmt: skip
        assert f"\n    {command} " in help_
    assert cli.ok("--version", db=False, actor=None).out.startswith("apitokens ")


def test_only_create_makes_a_new_database(cli: Cli) -> None:
    """`list` or `audit` on a mistyped path must not answer "nothing" from a new empty file."""
    for command in (
        ["list"],
        ["audit"],
        ["show", "AAAAAAAAAAAA"],
        ["revoke-unused", "--since", "90d"],
    ):
        result = cli("--db", "typo.db", *command, db=False)
        assert (result.code, result.out) == (2, ""), (command, result)
        assert "no database at 'typo.db'" in result.err, result.err
        assert not (cli.cwd / "typo.db").exists()
    made = cli("--db", "new.db", "create", "--name", "first", db=False)
    assert made.code == 0 and (cli.cwd / "new.db").is_file()


def test_a_dead_services_journal_is_replayed_by_the_command(cli: Cli) -> None:
    """A service killed before its writer wrote: `audit` and `show` still see every use."""
    token_id, secret = cli.create("--name", "svc")
    script = f"""
import os
from apitokens import ApiTokens, AuthRequest, SQLiteStore
tokens = ApiTokens(SQLiteStore({str(cli.db)!r}))
for n in range(3):
    request = AuthRequest("GET", f"/rest/{{n}}", headers=[("Authorization", "Bearer {secret}")])
    assert tokens.authenticate(request).authenticated
os._exit(0)  # as SIGKILL would: no flush, no close, no atexit
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    journals = cli.db.with_name(cli.db.name + ".apitokens-journal")
    assert [p.suffix for p in journals.iterdir()] == [".jnl"]
    audit = cli("audit", "--action", "authenticate", "--json")
    assert audit.code == 0
    assert (
        audit.err == "apitokens: replayed 3 audit events from the journals of stopped processes\n"
    )
    assert sorted(e["path"] for e in json.loads(audit.out)) == ["/rest/0", "/rest/1", "/rest/2"]
    assert cli.json("show", token_id)["use_count"] == 3
    assert not journals.exists()  # replayed and deleted: the next command replays nothing
    assert cli.ok("audit").err == ""
