"""The writer holds token usage across batches and writes it once per interval."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apitokens import MemoryStore
from apitokens import _audit as audit_module
from apitokens._audit import AuditWriter, AuthEntry
from apitokens._model import AuditEvent, Outcome, Usage
from apitokens.storage._base import fold_usage
from tests.support import START, make_tokens


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


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_usage_is_held_across_batches_then_written_once_by_flush() -> None:
    store = _RecordingStore()
    (token_id,) = _tokens(store)
    before = len(store.writes)
    writer = AuditWriter(store, batch_size=2, interval=0.01, usage_interval=60)
    try:
        for i in range(6):
            writer.submit([entry(i, f"192.0.2.{i}", token_id)])
        _until(lambda: store.events_written() >= 6 + before, "the events")
        # Every event is in the store; the uses are not, yet.
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
    writer = AuditWriter(store, interval=0.01, usage_interval=0.05)
    try:
        writer.submit([entry(1, "192.0.2.1", token_id)])
        _until(lambda: store.use_count(token_id) == 1, "the held usage")
    finally:
        writer.close()


def test_close_writes_held_usage() -> None:
    store = _RecordingStore()
    (token_id,) = _tokens(store)
    before = store.events_written()
    writer = AuditWriter(store, interval=0.01, usage_interval=60)
    writer.submit([entry(1, "192.0.2.1", token_id), entry(2, "192.0.2.2", token_id)])
    _until(lambda: store.events_written() == before + 2, "the events")
    assert store.use_count(token_id) == 0
    writer.close()
    assert store.use_count(token_id) == 2


def test_a_failed_usage_write_is_retried_not_lost() -> None:
    store = _RecordingStore()
    (token_id,) = _tokens(store)
    writer = AuditWriter(store, interval=0.01, usage_interval=60)
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
    writer = AuditWriter(store, interval=0.01, usage_interval=60)
    try:
        writer.submit([entry(1, "192.0.2.1", token_id) for token_id in ids])
        _until(lambda: all(store.use_count(t) == 1 for t in ids), "the usage")
    finally:
        writer.close()


def test_an_explicit_usage_record_folds_with_the_held_uses() -> None:
    store = _RecordingStore()
    (token_id,) = _tokens(store)
    writer = AuditWriter(store, interval=0.01, usage_interval=60)
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
        st.booleans(),  # flush after it
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    uses=_USES,
    batch_size=st.integers(1, 4),
    usage_interval=st.sampled_from([0.0, 0.002, 60.0]),
)
def test_held_usage_equals_folding_every_use_in_order(
    uses: list[tuple[int, int, str, bool, bool]], batch_size: int, usage_interval: float
) -> None:
    # However the uses fall into batches, intervals and flushes, the token rows end up
    # as if every use had been folded in submission order: counts add up, the newest
    # use wins and, on equal times, the later one.
    store = _RecordingStore()
    ids = _tokens(store, 3)
    expected: dict[str, tuple[int, int, str | None]] = dict.fromkeys(ids, (0, -1, None))
    writer = AuditWriter(
        store, batch_size=batch_size, interval=0.001, usage_interval=usage_interval
    )
    try:
        for which, seconds, ip, used, flush in uses:
            token_id = ids[which]
            writer.submit([entry(seconds, ip, token_id, used=used)])
            if used:
                count, newest, last_ip = expected[token_id]
                if seconds >= newest:
                    newest, last_ip = seconds, ip
                expected[token_id] = (count + 1, newest, last_ip)
            if flush:
                assert writer.flush(timeout=10)
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
    gate = threading.Event()
    original = store.write

    def slow_write(*, events: Sequence[AuditEvent] = (), usage: Sequence[Usage] = ()) -> None:
        gate.wait(10)
        original(events=events, usage=usage)

    store.write = slow_write  # type: ignore[method-assign]
    writer = AuditWriter(store, interval=0.01, usage_interval=60)
    try:
        writer.submit([entry(1, "192.0.2.1", token_id)])
        _until(lambda: writer._in_flight == 1, "the writer to hold the batch")
        seen: list[tuple[bool, int]] = []  # what flush() returned, and the count then

        def flush() -> None:
            flushed = writer.flush(timeout=10)
            seen.append((flushed, store.use_count(token_id)))

        flusher = threading.Thread(target=flush)
        flusher.start()
        _until(lambda: writer._usage_requested, "flush() to wait")
        gate.set()
        flusher.join(15)
        assert seen == [(True, 1)]
    finally:
        writer.close()
