"""PostgresStore against the storage contract on a real server, and what only PostgreSQL risks.

Every test gets a fresh database on the session's throwaway server
(``tests/support/postgres.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import string
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest

from apitokens import ApiTokens, AuthRequest
from apitokens._errors import SchemaVersionError, StorageError
from apitokens._model import AuditEvent, AuthEntry, Outcome, TokenStatus, Usage
from apitokens.postgres import LATEST_VERSION, PostgresStore
from apitokens.storage import CreditSpend
from apitokens.testing import NOW, SECOND, StoreContract, event, secret_hash, stored
from tests.support import CHEAP_HASHER, bearer
from tests.support.postgres import ADMIN, TEST_DATABASE, PostgresServer


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def store(self, postgres_database: str) -> Iterator[PostgresStore]:
        with PostgresStore(postgres_database) as store:
            yield store


def _rows(dsn: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


# --- schema and migrations -----------------------------------------------------------------


def test_many_stores_opening_at_once_migrate_once(postgres_database: str) -> None:
    starters = 6
    start = threading.Barrier(starters, timeout=30)

    def open_store() -> str:
        start.wait()
        with PostgresStore(postgres_database, pool_size=1) as store:
            store.add(stored(f"t{threading.get_ident()}"))
            return repr(store)

    with ThreadPoolExecutor(max_workers=starters) as pool:
        opened = list(pool.map(lambda _: open_store(), range(starters)))
    assert len(opened) == starters
    # One row per applied migration: each ran once (a second CREATE TABLE would fail).
    versions = _rows(postgres_database, "SELECT version FROM apitokens_schema ORDER BY version")
    assert versions == [(v,) for v in range(1, LATEST_VERSION + 1)]
    assert _rows(postgres_database, "SELECT count(*) FROM apitokens_tokens") == [(starters,)]


def test_usage_updates_can_be_hot(postgres_database: str) -> None:
    # Every audit batch updates the usage columns of its tokens: no index may hold them
    # (else every update writes every index), and pages keep room for the new version.
    PostgresStore(postgres_database).close()
    indexed = _rows(
        postgres_database,
        "SELECT DISTINCT a.attname FROM pg_index i"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indrelid = 'apitokens_tokens'::regclass ORDER BY 1",
    )
    assert {name for (name,) in indexed} == {"id", "user", "created_at", "revoked_at", "expires_at"}
    [(options,)] = _rows(
        postgres_database,
        "SELECT reloptions FROM pg_class WHERE oid = 'apitokens_tokens'::regclass",
    )
    assert options == ["fillfactor=70"]


def test_reopening_keeps_data_and_takes_no_migration(postgres_database: str) -> None:
    with PostgresStore(postgres_database) as store:
        store.add(stored("kept"))
    with PostgresStore(postgres_database) as store:
        got = store.get("kept")
    assert got == stored("kept")
    assert len(_rows(postgres_database, "SELECT version FROM apitokens_schema")) == LATEST_VERSION


def test_a_version_3_database_gains_retired_hashes(postgres_database: str) -> None:
    from apitokens.postgres import MIGRATIONS
    from apitokens.postgres._sql import _SCHEMA_TABLE

    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(_SCHEMA_TABLE)
        for version, statements in enumerate(MIGRATIONS[:3]):
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO apitokens_schema (version) VALUES (%s)", (version + 1,))
        conn.execute(
            "INSERT INTO apitokens_tokens (id, name, name_folded, created_by, created_at, scope,"
            " secret_hash, previous_hash) VALUES ('old', 'n', 'n', 'alice', now(), 'read_only',"
            " %s, %s)",
            (secret_hash("current"), secret_hash("previous")),
        )
    with PostgresStore(postgres_database) as store:
        got = store.get("old")
        assert got is not None
        assert (got.previous_hash, got.retired_hashes) == (secret_hash("previous"), ())
        store.update(dataclasses.replace(got, retired_hashes=(secret_hash("older"),)))
        again = store.get("old")
        assert again is not None and again.retired_hashes == (secret_hash("older"),)


def test_a_version_5_database_gains_limits_and_the_usage_ledger(postgres_database: str) -> None:
    from apitokens.postgres import MIGRATIONS
    from apitokens.postgres._sql import _SCHEMA_TABLE

    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(_SCHEMA_TABLE)
        for version, statements in enumerate(MIGRATIONS[:5]):
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO apitokens_schema (version) VALUES (%s)", (version + 1,))
        conn.execute(
            "INSERT INTO apitokens_tokens (id, name, name_folded, created_by, created_at, scope,"
            " secret_hash) VALUES ('old', 'n', 'n', 'alice', now(), 'read_only', %s)",
            (secret_hash("current"),),
        )
    with PostgresStore(postgres_database) as store:
        got = store.get("old")
        assert got is not None
        assert (got.token.rate_limit, got.token.credits, got.token.refill) == (None, None, None)
        assert [t.credits for t in store.list(now=NOW)] == [None]
        limited = dataclasses.replace(got.token, rate_limit="5/min", credits=3, refill="1/day")
        store.update(dataclasses.replace(got, token=limited))
        again = store.get("old")
        assert again is not None
        assert (again.token.rate_limit, again.token.credits, again.token.refill) == (
            "5/min",
            3,
            "1/day",
        )
        assert store.count_requests({("old", 60, 0): 2}, ended_before=0) == {("old", 60, 0): 2}
        assert store.spend_credits({"old": CreditSpend(1, 3, 1, 7)}) == {"old": 2}
        # The change trigger now watches the limits: one changed by hand in SQL is told.
        told: list[str | None] = []
        heard = threading.Event()
        store.subscribe(lambda token_id: (told.append(token_id), heard.set()))
        with psycopg.connect(postgres_database, autocommit=True) as dba:
            dba.execute("UPDATE apitokens_tokens SET rate_limit = '1/s'")
        assert heard.wait(10)
        assert told == ["old"]
    versions = _rows(postgres_database, "SELECT version FROM apitokens_schema ORDER BY 1")
    assert versions == [(v,) for v in range(1, 7)] and LATEST_VERSION == 6


def test_a_version_2_database_is_upgraded_and_tells_of_changes(postgres_database: str) -> None:
    from apitokens.postgres import MIGRATIONS
    from apitokens.postgres._sql import _SCHEMA_TABLE

    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(_SCHEMA_TABLE)
        for version, statements in enumerate(MIGRATIONS[:2]):
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO apitokens_schema (version) VALUES (%s)", (version + 1,))
    with PostgresStore(postgres_database) as store:
        store.add(stored("t"))
        told: list[str | None] = []
        heard = threading.Event()
        store.subscribe(lambda token_id: (told.append(token_id), heard.set()))
        with psycopg.connect(postgres_database, autocommit=True) as dba:
            dba.execute("UPDATE apitokens_tokens SET revoked_at = now()")
        assert heard.wait(10)
    assert told == ["t"]
    versions = _rows(postgres_database, "SELECT version FROM apitokens_schema ORDER BY 1")
    assert versions == [(1,), (2,), (3,), (4,), (5,), (6,)] and LATEST_VERSION == 6


def test_newer_schema_is_refused_untouched(postgres_database: str) -> None:
    PostgresStore(postgres_database).close()
    newer = LATEST_VERSION + 1
    _rows(postgres_database, "INSERT INTO apitokens_schema VALUES (%s) RETURNING 1", newer)
    tables = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
    before = _rows(postgres_database, tables)
    with pytest.raises(SchemaVersionError) as info:
        PostgresStore(postgres_database)
    message = str(info.value)
    assert f"schema version {newer}" in message
    assert f"up to {LATEST_VERSION}" in message
    assert isinstance(info.value, StorageError)
    assert _rows(postgres_database, tables) == before


def _plan(dsn: str, sql: str, *params: object) -> str:
    """The plan of ``sql`` when the planner may not scan a table: does an index serve it?"""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_sort = off")
        rows = conn.execute(f"EXPLAIN {sql}", params).fetchall()
    return "\n".join(str(row[0]) for row in rows)


@pytest.mark.parametrize(
    ("index", "sql"),
    [
        ("apitokens_tokens_pkey", "SELECT * FROM apitokens_tokens WHERE id = 'x'"),
        (
            "apitokens_tokens_by_user",
            """SELECT * FROM apitokens_tokens WHERE "user" = 'u'"""
            " ORDER BY created_at DESC, id LIMIT 10",
        ),
        (
            "apitokens_tokens_by_created",
            "SELECT * FROM apitokens_tokens ORDER BY created_at DESC, id ASC LIMIT 10 OFFSET 5",
        ),
        ("apitokens_tokens_by_status", "SELECT * FROM apitokens_tokens WHERE revoked_at IS NULL"),
        (
            "apitokens_tokens_by_created",  # stale tokens: no index on the usage columns
            "SELECT * FROM apitokens_tokens WHERE created_at <= now()"
            " AND (last_used_at IS NULL OR last_used_at < now())"
            " ORDER BY created_at DESC, id LIMIT 10",
        ),
        (
            "apitokens_audit_by_token",
            "SELECT * FROM apitokens_audit WHERE token_id = 't' ORDER BY at DESC, seq DESC LIMIT 5",
        ),
        (
            "apitokens_audit_by_user",
            """SELECT * FROM apitokens_audit WHERE "user" = 'u' ORDER BY at DESC, seq DESC"""
            " LIMIT 5",
        ),
        (
            "apitokens_audit_by_outcome",
            "SELECT * FROM apitokens_audit WHERE outcome = 'failed' AND outcome <> 'success'"
            " ORDER BY at DESC, seq DESC LIMIT 5",
        ),
        (
            "apitokens_audit_by_at",
            "SELECT * FROM apitokens_audit ORDER BY at DESC, seq DESC LIMIT 100 OFFSET 10",
        ),
        ("apitokens_audit_by_at", "DELETE FROM apitokens_audit WHERE at < now()"),
    ],
)
def test_an_index_serves_each_query(postgres_database: str, index: str, sql: str) -> None:
    PostgresStore(postgres_database).close()
    plan = _plan(postgres_database, sql)
    assert index in plan, plan
    assert "Sort" not in plan, plan  # the order comes off the index


def test_the_queries_the_store_makes_use_the_indexes(postgres_database: str) -> None:
    # The store's own SQL, as it builds it (the partial index needs its condition stated).
    from apitokens.postgres._rows import _select_events, _select_tokens
    from apitokens.storage._filters import EventQuery, TokenQuery

    PostgresStore(postgres_database).close()
    cases = [
        (_select_events(EventQuery(token_id="t")), "apitokens_audit_by_token"),
        (_select_events(EventQuery(user="u", limit=5)), "apitokens_audit_by_user"),
        (_select_events(EventQuery(outcome=Outcome.FAILED)), "apitokens_audit_by_outcome"),
        (_select_events(EventQuery(since=NOW)), "apitokens_audit_by_at"),
        (_select_tokens(TokenQuery(now=NOW, user="u")), "apitokens_tokens_by_user"),
        (_select_tokens(TokenQuery(now=NOW, limit=5)), "apitokens_tokens_by_created"),
        (_select_tokens(TokenQuery(now=NOW, unused_since=NOW)), "apitokens_tokens_by_created"),
        # By status, or in order (then filtered): the planner's choice, an index either way.
        (_select_tokens(TokenQuery(now=NOW, status=TokenStatus.REVOKED)), "apitokens_tokens_by_"),
    ]
    for (sql, params), index in cases:
        plan = _plan(postgres_database, sql, *params)
        assert index in plan, plan
    # The failure ledger's pruning (by two clocks) and the batches' ids.
    from apitokens.postgres._sql import (
        _ADD_REQUESTS,
        _CLAIM_BATCH,
        _PRUNE_BATCHES,
        _PRUNE_FAILURES,
        _SPEND_CREDITS,
    )

    assert "apitokens_failures_by_second" in _plan(postgres_database, _PRUNE_FAILURES, 0, 3601)
    assert "apitokens_batches_by_at" in _plan(postgres_database, _PRUNE_BATCHES)
    claim = _plan(postgres_database, _CLAIM_BATCH, uuid.uuid4())
    assert "apitokens_batches_pkey" in claim, claim
    # The usage ledger: the pruning of ended windows (by two clocks), and the upserts'
    # conflicts found by primary key (an INSERT's plan does not show its arbiter index:
    # the upsert's row lookup is the same as this SELECT's).
    from apitokens.postgres._sql import _PRUNE_REQUESTS, _RESET_CREDITS

    prune = _plan(postgres_database, _PRUNE_REQUESTS, 1_773_500_000, 300)
    assert "apitokens_requests_by_end" in prune, prune
    window = _plan(
        postgres_database,
        "SELECT count FROM apitokens_requests WHERE token_id = 't' AND seconds = 60 AND start = 0",
    )
    assert "apitokens_requests_pkey" in window, window
    assert "apitokens_credits_pkey" in _plan(postgres_database, _RESET_CREDITS, "t")
    # The arbiter of each upsert is the primary key (a conflict on any other would fail).
    for table, sql, params in (
        ("apitokens_requests", _ADD_REQUESTS, (["t"], [60], [0], [1])),
        ("apitokens_credits", _SPEND_CREDITS, (["t"], [1], [5], [0], [0])),
    ):
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN {sql}", params).fetchall())
        assert f"Conflict Arbiter Indexes: {table}_pkey" in plan, plan


# --- writing in batches --------------------------------------------------------------------


def test_write_entries_stores_the_events_they_stand_for(postgres_database: str) -> None:
    with PostgresStore(postgres_database) as store:
        store.add(stored("t"))
        entry = AuthEntry(NOW, Outcome.FAILED, "t", "alice", "10.0.0.1", "GET", "/x", "bad", True)
        store.write_entries(
            events=[event(NOW - SECOND), entry, event(NOW)],
            usage=[Usage("t", NOW, "10.0.0.1")],
        )
        found = store.events()
        got = store.get("t")
    assert [e.at for e in found] == [NOW, NOW, NOW - SECOND]
    assert found[1].outcome is Outcome.FAILED  # the entry, inserted before the later event
    assert (found[1].client_ip, found[1].method, found[1].path, found[1].reason) == (
        "10.0.0.1",
        "GET",
        "/x",
        "bad",
    )
    assert got is not None
    assert got.token.use_count == 1


@pytest.mark.parametrize("journaled", [False, True], ids=["no journal", "journal"])
def test_apitokens_on_postgres_authenticates_audits_and_revokes(
    postgres_database: str, tmp_path: Path, journaled: bool
) -> None:
    # With a journal, its positions are kept in files beside it (FilePositions).
    store = PostgresStore(postgres_database)
    journal = tmp_path / "journal" if journaled else None
    try:
        with ApiTokens(store, hasher=CHEAP_HASHER, journal=journal) as tokens:
            issued = tokens.create(actor="alice", name="ci")
            request = AuthRequest("GET", "/rest/x", headers=bearer(issued.secret))
            assert [tokens.authenticate(request).status_code for _ in range(3)] == [200] * 3
            assert tokens.flush(timeout=10)
            used = store.get(issued.token.id)
            assert used is not None
            assert used.token.use_count == 3
            assert len(store.events(token_id=issued.token.id, action="authenticate")) == 3
            tokens.revoke(actor="alice", token_id=issued.token.id)
            assert tokens.authenticate(request).status_code == 401
            if journal is not None:
                assert any(p.name.endswith(".pos") for p in journal.iterdir())
    finally:
        store.close()


def test_a_failing_batch_leaves_nothing_behind(postgres_database: str) -> None:
    with PostgresStore(postgres_database) as store:
        store.add(stored("t"))
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            conn.execute("ALTER TABLE apitokens_tokens ADD CHECK (use_count < 5)")
        # The usage fails after the events went in by COPY: the whole batch goes.
        with pytest.raises(StorageError, match="write failed"):
            store.write(events=[event(NOW), event(NOW)], usage=[Usage("t", NOW, count=5)])
        assert store.events() == []
        got = store.get("t")
        assert got is not None
        assert got.token.use_count == 0


def test_a_nul_in_an_audit_field_does_not_lose_the_batch(postgres_database: str) -> None:
    # PostgreSQL's text refuses NUL; a refused batch would stall the audit writer for good.
    with PostgresStore(postgres_database) as store:
        store.add(stored("t"))
        entry = AuthEntry(
            NOW, Outcome.FAILED, None, "ali\x00ce", "10.0.0.1", "GET", "/x", "", False
        )
        store.write_entries(
            events=[event(NOW - SECOND), entry, event(NOW - SECOND, path="/a\x00b")],
            usage=[Usage("t", NOW)],
        )
        found = store.events()
        got = store.get("t")
        assert store.get("t\x00") is None  # no id can hold one: no such token, no error
    assert [e.user for e in found] == ["ali\ufffdce", "alice", "alice"]
    assert found[1].path == "/a\ufffdb"
    assert got is not None
    assert got.token.use_count == 1


def _random_text(n: int, seed: int = 15) -> str:
    """``n`` letters and digits that PostgreSQL's compression cannot shrink."""
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


@pytest.mark.parametrize("how", ["write", "write_entries"])
def test_a_10kb_user_is_stored_cut_and_the_batch_goes_in(postgres_database: str, how: str) -> None:
    # Past ~2,700 bytes an index refuses the row (SQLSTATE 54000): the batch would be
    # refused whole, and the audit writer would send it again forever.
    long_user = _random_text(10_000)
    long_id = _random_text(10_000, seed=16)
    with PostgresStore(postgres_database) as store:
        store.add(stored("t"))
        batch: list[AuditEvent | AuthEntry] = [
            event(NOW - 2 * SECOND, path="/first"),
            event(NOW - SECOND, user=long_user, token_id=long_id, path="/long"),
            event(NOW, path="/last"),
        ]
        if how == "write_entries":
            batch[1] = AuthEntry(
                NOW - SECOND, Outcome.FAILED, long_id, long_user, "10.0.0.1", "GET", "/long", "",
                False,
            )  # fmt: skip
            store.write_entries(events=batch, usage=[Usage("t", NOW)])
        else:
            store.write(events=batch, usage=[Usage("t", NOW)])
        found = store.events()
        by_user = store.events(user=long_user)  # the whole value finds what was written
        by_id = store.events(token_id=long_id)
        other = store.events(user=long_user[:-1] + "!")  # same start, another user
        got = store.get("t")
    assert [e.path for e in found] == ["/last", "/long", "/first"]
    cut = found[1].user
    assert cut is not None and cut != long_user
    assert long_user.startswith(cut.split("\u2026")[0]) and len(cut.encode()) <= 1024
    assert found[1].token_id is not None and len(found[1].token_id.encode()) <= 1024
    assert [e.path for e in by_user] == [e.path for e in by_id] == ["/long"]
    assert other == []
    assert got is not None and got.token.use_count == 1


def test_a_long_failure_key_is_counted_and_kept_apart(postgres_database: str) -> None:
    one, two = _random_text(10_000), _random_text(10_000)[:-1] + "!"
    with PostgresStore(postgres_database) as store:
        store.record_failures({one: 2, two: 1, "198.51.100.7": 3}, NOW, keep=timedelta(minutes=1))
        counts = [
            store.failures_since(key, NOW - timedelta(minutes=1))
            for key in (one, two, "198.51.100.7")
        ]
    assert counts == [2, 1, 3]


def test_an_event_the_server_refuses_is_dropped_alone(
    postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Any data error (SQLSTATE class 22 or 54) in one row: the rest of the batch goes in,
    # in order, with its usage; one log line says how many were dropped, never what.
    with PostgresStore(postgres_database) as store:
        store.add(stored("t"))
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF NEW.path LIKE '/bad%' THEN"
                " RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END IF;"
                " RETURN NEW; END $$"
            )
            conn.execute(
                "CREATE TRIGGER refuse_bad BEFORE INSERT ON apitokens_audit"
                " FOR EACH ROW EXECUTE FUNCTION refuse_bad()"
            )
        paths = [f"/ok{i}" for i in range(40)]
        paths[7] = "/bad-Secret-in-the-path"
        paths[31] = "/bad-too"
        with caplog.at_level(logging.WARNING, logger="apitokens"):
            store.write(
                events=[event(NOW + i * SECOND, path=p) for i, p in enumerate(paths)],
                usage=[Usage("t", NOW, count=40)],
            )
        found = [e.path for e in store.events(limit=100)]
        got = store.get("t")
    assert found == [p for p in reversed(paths) if not p.startswith("/bad")]
    assert got is not None and got.token.use_count == 40
    warned = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].count("1 event (SQLSTATE 22023)") == 2, warned
    assert "Secret" not in caplog.text


def test_a_batch_whose_commit_answer_was_lost_is_written_once(postgres_database: str) -> None:
    from tests.integration.test_attack_issue15 import CommitEater

    PostgresStore(postgres_database).close()  # the schema (its COMMITs not through the proxy)
    parts = psycopg.conninfo.conninfo_to_dict(postgres_database)
    proxy = CommitEater(f"{parts['host']}/.s.PGSQL.5432")
    through = psycopg.conninfo.make_conninfo(postgres_database, host="127.0.0.1", port=proxy.port)
    try:
        with PostgresStore(through) as store:
            store.add(stored("t"))  # autocommit: no COMMIT message
            batch, usage = [event(NOW), event(NOW, path="/b")], [Usage("t", NOW)]
            with pytest.raises(StorageError, match="write failed"):
                store.write(events=batch, usage=usage)  # committed; the answer never came
            assert proxy.eaten.is_set()
            store.write(events=batch, usage=usage)  # the writer sends it again: found, skipped
            assert len(store.events()) == 2
            # The same content again, with no write in doubt, is a new batch: written.
            store.write(events=batch, usage=usage)
            found = store.events()
            got = store.get("t")
    finally:
        proxy.close()
    assert len(found) == 4
    assert got is not None and got.token.use_count == 2


# --- secrets -------------------------------------------------------------------------------


def _shown(error: BaseException) -> str:
    """All that a traceback or a logger shows of ``error``, its causes and contexts included."""
    return "".join(traceback.format_exception(error)) + repr(error.args)


def test_password_never_in_repr_error_or_log(
    postgres_server: PostgresServer, postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "hunter2-Sekret"
    caplog.set_level(logging.DEBUG)
    # Trust authentication ignores the password: the store opens.
    with PostgresStore(f"{postgres_database} password={secret}") as store:
        assert secret not in repr(store)
        assert f"dbname={TEST_DATABASE} user=postgres" in repr(store)
        store.add(stored("t"))
        with pytest.raises(StorageError) as info:
            store.add(stored("t"))
        assert secret not in _shown(info.value)
    # A server that is not there, a database that is not there, a DSN libpq refuses.
    url = f"postgresql://postgres:{secret}@/nowhere?host={postgres_server.directory}"
    broken = [
        url,
        f"host=/nonexistent dbname=x password={secret}",
        f"host={postgres_server.directory} dbname=x password='{secret} with space' port=x",
        f"host=x password={secret} junk",
        f"{secret}",
    ]
    for dsn in broken:
        with pytest.raises(StorageError) as info:
            PostgresStore(dsn, timeout=1)
        assert secret not in _shown(info.value)
    assert secret not in caplog.text


def test_storage_errors_hold_no_row_values(postgres_database: str) -> None:
    # PostgreSQL's DETAIL quotes the offending row; the hash must not reach the message.
    with PostgresStore(postgres_database) as store:
        with psycopg.connect(postgres_database, autocommit=True) as conn:
            conn.execute("ALTER TABLE apitokens_tokens ADD CONSTRAINT no_x CHECK (name <> 'x')")
        with pytest.raises(StorageError) as info:
            store.add(stored("t", name="x"))
    assert secret_hash("secret-of-t") not in str(info.value)
    assert "no_x" in str(info.value)
    assert "secret_hash" not in _shown(info.value)
    assert secret_hash("secret-of-t") not in _shown(info.value)


# --- failures ------------------------------------------------------------------------------


def test_dropped_idle_connections_fail_no_call(postgres_database: str) -> None:
    with PostgresStore(postgres_database, pool_size=4) as store:
        store.add(stored("t"))
        # Several idle connections in the pool, all about to be killed.
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda _: store.list(now=NOW), range(40)))
        with psycopg.connect(postgres_database, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND application_name <> %s",
                (ADMIN,),
            )
        outcomes: list[bool | str] = []
        for _ in range(10):
            try:
                outcomes.append(store.get("t") is not None)
            except StorageError as error:
                outcomes.append(str(error))
        # A dead idle connection is replaced before use, and a read on one the server
        # ended at that moment is tried once more: not one call fails.
        assert outcomes == [True] * 10, outcomes
        assert store.revoke("t", NOW) is True


def test_a_server_that_stops_answering_fails_the_call_within_2_timeouts(
    postgres_database: str,
) -> None:
    # No RST, no FIN, every byte acknowledged: only the client's deadline can end the wait.
    from tests.integration.test_attack_issue15 import proxied

    def watchdogs() -> int:
        return sum(t.name == "apitokens-pg-watchdog" for t in threading.enumerate())

    PostgresStore(postgres_database).close()
    before = watchdogs()  # 0, unless a store some other test left open keeps it
    with proxied(postgres_database) as (proxy, through):
        with PostgresStore(through, timeout=0.5) as store:
            store.add(stored("t"))
            proxy.frozen.set()
            started = time.monotonic()
            with pytest.raises(StorageError, match=r"get failed: no answer .* within 1 s"):
                store.get("t")
            waited = time.monotonic() - started
            proxy.frozen.clear()
            assert store.get("t") is not None  # a new connection: it works again
        assert 1.0 <= waited < 3.0, waited
    assert watchdogs() == before  # the last store closed stops the watchdog thread


_FORK = """
import os, sys
from apitokens.postgres import PostgresStore
from apitokens.testing import NOW, stored

store = PostgresStore(sys.argv[1], pool_size=2)
store.add(stored("parent"))
store.list(now=NOW)  # the pool holds an idle connection when the child is forked
pid = os.fork()
if pid == 0:
    store.add(stored("child"))
    assert store.get("parent") is not None
    sys.exit(0)  # a normal exit: the interpreter frees what it can
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
# The child neither used nor closed the parent's connections: no call fails here.
for _ in range(5):
    assert store.get("child") is not None
store.close()
print("ok")
"""


def test_a_forked_child_gets_its_own_connections(postgres_database: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _FORK, postgres_database],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.stdout == "ok\n", result.stderr


def test_a_call_waits_for_another_sessions_lock_only_for_the_timeout(
    postgres_database: str,
) -> None:
    with PostgresStore(postgres_database, timeout=0.2) as store:
        store.add(stored("t"))
        with psycopg.connect(postgres_database) as other:  # holds the row until rollback
            other.execute("SELECT 1 FROM apitokens_tokens WHERE id = 't' FOR UPDATE")
            with pytest.raises(StorageError, match=r"revoke failed: .*lock timeout"):
                store.revoke("t", NOW)
            assert store.get("t") is not None  # reads never wait for it
        assert store.revoke("t", NOW) is True


def test_an_unreachable_server_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="open failed"):
        PostgresStore("host=/nonexistent-apitokens dbname=x", timeout=1)


@pytest.mark.parametrize("bad", [{"pool_size": 0}, {"pool_size": True}, {"timeout": 0}])
def test_bad_arguments_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"pool_size|timeout"):
        PostgresStore("host=/nowhere", **bad)


def test_importing_without_psycopg_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "try:\n"
        "    import apitokens.postgres\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'apitokens[postgres]'" in result.stdout


def test_a_missing_postgresql_fails_and_names_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server fixture's own check: a machine without PostgreSQL fails, never skips.
    from tests.support import pgserver
    from tests.support import postgres as support

    monkeypatch.setattr(pgserver, "_bin_directory", lambda: None)
    with pytest.raises(pytest.fail.Exception) as info, support.running_server():
        pass
    assert "apt-get install -y --no-install-recommends postgresql" in str(info.value)
    assert support.OPT_OUT in str(info.value)


def test_a_role_without_create_rights_is_told_what_to_do(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    from tests.support.postgres import PASSWORD, PASSWORD_USER

    dsn = postgres_database.replace("user=postgres", f"user={PASSWORD_USER} password={PASSWORD}")
    schema = postgres_database.rsplit("search_path=", 1)[1].rstrip("'")
    for state in ("3F000", "42501"):  # no usable schema; then usage but no CREATE
        with pytest.raises(StorageError) as info:
            PostgresStore(dsn, timeout=2)
        message = str(info.value)
        assert "open failed" in message
        assert "dbname=apitokens_test" in message
        assert f"SQLSTATE {state}" in message
        assert "docs/deployment.md" in message
        assert PASSWORD not in message
        postgres_server.execute(f"GRANT USAGE ON SCHEMA {schema} TO {PASSWORD_USER}", TEST_DATABASE)
