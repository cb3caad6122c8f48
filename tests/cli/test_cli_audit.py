"""The ``apitokens`` command reviews and cleans up: revoke-unused, audit, prune-audit."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from apitokens import Outcome

from .conftest import Cli, authenticate

AUDIT_HEADER = [
    "AT", "ACTION", "OUTCOME", "TOKEN", "USER", "ACTOR", "CLIENT", "METHOD", "PATH", "REASON"
]  # fmt: skip


def test_revoke_unused_revokes_only_stale_tokens_and_dry_run_revokes_nothing(cli: Cli) -> None:
    stale, stale_secret = cli.create("--name", "forgotten", "--user", "alice")
    used, used_secret = cli.create("--name", "nightly", "--user", "bob")
    between = datetime.now(UTC).isoformat()
    assert authenticate(cli.db, used_secret).outcome == Outcome.SUCCESS

    dry = cli.ok("revoke-unused", "--since", between, "--dry-run").lines
    assert re.split(r"  +", dry[0])[:5] == ["ID", "NAME", "USER", "SCOPE", "STATUS"]
    assert re.split(r"  +", dry[1])[:5] == [stale, "forgotten", "alice", "read_only", "active"]
    assert dry[2:3] == [""]
    assert re.fullmatch(r"Would revoke 1 token not used since \S+ \S+Z\.", dry[3])
    assert cli.json("show", stale)["status"] == "active"

    done = cli.ok("revoke-unused", "--since", between).lines
    assert re.split(r"  +", done[1])[:2] == [stale, "forgotten"]
    assert done[3].startswith("Revoked 1 token not used since ")
    assert [t["id"] for t in cli.json("list", "--status", "revoked")] == [stale]
    assert [t["id"] for t in cli.json("list", "--status", "active")] == [used]
    assert authenticate(cli.db, stale_secret).outcome == Outcome.FAILED
    assert authenticate(cli.db, used_secret).outcome == Outcome.SUCCESS

    again = cli.ok("revoke-unused", "--since", between)
    assert again.out.startswith("Revoked 0 tokens not used since ")
    assert cli.json("revoke-unused", "--since", "90d") == []
    revocations = cli.json("audit", "--action", "revoke")
    assert [(e["token_id"], e["actor"], e["outcome"]) for e in revocations] == [
        (stale, "admin", "success")
    ]


def test_audit_table_newest_first(cli: Cli) -> None:
    token_id, secret = cli.create("--name", "CI", "--user", "alice")
    authenticate(cli.db, secret, path="/rest/api/2/search")
    cli.ok("revoke", token_id)

    lines = cli.ok("audit").lines
    assert re.split(r"  +", lines[0]) == AUDIT_HEADER
    rows = [re.split(r"  +", line) for line in lines[1:]]
    assert [row[1:] for row in rows] == [
        ["revoke", "success", token_id, "alice", "admin", "-", "-", "-", "revoked"],
        [
            "authenticate",
            "success",
            token_id,
            "alice",
            "-",
            "192.0.2.7",
            "GET",
            "/rest/api/2/search",
            rows[1][-1],
        ],
        ["create", "success", token_id, "alice", "admin", "-", "-", "-", "created 'CI'"],
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", row[0]) for row in rows)
    assert rows[0][0] >= rows[1][0] >= rows[2][0]


def test_audit_json_and_filters(cli: Cli) -> None:
    alice, _ = cli.create("--name", "CI", "--user", "alice")
    bob, _ = cli.create("--name", "backup", "--user", "bob", "--standard")
    assert cli("reveal", alice).code == 2  # a refused call is audited as forbidden

    events = cli.json("audit")
    assert [(e["action"], e["outcome"], e["token_id"]) for e in events] == [
        ("reveal", "forbidden", alice),
        ("create", "success", bob),
        ("create", "success", alice),
    ]
    assert set(events[0]) == {
        "at", "action", "outcome", "token_id", "user", "actor", "client_ip", "method", "path",
        "reason",
    }  # fmt: skip
    assert datetime.fromisoformat(events[0]["at"]).tzinfo is not None

    def ids(*filters: str) -> list[tuple[str, str]]:
        return [(e["action"], e["token_id"]) for e in cli.json("audit", *filters)]

    assert ids("--token", bob) == [("create", bob)]
    assert ids("--user", "alice") == [("reveal", alice), ("create", alice)]
    assert ids("--action", "create", "--limit", "1") == [("create", bob)]
    assert ids("--action", "create", "--offset", "1") == [("create", alice)]
    assert ids("--outcome", "forbidden") == [("reveal", alice)]
    assert ids("--since", "1h", "--until", "2999-01-01") == ids()
    assert ids("--until", "1h") == []
    assert cli.ok("audit", "--until", "1h").out == "No audit events.\n"


def test_prune_audit_deletes_events_before_the_moment(cli: Cli) -> None:
    cli.create("--name", "one")
    cli.create("--name", "two")

    assert cli.ok("prune-audit", "--before", "1h").out.startswith(
        "Deleted 0 audit events from before "
    )
    assert len(cli.json("audit")) == 2
    pruned = cli.ok("prune-audit", "--before", "2999-01-01")
    assert pruned.out == "Deleted 2 audit events from before 2999-01-01 00:00:00Z.\n"
    assert cli.json("audit") == []
