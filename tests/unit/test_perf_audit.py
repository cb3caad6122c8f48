"""The writer expands compact authentication records and folds their uses per batch."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from apitokens import MemoryStore, Outcome
from apitokens._audit import AuditWriter, AuthEntry, _auth_event
from apitokens._model import Action, AuditEvent, Usage
from tests.support import START, make_tokens


def entry(at_seconds: float, ip: str, token_id: str, *, used: bool = True) -> AuthEntry:
    at = START + timedelta(seconds=at_seconds)
    return (at, Outcome.SUCCESS, token_id, "alice", ip, "GET", "/rest/x", "authenticated", used)


def test_entries_become_events_and_folded_uses() -> None:
    store = MemoryStore()
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


def test_fast_event_equals_the_dataclass_built_one() -> None:
    # The writer builds authenticate events through the slots' descriptors; the
    # result must be the very event the dataclass constructor makes, field by field.
    record = entry(1, "192.0.2.1", "tok123", used=False)
    at, outcome, token_id, user, ip, method, path, reason, _ = record
    expected = AuditEvent(
        at, Action.AUTHENTICATE, outcome, token_id, user, None, ip, method, path, reason
    )
    built = _auth_event(record)
    assert type(built) is AuditEvent
    assert built == expected
    assert dataclasses.astuple(built) == dataclasses.astuple(expected)
    assert repr(built) == repr(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.reason = "changed"  # type: ignore[misc]


def test_fast_event_knows_every_field() -> None:
    # A field added to AuditEvent must be set by the writer too, or its events
    # would lack it: this fails until _auth_event learns about it.
    names = [field.name for field in dataclasses.fields(AuditEvent)]
    assert names == [
        "at", "action", "outcome", "token_id", "user", "actor", "client_ip", "method", "path",
        "reason",
    ]  # fmt: skip
    assert not hasattr(AuditEvent, "__post_init__")
