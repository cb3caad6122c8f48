"""The ``apitokens`` command manages tokens: create, list, show, revoke, rotate, reveal, snippet."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime

import pytest

import apitokens
from apitokens import TOKEN_PATTERN, Outcome, SQLiteStore
from apitokens.cli import main

from .conftest import Cli, authenticate

HEADER = ["ID", "NAME", "USER", "SCOPE", "STATUS", "EXPIRES", "LAST USED", "LIMITS", "USES"]


def test_create_prints_the_token_once_with_a_snippet_and_it_authenticates(cli: Cli) -> None:
    result = cli.installed("create", "--name", "CI report", "--expires-in", "30d")
    assert (result.code, result.err) == (0, ""), result

    assert result.lines[0].startswith("Created token ")
    assert "('CI report', user admin): read_only, expires 20" in result.lines[0]
    assert result.lines[0].endswith(", secure mode.")
    assert result.lines[2] == (
        "Your new token (shown only this once: copy it now, it cannot be shown again):"
    )
    secret = result.lines[4]
    assert TOKEN_PATTERN.fullmatch(secret)
    assert secret.startswith("apt_")
    assert result.lines[6:] == [
        "Example (curl):",
        "",
        f"curl -H 'Authorization: Bearer {secret}' https://example.com/rest/",
    ]

    auth = authenticate(cli.db, secret)
    assert (auth.outcome, auth.status_code, auth.user) == (Outcome.SUCCESS, 200, "admin")
    assert auth.token is not None
    assert result.lines[0].startswith(f"Created token {auth.token.id} ('CI report', user admin)")


def test_create_takes_every_option_of_the_api(cli: Cli) -> None:
    issued = cli.json(
        "create",
        "--name",
        "deploy",
        "--user",
        "bob",
        "--scope",
        "read-write",
        "--expires-at",
        "2999-01-31T12:00",
        "--rule",
        "[POST].*/rest/deploy",
        "--rule",
        "[get].*/rest/status.*",
        "--ip",
        "203.0.113.0/24",
        "--ip",
        "2001:db8::/32",
        "--standard",
    )
    token = issued["token"]
    assert TOKEN_PATTERN.fullmatch(issued["secret"])
    assert {key: token[key] for key in token if key not in ("id", "created_at")} == {
        "name": "deploy",
        "user": "bob",
        "created_by": "admin",
        "expires_at": "2999-01-31T12:00:00+00:00",
        "scope": "read_write",
        "restrictions": ["[POST].*/rest/deploy", "[GET].*/rest/status.*"],
        "allowed_ips": ["203.0.113.0/24", "2001:db8::/32"],
        "secure": False,
        "last_used_at": None,
        "last_used_ip": None,
        "use_count": 0,
        "revoked_at": None,
        "status": "active",
        "rate_limit": None,  # the limits: tests/cli/test_cli_limits.py
        "credits": None,
        "refill": None,
    }
    # The rules and the IP ranges really apply.
    secret, inside = issued["secret"], "203.0.113.9"
    allowed = authenticate(cli.db, secret, method="POST", path="/rest/deploy", client_ip=inside)
    assert (allowed.outcome, allowed.user) == (Outcome.SUCCESS, "bob")
    for method, ip in (("DELETE", inside), ("POST", "198.51.100.1")):
        refused = authenticate(cli.db, secret, method=method, path="/rest/deploy", client_ip=ip)
        assert (refused.outcome, refused.status_code) == (Outcome.FORBIDDEN, 403)


def test_create_unbound_token_gets_a_basic_auth_snippet_in_the_chosen_language(cli: Cli) -> None:
    result = cli.ok(
        "create", "--name", "shared", "--unbound", "--lang", "python", "--url", "https://x.test/a"
    )
    assert "('shared', unbound): read_only" in result.lines[0]
    secret = result.lines[4]
    assert result.lines[6:10] == ["Example (python):", "", "import httpx", ""]
    assert result.lines[10] == (
        f'response = httpx.get("https://x.test/a", auth=("USERNAME", "{secret}"))'
    )
    assert cli.json("show", secret)["user"] is None


def test_create_standard_token_says_it_can_be_revealed(cli: Cli) -> None:
    result = cli.ok("create", "--name", "std", "--standard", "--lang", "javascript")
    token_id = result.lines[0].split()[2]
    assert result.lines[0].endswith(", standard mode.")
    assert result.lines[2] == (
        f"Your new token (standard mode: 'apitokens reveal {token_id}' shows it again):"
    )
    assert result.lines[6] == "Example (javascript):"
    assert 'await fetch("https://example.com/rest/"' in result.out


def test_list_prints_an_aligned_table_newest_first(cli: Cli) -> None:
    first, _ = cli.create("--name", "CI report", "--user", "alice", "--expires-at", "2999-01-01")
    second, _ = cli.create("--name", "backup job", "--user", "bob", "--scope", "read-write")

    lines = cli.ok("list").lines
    assert re.split(r"  +", lines[0]) == HEADER
    assert re.split(r"  +", lines[1]) == [
        second,
        "backup job",
        "bob",
        "read_write",
        "active",
        "never",
        "never",
        "-",
        "0",
    ]
    assert re.split(r"  +", lines[2]) == [
        first,
        "CI report",
        "alice",
        "read_only",
        "active",
        "2999-01-01 00:00:00Z",
        "never",
        "-",
        "0",
    ]
    # Aligned: every column starts at the same offset on every line.
    for column in ("NAME", "USER", "SCOPE", "STATUS", "EXPIRES", "LAST USED"):
        start = lines[0].index(column)
        assert all(line[start - 2 : start] == "  " and line[start] != " " for line in lines)
    assert len(lines) == 3


def test_list_json_and_filters(cli: Cli) -> None:
    alice, _ = cli.create("--name", "CI report", "--user", "alice")
    bob, bob_secret = cli.create("--name", "Backup job", "--user", "bob")
    cli.ok("revoke", alice)
    between = datetime.now(UTC).isoformat()
    assert authenticate(cli.db, bob_secret).outcome == Outcome.SUCCESS

    every = cli.json("list")
    assert [token["id"] for token in every] == [bob, alice]
    assert every[1]["revoked_at"].endswith("+00:00")
    assert every[0]["last_used_ip"] == "192.0.2.7"
    assert [t["id"] for t in cli.json("list", "--user", "alice")] == [alice]
    assert [t["id"] for t in cli.json("list", "--status", "revoked")] == [alice]
    assert [t["id"] for t in cli.json("list", "--status", "active")] == [bob]
    assert [t["id"] for t in cli.json("list", "--name", "BACKUP")] == [bob]
    assert [t["id"] for t in cli.json("list", "--unused-since", between)] == [alice]
    assert cli.json("list", "--unused-since", "1h") == []  # both are newer than that
    assert [t["id"] for t in cli.json("list", "--limit", "1")] == [bob]
    assert cli.ok("list", "--user", "nobody").out == "No tokens.\n"


def test_show_prints_every_field(cli: Cli) -> None:
    token_id, _ = cli.create(
        "--name", "CI", "--rule", "[GET].*/a", "--rule", ".*/b", "--ip", "10.0.0.0/8"
    )
    lines = cli.ok("show", token_id).lines
    fields = {line[:14].rstrip(": "): line[14:] for line in lines}
    assert fields["id"] == token_id
    assert fields["name"] == "CI"
    assert fields["user"] == "admin"
    assert fields["status"] == "active"
    assert fields["scope"] == "read_only"
    assert fields["mode"] == "secure"
    assert fields["created by"] == "admin"
    assert fields["expires at"] == "never"
    assert fields["revoked at"] == "-"
    assert fields["allowed ips"] == "10.0.0.0/8"
    assert fields["last used at"] == "never"
    assert fields["uses"] == "0"
    rules = lines.index("restrictions: [GET].*/a")
    assert lines[rules + 1] == " " * 14 + ".*/b"

    shown = cli.json("show", token_id)
    assert shown["restrictions"] == ["[GET].*/a", ".*/b"]
    assert shown == cli.json("list")[0]


def test_revoke_refuses_the_token_at_once(cli: Cli) -> None:
    token_id, secret = cli.create("--name", "CI")
    assert authenticate(cli.db, secret).outcome == Outcome.SUCCESS

    assert cli.ok("revoke", token_id).out == f"Revoked token {token_id} ('CI', user admin).\n"
    refused = authenticate(cli.db, secret)
    assert (refused.outcome, refused.status_code) == (Outcome.FAILED, 401)
    again = cli.ok("revoke", token_id).out
    assert again.startswith(f"Token {token_id} ('CI', user admin) was already revoked at 20")


def test_revoke_accepts_a_whole_leaked_token(cli: Cli) -> None:
    token_id, secret = cli.create("--name", "leaked")
    assert cli.ok("revoke", secret).out == f"Revoked token {token_id} ('leaked', user admin).\n"
    assert authenticate(cli.db, secret).outcome == Outcome.FAILED


def test_rotate_prints_the_new_token_and_keeps_the_old_one_for_the_grace(cli: Cli) -> None:
    token_id, old = cli.create("--name", "CI")
    result = cli.ok("rotate", token_id, "--grace", "10m")

    assert result.lines[0] == f"Rotated token {token_id} ('CI', user admin)."
    assert "shown only this once" in result.lines[2]
    new = result.lines[4]
    assert TOKEN_PATTERN.fullmatch(new)
    assert new != old
    assert new.startswith(f"apt_{token_id}")
    assert re.fullmatch(
        r"The old token keeps working for 10m, until \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\.",
        result.lines[6],
    )
    assert authenticate(cli.db, old).outcome == Outcome.SUCCESS
    assert authenticate(cli.db, new).outcome == Outcome.SUCCESS

    newest = cli.json("rotate", token_id)["secret"]
    assert authenticate(cli.db, newest).outcome == Outcome.SUCCESS
    assert authenticate(cli.db, new).outcome == Outcome.FAILED


def test_rotate_without_grace_ends_the_old_token(cli: Cli) -> None:
    token_id, old = cli.create("--name", "CI")
    result = cli.ok("rotate", token_id)
    assert result.lines[-1] == "The old token no longer works."
    assert authenticate(cli.db, result.lines[4]).outcome == Outcome.SUCCESS
    # The old one presented again is reuse (DESIGN §11): refused, and the token revoked.
    assert authenticate(cli.db, old).outcome == Outcome.FAILED
    assert authenticate(cli.db, result.lines[4]).outcome == Outcome.FAILED


def test_reveal_and_snippet_show_a_standard_mode_token_again(cli: Cli) -> None:
    token_id, secret = cli.create("--name", "std", "--standard")
    assert cli.ok("reveal", token_id).out == secret + "\n"
    assert cli.ok("snippet", token_id, "--url", "https://api.test/v1/me").out == (
        f"curl -H 'Authorization: Bearer {secret}' https://api.test/v1/me\n"
    )
    python = cli.ok("snippet", token_id, "--lang", "python").out
    assert python.startswith("import httpx\n")
    assert f'"Bearer {secret}"' in python


def test_secure_mode_tokens_are_never_shown_again(cli: Cli) -> None:
    token_id, secret = cli.create("--name", "secure")
    for command in ("reveal", "snippet"):
        result = cli(command, token_id)
        assert result.code == 2
        assert result.out == ""
        assert result.err == (
            f"apitokens: error: token {token_id} is in secure mode: only rotate or revoke\n"
        )
    # Nothing but create printed the secret, or any part of it past the public id.
    for args in (["list"], ["show", token_id, "--json"], ["audit", "--json"]):
        assert secret[len("apt_") + 12 :][:8] not in cli.ok(*args).out


def test_python_dash_m_runs_the_command(cli: Cli) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "apitokens", "--db", str(cli.db), "--actor", "admin", "list"],
        capture_output=True,
        text=True,
        check=False,
        env=cli.env,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "No tokens.\n", "")


def test_the_database_is_a_plain_sqlite_file_the_library_opens(cli: Cli) -> None:
    token_id, _ = cli.create("--name", "CI")
    with SQLiteStore(cli.db) as store:
        stored = store.get(token_id)
    assert stored is not None
    assert stored.token.name == "CI"


def test_main_returns_the_exit_status_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rule", "check", "[GET].*", "GET", "/x"]) == 0
    assert main(["rule", "check", "[GET].*", "PUT", "/x"]) == 1
    assert main(["rule", "check", "[GET", "GET", "/x"]) == 2
    assert main(["--version"]) == 0
    out, err = capsys.readouterr()
    assert out.count("result:   match") == 1
    assert "result:   no match: method PUT not in [GET]" in out
    assert out.endswith(f"apitokens {apitokens.__version__}\n")
    assert err.splitlines()[-1].startswith("apitokens: error: invalid rule: column ")
