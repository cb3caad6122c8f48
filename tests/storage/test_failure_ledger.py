"""The optional FailureLedger of SQLiteStore and PostgresStore, on a real file and server.

Two handles on one store stand for two processes: what one records, the other counts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from apitokens import MemoryStore, SQLiteStore
from apitokens.postgres import PostgresStore
from apitokens.storage import FailureLedger
from apitokens.storage._base import FAILURES_KEPT_AT_LEAST
from tests.support import START

MINUTE = timedelta(minutes=1)

Ledgers = tuple[FailureLedger, FailureLedger]


@pytest.fixture(params=["sqlite", "postgres"])
def two(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledgers]:
    """Two handles on one store, as two processes have."""
    if request.param == "sqlite":
        path = tmp_path / "tokens.db"
        with SQLiteStore(path) as one, SQLiteStore(path) as other:
            yield one, other
    else:
        dsn = request.getfixturevalue("postgres_database")
        with PostgresStore(dsn, pool_size=2) as one, PostgresStore(dsn, pool_size=2) as other:
            yield one, other


def test_the_sql_stores_offer_it_and_the_memory_store_does_not(two: Ledgers) -> None:
    assert all(isinstance(store, FailureLedger) for store in two)
    assert not isinstance(MemoryStore(), FailureLedger)  # one process: nothing to share


def test_failures_recorded_by_one_handle_are_counted_by_the_other(two: Ledgers) -> None:
    one, other = two
    one.record_failures({"198.51.100.7": 2, "203.0.113.1": 1}, START, keep=MINUTE)
    other.record_failures({"198.51.100.7": 3}, START + timedelta(seconds=10), keep=MINUTE)
    since = START - MINUTE
    assert one.failures_since("198.51.100.7", since) == 5
    assert other.failures_since("203.0.113.1", since) == 1
    assert other.failures_since("192.0.2.9", since) == 0
    # Only those at or after ``since``: the first batch left the window.
    assert one.failures_since("198.51.100.7", START + timedelta(seconds=5)) == 3


def test_counts_by_whole_seconds_err_towards_counting(two: Ledgers) -> None:
    one, _ = two
    at = START + timedelta(seconds=30, milliseconds=900)
    one.record_failures({"k": 1}, at, keep=MINUTE)
    # Half a second later than the failure, but in its second: still counted.
    assert one.failures_since("k", at + timedelta(milliseconds=50)) == 1
    assert one.failures_since("k", at + timedelta(seconds=1)) == 0


def test_failures_older_than_keep_are_forgotten(two: Ledgers) -> None:
    one, other = two
    one.record_failures({"old": 4}, START, keep=MINUTE)
    assert other.failures_since("old", START - MINUTE) == 4
    # keep is a minute, but nothing goes before FAILURES_KEPT_AT_LEAST (an hour).
    later = START + FAILURES_KEPT_AT_LEAST + timedelta(minutes=2)
    other.record_failures({"new": 1}, later, keep=MINUTE)
    assert one.failures_since("old", START - MINUTE) == 0  # gone, not just out of the window
    assert one.failures_since("new", START) == 1


def test_a_shorter_window_never_erases_what_a_longer_one_counts(two: Ledgers) -> None:
    # Another service on the same store, with a failure_window of a second.
    one, other = two
    one.record_failures({"203.0.113.9": 9}, START, keep=10 * MINUTE)
    other.record_failures({"198.51.100.1": 1}, START + 5 * MINUTE, keep=timedelta(seconds=1))
    assert one.failures_since("203.0.113.9", START - 10 * MINUTE) == 9
    # Up to the floor only: a window longer than it is kept as its own process asks.
    edge = START + FAILURES_KEPT_AT_LEAST - timedelta(seconds=1)
    other.record_failures({"198.51.100.1": 1}, edge, keep=timedelta(seconds=1))
    assert one.failures_since("203.0.113.9", START - 10 * MINUTE) == 9


def test_postgres_prunes_by_the_servers_clock_too(postgres_database: str) -> None:
    # A host whose clock is a day ahead erases no failure of the last hour.
    now = datetime.now(UTC)
    with PostgresStore(postgres_database) as here, PostgresStore(postgres_database) as ahead:
        here.record_failures({"203.0.113.9": 2}, now - 50 * MINUTE, keep=MINUTE)
        ahead.record_failures({"198.51.100.1": 1}, now + timedelta(days=1), keep=MINUTE)
        assert here.failures_since("203.0.113.9", now - timedelta(hours=1)) == 2
        # What is older than the floor by both clocks goes.
        here.record_failures({"192.0.2.1": 1}, now - 2 * FAILURES_KEPT_AT_LEAST, keep=MINUTE)
        ahead.record_failures({"198.51.100.1": 1}, now + timedelta(days=1), keep=MINUTE)
        assert here.failures_since("192.0.2.1", now - timedelta(days=1)) == 0


def test_naive_times_and_negative_counts_are_refused(two: Ledgers) -> None:
    one, _ = two
    with pytest.raises(ValueError, match="timezone-aware"):
        one.record_failures({"k": 1}, datetime(2026, 1, 1), keep=MINUTE)
    with pytest.raises(ValueError, match=">= 0"):
        one.record_failures({"k": 1, "j": -1}, START, keep=MINUTE)
    with pytest.raises(ValueError, match="timezone-aware"):
        one.failures_since("k", datetime(2026, 1, 1))
    assert one.failures_since("k", START - MINUTE) == 0  # nothing of the refused batch


def test_sqlite_queries_use_the_indexes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as conn:
        count = conn.execute(
            "EXPLAIN QUERY PLAN SELECT coalesce(sum(count), 0) FROM failures"
            " WHERE key = ? AND second >= ?",
            ("k", 0),
        ).fetchall()
        prune = conn.execute(
            "EXPLAIN QUERY PLAN DELETE FROM failures WHERE second < ?", (0,)
        ).fetchall()
    assert "USING PRIMARY KEY (key=? AND second>?)" in str(count), count
    assert "failures_by_second" in str(prune), prune


def test_postgres_queries_use_the_indexes(postgres_database: str) -> None:
    PostgresStore(postgres_database).close()
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        count = conn.execute(
            "EXPLAIN SELECT coalesce(sum(count), 0) FROM apitokens_failures"
            " WHERE key = 'k' AND second >= 0"
        ).fetchall()
        prune = conn.execute("EXPLAIN DELETE FROM apitokens_failures WHERE second < 0").fetchall()
    assert "apitokens_failures_pkey" in str(count), count
    assert "apitokens_failures_by_second" in str(prune), prune
