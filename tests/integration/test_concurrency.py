"""Many threads, one SQLite file, tokens revoked mid-way: no error, no audit event lost."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, request

from apitokens import ApiTokens, AuthRequest, IssuedToken, Outcome, SQLiteStore
from tests.support import bearer, make_tokens

THREADS = 8
PER_THREAD = 100
TOKENS = 6
REVOKED = (0, 1)


@pytest.fixture
def sqlite_tokens(tmp_path: Path) -> Iterator[ApiTokens]:
    store = SQLiteStore(tmp_path / "tokens.db")
    try:
        # Revoked tokens fail hundreds of times: keep the throttle out of the way.
        with make_tokens(store, protected_paths=["/rest/"], max_failed_attempts=10**6) as tokens:
            yield tokens
    finally:
        store.close()


def test_threads_authenticate_while_tokens_are_revoked(sqlite_tokens: ApiTokens) -> None:
    tokens = sqlite_tokens
    issued = [tokens.create(actor=f"user{i}", name=f"t{i}") for i in range(TOKENS)]
    start = threading.Barrier(THREADS + 1)
    a_third_done = threading.Barrier(THREADS + 1)  # then the revoker starts, workers go on
    revoked = threading.Event()  # every revocation has returned
    revoke_began: dict[int, float] = {}
    revoke_returned: dict[int, float] = {}

    def worker(t: int) -> list[tuple[int, int, str | None, float, float]]:
        rows = []
        start.wait(timeout=30)
        for n in range(PER_THREAD):
            if n == PER_THREAD // 3:
                a_third_done.wait(timeout=30)
            if n == PER_THREAD - 10:
                assert revoked.wait(timeout=30)
            i = (t + n) % TOKENS
            request = AuthRequest(
                "GET",
                f"/rest/api/{t}/{n}",
                headers=bearer(issued[i].secret),
                client_ip=f"10.0.{t}.{n + 1}",
            )
            began = time.monotonic()
            result = tokens.authenticate(request)
            rows.append((i, result.status_code, result.user, began, time.monotonic()))
        return rows

    def revoker() -> None:
        start.wait(timeout=30)
        a_third_done.wait(timeout=30)
        for i in REVOKED:
            revoke_began[i] = time.monotonic()
            tokens.revoke(actor=f"user{i}", token_id=issued[i].token.id)
            revoke_returned[i] = time.monotonic()
        revoked.set()

    with ThreadPoolExecutor(THREADS + 1) as pool:
        futures = [pool.submit(worker, t) for t in range(THREADS)]
        revoking = pool.submit(revoker)
        rows = [row for future in futures for row in future.result(timeout=60)]
        revoking.result(timeout=60)

    assert len(rows) == THREADS * PER_THREAD
    statuses = Counter(status for _, status, _, _, _ in rows)
    assert set(statuses) <= {200, 401}, statuses
    for i, status, user, began, ended in rows:
        if status == 200:
            assert user == f"user{i}"
            # DESIGN §5: revoke is immediate in this process.
            assert i not in REVOKED or began < revoke_returned[i]
        else:  # 401 only for a revoked token, and only once its revocation began
            assert i in REVOKED
            assert ended >= revoke_began[i]
    assert statuses[401] >= 10 * len(REVOKED)  # at least the requests after `revoked`

    assert tokens.flush(timeout=30)
    events = tokens.audit(limit=100_000, action="authenticate")
    assert len(events) == THREADS * PER_THREAD  # not one event lost
    outcomes = Counter(e.outcome for e in events)
    assert outcomes == {Outcome.SUCCESS: statuses[200], Outcome.FAILED: statuses[401]}
    uses = {}
    for i, token in enumerate(issued):
        record = tokens.get(token.token.id)
        assert record is not None
        uses[i] = record.use_count
        assert record.status == ("revoked" if i in REVOKED else "active")
    assert sum(uses.values()) == statuses[200]
    assert uses == {i: sum(r[0] == i and r[1] == 200 for r in rows) for i in range(TOKENS)}
    assert len(tokens.audit(action="revoke")) == len(REVOKED)


def test_threads_through_the_wsgi_middleware(sqlite_tokens: ApiTokens) -> None:
    tokens = sqlite_tokens
    app = Flask(__name__)

    @app.get("/rest/<path:rest>")
    def whoami(rest: str) -> Any:
        return jsonify(user=request.environ.get("REMOTE_USER"))

    app.wsgi_app = tokens.wsgi(app.wsgi_app)  # type: ignore[method-assign]
    issued: list[IssuedToken] = [tokens.create(actor=f"u{i}", name="t") for i in range(3)]
    threads, per_thread = 4, 50
    begin = threading.Barrier(threads)

    def worker(t: int) -> list[tuple[int, int, Any]]:
        client = app.test_client()
        begin.wait(timeout=30)
        out = []
        for n in range(per_thread):
            i = (t + n) % len(issued)
            if n == per_thread // 2 and t == 0:
                tokens.revoke(actor="u0", token_id=issued[0].token.id)
            response = client.get(
                f"/rest/{n}", headers={"Authorization": f"Bearer {issued[i].secret}"}
            )
            out.append((i, response.status_code, response.json))
        return out

    with ThreadPoolExecutor(threads) as pool:
        rows = [row for f in [pool.submit(worker, t) for t in range(threads)] for row in f.result()]
    assert len(rows) == threads * per_thread
    for i, status, body in rows:
        assert status in (200, 401)
        if status == 200:
            assert body == {"user": f"u{i}"}
        else:
            assert i == 0
    assert tokens.flush(timeout=30)
    assert len(tokens.audit(limit=100_000, action="authenticate")) == threads * per_thread
    used = sum(t.use_count for t in (tokens.get(x.token.id) for x in issued) if t is not None)
    assert used == sum(status == 200 for _, status, _ in rows)


class PausingStore(SQLiteStore):
    """Pauses one armed ``get`` after it has read the record, until released."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.armed = False
        self.paused = threading.Event()
        self.release = threading.Event()

    def get(self, token_id: str) -> Any:
        stored = super().get(token_id)
        if self.armed:
            self.armed = False
            self.paused.set()
            assert self.release.wait(timeout=10)
        return stored


def test_revoke_wins_over_a_record_read_just_before_it(tmp_path: Path) -> None:
    """DESIGN §5: revoke is immediate in this process, even against an in-flight read.

    A request reads the token record from the store; before it caches it, the
    token is revoked in this process. A request made after ``revoke()``
    returned must be refused.
    """
    store = PausingStore(tmp_path / "tokens.db")
    try:
        with make_tokens(store, protected_paths=["/rest/"]) as tokens:
            issued = tokens.create(actor="alice", name="ci")
            request = AuthRequest("GET", "/rest/x", headers=bearer(issued.secret))
            in_flight: list[int] = []
            store.armed = True
            thread = threading.Thread(
                target=lambda: in_flight.append(tokens.authenticate(request).status_code)
            )
            thread.start()
            assert store.paused.wait(timeout=10)
            tokens.revoke(actor="alice", token_id=issued.token.id)
            store.release.set()
            thread.join(timeout=10)
            assert in_flight in ([200], [401])  # it began before the revocation: either
            after = tokens.authenticate(request)
            assert after.status_code == 401, "a request after revoke() returned got in"
    finally:
        store.close()
