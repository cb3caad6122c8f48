"""How the audit writer reaches a store: the optional methods, found by attribute.

A store whose class has ``write_entries`` (``EntryWriter``) gets the writer's batches
with authentications as compact ``AuthEntry`` records; one that has
``write_journaled`` keeps the journal's positions in its own transactions. Either
only when no subclass overrides ``write()`` below the method: such an override is
honoured, every event goes through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from apitokens import AuditEvent, MemoryStore, Outcome, SQLiteStore, Usage
from apitokens._api import _positions
from apitokens._audit import AuditWriter
from apitokens._journal import FilePositions
from apitokens._model import Action
from apitokens.storage import AuthEntry, EntryWriter
from apitokens.storage._protocol import offers
from tests.support import START


def entry(i: int, *, used: bool = True) -> AuthEntry:
    at = START + timedelta(seconds=i)
    return AuthEntry(at, Outcome.SUCCESS, "tok", "alice", "192.0.2.1", "GET", f"/{i}", "ok", used)


class CopyingSQLite(SQLiteStore):
    """Overrides ``write`` only: its base's ``write_entries`` must not bypass it."""

    def write(self, *, events: Sequence[AuditEvent] = (), usage: Sequence[Usage] = ()) -> None:
        super().write(events=events, usage=usage)


class CopyingMixin:
    def write(self, *, events: Sequence[AuditEvent] = (), usage: Sequence[Usage] = ()) -> None:
        super().write(events=events, usage=usage)  # type: ignore[misc]


class MixedIn(CopyingMixin, SQLiteStore):
    """A mixin's ``write`` comes before SQLiteStore's in the MRO: it is honoured too."""


class BothOverridden(SQLiteStore):
    """Overrides ``write`` and ``write_entries``: its own ``write_entries`` is used."""

    def write(self, *, events: Sequence[AuditEvent] = (), usage: Sequence[Usage] = ()) -> None:
        super().write(events=events, usage=usage)

    def write_entries(
        self, *, events: Sequence[AuditEvent | AuthEntry] = (), usage: Sequence[Usage] = ()
    ) -> None:
        super().write_entries(events=events, usage=usage)


class EntriesFirst(MemoryStore):
    """A backend of its own that offers ``write_entries``; ``write`` must go unused."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[type]]] = []

    def write(self, *, events: Sequence[AuditEvent] = (), usage: Sequence[Usage] = ()) -> None:
        self.calls.append(("write", [type(e) for e in events]))
        super().write(events=events, usage=usage)

    def write_entries(
        self, *, events: Sequence[AuditEvent | AuthEntry] = (), usage: Sequence[Usage] = ()
    ) -> None:
        self.calls.append(("write_entries", [type(e) for e in events]))
        expanded = [
            AuditEvent(e.at, Action.AUTHENTICATE, e.outcome, e.token_id, e.user, None,
                       e.client_ip, e.method, e.path, e.reason)
            if isinstance(e, AuthEntry)
            else e
            for e in events
        ]  # fmt: skip
        super().write(events=expanded, usage=usage)  # MemoryStore's: not recorded


@pytest.mark.parametrize(
    ("kind", "write_entries", "write_journaled"),
    [
        (SQLiteStore, True, True),
        (CopyingSQLite, False, False),
        (MixedIn, False, False),
        (BothOverridden, True, False),
    ],
)
def test_an_override_of_write_below_a_method_is_honoured(
    kind: type[SQLiteStore], write_entries: bool, write_journaled: bool, tmp_path: Path
) -> None:
    with kind(tmp_path / "t.db") as store:
        assert isinstance(store, EntryWriter)
        assert offers(store, "write_entries") is write_entries
        assert offers(store, "write_journaled") is write_journaled
        positions = _positions(store, tmp_path / "journals")
        if write_journaled:
            assert positions is store
        else:
            assert isinstance(positions, FilePositions)


def test_a_store_without_the_methods_offers_none() -> None:
    with MemoryStore() as store:
        assert not isinstance(store, EntryWriter)
        assert not offers(store, "write_entries")
        assert not offers(store, "write_journaled")
        store.write_entries = store.write  # type: ignore[attr-defined]
        assert not offers(store, "write_entries")  # a method of the class, not of the object


def test_a_store_offering_write_entries_gets_the_entries_as_they_are() -> None:
    store = EntriesFirst()
    assert offers(store, "write_entries")
    made = AuditEvent(START, Action.CREATE, Outcome.SUCCESS, "tok", "alice", "alice")
    writer = AuditWriter(store, interval=60)
    try:
        assert writer.submit([entry(1), made, entry(2, used=False)])
        assert writer.flush(timeout=10)
    finally:
        writer.close()
    assert store.calls == [("write_entries", [AuthEntry, AuditEvent, AuthEntry])]
    assert [e.path for e in store.events()] == ["/2", "/1", None]


def test_a_store_overriding_write_gets_every_entry_as_an_event(tmp_path: Path) -> None:
    seen: list[object] = []

    class Recording(SQLiteStore):
        def write(self, *, events: Sequence[AuditEvent] = (), usage: Sequence[Usage] = ()) -> None:
            seen.extend(events)
            super().write(events=events, usage=usage)

    with Recording(tmp_path / "t.db") as store:
        writer = AuditWriter(store, interval=60)
        try:
            assert writer.submit([entry(1), entry(2)])
            assert writer.flush(timeout=10)
        finally:
            writer.close()
        assert [type(e) for e in seen] == [AuditEvent, AuditEvent]
        assert seen == list(reversed(store.events()))


def test_journal_positions_in_files_are_private_to_the_user(tmp_path: Path) -> None:
    directory = tmp_path / "journals"
    directory.mkdir()
    positions = FilePositions(MemoryStore(), directory)
    positions.write_journaled([], [], [("one.jnl", 10, 4)])
    (path,) = directory.glob("*.pos")
    assert path.stat().st_mode & 0o777 == 0o600
    assert positions.journal_positions() == {"one.jnl": (10, 4)}
