"""SQLiteStore against the storage contract, plus what only a file can get wrong."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from apitokens._errors import SchemaVersionError, StorageError
from apitokens._model import Usage
from apitokens.storage import CreditSpend, SQLiteStore, _migrations, _schema
from apitokens.testing import NOW, SECOND, StoreContract, event, secret_hash, stored

from .raw import raw


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteStore]:
        with SQLiteStore(tmp_path / "tokens.db") as store:
            yield store


class TestSQLiteMemoryStore(StoreContract):
    """``:memory:`` is one private database: every thread must see the same one."""

    @pytest.fixture
    def store(self) -> Iterator[SQLiteStore]:
        with SQLiteStore(":memory:") as store:
            yield store


def user_version(path: Path) -> int:
    with raw(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


# A frozen copy of schema version 1 as released: files in the wild look like this.
V1_SQL = [
    """CREATE TABLE tokens (
        id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, user TEXT,
        created_by TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER,
        scope TEXT NOT NULL, restrictions TEXT NOT NULL DEFAULT '[]',
        allowed_ips TEXT NOT NULL DEFAULT '[]', secure INTEGER NOT NULL DEFAULT 1,
        secret_hash TEXT NOT NULL, revealable TEXT, last_used_at INTEGER,
        last_used_ip TEXT, use_count INTEGER NOT NULL DEFAULT 0, revoked_at INTEGER)""",
    "CREATE INDEX tokens_by_user ON tokens (user)",
    "CREATE INDEX tokens_by_status ON tokens (revoked_at, expires_at)",
    "CREATE INDEX tokens_by_last_used ON tokens (last_used_at)",
    """CREATE TABLE audit (
        seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, action TEXT NOT NULL,
        outcome TEXT NOT NULL, token_id TEXT, user TEXT, actor TEXT, client_ip TEXT,
        method TEXT, path TEXT, reason TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX audit_by_token ON audit (token_id, at)",
    "CREATE INDEX audit_by_user ON audit (user, at)",
    "CREATE INDEX audit_by_outcome ON audit (outcome, at)",
    "CREATE INDEX audit_by_at ON audit (at)",
]


def _words(sql: str) -> str:
    return " ".join(sql.replace("(", " ( ").replace(")", " ) ").replace(",", " , ").split())


# And of version 2's migration.
V2_SQL = [
    "ALTER TABLE tokens ADD COLUMN previous_hash TEXT",
    "ALTER TABLE tokens ADD COLUMN previous_valid_until INTEGER",
    "CREATE INDEX tokens_by_created ON tokens (created_at DESC, id)",
]


def test_released_migrations_are_never_edited() -> None:
    assert [_words(s) for s in _migrations.MIGRATIONS[0]] == [_words(s) for s in V1_SQL]
    assert [_words(s) for s in _migrations.MIGRATIONS[1]] == [_words(s) for s in V2_SQL]


def test_v1_file_upgrades_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    created, used = _schema.to_micros(NOW - SECOND), _schema.to_micros(NOW)
    with raw(path) as conn:
        for statement in V1_SQL:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO tokens (id, name, user, created_by, created_at, expires_at, scope,"
            " restrictions, allowed_ips, secure, secret_hash, revealable, last_used_at,"
            " last_used_ip, use_count, revoked_at)"
            " VALUES ('old', 'legacy', 'alice', 'admin', ?, NULL, 'read_write',"
            " '[\".*/rest/.*\"]', '[\"10.0.0.0/8\"]', 1, '$sha256$abc', NULL, ?, '10.1.2.3', 7,"
            " NULL)",
            (created, used),
        )
        conn.execute(
            "INSERT INTO audit (at, action, outcome, token_id, user, reason)"
            " VALUES (?, 'authenticate', 'success', 'old', 'alice', '')",
            (used,),
        )
        conn.execute("PRAGMA user_version = 1")

    with SQLiteStore(path) as store:
        got = store.get("old")
        assert got is not None
        assert got.token.name == "legacy"
        assert got.token.created_at == NOW - SECOND
        assert got.token.restrictions == (".*/rest/.*",)
        assert got.token.allowed_ips == ("10.0.0.0/8",)
        assert (got.token.use_count, got.token.last_used_at) == (7, NOW)
        assert (got.secret_hash, got.previous_hash, got.previous_valid_until) == (
            "$sha256$abc",
            None,
            None,
        )
        assert got.retired_hashes == ()
        [old_event] = store.events()
        assert old_event.token_id == "old"
        # The new columns work.
        store.update(
            stored(
                "old",
                secret_hash="$sha256$new",
                previous_hash="$sha256$abc",
                previous_valid_until=NOW + SECOND,
                retired_hashes=("$sha256$older",),
            )
        )
        got = store.get("old")
        assert got is not None
        assert got.previous_hash == "$sha256$abc"
        assert got.retired_hashes == ("$sha256$older",)
    assert user_version(path) == _migrations.LATEST_VERSION == 8


def test_a_version_7_file_gains_limits_and_the_usage_ledger(tmp_path: Path) -> None:
    path = tmp_path / "v7.db"
    with raw(path) as conn:
        for statements in _migrations.MIGRATIONS[:7]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO tokens (id, name, user, created_by, created_at, scope, secret_hash)"
            " VALUES ('old', 'legacy', 'alice', 'alice', ?, 'read_only', '$sha256$abc')",
            (_schema.to_micros(NOW - SECOND),),
        )
        conn.execute("PRAGMA user_version = 7")
    with SQLiteStore(path) as store:
        got = store.get("old")
        assert got is not None
        assert (got.token.rate_limit, got.token.credits, got.token.refill) == (None, None, None)
        assert [t.rate_limit for t in store.list(now=NOW)] == [None]
        assert got.token.name == "legacy" and got.secret_hash == "$sha256$abc"
        store.update(dataclasses.replace(got, token=dataclasses.replace(got.token, credits=5)))
        again = store.get("old")
        assert again is not None and again.token.credits == 5
        assert store.count_requests({("old", 60, 0): 2}, ended_before=0) == {("old", 60, 0): 2}
        assert store.spend_credits({"old": CreditSpend(1, 5, 0, 0)}) == {"old": 4}
    assert user_version(path) == _migrations.LATEST_VERSION == 8


def test_the_usage_ledger_s_queries_use_their_indexes(tmp_path: Path) -> None:
    from apitokens.storage import sqlite

    path = tmp_path / "plans.db"
    SQLiteStore(path).close()

    def plan(sql: str, *params: object) -> str:
        with raw(path) as conn:
            return " ".join(str(row) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))

    assert "PRIMARY KEY" in plan(sqlite._READ_REQUESTS, "t", 60, 0)
    assert "request_counts_by_end" in plan(sqlite._PRUNE_REQUESTS, 0)
    assert "PRIMARY KEY" in plan(sqlite._READ_BALANCE, "t")


def test_new_file_has_latest_schema_and_indexes(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SQLiteStore(path).close()
    assert user_version(path) == _migrations.LATEST_VERSION
    with raw(path) as conn:
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        plan = " ".join(
            str(row)
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM audit WHERE token_id = ? ORDER BY at DESC",
                ("t",),
            )
        )
    assert {
        "tokens_by_user",
        "tokens_by_status",
        "tokens_by_last_used",
        "tokens_by_created",
        "audit_by_token",
        "audit_by_user",
        "audit_by_outcome",
        "audit_by_at",
    } <= indexes
    assert "audit_by_token" in plan


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with raw(path) as conn:
        conn.execute("CREATE TABLE tokens (id TEXT)")
        conn.execute(f"PRAGMA user_version = {_migrations.LATEST_VERSION + 1}")
    before = path.read_bytes()
    with pytest.raises(SchemaVersionError) as info:
        SQLiteStore(path)
    message = str(info.value)
    assert f"schema version {_migrations.LATEST_VERSION + 1}" in message
    assert f"up to {_migrations.LATEST_VERSION}" in message
    assert isinstance(info.value, StorageError)
    assert path.read_bytes() == before


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database, just text\n" * 200)
    with pytest.raises(StorageError, match="open failed") as info:
        SQLiteStore(path)
    assert not isinstance(info.value, SchemaVersionError)


def test_unopenable_path_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        SQLiteStore(tmp_path / "missing-dir" / "tokens.db")


@pytest.mark.parametrize("timeout", [-1, float("inf"), float("nan")])
def test_bad_timeout_is_refused(tmp_path: Path, timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        SQLiteStore(tmp_path / "t.db", timeout=timeout)
    assert not (tmp_path / "t.db").exists()


def test_data_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    with SQLiteStore(path) as store:
        store.add(stored("t", expires_at=NOW))
        store.write(events=[event(NOW)], usage=[Usage("t", NOW, "10.0.0.1")])
        store.revoke("t", NOW + SECOND)
        before = store.get("t")
    with SQLiteStore(path) as store:
        assert store.get("t") == before
        assert store.events() == [event(NOW)]


def test_wal_mode_busy_timeout_and_cache(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    with SQLiteStore(path, timeout=2.5) as store:
        conn = store._db.pool._acquire()
        try:
            assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
            assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
            # Sized for audit batches spread over many tokens (docs/storage.md).
            assert conn.execute("PRAGMA cache_size").fetchone()[0] == -16384
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 10000
        finally:
            store._db.pool._release(conn)
    with raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _raw_bytes(path: Path) -> bytes:
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return b"".join(f.read_bytes() for f in files if f.exists())


def test_file_never_contains_a_secure_tokens_secret(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    secrets = {f"s{i}": f"apt_s{i:011d}SeCrEtPlAiNtExT{i:016d}xyzabc" for i in range(20)}
    shown = "apt_standard0TheRevealableStandardModeToken0000"
    store = SQLiteStore(path)
    try:
        for token_id, secret in secrets.items():
            store.add(stored(token_id, secret_hash=secret_hash(secret)))
        # Rotation moves the old hash to previous_hash; neither is the secret.
        store.update(stored("s0", secret_hash=secret_hash("new"), previous_hash=secret_hash("x")))
        store.add(stored("std", secure=False, secret_hash=secret_hash(shown), revealable=shown))
        store.write(events=[event(NOW, token_id=t) for t in secrets])
        while_open = _raw_bytes(path)
    finally:
        store.close()
    after_close = _raw_bytes(path)
    for data in (while_open, after_close):
        # The search works: a standard-mode token is stored revealable, on purpose.
        assert shown.encode() in data
        assert secret_hash(secrets["s1"]).encode() in data
        for secret in secrets.values():
            assert secret.encode() not in data
            assert secret[4:20].encode() not in data


def test_dropping_the_revealable_copy_scrubs_it_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    shown = "apt_standard1TheRevealableStandardModeToken1111"
    with SQLiteStore(path) as store:
        for i in range(8):  # neighbours on the page, so the freed cell is not simply reused
            store.add(stored(f"n{i}"))
            if i == 4:
                store.add(
                    stored(
                        "t",
                        secure=False,
                        secret_hash=secret_hash(shown),
                        revealable=shown,
                        previous_hash=secret_hash("old") * 4,  # stored after revealable
                    )
                )
        store.update(stored("t", name="t", secure=True, secret_hash="$x$short"))
    # Closing checkpoints the WAL into the file; secure_delete zeroed the old cell.
    assert shown.encode() not in _raw_bytes(path)


def test_two_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with SQLiteStore(path) as first, SQLiteStore(path) as second:
        first.add(stored("t"))
        assert second.get("t") is not None
        assert second.revoke("t", NOW) is True
        assert first.revoke("t", NOW) is False
        second.write(events=[event(NOW)], usage=[Usage("t", NOW)])
        assert first.events() == [event(NOW)]

        # Writers in two stores (as in two processes) do not lose each other's work.
        def hammer(store: SQLiteStore) -> None:
            for i in range(100):
                store.write(events=[event(NOW + i * SECOND)], usage=[Usage("t", NOW)])

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(hammer, [first, second, first, second]))
        got = first.get("t")
        assert got is not None
        assert got.token.use_count == 401
        assert len(second.events(limit=1000)) == 401


def test_sqlite_failures_name_the_operation(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    with SQLiteStore(path) as store:
        store.add(stored("t", secret_hash=secret_hash("hidden")))
        with raw(path) as conn:
            conn.execute("DROP TABLE audit")
        with pytest.raises(StorageError, match="events failed") as info:
            store.events()
        assert isinstance(info.value.__cause__, sqlite3.Error)
        with pytest.raises(StorageError, match="write failed"):
            store.write(events=[event(NOW)], usage=[Usage("t", NOW)])
        got = store.get("t")  # the failed batch's usage was rolled back
        assert got is not None
        assert got.token.use_count == 0


def test_a_batch_failing_midway_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    with SQLiteStore(path) as store:
        store.add(stored("t"))
        store.add(stored("u"))
        with raw(path) as conn:  # the usage update of "u" fails after the events went in
            conn.execute(
                "CREATE TRIGGER boom BEFORE UPDATE OF use_count ON tokens WHEN OLD.id = 'u'"
                " BEGIN SELECT RAISE(ABORT, 'boom'); END"
            )
        with pytest.raises(StorageError, match="write failed"):
            store.write(events=[event(NOW), event(NOW)], usage=[Usage("t", NOW), Usage("u", NOW)])
        assert store.events() == []
        got = store.get("t")
        assert got is not None
        assert got.token.use_count == 0
        store.write(events=[event(NOW)], usage=[Usage("t", NOW)])  # the store still works
        assert len(store.events()) == 1


def test_unreadable_rows_are_storage_errors(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    with SQLiteStore(path) as store:
        store.add(stored("t"))
        with raw(path) as conn:
            conn.execute("UPDATE tokens SET scope = 'everything', restrictions = '{'")
        with pytest.raises(StorageError, match="'t'"):
            store.get("t")
        with pytest.raises(StorageError):
            store.list(now=NOW)


def test_repr_and_messages_hold_no_hashes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    with SQLiteStore(path) as store:
        token = stored("t", secret_hash=secret_hash("hidden"))
        store.add(token)
        assert repr(store) == f"SQLiteStore({str(path)!r})"
        with pytest.raises(StorageError) as info:
            store.add(token)
        assert token.secret_hash not in str(info.value)
        assert token.secret_hash not in repr(store.get("t"))


def test_many_short_lived_threads_do_not_pile_up_connections(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "tokens.db") as store:
        store.add(stored("t"))
        for _ in range(50):
            thread = threading.Thread(target=store.write, kwargs={"usage": [Usage("t", NOW)]})
            thread.start()
            thread.join()
        assert len(store._db.pool._idle) <= 8
        got = store.get("t")
        assert got is not None
        assert got.token.use_count == 50


def test_memory_database_is_shared_by_every_thread() -> None:
    with SQLiteStore(":memory:") as store:
        thread = threading.Thread(target=store.add, args=(stored("t"),))
        thread.start()
        thread.join()
        assert store.get("t") is not None


def test_audit_batches_skip_the_fsync_but_token_changes_keep_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)  # type: ignore[arg-type]
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    with SQLiteStore(tmp_path / "sync.db") as store:
        statements.clear()
        store.write(events=[event(NOW)])
        assert [s for s in statements if "synchronous" in s] == [
            "PRAGMA synchronous = NORMAL",
            "PRAGMA synchronous = FULL",
        ]
        statements.clear()
        store.add(stored("t"))
        store.revoke("t", NOW)
        assert not [s for s in statements if "synchronous" in s]  # FULL, as connected
        with store._db.pool.connection() as conn:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_a_new_database_and_its_wal_are_private_to_their_owner(tmp_path: Path) -> None:
    """Hashes, standard-mode secrets and the audit log: never world-readable by default."""
    path = tmp_path / "tokens.db"
    with SQLiteStore(path) as store:
        store.add(stored("private"))
        for name in ("tokens.db", "tokens.db-wal", "tokens.db-shm"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    existing = tmp_path / "shared.db"
    SQLiteStore(existing).close()
    existing.chmod(0o640)  # an operator's choice is kept
    SQLiteStore(existing).close()
    assert existing.stat().st_mode & 0o777 == 0o640
