"""``apitokens expiring`` and ``apitokens notify-expiring`` (DESIGN §11): the cron side."""

from __future__ import annotations

import json
import shlex
import sys
from datetime import timedelta
from pathlib import Path

from apitokens import ApiTokens, SQLiteStore
from tests.support import CHEAP_HASHER

from .conftest import Cli

# The hook: append the notice's environment, as JSON, to the file named by argv[1].
HOOK = (
    "import json, os, sys\n"
    "with open(sys.argv[1], 'a') as f:\n"
    "    f.write(json.dumps({k: v for k, v in os.environ.items() if k.startswith('APITOKENS_')})"
    " + '\\n')\n"
)


def _hook(tmp_path: Path, *, fail_for: str = "") -> tuple[str, Path]:
    script, sent = tmp_path / "hook.py", tmp_path / "sent.jsonl"
    text = HOOK
    if fail_for:
        text = (
            f"import os, sys\nif os.environ['APITOKENS_TOKEN_NAME'] == {fail_for!r}: sys.exit(3)\n"
        )
        text += HOOK
    script.write_text(text)
    return (
        f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {shlex.quote(str(sent))}",
        sent,
    )


def _sent(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_expiring_lists_the_tokens_that_expire_within(cli: Cli) -> None:
    soon, _ = cli.create("--name", "soon", "--expires-in", "2d")
    later, _ = cli.create("--name", "later", "--expires-in", "6d")
    cli.create("--name", "far", "--expires-in", "40d")
    cli.create("--name", "forever")
    assert [t["id"] for t in cli.json("expiring", "--within", "7d")] == [soon, later]
    table = cli.ok("expiring", "--within", "3d").lines
    assert table[0].split()[0] == "ID" and table[1].startswith(soon) and len(table) == 2
    assert cli.ok("expiring", "--within", "1d").out == "No token expires within 1d.\n"
    refused = cli("expiring")
    assert refused.code == 2 and "--within" in refused.err


def test_notify_expiring_runs_the_command_once_per_token_and_threshold(
    cli: Cli, tmp_path: Path
) -> None:
    token, secret = cli.create("--name", "CI report", "--user", "bob", "--expires-in", "5d")
    cli.create("--name", "far", "--expires-in", "40d")
    command, sent = _hook(tmp_path)
    first = cli.ok("notify-expiring", "--exec", command)
    assert first.out == f"Sent the 1w notice for {token} ('CI report', user bob).\n"
    # Run again, as the same cron job on another host would: nothing is sent twice.
    again = cli.installed("notify-expiring", "--exec", command, "--json")
    assert (again.code, again.err, json.loads(again.out)) == (0, "", [])
    assert cli.ok("notify-expiring", "--exec", command).out == "No notice was due.\n"
    [notice] = _sent(sent)
    assert notice["APITOKENS_TOKEN_ID"] == token
    assert notice["APITOKENS_TOKEN_OWNER"] == "bob"
    assert notice["APITOKENS_TOKEN_NAME"] == "CI report"
    assert notice["APITOKENS_TOKEN_EXPIRES_AT"].endswith("Z")
    assert notice["APITOKENS_THRESHOLD"] == "1w"
    assert notice["APITOKENS_THRESHOLD_SECONDS"] == str(7 * 86400)
    # Never the secret, nor the database the command was given in its environment.
    assert "APITOKENS_DB" not in notice
    assert all(secret not in value for value in notice.values())


def test_notify_expiring_thresholds_and_json(cli: Cli, tmp_path: Path) -> None:
    token, _ = cli.create("--name", "ci", "--expires-in", "20d")
    command, sent = _hook(tmp_path)
    given = ("notify-expiring", "--exec", command, "--threshold", "30d", "--threshold", "1d")
    [notice] = cli.json(*given)
    assert (notice["token"]["id"], notice["threshold"]) == (token, "4w2d")
    assert cli.json(*given) == []
    assert [n["APITOKENS_THRESHOLD"] for n in _sent(sent)] == ["4w2d"]


def test_a_failing_command_is_reported_and_tried_again(cli: Cli, tmp_path: Path) -> None:
    broken, _ = cli.create("--name", "broken", "--expires-in", "2d")
    fine, _ = cli.create("--name", "fine", "--expires-in", "3d")
    command, sent = _hook(tmp_path, fail_for="broken")
    failed = cli("notify-expiring", "--exec", command)
    assert failed.code == 1
    assert failed.out == f"Sent the 1w notice for {fine} ('fine', user admin).\n"
    assert f"--exec failed for {broken} ('broken', user admin): exit status 3" in failed.err
    assert [n["APITOKENS_TOKEN_ID"] for n in _sent(sent)] == [fine]
    command, sent = _hook(tmp_path)  # the mail server is back
    retried = cli.ok("notify-expiring", "--exec", command)
    assert retried.out == f"Sent the 1w notice for {broken} ('broken', user admin).\n"
    assert [n["APITOKENS_TOKEN_ID"] for n in _sent(sent)] == [fine, broken]


def test_very_long_durations_are_no_traceback(cli: Cli, tmp_path: Path) -> None:
    """Found by the issue 18 attack (fixed): ``--within`` or ``--threshold`` reaching past
    the year 9999 raised OverflowError (a traceback), and so did any ``--timeout`` over
    24.8 days (poll's limit), even for a command that ends at once. A window past 9999
    holds every expiry; a command is waited for at most 20 days."""
    token, _ = cli.create("--name", "ci", "--expires-in", "2d")
    assert [t["id"] for t in cli.json("expiring", "--within", "99999999d")] == [token]
    command, sent = _hook(tmp_path)
    given = ("notify-expiring", "--exec", command, "--threshold", "99999999d", "--timeout", "30d")
    [notice] = cli.json(*given)
    assert notice["token"]["id"] == token
    assert [n["APITOKENS_TOKEN_ID"] for n in _sent(sent)] == [token]


def test_an_owner_no_environment_can_hold_fails_only_its_own_notice(
    cli: Cli, tmp_path: Path
) -> None:
    """Found by the issue 18 attack (fixed): an owner's name with a NUL (the API takes
    the app's user names as they are) cannot be put in an environment. Popen's
    ValueError ended the run with "embedded null byte" (exit 2), naming no token; it is
    now that notice's failure, reported like any other (exit 1), retried by later runs."""
    with SQLiteStore(cli.db) as store, ApiTokens(store, hasher=CHEAP_HASHER) as tokens:
        odd = tokens.create(actor="a\x00b", name="odd", expires_in=timedelta(days=2)).token.id
    fine, _ = cli.create("--name", "fine", "--expires-in", "3d")
    command, sent = _hook(tmp_path)
    failed = cli("notify-expiring", "--exec", command)
    assert failed.code == 1
    assert f"--exec failed for {odd} ('odd', user a\\x00b): embedded null byte" in failed.err
    assert [n["APITOKENS_TOKEN_ID"] for n in _sent(sent)] == [fine]
