"""What a second reading of the meter found (issue 18), each test failing before its fix.

Injected clocks; two ``ApiTokens`` on one ``MemoryStore`` stand for two processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

from apitokens import MemoryStore, SQLiteStore, StorageError
from apitokens._flow import Requirement
from apitokens.storage import CreditSpend
from tests.support import Clock, Monotonic, bearer, get, make_tokens


class FlakyLedger(MemoryStore):
    """A MemoryStore whose usage ledger fails while ``broken`` (slowly, if ``slow``)."""

    broken = False
    slow = 0.0
    calls = 0

    def count_requests(
        self, counts: Mapping[tuple[str, int, int], int], *, ended_before: int
    ) -> dict[tuple[str, int, int], int]:
        self.calls += 1
        if self.broken:
            time.sleep(self.slow)  # a database that answers late, then fails
            raise StorageError("ledger down")
        return super().count_requests(counts, ended_before=ended_before)

    def spend_credits(self, spends: Mapping[str, CreditSpend]) -> dict[str, int]:
        if self.broken:
            raise StorageError("ledger down")
        return super().spend_credits(spends)


def test_a_route_requirement_after_a_recorded_decision_gives_nothing_back() -> None:
    """``flow.require`` on a result recorded already (DRF checks a permission once per
    form of its browsable page) never gives a use back: it was one, and audited."""
    with make_tokens(clock=Clock()) as tokens:
        issued = tokens.create(actor="alice", name="x", rate_limit="3/day")
        request = get("/rest/x", bearer(issued.secret))
        result = tokens.authenticate(request)
        for _ in range(5):
            refused = tokens.flow.require(request, result, Requirement.READ_WRITE)
            assert refused.status_code == 403
        statuses = [tokens.authenticate(request).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]


class SteppingClock(Clock):
    """A clock that moves on by ``step`` each time it is read (while ``step`` is set)."""

    step = timedelta(0)

    def __call__(self) -> datetime:
        now = self.now
        self.now += self.step
        return now


def test_a_use_given_back_goes_to_the_window_of_its_decision() -> None:
    """A refusal by the route's requirement gives the use back in the window the
    decision counted it in, not the one the clock reads when the refusal is made."""
    clock = SteppingClock()
    with make_tokens(clock=clock) as tokens:
        issued = tokens.create(actor="alice", name="x", rate_limit="2/min")
        headers = bearer(issued.secret)
        request = get("/rest/x", headers)
        assert tokens.authenticate(request).status_code == 200  # verified: cached
        clock.advance(seconds=59)
        clock.step = timedelta(seconds=1)  # the minute ends while the request is in the flow
        result = tokens.flow.run(request, require=Requirement.READ_WRITE)
        clock.step = timedelta(0)
        assert result.status_code == 403
        clock.now = clock.now.replace(second=30)  # within the next minute: two, not three
        assert [tokens.authenticate(request).status_code for _ in range(3)] == [200, 200, 429]


def test_lowering_credits_never_brings_the_old_allotment_back(tmp_path: Path) -> None:
    """Another process still holds the old record (SQLite tells no change: its cache
    lasts ``cache_ttl``) and sends a use counted on the old, larger credits."""
    clock, ticks = Clock(), Monotonic()
    path = tmp_path / "tokens.db"
    with (
        SQLiteStore(path) as one,
        SQLiteStore(path) as other,
        make_tokens(one, clock=clock, monotonic=ticks) as a,
        make_tokens(other, clock=clock, monotonic=ticks) as b,
    ):
        issued = a.create(actor="alice", name="x", credits=1000, secure=False)
        request = get("/rest/x", bearer(issued.secret))
        assert b.authenticate(request).status_code == 200  # B caches the 1000 credits
        b.flush()
        a.edit(actor="alice", token_id=issued.token.id, credits=5)
        # B, on its cached record, admits one more and sends it on the old 1000.
        assert b.authenticate(request).status_code == 200
        b.flush()
        ticks.advance(1.0)
        assert a.credits_left(issued.token.id) == 4  # not 998
        statuses = [a.authenticate(request).status_code for _ in range(6)]
        assert statuses == [200] * 4 + [429] * 2


def test_uses_a_failed_send_kept_are_sent_at_close() -> None:
    store = FlakyLedger()
    with make_tokens(store, clock=Clock()) as tokens:
        issued = tokens.create(actor="alice", name="x", rate_limit="100/day")
        request = get("/rest/x", bearer(issued.secret))
        assert tokens.authenticate(request).status_code == 200  # read: fresh
        store.broken = True
        assert [tokens.authenticate(request).status_code for _ in range(3)] == [200] * 3
        tokens.flush()  # fails: the three are kept
        store.broken = False
    # Closed: what the failed send kept went to the store.
    [(key, total)] = store._requests.items()
    assert key[0] == issued.token.id and total == 4


def test_requests_waiting_on_a_store_that_fails_do_not_each_try_it() -> None:
    store = FlakyLedger()
    clock, ticks = Clock(), Monotonic()
    with make_tokens(store, clock=clock, monotonic=ticks) as tokens:
        issued = tokens.create(actor="alice", name="x", rate_limit="100/day")
        request = get("/rest/x", bearer(issued.secret))
        assert tokens.authenticate(request).status_code == 200
        tokens.flush()
        store.broken, store.slow = True, 0.2
        ticks.advance(1.0)  # the count is stale: every request reads it again
        before = store.calls
        start = threading.Barrier(6)
        statuses: list[int] = []

        def one() -> None:
            start.wait()
            statuses.append(tokens.authenticate(request).status_code)

        threads = [threading.Thread(target=one) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [503] * 6
        assert store.calls - before <= 2  # one read (and maybe the sending thread's)
        store.broken = False


def test_uses_of_the_period_before_are_taken_off_before_the_refill() -> None:
    """Exact at a refill boundary: uses admitted just before midnight, not sent yet, are
    spent in their own period; the new period's refill comes after them."""
    clock = Clock()  # 12:00 UTC
    with make_tokens(clock=clock) as tokens:
        issued = tokens.create(actor="alice", name="x", credits=10, refill="3/day")
        request = get("/rest/x", bearer(issued.secret))
        assert [tokens.authenticate(request).status_code for _ in range(5)] == [200] * 5
        tokens.flush()
        clock.advance(hours=11, minutes=59)
        assert [tokens.authenticate(request).status_code for _ in range(5)] == [200] * 5
        clock.advance(minutes=1)  # midnight: 0 left, plus a refill of 3
        statuses = [tokens.authenticate(request).status_code for _ in range(5)]
        assert statuses == [200] * 3 + [429] * 2
