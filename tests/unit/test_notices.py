"""Expiry notices (DESIGN §11): ``expiring`` and ``notify_expiring``, once per threshold ever.

Two ``ApiTokens`` on one store stand for a cron job on two hosts; the clocks are moved
by hand.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from apitokens import ApiTokens, MemoryStore, SQLiteStore, StorageError, Token
from apitokens.storage import NoticeLedger, TokenStore
from tests.support import Clock, make_tokens

DAY = timedelta(days=1)
MONTH, WEEK = timedelta(days=30), timedelta(days=7)

Hosts = tuple[ApiTokens, ApiTokens, Clock]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def hosts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hosts]:
    """Two ApiTokens on one store (two hosts), sharing one hand-moved clock."""
    clock = Clock()
    stores: list[TokenStore]
    if request.param == "memory":
        shared = MemoryStore()
        stores = [shared, shared]
    elif request.param == "sqlite":
        stores = [SQLiteStore(tmp_path / "tokens.db"), SQLiteStore(tmp_path / "tokens.db")]
    else:
        from apitokens.postgres import PostgresStore

        dsn = request.getfixturevalue("postgres_database")
        stores = [PostgresStore(dsn, pool_size=2), PostgresStore(dsn, pool_size=2)]
    one, two = (make_tokens(store, clock=clock) for store in stores)
    try:
        yield one, two, clock
    finally:
        one.close()
        two.close()
        for store in {id(s): s for s in stores}.values():
            store.close()


class Outbox:
    """The notify callback: what was sent, in order (thread-safe)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, timedelta]] = []
        self._lock = threading.Lock()

    def __call__(self, token: Token, threshold: timedelta) -> None:
        with self._lock:
            self.sent.append((token.id, threshold))


def test_expiring_lists_active_tokens_expiring_within_soonest_first(hosts: Hosts) -> None:
    one, _, clock = hosts
    later = one.create(actor="alice", name="later", expires_in=6 * DAY).token
    soon = one.create(actor="bob", name="soon", expires_in=2 * DAY).token
    one.create(actor="alice", name="far", expires_in=40 * DAY)
    one.create(actor="alice", name="forever")
    gone = one.create(actor="alice", name="revoked", expires_in=DAY).token
    one.revoke(actor="alice", token_id=gone.id)
    assert [t.id for t in one.expiring(within=WEEK)] == [soon.id, later.id]
    assert [t.id for t in one.expiring(within=2 * DAY)] == [soon.id]  # at the bound: in
    clock.advance(days=3)  # soon has expired: no longer "expiring"
    assert [t.id for t in one.expiring(within=WEEK)] == [later.id]
    with pytest.raises(ValueError, match="within"):
        one.expiring(within=timedelta(0))


def test_notices_sent_exactly_once_per_threshold_across_two_instances(hosts: Hosts) -> None:
    one, two, clock = hosts
    token = one.create(actor="alice", name="ci", expires_in=40 * DAY).token
    outbox = Outbox()
    assert one.notify_expiring(notify=outbox) == []  # 40 days: nothing crossed
    clock.advance(days=11)  # 29 days left: the 30-day notice, from one host only
    for tokens in (one, two, one, two):
        tokens.notify_expiring(notify=outbox)
    assert outbox.sent == [(token.id, MONTH)]
    clock.advance(days=23)  # 6 days left: the 7-day notice, once
    sent = two.notify_expiring(notify=outbox)
    assert [(t.id, threshold) for t, threshold in sent] == [(token.id, WEEK)]
    one.notify_expiring(notify=outbox)
    clock.advance(days=5)
    two.notify_expiring(notify=outbox)
    clock.advance(days=2)  # expired: no more notices
    one.notify_expiring(notify=outbox)
    assert outbox.sent == [(token.id, MONTH), (token.id, WEEK)]


def test_concurrent_runs_send_each_notice_once(hosts: Hosts) -> None:
    one, two, _ = hosts
    ids = {one.create(actor="alice", name=f"t{i}", expires_in=3 * DAY).token.id for i in range(8)}
    outbox = Outbox()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda t: t.notify_expiring(notify=outbox), [one, two, one, two]))
    assert sorted(outbox.sent) == sorted((token_id, WEEK) for token_id in ids)


def test_only_the_tightest_crossed_threshold_is_sent(hosts: Hosts) -> None:
    one, _, clock = hosts
    token = one.create(actor="alice", name="ci", expires_in=5 * DAY).token
    outbox = Outbox()
    one.notify_expiring(notify=outbox, thresholds=(MONTH, WEEK, DAY))
    clock.advance(days=1)
    one.notify_expiring(notify=outbox, thresholds=(MONTH, WEEK, DAY))
    assert outbox.sent == [(token.id, WEEK)]  # never the 30-day one late
    clock.advance(days=3, hours=1)
    one.notify_expiring(notify=outbox, thresholds=(DAY, WEEK, MONTH))  # any order
    assert outbox.sent == [(token.id, WEEK), (token.id, DAY)]


def test_a_new_expiry_resets_the_notices(hosts: Hosts) -> None:
    one, two, clock = hosts
    token = one.create(actor="alice", name="ci", expires_in=5 * DAY, secure=False).token
    outbox = Outbox()
    one.notify_expiring(notify=outbox)
    assert token.expires_at is not None
    one.edit(actor="alice", token_id=token.id, expires_at=token.expires_at + 20 * DAY)
    clock.advance(seconds=2)  # past the other instance's record cache
    two.notify_expiring(notify=outbox)  # 25 days left: the 30-day notice again
    clock.advance(days=19)
    one.notify_expiring(notify=outbox)
    assert outbox.sent == [(token.id, WEEK), (token.id, MONTH), (token.id, WEEK)]


def test_a_failed_notice_is_sent_again_by_a_later_run(hosts: Hosts) -> None:
    one, two, _ = hosts
    broken = one.create(actor="alice", name="broken", expires_in=2 * DAY).token
    fine = one.create(actor="alice", name="fine", expires_in=3 * DAY).token
    outbox = Outbox()

    def flaky(token: Token, threshold: timedelta) -> None:
        if token.id == broken.id:
            raise OSError("mail server down")
        outbox(token, threshold)

    with pytest.raises(OSError, match="mail server down"):
        one.notify_expiring(notify=flaky)
    assert outbox.sent == [(fine.id, WEEK)]  # the others still went
    two.notify_expiring(notify=outbox)
    assert outbox.sent == [(fine.id, WEEK), (broken.id, WEEK)]


def test_bad_thresholds_are_refused() -> None:
    tokens = make_tokens()
    for thresholds in ((), (timedelta(0),), (WEEK, -DAY)):
        with pytest.raises(ValueError, match="threshold"):
            tokens.notify_expiring(notify=Outbox(), thresholds=thresholds)


class _Forgetful(MemoryStore):
    """A store without the NoticeLedger: its methods hidden."""

    claim_notice = None  # type: ignore[assignment]
    release_notice = None  # type: ignore[assignment]


def test_a_store_without_a_notice_ledger_is_refused() -> None:
    store = _Forgetful()
    assert not isinstance(store, NoticeLedger)
    tokens = make_tokens(store)
    tokens.create(actor="alice", name="ci", expires_in=DAY)
    outbox = Outbox()
    with pytest.raises(StorageError, match="NoticeLedger"):
        tokens.notify_expiring(notify=outbox)
    assert outbox.sent == []


class _Unreleasing(MemoryStore):
    """A store whose releases fail (the database went away after the claim)."""

    def release_notice(self, token_id: str, expires_at: datetime, threshold: timedelta) -> None:
        raise StorageError("the database went away")


def test_a_notice_that_cannot_be_released_is_lost_never_sent_twice() -> None:
    tokens = make_tokens(_Unreleasing())
    token = tokens.create(actor="alice", name="ci", expires_in=DAY).token
    calls: list[str] = []

    def broken(token: Token, threshold: timedelta) -> None:
        calls.append(token.id)
        raise OSError("mail server down")

    with pytest.raises(OSError, match="mail server down"):  # the hook's error, not the store's
        tokens.notify_expiring(notify=broken)
    assert tokens.notify_expiring(notify=broken) == []  # still claimed: at most once
    assert calls == [token.id]
