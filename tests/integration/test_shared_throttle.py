"""Failed-attempt throttling across processes (DESIGN §8): the store's FailureLedger.

Two ``ApiTokens`` on two handles of one store (a SQLite file, a PostgreSQL schema)
stand for two processes. Their monotonic clock is frozen unless a test moves it, so a
count read from the store is reused until the test lets ``CACHE_INTERVAL`` pass;
``flush()`` sends a process's failures as its flusher would within ``FLUSH_INTERVAL``.
Nothing sleeps or polls.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from apitokens import ApiTokens, MemoryStore, Policy, SQLiteStore, TokenStore
from apitokens._ledger import CACHE_INTERVAL
from apitokens.postgres import PostgresStore
from tests.support import Clock, GatedHasher, Monotonic, bearer, get, make_tokens

LIMIT = 4
ADDRESS = "198.51.100.7"


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[TokenStore, ...]]:
    """Two handles on one store, as two processes have."""
    if request.param == "sqlite":
        path = tmp_path / "tokens.db"
        with SQLiteStore(path) as one, SQLiteStore(path) as other:
            yield one, other
    else:
        dsn = request.getfixturevalue("postgres_database")
        with PostgresStore(dsn, pool_size=3) as one, PostgresStore(dsn, pool_size=3) as other:
            yield one, other


def _pair(
    stores: tuple[TokenStore, ...], clock: Clock, ticks: Monotonic
) -> tuple[ApiTokens, ApiTokens]:
    one, other = stores
    return (
        make_tokens(one, clock=clock, monotonic=ticks, max_failed_attempts=LIMIT),
        make_tokens(other, clock=clock, monotonic=ticks, max_failed_attempts=LIMIT),
    )


def _status(tokens: ApiTokens, value: str, ip: str = ADDRESS) -> int:
    return tokens.authenticate(get("/x", bearer(value), ip=ip)).status_code


def test_two_processes_share_one_limit_and_a_cached_good_token_still_passes(
    stores: tuple[TokenStore, ...],
) -> None:
    clock, ticks = Clock(), Monotonic()
    first, second = _pair(stores, clock, ticks)
    with first, second:
        issued = first.create(actor="alice", name="ci")
        wrong = first.policy.token_format.issue(issued.token.id).value
        assert _status(first, issued.secret) == 200  # verified, so cached, in the first
        assert [_status(first, wrong) for _ in range(2)] == [401, 401]
        first.flush()
        # The second has half the limit left, not all of it: it knows of the first's two.
        assert [_status(second, wrong) for _ in range(3)] == [401, 401, 429]
        refused = second.authenticate(get("/x", bearer(wrong), ip=ADDRESS))
        assert refused.status_code == 429 and ("Retry-After", "1") in refused.headers
        second.flush()
        ticks.advance(CACHE_INTERVAL)
        assert _status(first, wrong) == 429  # two of its own, two of the other's
        # A secret this process verified before never pays for others' guesses.
        assert _status(first, issued.secret) == 200
        # Per address only: another address has its whole limit.
        assert _status(second, wrong, ip="203.0.113.1") == 401
        # A minute later the failures have left the window, in both processes.
        clock.advance(seconds=61)
        ticks.advance(61)
        assert _status(second, issued.secret) == 200
        assert _status(first, wrong) == 401


def test_attempts_through_both_processes_in_turn_stop_at_the_limit(
    stores: tuple[TokenStore, ...],
) -> None:
    clock, ticks = Clock(), Monotonic()
    first, second = _pair(stores, clock, ticks)
    with first, second:
        issued = first.create(actor="alice", name="ci")
        wrong = first.policy.token_format.issue(issued.token.id).value
        statuses = []
        for turn in range(3 * LIMIT):
            process = (first, second)[turn % 2]
            statuses.append(_status(process, wrong))
            process.flush()  # its flusher's interval passed
            ticks.advance(CACHE_INTERVAL)  # and every cached count is stale
        # LIMIT attempts from the address in all, not LIMIT per process.
        assert statuses == [401] * LIMIT + [429] * (2 * LIMIT)


def test_without_a_ledger_each_process_counts_alone() -> None:
    store = MemoryStore()  # no FailureLedger: one process's store
    clock, ticks = Clock(), Monotonic()
    first, second = _pair((store, store), clock, ticks)
    with first, second:
        issued = first.create(actor="alice", name="ci")
        wrong = first.policy.token_format.issue(issued.token.id).value
        assert [_status(first, wrong) for _ in range(LIMIT + 1)] == [401] * LIMIT + [429]
        first.flush()
        ticks.advance(CACHE_INTERVAL)
        assert [_status(second, wrong) for _ in range(LIMIT + 1)] == [401] * LIMIT + [429]


def test_an_unreadable_ledger_leaves_each_process_its_own_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail closed: a ledger that fails never lets more through than the local throttle."""
    path = tmp_path / "tokens.db"
    clock, ticks = Clock(), Monotonic()
    with SQLiteStore(path) as one, SQLiteStore(path) as other:
        first, second = _pair((one, other), clock, ticks)
        with first, second:
            issued = first.create(actor="alice", name="ci")
            wrong = first.policy.token_format.issue(issued.token.id).value
            with sqlite3.connect(path) as conn:
                conn.execute("DROP TABLE failures")  # every read and write of it fails
            caplog.set_level(logging.WARNING, logger="apitokens")
            statuses = []
            for _ in range(LIMIT + 2):
                statuses.append(_status(first, wrong))
                ticks.advance(CACHE_INTERVAL)
            assert statuses == [401] * LIMIT + [429, 429]
            first.flush()
            unreadable = [r for r in caplog.records if "could not be read" in r.getMessage()]
            unwritten = [r for r in caplog.records if "could not be written" in r.getMessage()]
            assert len(unreadable) == 1 and len(unwritten) == 1  # once, not per request
            # The other process counts alone too: its own limit, no more.
            assert [_status(second, wrong) for _ in range(LIMIT + 1)] == [401] * LIMIT + [429]
            assert _status(first, issued.secret) == 429  # never verified here: throttled


def test_a_cached_good_token_never_reads_the_ledger(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The hot path pays nothing: with the ledger gone, a verified token never notices."""
    path = tmp_path / "tokens.db"
    clock, ticks = Clock(), Monotonic()
    with SQLiteStore(path) as store, make_tokens(store, clock=clock, monotonic=ticks) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        assert _status(tokens, issued.secret) == 200  # verified once (the ledger read)
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TABLE failures")  # any read of it now fails, and logs
        caplog.set_level(logging.WARNING, logger="apitokens")
        for _ in range(20):
            ticks.advance(CACHE_INTERVAL)  # no cached count would spare a read
            assert _status(tokens, issued.secret) == 200
        assert not [r for r in caplog.records if "ledger" in r.getMessage()]
        # A guess does read it (and, unreadable, falls back to the local count).
        assert _status(tokens, tokens.policy.token_format.issue(issued.token.id).value) == 401
        assert [r for r in caplog.records if "could not be read" in r.getMessage()]


def test_a_forked_child_sends_its_own_failures_and_not_its_parents(tmp_path: Path) -> None:
    """gunicorn --preload: the ApiTokens is made before the fork; each process shares."""
    path = tmp_path / "tokens.db"
    clock, ticks = Clock(), Monotonic()
    with SQLiteStore(path) as store:
        tokens = make_tokens(store, clock=clock, monotonic=ticks, max_failed_attempts=LIMIT)
        issued = tokens.create(actor="alice", name="ci")
        wrong = tokens.policy.token_format.issue(issued.token.id).value
        shared = tokens._authenticator.shared_failures
        assert shared is not None
        shared.flush_interval = 60.0  # after its first write, the parent's thread waits
        assert _status(tokens, wrong) == 401  # the parent's flusher thread runs now
        shared.flush()  # that one is in the store, whatever the thread did
        # And one the parent has not sent at the fork (as if it came during a pause).
        with shared._lock:
            shared._pending[ADDRESS] = 1
        pid = os.fork()
        if pid == 0:  # the child: a flusher of its own, none of the parent's failures
            code = 1
            try:
                statuses = [_status(tokens, wrong) for _ in range(2)]
                tokens.flush()
                code = 0 if statuses == [401, 401] else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        window_start = clock() - timedelta(minutes=1)
        # 1 before the fork + the child's 2, + the parent's pending 1 if its flusher
        # thread (woken by the first failure) sent it meanwhile: that is the parent's.
        assert store.failures_since(ADDRESS, window_start) in (3, 4)
        tokens.flush()
        # 5 if the child had sent the parent's pending one as well.
        assert store.failures_since(ADDRESS, window_start) == 4
        ticks.advance(CACHE_INTERVAL)
        assert _status(tokens, wrong) == 429
        tokens.close()


def test_attempts_in_flight_here_count_with_the_failures_elsewhere(
    stores: tuple[TokenStore, ...],
) -> None:
    """Limit 4, three failures elsewhere: one guess may hash here; a second meanwhile, 503."""
    clock, ticks = Clock(), Monotonic()
    gate = threading.Event()
    hasher = GatedHasher(gate)
    one, other = stores
    first = make_tokens(one, clock=clock, monotonic=ticks, max_failed_attempts=LIMIT)
    second = ApiTokens(
        other,
        policy=Policy(max_failed_attempts=LIMIT),
        hasher=hasher,
        clock=clock,
        monotonic=ticks,
        max_concurrent_verifications=4,
    )
    with first, second:
        issued = first.create(actor="alice", name="ci")
        wrong = first.policy.token_format.issue(issued.token.id).value
        assert [_status(first, wrong) for _ in range(LIMIT - 1)] == [401] * (LIMIT - 1)
        first.flush()
        statuses: list[int] = []
        guess = threading.Thread(target=lambda: statuses.append(_status(second, wrong)))
        guess.start()
        try:
            assert hasher.started.acquire(timeout=10)  # the first guess is hashing
            other_guess = first.policy.token_format.issue(issued.token.id).value  # not in flight
            busy = second.authenticate(get("/x", bearer(other_guess), ip=ADDRESS))
            assert busy.status_code == 503 and ("Retry-After", "1") in busy.headers
            assert hasher.calls == 1
        finally:
            gate.set()
            guess.join(10)
        assert statuses == [401]
        assert _status(second, wrong) == 429  # its own failure and the other's three


def test_flush_waits_for_the_batch_the_flusher_thread_is_writing(tmp_path: Path) -> None:
    """After flush() every failure counted before it is in the store, the thread's too."""
    from apitokens._ledger import SharedFailures

    inside, gate = threading.Event(), threading.Event()

    class SlowStore(SQLiteStore):
        def record_failures(self, counts: dict[str, int], at: object, *, keep: object) -> None:
            inside.set()
            assert gate.wait(timeout=30)
            super().record_failures(counts, at, keep=keep)  # type: ignore[arg-type]

    clock = Clock()
    with SlowStore(tmp_path / "tokens.db") as store:
        shared = SharedFailures(store, 60.0, clock)
        shared.add(ADDRESS)  # the flusher thread takes it, and waits at the gate
        assert inside.wait(timeout=30)
        seen: list[int] = []

        def flush() -> None:
            shared.flush()
            seen.append(store.failures_since(ADDRESS, clock() - timedelta(minutes=1)))

        flusher = threading.Thread(target=flush)
        flusher.start()
        gate.set()
        flusher.join(timeout=30)
        assert seen == [1]  # 0 when flush() returned before the thread's batch was written
        shared.close()
