"""The UsageLedger of SQLiteStore and PostgresStore, shared by two handles on one store.

Two store objects on one file or database stand for two processes: what each adds, the
other counts, and concurrent adds from both never lose one.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from apitokens import MemoryStore, SQLiteStore
from apitokens.postgres import PostgresStore
from apitokens.postgres._store import REQUESTS_KEPT_AFTER_END
from apitokens.storage import CreditSpend, UsageLedger

Ledgers = tuple[UsageLedger, UsageLedger]


@pytest.fixture(params=["sqlite", "postgres"])
def two(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledgers]:
    """Two handles on one store, as two processes have."""
    if request.param == "sqlite":
        path = tmp_path / "tokens.db"
        with SQLiteStore(path) as one, SQLiteStore(path) as other:
            yield one, other
    else:
        dsn = request.getfixturevalue("postgres_database")
        with PostgresStore(dsn, pool_size=4) as one, PostgresStore(dsn, pool_size=4) as other:
            yield one, other


def test_every_built_in_store_offers_it(two: Ledgers) -> None:
    assert all(isinstance(ledger, UsageLedger) for ledger in two)
    assert isinstance(MemoryStore(), UsageLedger)


def test_what_one_handle_adds_the_other_counts(two: Ledgers) -> None:
    one, other = two
    window = ("t", 60, 1_773_500_040)
    assert one.count_requests({window: 3}, ended_before=0) == {window: 3}
    assert other.count_requests({window: 2}, ended_before=0) == {window: 5}
    assert one.spend_credits({"t": CreditSpend(4, 10, 0, 0)}) == {"t": 6}
    assert other.spend_credits({"t": CreditSpend(7, 10, 0, 0)}) == {"t": 0}
    other.reset_credits("t")
    assert one.spend_credits({"t": CreditSpend(0, 10, 0, 0)}) == {"t": 10}


def test_threads_of_two_handles_lose_no_count(two: Ledgers) -> None:
    workers, batches = 6, 30
    windows = [("hot", 60, 1_773_500_040), ("hot", 1, 1_773_500_041), ("warm", 60, 1_773_500_040)]
    start = threading.Barrier(workers, timeout=60)

    def add(worker: int) -> tuple[int, int]:
        ledger = two[worker % 2]
        rng = random.Random(worker)
        start.wait()
        added = spent = 0
        for _ in range(batches):
            n = rng.randint(1, 3)
            keys = list(windows)
            rng.shuffle(keys)  # the same keys from every thread, in different orders
            ledger.count_requests(dict.fromkeys(keys, n), ended_before=0)
            ledger.spend_credits(
                {"hot": CreditSpend(n, 1_000_000, 0, 0), "warm": CreditSpend(1, 1_000_000, 0, 0)}
            )
            added += n
            spent += n
        return added, spent

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(add, range(workers)))
    added = sum(a for a, _ in results)
    spent = sum(s for _, s in results)
    totals = two[0].count_requests(dict.fromkeys(windows, 0), ended_before=0)
    assert totals == dict.fromkeys(windows, added)
    left = two[1].spend_credits(
        {"hot": CreditSpend(0, 1_000_000, 0, 0), "warm": CreditSpend(0, 1_000_000, 0, 0)}
    )
    assert left == {"hot": 1_000_000 - spent, "warm": 1_000_000 - workers * batches}


def test_many_spends_at_once_never_go_below_zero(two: Ledgers) -> None:
    workers = 8
    start = threading.Barrier(workers, timeout=60)

    def spend(worker: int) -> int:
        start.wait()
        return two[worker % 2].spend_credits({"t": CreditSpend(3, 10, 0, 0)})["t"]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        left = sorted(pool.map(spend, range(workers)))
    # Each saw the balance after its own spend, one after another: 7, 4, 1, then 0s.
    assert left == [0, 0, 0, 0, 0, 1, 4, 7]


def test_postgres_keeps_windows_a_host_whose_clock_runs_ahead_would_prune(
    postgres_database: str,
) -> None:
    now = int(time.time())
    current = ("t", 60, now - now % 60)
    with PostgresStore(postgres_database) as here, PostgresStore(postgres_database) as ahead:
        here.count_requests({current: 4}, ended_before=current[2])
        # A host a day ahead prunes everything that ended before its now...
        ahead.count_requests({("t", 60, now + 86_400): 1}, ended_before=now + 86_400)
        # ...but the server's clock keeps what ended less than REQUESTS_KEPT_AFTER_END ago.
        assert here.count_requests({current: 1}, ended_before=current[2]) == {current: 5}
        old = ("t", 60, now - 60 - REQUESTS_KEPT_AFTER_END - 60)
        here.count_requests({old: 1}, ended_before=old[2])
        ahead.count_requests({}, ended_before=now + 86_400)
        assert here.count_requests({old: 0}, ended_before=old[2]) == {old: 0}
