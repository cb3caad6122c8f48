"""Nothing answered is lost (DESIGN §4), against real servers in real processes.

Each test runs the served app in a subprocess (uvicorn, gunicorn) or a script,
stops it the hard way (SIGTERM, SIGKILL, a full disk) and then counts what
reached the SQLite file against what the client was answered. Counting is done
on the file itself (``SQLiteStore``, no ``ApiTokens``), except where recovery by
a later process is what is tested.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from apitokens import ApiTokens, SQLiteStore
from tests.support import CHEAP_HASHER

ROOT = Path(__file__).resolve().parents[2]
FAR_FUTURE_YEAR = 2100

APP = """
import os
from apitokens import ApiTokens, Policy, SQLiteStore
from tests.support import CHEAP_HASHER

tokens = ApiTokens(
    SQLiteStore({db!r}), hasher=CHEAP_HASHER, policy=Policy(protected_paths=["/rest/"])
)


def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


async def bare_asgi(scope, receive, send):
    # An app that does not speak the lifespan protocol (as many small apps do not).
    if scope["type"] != "http":
        raise RuntimeError("only http")
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"ok"}})


def starlette_app():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request):
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/rest/{{rest:path}}", hello)])


wsgi = tokens.wsgi(wsgi_app)
bare = tokens.asgi(bare_asgi)
starlette = tokens.asgi(starlette_app())
"""


def listening() -> socket.socket:
    """A socket listening on 127.0.0.1 at a free port, for a server subprocess to serve.

    Connections wait in its backlog until the server accepts them: no other process can
    take the port first, and a client's first request simply waits for the server.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def issue(db: Path) -> str:
    """A token in a new store at ``db``; its secret."""
    with SQLiteStore(db) as store, ApiTokens(store, hasher=CHEAP_HASHER) as tokens:
        return tokens.create(actor="alice", name="load").secret


def write_app(tmp_path: Path, db: Path) -> None:
    (tmp_path / "durability_app.py").write_text(APP.format(db=str(db)))


def environment(tmp_path: Path) -> dict[str, str]:
    # The inherited PYTHONPATH last: a checkout that puts its src first keeps it first.
    inherited = os.environ.get("PYTHONPATH", "")
    paths = [str(tmp_path), str(ROOT / "src"), str(ROOT), inherited]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


@contextmanager
def serving(
    command: list[str], tmp_path: Path, sock: socket.socket
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server subprocess on ``sock`` (``{fd}`` in ``command`` is its descriptor),
    wait until it answers; kill it at the end."""
    log = (tmp_path / "server.log").open("wb")
    fd = sock.fileno()
    process = subprocess.Popen(
        [part.format(fd=fd) for part in command],
        cwd=tmp_path,
        env=environment(tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        pass_fds=[fd],
    )
    port = sock.getsockname()[1]
    sock.close()  # only the server holds it now: if it dies, connecting fails at once
    try:
        try:  # an unprotected path: no audit row; the request waits in the backlog
            httpx.get(f"http://127.0.0.1:{port}/started", timeout=30)
        except httpx.HTTPError as exc:
            pytest.fail(
                f"the server did not start: {exc!r}\n{(tmp_path / 'server.log').read_text()}"
            )
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        log.close()


def stop(process: subprocess.Popen[bytes], sig: int, tmp_path: Path) -> None:
    process.send_signal(sig)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the server did not stop within 20 s of the signal")


def counts(db: Path) -> tuple[int, int]:
    """(authenticate rows, the token's use_count), read from the file, nothing replayed."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT count(*) FROM audit WHERE action = 'authenticate'").fetchone()
        uses = conn.execute("SELECT use_count FROM tokens").fetchone()
    conn.close()
    return int(rows[0]), int(uses[0])


def audited_paths(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT path FROM audit WHERE action = 'authenticate'").fetchall()
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    return [row[0] for row in rows]


def serve_requests(port: int, secret: str, count: int) -> int:
    """``count`` sequential requests on fresh connections; how many were answered 200."""
    ok = 0
    headers = {"Authorization": f"Bearer {secret}", "Connection": "close"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for i in range(count):
            response = client.get(f"/rest/item/{i}", headers=headers)
            assert response.status_code == 200, response.text
            ok += 1
    return ok


# -- 8: a store that cannot be written answers 503 within seconds, never hangs --------

FULL_DISK = """
import json, os, resource, signal, sys, time
from apitokens import ApiTokens, AuthRequest, SQLiteStore
from tests.support import CHEAP_HASHER

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
tokens = ApiTokens(SQLiteStore({db!r}), hasher=CHEAP_HASHER, journal={journal!r})
tokens._writer.max_pending = 100  # a full buffer soon, without a journal
tokens._writer.max_wait = 1.0
secret = tokens.create(actor="alice", name="x").secret
tokens.flush()
request = AuthRequest("GET", "/rest/x", headers={{"Authorization": "Bearer " + secret}})
tokens.authenticate(request)  # the record cached: later requests only write
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))  # the disk is full
statuses, slowest = [], 0.0
while len(statuses) < 1000 and 503 not in statuses:
    started = time.monotonic()
    statuses.append(tokens.authenticate(request).status_code)
    slowest = max(slowest, time.monotonic() - started)
print(json.dumps({{"statuses": statuses, "slowest": slowest}}), flush=True)
os._exit(0)  # the writer cannot write: nothing to wait for
"""


@pytest.mark.parametrize("journal", [None, False], ids=["journal", "no-journal"])
def test_an_unwritable_store_answers_503_within_seconds(
    tmp_path: Path, journal: bool | None
) -> None:
    import json

    db = tmp_path / "full.db"
    script = FULL_DISK.format(db=str(db), journal=journal)
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=environment(tmp_path),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("token requests hung on a store that cannot be written")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    statuses = result["statuses"]
    assert statuses[-1] == 503
    assert set(statuses) <= {200, 503}
    assert result["slowest"] < 5.0
    if journal is None:
        # Refused as soon as the journal cannot grow: nothing answered goes unrecorded.
        assert statuses.count(200) < 100
    # Space again: whatever was answered 200 is (or, from the journal, becomes) audited.
    with SQLiteStore(db) as store, ApiTokens(store, hasher=CHEAP_HASHER) as tokens:
        tokens.flush(timeout=10)
        rows = tokens.audit(action="authenticate", outcome="success", limit=10_000)
        if journal is None:
            assert len(rows) == 1 + statuses.count(200)


# -- 9: gunicorn --preload: each worker a writer of its own ---------------------------


def test_gunicorn_preload_workers_write_every_request(tmp_path: Path) -> None:
    db = tmp_path / "gunicorn.db"
    secret = issue(db)
    write_app(tmp_path, db)
    sock = listening()
    port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "gunicorn", "--preload", "-w", "2", "-b", "fd://{fd}",
        "--graceful-timeout", "10", "durability_app:wsgi",
    ]  # fmt: skip
    with serving(command, tmp_path, sock) as server:
        served = serve_requests(port, secret, 120)
        stop(server, signal.SIGTERM, tmp_path)
    log = (tmp_path / "server.log").read_text()
    assert "Booting worker" in log
    assert counts(db) == (served, served), log[-3000:]
    assert sorted(audited_paths(db)) == sorted(f"/rest/item/{i}" for i in range(served))


# -- 10: SIGTERM under uvicorn flushes (the lifespan, with or without the app's) -------


@pytest.mark.parametrize("app", ["starlette", "bare"])
def test_sigterm_under_uvicorn_writes_every_request(tmp_path: Path, app: str) -> None:
    db = tmp_path / "uvicorn.db"
    secret = issue(db)
    write_app(tmp_path, db)
    sock = listening()
    port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "uvicorn", f"durability_app:{app}", "--fd", "{fd}",
        "--log-level", "warning",
    ]  # fmt: skip
    with serving(command, tmp_path, sock) as server:
        served = serve_requests(port, secret, 40)
        stop(server, signal.SIGTERM, tmp_path)
    assert counts(db) == (served, served), (tmp_path / "server.log").read_text()[-3000:]


# -- 11: SIGKILL under load: the journal keeps what was answered ------------------------


class Answered:
    """Counts the requests answered across client threads: a test waits for a count of
    them, not for time to pass."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = threading.Condition()

    def add(self) -> None:
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def wait_for(self, count: int) -> None:
        """Wait (up to 30 s, then fail) until ``count`` requests have been answered."""
        with self._changed:
            reached = self._changed.wait_for(lambda: self.count >= count, timeout=30)
        assert reached, f"{self.count} of {count} requests answered within 30 s"


def load(
    port: int, secret: str, clients: int, stop_at: threading.Event, progress: Answered
) -> list[list[str]]:
    """Requests from ``clients`` threads until ``stop_at``; each one's answered paths."""
    answered: list[list[str]] = [[] for _ in range(clients)]

    def client(n: int) -> None:
        headers = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            i = 0
            while not stop_at.is_set():
                path = f"/rest/load/{n}-{i}"
                i += 1
                try:
                    response = http.get(path, headers=headers)
                except httpx.HTTPError:
                    return  # the server is gone
                assert response.status_code == 200
                answered[n].append(path)
                progress.add()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return answered


def killed_under_load(tmp_path: Path, *, locked: bool = False, answered_before: int = 150) -> None:
    db = tmp_path / "kill.db"
    secret = issue(db)
    write_app(tmp_path, db)
    sock = listening()
    port = sock.getsockname()[1]
    command = [
        sys.executable, "-m", "uvicorn", "durability_app:starlette", "--fd", "{fd}",
        "--log-level", "warning",
    ]  # fmt: skip
    results: list[list[list[str]]] = []
    stop_at = threading.Event()
    progress = Answered()
    with serving(command, tmp_path, sock) as server:
        loader = threading.Thread(
            target=lambda: results.append(load(port, secret, 4, stop_at, progress))
        )
        loader.start()
        try:
            progress.wait_for(answered_before)  # under load, the writer writing
            if locked:
                # Another process holds SQLite's write lock: the writer cannot write.
                holder = sqlite3.connect(db, isolation_level=None, timeout=10)
                holder.execute("BEGIN IMMEDIATE")
                locked_at = progress.count
                # The one sleep kept: long enough for the writer's next batch (due within
                # its 0.5 s interval) to wait on the lock, as it does when killed. No event
                # tells that from outside its process; the assertions do not depend on it.
                time.sleep(1.0)
                progress.wait_for(locked_at + 50)  # requests answered while it is held
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=10)
            if locked:
                holder.execute("ROLLBACK")
                holder.close()
        finally:
            stop_at.set()
            loader.join(timeout=30)
    answered = [path for paths in results[0] for path in paths]
    assert len(answered) > 100
    before, _ = counts(db)
    # A later process on the store replays the dead one's journal.
    with SQLiteStore(db) as store, ApiTokens(store, hasher=CHEAP_HASHER) as tokens:
        assert tokens.flush(timeout=30)
        token = tokens.list(actor="alice")[0]
    paths = audited_paths(db)
    assert len(paths) == len(set(paths)), "an event was written twice"
    missing = set(answered) - set(paths)
    assert not missing, f"{len(missing)} of {len(answered)} answered requests unaudited"
    # Requests in flight at the kill may be audited without their answer arriving.
    assert len(paths) - len(answered) <= 4
    assert token.use_count == len(paths)
    if locked:
        assert len(paths) >= before + 50  # the journal, not the store, had the last ones
    journals = db.parent / (db.name + ".apitokens-journal")
    assert not list(journals.glob("*.jnl")), "the dead journal was not removed"


def test_sigkill_under_load_loses_no_answered_request(tmp_path: Path) -> None:
    killed_under_load(tmp_path)


def test_sigkill_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    killed_under_load(tmp_path, locked=True, answered_before=100)
