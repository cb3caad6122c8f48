"""The writer expands compact authentication records and folds their uses per batch."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apitokens import MemoryStore, Outcome, SQLiteStore, TokenStore
from apitokens._audit import AuditWriter, AuthEntry, _auth_event
from apitokens._model import Action, AuditEvent, Usage
from apitokens.storage import _schema
from apitokens.storage._base import normalize_event
from tests.support import START, Monotonic, make_tokens


def entry(at_seconds: float, ip: str, token_id: str, *, used: bool = True) -> AuthEntry:
    at = START + timedelta(seconds=at_seconds)
    return AuthEntry(
        at, Outcome.SUCCESS, token_id, "alice", ip, "GET", "/rest/x", "authenticated", used
    )


def _stores(tmp_path: Path) -> list[TokenStore]:
    return [MemoryStore(), SQLiteStore(tmp_path / "audit.db"), _CopyingStore(tmp_path / "c.db")]


class _CopyingStore(SQLiteStore):
    """A SQLiteStore whose ``write`` an application overrides (to copy events elsewhere)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.copied: list[AuditEvent] = []

    def write(self, *, events: Sequence[AuditEvent] = (), usage: Sequence[Usage] = ()) -> None:
        self.copied += events
        super().write(events=events, usage=usage)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "sqlite subclass"])
def test_entries_become_events_and_folded_uses(kind: str, tmp_path: Path) -> None:
    store = _stores(tmp_path)[["memory", "sqlite", "sqlite subclass"].index(kind)]
    with make_tokens(store) as tokens:
        token_id = tokens.create(actor="alice", name="ci").token.id
        tokens.flush()
    writer = AuditWriter(store, interval=60)
    try:
        records = [
            entry(1, "192.0.2.1", token_id),
            entry(3, "192.0.2.3", token_id),
            entry(2, "192.0.2.2", token_id),
            entry(3, "192.0.2.4", token_id),  # same time, later: wins
            entry(4, "192.0.2.9", token_id, used=False),  # a refusal: no use
            Usage(token_id, START + timedelta(seconds=1), "192.0.2.5", count=2),
        ]
        assert writer.submit(records)
        assert writer.flush(timeout=10)
    finally:
        writer.close()
    events = store.events(action="authenticate")
    assert len(events) == 5
    assert {(e.action, e.actor, e.method, e.path) for e in events} == {
        (Action.AUTHENTICATE, None, "GET", "/rest/x")
    }
    assert sorted(e.client_ip or "" for e in events) == [
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.4",
        "192.0.2.9",
    ]
    stored = store.get(token_id)
    assert stored is not None
    token = stored.token
    assert token.use_count == 6
    assert (token.last_used_at, token.last_used_ip) == (START + timedelta(seconds=3), "192.0.2.4")
    if isinstance(store, _CopyingStore):  # its write() saw every event, entries included
        copied = [e for e in store.copied if e.action == Action.AUTHENTICATE]
        assert sorted(copied, key=repr) == sorted(events, key=repr)


def test_sqlite_rows_of_entries_are_the_rows_of_their_events(tmp_path: Path) -> None:
    # The same batch through the writer's shortcut and through write(): same events back,
    # in the same order (equal times keep the batch order), same usage.
    made = AuditEvent(START, Action.CREATE, Outcome.SUCCESS, "tok1", "alice", "alice", reason="x")
    batch: list[AuditEvent | AuthEntry] = [
        entry(0, "192.0.2.1", "tok1"),
        made,
        entry(0, "192.0.2.2", "tok1", used=False),
        AuthEntry(START.astimezone(timezone(timedelta(hours=-5))), Outcome.FORBIDDEN, None,
                  None, None, "POST", "/x", "why", False),
    ]  # fmt: skip
    fast, slow = SQLiteStore(tmp_path / "fast.db"), SQLiteStore(tmp_path / "slow.db")
    try:
        fast.write_entries(events=batch)
        slow.write(events=[_auth_event(r) if isinstance(r, AuthEntry) else r for r in batch])
        assert fast.events() == slow.events()
        assert [e.client_ip for e in fast.events()] == [None, "192.0.2.2", None, "192.0.2.1"]
    finally:
        fast.close()
        slow.close()


@pytest.mark.parametrize("count", [0, 1, 89, 90, 91, 180, 271])
def test_every_event_of_a_batch_is_written_in_order(tmp_path: Path, count: int) -> None:
    # Batches go in statements of ROWS_PER_INSERT rows, the rest one row at a time.
    assert _schema.ROWS_PER_INSERT == 90
    store = SQLiteStore(tmp_path / "many.db")
    try:
        store.write_entries(events=[entry(0, f"192.0.2.{i % 250}", f"t{i}") for i in range(count)])
        found = store.events(limit=1000)
        assert [e.token_id for e in found] == [f"t{i}" for i in reversed(range(count))]
    finally:
        store.close()


def test_an_entry_with_a_naive_time_is_refused() -> None:
    naive = AuthEntry(
        START.replace(tzinfo=None), Outcome.SUCCESS, "t", "u", None, "GET", "/", "", True
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        _schema.event_values([naive])


@settings(max_examples=200)
@given(
    at=st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(9000, 1, 1),
        timezones=st.timezones(),
    ),
    outcome=st.sampled_from(Outcome),
    token_id=st.none() | st.text(max_size=8),
    user=st.none() | st.text(max_size=8),
    ip=st.none() | st.text(max_size=8),
    method=st.text(max_size=8),
    path=st.text(max_size=16),
    reason=st.text(max_size=16),
    used=st.booleans(),
)
def test_entry_values_equal_the_params_of_the_entrys_event(
    at: datetime,
    outcome: Outcome,
    token_id: str | None,
    user: str | None,
    ip: str | None,
    method: str,
    path: str,
    reason: str,
    used: bool,
) -> None:
    record = AuthEntry(at, outcome, token_id, user, ip, method, path, reason, used)
    expected = _schema.event_params(normalize_event(_auth_event(record)))
    assert _schema.event_values([record]) == list(expected)


def test_other_records_still_pass_through() -> None:
    store = MemoryStore()
    writer = AuditWriter(store, interval=60)
    try:
        event = AuditEvent(START, Action.CREATE, Outcome.SUCCESS, actor="alice", reason="made")
        writer.submit([event])
        writer.flush(timeout=10)
    finally:
        writer.close()
    assert store.events() == [event]


class _GatedStore(MemoryStore):
    """A MemoryStore whose writes wait for a gate, and which counts each batch's events."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.writing = threading.Event(), threading.Event()
        self.batches: list[int] = []

    def write(self, *, events: Sequence[AuditEvent] = (), usage: Sequence[Usage] = ()) -> None:
        self.writing.set()
        self.gate.wait(10)
        self.batches.append(len(events))
        super().write(events=events, usage=usage)


def test_a_writer_that_fell_behind_takes_up_to_four_batches_at_once() -> None:
    store = _GatedStore()
    ticks = Monotonic()
    writer = AuditWriter(store, batch_size=10, interval=1.0, monotonic=ticks)
    try:
        writer.submit([entry(0, "192.0.2.1", "tok1")])
        ticks.advance(1.0)
        writer.catch_up(timeout=0)  # wake it: the batch is due
        assert store.writing.wait(10)  # the writer holds the first batch, gated
        writer.submit([entry(1, "192.0.2.1", "tok1")] * 100)  # ten batches waiting
        store.gate.set()
        assert writer.flush(timeout=10)
    finally:
        writer.close()
    assert store.batches[0] == 1
    assert store.batches[1] == 40  # behind: four batches in one transaction
    assert sum(store.batches) == 101
    assert max(store.batches) == 40
