"""The audit journal, the writer's bounded wait, its fork handling and the lifespan flush."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from apitokens import (
    ApiTokens,
    AuditEvent,
    MemoryStore,
    Outcome,
    SQLiteStore,
    StorageError,
)
from apitokens import _audit as audit_module
from apitokens._audit import AuditWriter, Rehash
from apitokens._journal import Journal, decode, encode, replay
from apitokens._model import Action, AuthEntry, Usage
from tests.support import CHEAP_HASHER, START, Monotonic, bearer, get

ROOT = Path(__file__).resolve().parents[2]


TOKEN_ID = "tok"


def entry(i: int, *, used: bool = True, token_id: str | None = TOKEN_ID) -> AuthEntry:
    at = START + timedelta(microseconds=i)
    return AuthEntry(
        at, Outcome.SUCCESS, token_id, "alice", "192.0.2.1", "GET", f"/rest/{i}", "", used
    )


def sqlite_tokens(path: Path, **kwargs: Any) -> ApiTokens:
    return ApiTokens(SQLiteStore(path), hasher=CHEAP_HASHER, **kwargs)


def journal_dir(db: Path) -> Path:
    return db.parent / (db.name + ".apitokens-journal")


# -- the format --------------------------------------------------------------------


def test_records_round_trip_and_hashes_stay_out() -> None:
    event = AuditEvent(START, Action.REVOKE, Outcome.SUCCESS, "tok", "alice", "admin", None)
    usage = Usage("tok", START, "192.0.2.9", 3)
    rehash = Rehash("tok", old="$argon2id$old", new="$argon2id$new")
    data = encode([entry(1), event, rehash, usage])
    assert b"argon2id" not in data
    lines = data.splitlines()
    assert [decode(line) for line in lines] == [entry(1), event, usage]
    assert encode([rehash]) == b""


def test_any_path_stays_on_one_line_and_comes_back() -> None:
    at = START + timedelta(microseconds=7)
    path = '/rest/"quoted"\n\r\t\u2028 café \udcff\x00'
    record = AuthEntry(at, Outcome.FAILED, None, "bö\nb", None, "GET", path, 'why: "x"', False)
    data = encode([record])
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    assert data.isascii()
    assert decode(data) == record


def test_the_journal_never_holds_the_secret(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with sqlite_tokens(db) as tokens:
        issued = tokens.create(actor="alice", name="x")
        assert tokens.authenticate(get("/rest/x", bearer(issued.secret))).status_code == 200
        wrong = issued.secret[:-4] + "AAAA"
        tokens.authenticate(get("/rest/x", bearer(wrong)))
        journal = tokens._writer.journal
        assert journal is not None and journal.parent == journal_dir(db)
        data = journal.read_bytes()
        assert data.count(b"\n") == 3  # create, success, failure
        secret_part = issued.secret.rsplit("_", 1)[-1]
        assert secret_part.encode() not in data
        assert wrong.rsplit("_", 1)[-1].encode() not in data


# -- where a journal is kept --------------------------------------------------------


def test_which_stores_get_a_journal(tmp_path: Path) -> None:
    with sqlite_tokens(tmp_path / "a.db") as tokens:
        assert tokens._writer.journal is not None
        assert tokens._writer.journal.exists()
        assert oct(journal_dir(tmp_path / "a.db").stat().st_mode & 0o777) == "0o700"
    with sqlite_tokens(tmp_path / "b.db", journal=False) as tokens:
        assert tokens._writer.journal is None
    with sqlite_tokens(Path(":memory:")) as tokens:  # type: ignore[arg-type]
        assert tokens._writer.journal is None
    with ApiTokens(MemoryStore()) as tokens:
        assert tokens._writer.journal is None
    for journal in (tmp_path / "j", True):
        with pytest.raises(ValueError, match="MemoryStore"):
            ApiTokens(MemoryStore(), journal=journal)


def test_close_removes_a_written_journal(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    tokens = sqlite_tokens(db)
    tokens.create(actor="alice", name="x")
    journal = tokens._writer.journal
    assert journal is not None and journal.exists()
    tokens.close()
    assert not journal.exists()
    assert not journal_dir(db).exists()  # empty: removed
    with SQLiteStore(db) as store:
        assert store.journal_positions() == {}


# -- replay --------------------------------------------------------------------------


def test_replay_writes_what_the_positions_do_not_cover_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    directory = tmp_path / "journals"
    journal = Journal.create(directory)
    records = [entry(i) for i in range(10)]
    sizes = []
    for record in records:
        journal.append(encode([record]))
        sizes.append(journal.size)
    # Rows 0-5 written, usage only up to row 3 (held since), then the process died.
    store.write_journaled(
        [records[i] for i in range(6)],
        [Usage("tok", START)] * 4,
        [(journal.name, sizes[5], sizes[3])],
    )
    assert replay(directory, store) == 0  # alive: its lock is held
    journal.close()  # the owner dies
    assert replay(directory, store) == 4
    events = store.events(limit=100)
    assert sorted(e.path or "" for e in events) == sorted(f"/rest/{i}" for i in range(10))
    assert not list(directory.glob("*.jnl"))
    assert store.journal_positions() == {}
    assert replay(directory, store) == 0  # nothing twice
    assert len(store.events(limit=100)) == 10
    store.close()


def test_replay_folds_usage_it_owes(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with sqlite_tokens(db) as tokens:
        issued = tokens.create(actor="alice", name="x")
    store = SQLiteStore(db)
    directory = journal_dir(db)
    journal = Journal.create(directory)
    token_id = issued.token.id
    journal.append(encode([entry(i, token_id=token_id) for i in range(5)]))
    journal.append(encode([entry(9, token_id=token_id, used=False)]))
    journal.close()
    assert replay(directory, store) == 6
    token = store.get(token_id)
    assert token is not None and token.token.use_count == 5
    store.close()


def test_a_torn_or_garbled_line_is_skipped(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    directory = tmp_path / "journals"
    journal = Journal.create(directory)
    journal.append(encode([entry(1)]))
    journal.append(b'["a", "garbled"]\n')
    journal.append(encode([entry(2)]))
    with open(journal.path, "ab") as file:
        file.write(encode([entry(3)])[:20])  # killed mid-write
    journal.close()
    assert replay(directory, store) == 2
    assert sorted(e.path or "" for e in store.events()) == ["/rest/1", "/rest/2"]
    store.close()


def test_a_journal_left_by_a_failed_close_is_replayed_by_the_next_writer(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    tokens = sqlite_tokens(db)
    issued = tokens.create(actor="alice", name="x")
    request = get("/rest/x", bearer(issued.secret))
    assert tokens.authenticate(request).status_code == 200  # the record is cached now
    tokens.flush()
    tokens._store.close()  # the store fails from now on
    assert tokens.authenticate(request).status_code == 200
    tokens._writer.close(timeout=30)
    journal = tokens._writer.journal
    assert journal is not None and journal.exists()
    with sqlite_tokens(db) as later:
        assert later.flush(timeout=10)
        events = later.audit(action="authenticate")
        assert [e.outcome for e in events] == [Outcome.SUCCESS] * 2
        token = later.get(issued.token.id)
        assert token is not None and token.use_count == 2
    assert not journal.exists()


def test_journals_rotate_and_old_ones_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "ROTATE_BYTES", 2_000)
    db = tmp_path / "t.db"
    with sqlite_tokens(db) as tokens:
        writer = tokens._writer
        writer.interval = 0.001
        first = writer.journal
        for i in range(200):
            writer.submit([entry(i)])
            if i % 20 == 19:
                assert writer.flush(timeout=10)
        assert writer.flush(timeout=10)
        assert writer.journal != first
        assert len(list(journal_dir(db).glob("*.jnl"))) == 1
        assert len(tokens._store.events(limit=1000)) == 200


class Copying(SQLiteStore):
    """A store whose write() is its own: the journal's positions go in files beside it."""

    def write(self, *, events: Any = (), usage: Any = ()) -> None:
        super().write(events=events, usage=usage)


def test_a_store_without_positions_gets_them_in_files(tmp_path: Path) -> None:
    """A store whose write() is its own (here a SQLiteStore subclass): positions beside."""
    db = tmp_path / "t.db"
    directory = tmp_path / "journals"
    script = textwrap.dedent(
        f"""
        import os
        from apitokens import ApiTokens, AuthRequest, SQLiteStore
        from tests.support import CHEAP_HASHER

        class Copying(SQLiteStore):
            def write(self, *, events=(), usage=()):
                super().write(events=events, usage=usage)

        tokens = ApiTokens(Copying({str(db)!r}), hasher=CHEAP_HASHER, journal={str(directory)!r})
        secret = tokens.create(actor="alice", name="x").secret
        tokens.flush()
        request = AuthRequest("GET", "/rest/x", headers={{"Authorization": "Bearer " + secret}})
        for _ in range(7):
            assert tokens.authenticate(request).status_code == 200
        os._exit(0)  # killed: nothing flushed
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert list(directory.glob("*.jnl.pos"))
    with Copying(db) as store:
        assert store.events(action="authenticate") == []
        with ApiTokens(store, hasher=CHEAP_HASHER, journal=directory) as tokens:
            assert tokens.flush(timeout=10)
            assert len(tokens.audit(action="authenticate")) == 7
            assert len(tokens.audit(action="create")) == 1  # not twice
    assert not list(directory.glob("*.jnl*"))


# -- a store that cannot be written: bounded waits ---------------------------------


class FailingStore(MemoryStore):
    def write(self, *, events: Any = (), usage: Any = ()) -> None:
        raise StorageError("disk full")


def test_a_full_buffer_waits_only_max_wait() -> None:
    ticks = Monotonic()
    writer = AuditWriter(FailingStore(), max_pending=5, max_wait=5.0, monotonic=ticks)
    try:
        # The sixth record hurries the writer, which takes the first five and keeps
        # retrying them; five more fill the buffer again.
        for i in range(10):
            assert writer.submit([entry(i)])
        refused: list[str] = []

        def submit() -> None:
            try:
                writer.submit([entry(10)])
            except StorageError as exc:
                refused.append(str(exc))

        blocked = threading.Thread(target=submit)
        blocked.start()
        ticks.wait_for_read(blocked)  # its deadline: 5 s from now
        ticks.advance(4.5)
        reads = ticks.reads(blocked)
        writer.catch_up(timeout=0)  # wake it: it reads the clock again, and waits on
        ticks.wait_for_read(blocked, after=reads)
        ticks.advance(0.5)
        writer.catch_up(timeout=0)
        blocked.join(10)
        assert not blocked.is_alive() and "behind" in refused[0]
        assert ticks.last_read(blocked) == ticks.now  # refused at max_wait, not before
    finally:
        writer.close(timeout=0.1)


def test_a_request_gets_503_when_the_store_stays_unwritable() -> None:
    store = FailingStore()
    tokens = ApiTokens(store, hasher=CHEAP_HASHER)
    issued = tokens.create(actor="alice", name="x")
    tokens._writer.max_pending = 3
    tokens._writer.max_wait = 0.0  # how long it waits: test_a_full_buffer_waits_only_max_wait
    statuses = []
    while len(statuses) < 20 and 503 not in statuses:
        statuses.append(tokens.authenticate(get("/x", bearer(issued.secret))).status_code)
    assert statuses[-1] == 503
    assert statuses[0] == 200
    tokens._writer.close(timeout=0.1)


# -- fork -----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_writes_its_own_records_and_only_those(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    tokens = sqlite_tokens(db)
    issued = tokens.create(actor="alice", name="x")
    assert tokens.flush(timeout=10)
    tokens._writer.interval = 60.0  # the parent's records stay pending across the fork
    request = get("/rest/parent", bearer(issued.secret))
    for _ in range(3):
        assert tokens.authenticate(request).status_code == 200
    assert tokens._writer.pending == 3
    pid = os.fork()
    if pid == 0:  # the child: a writer and a journal of its own
        code = 1
        try:
            child = get("/rest/child", bearer(issued.secret))
            ok = all(tokens.authenticate(child).status_code == 200 for _ in range(4))
            journal = tokens._writer.journal
            code = 0 if ok and tokens.flush(timeout=10) and journal is not None else 2
            tokens.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    idle = os.fork()
    if idle == 0:  # a child that records nothing makes no journal
        os._exit(0)
    _, status = os.waitpid(idle, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert list(journal_dir(db).glob("*.jnl")) == [tokens._writer.journal]
    assert tokens.flush(timeout=10)
    paths = [e.path for e in tokens.audit(action="authenticate", limit=100)]
    assert sorted(paths) == ["/rest/child"] * 4 + ["/rest/parent"] * 3
    token = tokens.get(issued.token.id)
    assert token is not None and token.use_count == 7
    tokens.close()
    tokens._store.close()


# -- the ASGI lifespan flushes ----------------------------------------------------------


async def run_lifespan(app: Any) -> list[dict[str, Any]]:
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    return sent


@pytest.mark.parametrize("supports_lifespan", [True, False])
def test_lifespan_shutdown_flushes_first(supports_lifespan: bool) -> None:
    store = MemoryStore()
    tokens = ApiTokens(store, hasher=CHEAP_HASHER)
    tokens._writer.interval = 60.0
    tokens._writer.usage_interval = 60.0
    issued = tokens.create(actor="alice", name="x")
    seen_at_complete: list[int] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            return
        if not supports_lifespan:
            raise RuntimeError("no lifespan here")
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    app = tokens.asgi(inner)

    async def sending(message: dict[str, Any]) -> None:
        return None

    tokens.authenticate(get("/x", bearer(issued.secret)))
    assert tokens._writer.pending == 2  # create and the request, not written yet

    async def main() -> list[dict[str, Any]]:
        sent = await run_lifespan(app)
        seen_at_complete.append(len(store.events(limit=10)))
        return sent

    sent = asyncio.run(main())
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert seen_at_complete == [2]
    token = store.get(issued.token.id)
    assert token is not None and token.token.use_count == 1
    tokens.close()


def test_a_failing_lifespan_startup_still_fails() -> None:
    tokens = ApiTokens(MemoryStore(), hasher=CHEAP_HASHER)

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        raise RuntimeError("startup broke")

    with pytest.raises(RuntimeError, match="startup broke"):
        asyncio.run(run_lifespan(tokens.asgi(inner)))
    tokens.close()


def test_flush_after_an_immediate_close_does_not_wait(tmp_path: Path) -> None:
    # Closed before its first look for dead journals: the writer thread's clock stays
    # behind the moment that look is due (taken on this thread's clock), so close() wins.
    here = threading.get_ident()
    tokens = sqlite_tokens(
        tmp_path / "t.db", monotonic=lambda: 1000.0 if threading.get_ident() == here else 0.0
    )
    tokens.close()
    assert tokens.flush(timeout=0)  # nothing left to wait for
    tokens._store.close()


def test_a_replay_between_a_journals_open_and_its_lock_never_loses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replayer that finds a just-created, not yet locked journal takes it for a dead
    one and unlinks it: the creator must not go on writing into the unlinked file."""
    import fcntl

    from apitokens import _journal

    store = SQLiteStore(tmp_path / "tokens.db")
    directory = tmp_path / "journals"
    real_flock = fcntl.flock
    raced: list[int] = []

    def flock(fd: int, operation: int) -> None:
        if not raced:  # the creator, between its open and its lock: another process replays
            raced.append(-1)  # the replayer's own flock calls go straight through
            raced[0] = replay(directory, store)
        real_flock(fd, operation)

    monkeypatch.setattr(_journal.fcntl, "flock", flock)
    journal = Journal.create(directory)
    monkeypatch.setattr(_journal.fcntl, "flock", real_flock)
    try:
        assert raced == [0]
        assert journal.path.exists() and os.fstat(journal.fd).st_nlink == 1
    finally:
        journal.close()
        store.close()
