"""The writer holds token usage across batches and writes it once per interval."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apitokens import MemoryStore
from apitokens import _audit as audit_module
from apitokens._audit import AuditWriter, AuthEntry
from apitokens._model import AuditEvent, Outcome, Usage
from apitokens.storage._base import fold_usage
from tests.support import START, Monotonic, make_tokens


def entry(seconds: int, ip: str, token_id: str, *, used: bool = True) -> AuthEntry:
    at = START + timedelta(seconds=seconds)
    return AuthEntry(
        at, Outcome.SUCCESS, token_id, "alice", ip, "GET", "/rest/x", "authenticated", used
    )


class _RecordingStore(MemoryStore):
    """A memory store that remembers what each ``write`` call carried."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[int, dict[str, int]]] = []  # (events, uses per token)
        self.fail_next_usage = False

    def write(self, *, events: Sequence[AuditEvent] = (), usage: Sequence[Usage] = ()) -> None:
        if usage and self.fail_next_usage:
            self.fail_next_usage = False
            raise OSError("disk full")
        folded = {token_id: total.count for token_id, total in fold_usage(usage).items()}
        self.writes.append((len(events), folded))
        super().write(events=events, usage=usage)

    def events_written(self) -> int:
        return sum(count for count, _ in self.writes)

    def use_count(self, token_id: str) -> int:
        stored = self.get(token_id)
        assert stored is not None
        return stored.token.use_count


def _tokens(store: MemoryStore, count: int = 1) -> list[str]:
    with make_tokens(store) as tokens:
        ids = [tokens.create(actor="alice", name=f"t{i}").token.id for i in range(count)]
        tokens.flush()
    return ids


def _writer(store: MemoryStore, ticks: Monotonic, **settings: float) -> AuditWriter:
    """A writer on the clock ``ticks``: a batch is due 1 s after it began, usage after 4 s."""
    return AuditWriter(
        store, **{"interval": 1.0, "usage_interval": 4.0, **settings}, monotonic=ticks
    )


def test_usage_is_held_across_batches_then_written_once_by_flush() -> None:
    store = _RecordingStore()
    (token_id,) = _tokens(store)
    before = len(store.writes)
    ticks = Monotonic()
    writer = _writer(store, ticks, batch_size=2)
    try:
        for i in range(6):
            writer.submit([entry(i, f"192.0.2.{i}", token_id)])
        ticks.advance(1.0)
        assert writer.catch_up(timeout=10)
        ticks.advance(2.5)  # usage held 3.5 s at most (of 4): since a batch was written
        assert writer.catch_up(timeout=10)
        # Every event is in the store; the uses are not, yet.
        assert store.events_written() == 6 + before
        assert store.use_count(token_id) == 0
        assert all(not uses for _, uses in store.writes[before:])
        assert writer.flush(timeout=10)
        assert store.use_count(token_id) == 6  # written by the flush, not by close()
    finally:
        writer.close()
    usage_writes = [uses for _, uses in store.writes[before:] if uses]
    assert usage_writes == [{token_id: 6}]  # six uses, one update of the token's row
    stored = store.get(token_id)
    assert stored is not None
    assert stored.token.use_count == 6
    assert stored.token.last_used_at == START + timedelta(seconds=5)
    assert stored.token.last_used_ip == "192.0.2.5"


def test_held_usage_is_written_once_its_interval_is_over_without_a_flush() -> None:
    store = _RecordingStore()
    (token_id,) = _tokens(store)
    before = store.events_written()
    ticks = Monotonic()
    writer = _writer(store, ticks)
    try:
        writer.submit([entry(1, "192.0.2.1", token_id)])
        ticks.advance(0.5)
        assert writer.catch_up(timeout=10)
        assert store.events_written() == before  # the batch is not due yet
        ticks.advance(0.5)
        assert writer.catch_up(timeout=10)
        assert (store.events_written(), store.use_count(token_id)) == (before + 1, 0)
        ticks.advance(2.5)
        assert writer.catch_up(timeout=10)
        writer.submit([entry(2, "192.0.2.2", token_id)])
        ticks.advance(1.0)
        assert writer.catch_up(timeout=10)  # a batch written 3.5 s into the 4: usage stays
        assert (store.events_written(), store.use_count(token_id)) == (before + 2, 0)
        ticks.advance(0.5)
        assert writer.catch_up(timeout=10)
        assert store.use_count(token_id) == 2
    finally:
        writer.close()


def test_close_writes_held_usage() -> None:
    store = _RecordingStore()
    (token_id,) = _tokens(store)
    before = store.events_written()
    ticks = Monotonic()
    writer = _writer(store, ticks)
    writer.submit([entry(1, "192.0.2.1", token_id), entry(2, "192.0.2.2", token_id)])
    ticks.advance(1.0)
    assert writer.catch_up(timeout=10)
    assert store.events_written() == before + 2
    assert store.use_count(token_id) == 0
    writer.close()
    assert store.use_count(token_id) == 2


def test_a_failed_usage_write_is_retried_not_lost() -> None:
    store = _RecordingStore()
    (token_id,) = _tokens(store)
    writer = _writer(store, Monotonic())
    try:
        store.fail_next_usage = True
        writer.submit([entry(1, "192.0.2.1", token_id)])
        assert writer.flush(timeout=10)
    finally:
        writer.close()
    assert not store.fail_next_usage  # it did fail once
    assert store.use_count(token_id) == 1


def test_too_many_held_tokens_are_written_with_the_next_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audit_module, "MAX_HELD_TOKENS", 2)
    store = _RecordingStore()
    ids = _tokens(store, 3)
    ticks = Monotonic()
    writer = _writer(store, ticks)
    try:
        writer.submit([entry(1, "192.0.2.1", token_id) for token_id in ids[:2]])
        ticks.advance(1.0)
        assert writer.catch_up(timeout=10)  # two tokens held: written with their batch
        assert [store.use_count(t) for t in ids] == [1, 1, 0]
        writer.submit([entry(2, "192.0.2.1", ids[2])])
        ticks.advance(1.0)
        assert writer.catch_up(timeout=10)  # one: held
        assert [store.use_count(t) for t in ids] == [1, 1, 0]
    finally:
        writer.close()


def test_an_explicit_usage_record_folds_with_the_held_uses() -> None:
    store = _RecordingStore()
    (token_id,) = _tokens(store)
    writer = _writer(store, Monotonic())
    try:
        writer.submit([entry(3, "192.0.2.3", token_id)])
        writer.submit([Usage(token_id, START + timedelta(seconds=2), "192.0.2.2", count=4)])
        assert writer.flush(timeout=10)
    finally:
        writer.close()
    stored = store.get(token_id)
    assert stored is not None
    assert (stored.token.use_count, stored.token.last_used_ip) == (5, "192.0.2.3")


_USES = st.lists(
    st.tuples(
        st.integers(0, 2),  # which token
        st.integers(0, 5),  # seconds after START: ties happen
        st.sampled_from(["192.0.2.1", "192.0.2.2", "198.51.100.7"]),
        st.booleans(),  # a use (a refusal is not)
        st.sampled_from([None, 0.0, 1.0, 2.5]),  # then flush, or move the clock this far
    ),
    max_size=30,
)


_TIE = [(0, 0, "192.0.2.1", True, 1.0), (0, 0, "192.0.2.2", True, None)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Two uses at the same second, folded by the writer: across batches, and in one batch.
@example(uses=_TIE, batch_size=1, usage_interval=60.0)
@example(uses=[(*use[:4], 0.0) for use in _TIE], batch_size=4, usage_interval=60.0)
@given(
    uses=_USES,
    batch_size=st.integers(1, 4),
    usage_interval=st.sampled_from([0.0, 2.0, 60.0]),
)
def test_held_usage_equals_folding_every_use_in_order(
    uses: list[tuple[int, int, str, bool, float | None]], batch_size: int, usage_interval: float
) -> None:
    # However the uses fall into batches, intervals and flushes, the token rows end up
    # as if every use had been folded in submission order: counts add up, the newest
    # use wins and, on equal times, the later one.
    store = _RecordingStore()
    ids = _tokens(store, 3)
    expected: dict[str, tuple[int, int, str | None]] = dict.fromkeys(ids, (0, -1, None))
    ticks = Monotonic()
    writer = _writer(store, ticks, batch_size=batch_size, usage_interval=usage_interval)
    try:
        for which, seconds, ip, used, then in uses:
            token_id = ids[which]
            writer.submit([entry(seconds, ip, token_id, used=used)])
            if used:
                count, newest, last_ip = expected[token_id]
                if seconds >= newest:
                    newest, last_ip = seconds, ip
                expected[token_id] = (count + 1, newest, last_ip)
            if then is None:
                assert writer.flush(timeout=10)
            else:
                ticks.advance(then)
                assert writer.catch_up(timeout=10)
        assert writer.flush(timeout=10)
    finally:
        writer.close()
    for token_id, (count, newest, last_ip) in expected.items():
        stored = store.get(token_id)
        assert stored is not None
        token = stored.token
        assert token.use_count == count
        assert token.last_used_ip == last_ip
        assert token.last_used_at == (None if newest < 0 else START + timedelta(seconds=newest))


def test_flush_racing_the_writer_still_waits_for_held_usage() -> None:
    # flush() called while a batch is being written without its usage: the flush
    # must not return before the held usage is written too.
    store = _RecordingStore()
    (token_id,) = _tokens(store)
    gate, writing = threading.Event(), threading.Event()
    original = store.write

    def slow_write(*, events: Sequence[AuditEvent] = (), usage: Sequence[Usage] = ()) -> None:
        writing.set()
        gate.wait(10)
        original(events=events, usage=usage)

    store.write = slow_write  # type: ignore[method-assign]
    # A batch of one is written at once; usage is never due by this clock, which stays.
    writer = _writer(store, Monotonic(), batch_size=1)
    try:
        writer.submit([entry(1, "192.0.2.1", token_id)])
        assert writing.wait(10)  # the writer holds the batch
        seen: list[tuple[bool, int]] = []  # what flush() returned, and the count then

        def flush() -> None:
            flushed = writer.flush(timeout=10)
            seen.append((flushed, store.use_count(token_id)))

        flusher = threading.Thread(target=flush)
        flusher.start()
        with writer._cond:  # flush() notifies it once it has asked for the held usage
            assert writer._cond.wait_for(lambda: writer._usage_requested, timeout=10)
        gate.set()
        flusher.join(15)
        assert seen == [(True, 1)]
    finally:
        writer.close()


@pytest.mark.parametrize("error", ["storage", "bug"])
def test_a_store_that_is_down_is_one_log_line_a_bug_has_its_traceback(
    error: str, caplog: pytest.LogCaptureFixture
) -> None:
    from apitokens import StorageError

    class Failing(_RecordingStore):
        failed = False

        def write(self, *, events: Sequence[AuditEvent] = (), usage: Sequence[Usage] = ()) -> None:
            if not self.failed:
                self.failed = True
                raise StorageError("server restarting") if error == "storage" else KeyError("x")
            super().write(events=events, usage=usage)

    store = Failing()
    store.failed = True  # not while the token is made
    (token_id,) = _tokens(store)
    store.failed = False
    writer = _writer(store, Monotonic())
    try:
        with caplog.at_level("ERROR", logger="apitokens"):
            writer.submit([entry(1, "192.0.2.1", token_id)])
            assert writer.flush(timeout=10)
    finally:
        writer.close()
    (record,) = [r for r in caplog.records if "audit records failed" in r.getMessage()]
    if error == "storage":
        assert "server restarting" in record.getMessage()
        assert record.exc_info is None
    else:
        assert record.exc_info is not None
    assert store.use_count(token_id) == 1
