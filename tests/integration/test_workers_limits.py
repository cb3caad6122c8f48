"""Rate limits and credits held by four workers on one SQLite file, for real (DESIGN §11).

``uvicorn --workers 4`` serves one app on one socket; fresh connections spread the
requests over the workers. Every admission must reach the store's ledger (its total
equals the 200s answered: no count is lost between processes), the fleet never admits
more than each worker's own limit allows (P x N), and once the counts are a second
old every worker refuses: the overshoot is bounded by what the others admitted within
that second.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from apitokens import ApiTokens, SQLiteStore
from tests.support.workers import uvicorn_workers

WORKERS = 4
SETTLE = 1.0  # DESIGN §11: counts are sent within 0.2 s and re-read after 0.8 s

APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from apitokens import ApiTokens, Policy, SQLiteStore


async def ok(request):
    return PlainTextResponse("ok")


tokens = ApiTokens(SQLiteStore({db!r}), policy=Policy(protected_paths=["/rest/"]))
app = tokens.asgi(Starlette(routes=[Route("/rest/x", ok)]))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """One server for the module's tests (each uses a token of its own)."""
    tmp_path = tmp_path_factory.mktemp("limits")
    db = tmp_path / "tokens.db"
    SQLiteStore(str(db)).close()
    (tmp_path / "limits_app.py").write_text(APP.format(db=str(db)))
    with uvicorn_workers("limits_app:app", tmp_path, workers=WORKERS) as (port, _):
        yield port, db


def send(port: int, secret: str, n: int) -> list[httpx.Response]:
    headers = {"Connection": "close", "Authorization": f"Bearer {secret}"}
    return [
        httpx.get(f"http://127.0.0.1:{port}/rest/x", headers=headers, timeout=30) for _ in range(n)
    ]


def ledger(db: Path, sql: str) -> int:
    with sqlite3.connect(db) as conn:
        row = conn.execute(sql).fetchone()
    conn.close()
    return int(row[0]) if row and row[0] is not None else 0


def settled(db: Path, sql: str, expected: int) -> None:
    """Wait (bounded) until the workers' counts in the store reach ``expected``."""
    deadline = time.monotonic() + 10
    while ledger(db, sql) != expected:
        assert time.monotonic() < deadline, f"the store holds {ledger(db, sql)}, not {expected}"
        time.sleep(0.05)


def test_a_rate_limit_holds_across_four_workers(served: tuple[int, Path]) -> None:
    port, db = served
    with ApiTokens(SQLiteStore(str(db))) as tokens:
        # Per day: no window rolls over during the test (but at midnight UTC).
        issued = tokens.create(actor="alice", name="ci", rate_limit="20/day")
    first = send(port, issued.secret, 60)
    admitted = sum(r.status_code == 200 for r in first)
    assert {r.status_code for r in first} <= {200, 429}
    assert 20 <= admitted <= 20 * WORKERS
    settled(db, "SELECT sum(count) FROM request_counts", admitted)
    time.sleep(SETTLE)  # every worker's count is now stale: read again before deciding
    later = send(port, issued.secret, 3 * WORKERS)
    assert [r.status_code for r in later] == [429] * len(later)
    refused = later[0]
    assert refused.json()["error"] == "rate_limit_exceeded"
    assert refused.headers["RateLimit-Policy"] == '"rate";q=20;w=86400'
    assert refused.headers["RateLimit"] == f'"rate";r=0;t={refused.headers["Retry-After"]}'


def test_credits_hold_across_four_workers(served: tuple[int, Path]) -> None:
    port, db = served
    with ApiTokens(SQLiteStore(str(db))) as tokens:
        issued = tokens.create(actor="alice", name="ci", credits=15)
    first = send(port, issued.secret, 45)
    admitted = sum(r.status_code == 200 for r in first)
    assert 15 <= admitted <= 15 * WORKERS
    # The balance never goes below 0, however far the workers overshot together.
    settled(db, "SELECT count(*) FROM credit_balances WHERE credits_left = 0", 1)
    time.sleep(SETTLE)
    later = send(port, issued.secret, 3 * WORKERS)
    assert [r.status_code for r in later] == [429] * len(later)
    assert later[0].json()["error"] == "credits_spent"
    assert "Retry-After" not in later[0].headers  # no refill: never again
    with ApiTokens(SQLiteStore(str(db))) as tokens:
        assert tokens.credits_left(issued.token.id) == 0
