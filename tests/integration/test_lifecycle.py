"""The buffered writer's promises: flushed at interpreter exit, backpressure, nothing dropped."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from apitokens import AuditEvent, MemoryStore, Outcome, SQLiteStore, StorageError
from apitokens._audit import AuditWriter
from apitokens._model import Action
from tests.support import START, Monotonic, bearer, get, make_tokens


def test_events_are_written_at_interpreter_exit_without_close(tmp_path: Path) -> None:
    db = tmp_path / "exit.db"
    script = textwrap.dedent(
        f"""
        from apitokens import ApiTokens, SQLiteStore, AuthRequest
        from tests.support import CHEAP_HASHER
        tokens = ApiTokens(SQLiteStore({str(db)!r}), hasher=CHEAP_HASHER)
        issued = tokens.create(actor="alice", name="x")
        for _ in range(25):
            tokens.authenticate(AuthRequest("GET", "/x",
                headers={{"Authorization": "Bearer " + issued.secret}}))
        # no flush(), no close(): exit must write what is buffered
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with SQLiteStore(db) as store:
        events = store.events(limit=1000)
        assert [e.outcome for e in events].count(Outcome.SUCCESS) == 26  # 25 uses + create
        (token,) = store.list(now=START.replace(year=2100))
        assert token.use_count == 25


class GatedStore(MemoryStore):
    """A real store whose writes wait for ``gate`` (``writing`` is set as one begins)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.writing = threading.Event(), threading.Event()

    def write(self, *, events=(), usage=()):  # type: ignore[no-untyped-def]
        self.writing.set()
        assert self.gate.wait(10)
        super().write(events=events, usage=usage)


def event(i: int) -> AuditEvent:
    return AuditEvent(at=START, action=Action.AUTHENTICATE, outcome=Outcome.SUCCESS, reason=str(i))


def test_a_full_buffer_applies_backpressure_and_drops_nothing() -> None:
    store = GatedStore()
    ticks = Monotonic()  # it stays: max_wait never runs out here
    writer = AuditWriter(store, max_pending=10, batch_size=5, monotonic=ticks)
    try:
        assert writer.submit([event(i) for i in range(5)])  # a batch: the writer takes it
        assert store.writing.wait(10)  # and holds it, its write gated
        assert writer.submit([event(i) for i in range(5, 15)])
        # Full: a non-blocking submit says so instead of dropping.
        assert not writer.submit([event(99)], block=False)
        returned: list[bool] = []
        thread = threading.Thread(
            target=lambda: returned.append(writer.submit([event(15 + i) for i in range(5)]))
        )
        thread.start()
        ticks.wait_for_read(thread)  # it took its deadline: it waits for room
        assert not returned and thread.is_alive()
        store.gate.set()
        thread.join(10)
        assert returned == [True]
        assert writer.flush(timeout=10)
        reasons = sorted(int(e.reason) for e in store.events(limit=100))
        assert reasons == list(range(20))
    finally:
        writer.close()


def test_close_flushes_and_refuses_later_submits() -> None:
    store = MemoryStore()
    writer = AuditWriter(store, interval=10)  # would wait long without close
    writer.submit([event(1), event(2)])
    writer.close()
    assert len(store.events()) == 2
    with pytest.raises(StorageError, match="closed"):
        writer.submit([event(3)])


def test_usage_is_folded_into_one_write_per_batch() -> None:
    with make_tokens() as tokens:
        issued = tokens.create(actor="alice", name="x")
        for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
            tokens.authenticate(get("/x", bearer(issued.secret), ip=ip))
        token = tokens.get(issued.token.id)
        assert token is not None
        assert (token.use_count, token.last_used_ip) == (3, "192.0.2.3")


def test_after_close_requests_fail_closed_not_unaudited() -> None:
    tokens = make_tokens()
    issued = tokens.create(actor="alice", name="x")
    assert tokens.authenticate(get("/x", bearer(issued.secret))).authenticated
    tokens.close()
    # Nothing can be audited any more: a 503, never an unaudited success.
    result = tokens.authenticate(get("/x", bearer(issued.secret)))
    assert (result.status_code, result.error) == (503, "temporarily_unavailable")

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        raise AssertionError("the app must not run")

    wrapped = tokens.wsgi(app)
    seen: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/x",
        "REMOTE_ADDR": "192.0.2.1",
        "HTTP_AUTHORIZATION": f"Bearer {issued.secret}",
    }
    body = wrapped(environ, lambda status, headers: seen.append(status))
    assert seen == ["503 Service Unavailable"]
    assert b"temporarily_unavailable" in b"".join(body)
