"""Attacks on issue 18's per-token rate limits and credits (DESIGN §11), through real
servers (uvicorn, werkzeug) on real SQLite files and PostgreSQL.

Each test names what it attacks. A test whose docstring starts "Found (fixed)" failed on
the code before its fix; the others pin a property the attack could not break.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from apitokens import ApiTokens, MemoryStore, Outcome, Policy, Requirement, SQLiteStore
from apitokens._limits import Limits, Rate
from apitokens._meter import PRUNE_AT, Meter
from apitokens._tokens import CHECKSUM_LENGTH, checksum
from apitokens.cli import run_on
from apitokens.postgres import PostgresStore
from apitokens.web._forms import parse_credits as parse_form_credits
from tests.integration.test_durability import listening
from tests.support import CHEAP_HASHER, Clock, Monotonic, bearer, get, make_tokens, serve_wsgi
from tests.support.workers import ROOT, uvicorn_workers

APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from apitokens import ApiTokens, Policy, SQLiteStore
from apitokens.postgres import PostgresStore

METHODS = ["GET", "HEAD", "OPTIONS", "POST", "DELETE"]


async def ok(request):
    return PlainTextResponse("ok")


# Room for every first verification at once: a storm of them is otherwise turned away
# with 503 by the line of hashes, which is not what these tests measure.
tokens = ApiTokens(
    {store}({db!r}),
    policy=Policy(protected_paths=["/rest/"]),
    max_concurrent_verifications=64,
)
app = tokens.asgi(Starlette(routes=[Route("/rest/x", ok, methods=METHODS)]))
"""


def serve(tmp_path: Path, db: str, store: str = "SQLiteStore") -> Any:
    """One uvicorn process serving the app on ``db``."""
    (tmp_path / "limits_app.py").write_text(APP.format(store=store, db=db))
    return uvicorn_workers("limits_app:app", tmp_path, workers=1)


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def ledger_total(db: Path, token_id: str) -> int:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT sum(count) FROM request_counts WHERE token_id = ?", (token_id,)
        ).fetchone()
    conn.close()
    return int(row[0] or 0)


def settled(read: Any, expected: int) -> None:
    """Wait (bounded) until the server's counts in the store reach ``expected``."""
    deadline = time.monotonic() + 10
    while (got := read()) != expected:
        assert time.monotonic() < deadline, f"the store holds {got}, not {expected}"
        time.sleep(0.05)


def variants(secret: str) -> list[tuple[str, str, dict[str, str]]]:
    """The same admissible request spelled every way a limit might be slipped past."""
    header = f"Bearer {secret}"
    return [
        ("GET", "/rest/x", {"Authorization": header}),  # the hot path
        ("GET", "/rest/x", {"Authorization": f"bearer {secret}"}),  # another fingerprint
        ("GET", "/rest/x", {"Authorization": basic("alice", secret)}),  # Basic: cold
        ("HEAD", "/rest/x", {"Authorization": header}),
        ("OPTIONS", "/rest/x", {"Authorization": header}),
        ("GET", "/%72est/x", {"Authorization": header}),  # percent-encoded
        ("GET", "/rest/x?a=1", {"Authorization": header}),
        ("GET", "/rest/x", {"Authorization": header, "X-HTTP-Method-Override": "GET"}),
    ]


async def fire(port: int, requests: list[tuple[str, str, dict[str, str]]]) -> list[httpx.Response]:
    """All at once, on separate connections: the server decides them concurrently."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
    ) as client:
        return list(
            await asyncio.gather(*(client.request(m, p, headers=h) for m, p, h in requests))
        )


def test_one_process_admits_exactly_n_however_the_request_is_spelled(tmp_path: Path) -> None:
    """Concurrency on one event loop (the WouldBlock path to a thread and back), the hot
    and cold paths, HEAD, OPTIONS, a method override, Basic and a percent-encoded path:
    one process admits exactly N, and its count reaches the store whole. The 429s say
    nothing of the secret, and Retry-After is within the window, never 0."""
    db = tmp_path / "tokens.db"
    with ApiTokens(SQLiteStore(str(db)), hasher=CHEAP_HASHER) as tokens:
        issued = tokens.create(actor="alice", user="alice", name="ci", rate_limit="25/day")
    with serve(tmp_path, str(db)) as (port, _):
        # One at a time first: each credential verified once (a storm of first
        # verifications is turned away with 503 by the line of hashes, limits or not).
        warm = [asyncio.run(fire(port, [v]))[0] for v in variants(issued.secret)[:3]]
        assert [r.status_code for r in warm] == [200] * 3
        requests = variants(issued.secret) * 12  # 96 requests, 22 more allowed
        answers = asyncio.run(fire(port, requests))
        statuses = [r.status_code for r in answers]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) == 22
        settled(lambda: ledger_total(db, issued.token.id), 25)
        # Every spelling is refused now, whichever path it takes.
        later = asyncio.run(fire(port, variants(issued.secret)))
        assert [r.status_code for r in later] == [429] * len(later)
    for refused in [r for r in answers if r.status_code == 429] + later:
        shown = str(refused.headers) + refused.text
        assert issued.secret not in shown and issued.secret[-12:] not in shown
        retry = int(refused.headers["Retry-After"])
        assert 1 <= retry <= 86400
        assert refused.headers["RateLimit"] == f'"rate";r=0;t={retry}'
        assert refused.headers["RateLimit-Policy"] == '"rate";q=25;w=86400'
    log = (tmp_path / "server.log").read_text()
    assert issued.secret not in log


def test_refused_requests_spend_no_credit(tmp_path: Path) -> None:
    """A request refused for anything else (scope, method override, X-Run-As with no
    group, a wrong Basic username, a wrong secret) spends nothing: after forty such
    refusals the token still has all its credits (werkzeug, threaded)."""
    tokens = ApiTokens(
        SQLiteStore(str(tmp_path / "t.db")),
        hasher=CHEAP_HASHER,
        policy=Policy(protected_paths=["/rest/"]),
    )
    issued = tokens.create(actor="alice", user="alice", name="ci", credits=3)
    # The same id, another secret, a valid checksum: only the hash can tell it wrong.
    head = issued.secret[:-CHECKSUM_LENGTH]
    head = head[:-1] + ("A" if head[-1] != "A" else "B")
    wrong = head + checksum(head)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    auth = f"Bearer {issued.secret}"
    refused = [
        ("POST", {"Authorization": auth}),
        ("GET", {"Authorization": auth, "X-HTTP-Method-Override": "DELETE"}),
        ("GET", {"Authorization": auth, "X-Run-As": "bob"}),
        ("GET", {"Authorization": basic("bob", issued.secret)}),
        ("GET", {"Authorization": f"Bearer {wrong}"}),
    ]
    try:
        with (
            contextlib.contextmanager(serve_wsgi)(tokens.wsgi(app)) as port,
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
        ):
            statuses = [
                client.request(method, "/rest/x", headers=headers).status_code
                for _ in range(8)
                for method, headers in refused
            ]
            assert 200 not in statuses and 429 not in statuses, statuses
            assert tokens.credits_left(issued.token.id) == 3
            spent = [client.get("/rest/x", headers={"Authorization": auth}) for _ in range(5)]
            assert [r.status_code for r in spent] == [200, 200, 200, 429, 429]
            assert spent[-1].json()["error"] == "credits_spent"
            assert "Retry-After" not in spent[-1].headers
            event = tokens.audit(limit=1)[0]
            assert event.outcome is Outcome.FORBIDDEN and "credits spent" in (event.reason or "")
            # Spent or not, a wrong secret learns nothing of the token: 401, never 429.
            guess = client.get("/rest/x", headers={"Authorization": f"Bearer {wrong}"})
            assert guess.status_code == 401 and "RateLimit" not in guess.headers
            assert tokens.audit(limit=1)[0].reason == "wrong secret"
        assert tokens.credits_left(issued.token.id) == 0
    finally:
        tokens.close()


@pytest.mark.parametrize(
    ("before", "after"), [("2/h", "2/day"), ("2/min", "2/h"), ("2/s", "2/min"), (None, "2/day")]
)
def test_a_refill_given_a_new_period_refills_in_it(before: str | None, after: str) -> None:
    """Found (fixed): a refill edited to a longer period ("2/h" to "2/day") left the
    balance dated in the old, shorter periods (hours since 1970 outnumber days since
    1970), so no refill came again for centuries: the token was dead for good. (The
    other way, and for a refill added, the whole balance came back at once.) A new
    refill period now starts a new allotment, as new credits do, and refills in it."""
    clock, monotonic = Clock(), Monotonic()
    tokens = make_tokens(clock=clock, monotonic=monotonic, protected_paths=["/rest/"])
    issued = tokens.create(
        actor="alice", user="alice", name="ci", credits=2, refill=before, secure=False
    )

    def statuses() -> list[int]:
        request = get("/rest/x", bearer(issued.secret))
        return [tokens.authenticate(request).status_code for _ in range(3)]

    assert statuses() == [200, 200, 429]
    tokens.flush()  # the uses are in the store, dated in the old period
    tokens.edit(actor="alice", token_id=issued.token.id, refill=after)
    assert statuses() == [200, 200, 429]  # a new allotment
    for _ in range(2):
        clock.advance(days=1)
        monotonic.advance(5)  # every count read again
        assert statuses() == [200, 200, 429]  # refilled in the new period
    tokens.edit(actor="alice", token_id=issued.token.id, refill=after.replace("2/", "1/"))
    assert statuses() == [429] * 3  # a new count, the same period: the balance is kept
    tokens.close()


def test_a_secret_pasted_into_a_limit_is_not_repeated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found (fixed): a token string given as a limit (a paste into the wrong field or
    flag) came back in the ValueError, the CLI's error and the pages' message: its
    first 40 characters, or whole. Now a long value is named by its length only."""
    tokens = make_tokens(protected_paths=["/rest/"])
    secret = tokens.create(actor="alice", user="alice", name="ci").secret
    said = []
    for field in ("rate_limit", "refill"):
        with pytest.raises(ValueError, match="not of the form") as caught:
            tokens.create(actor="alice", name="x", credits=5, **{field: secret})
        said.append(str(caught.value))
    with pytest.raises(ValueError, match="not a whole number") as caught:
        parse_form_credits(secret)
    said.append(str(caught.value))
    with ApiTokens(SQLiteStore(str(tmp_path / "t.db")), hasher=CHEAP_HASHER) as cli_tokens:
        for flag in ("--rate-limit", "--credits", "--refill"):
            extra = ["--credits", "5"] if flag == "--refill" else []
            code = run_on(
                cli_tokens, ["--actor", "root", "create", "--name", "x", *extra, flag, secret]
            )
            out, err = capsys.readouterr()
            assert code == 2
            said.append(out + err)
    for text in said:
        assert secret[16:24] not in text, text
        assert "characters)" in text, text
    tokens.close()


def test_a_ledger_that_fails_closes_limited_tokens_only_and_keeps_their_counts(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL's request counts become unwritable mid-run (the table renamed away):
    the limited token gets 503 once its count is stale, never a 200 on a count not
    read; the unlimited token keeps working. Back again, every admission the server
    answered 200 reaches the ledger (the counts were kept and sent later)."""
    import psycopg

    dsn = request.getfixturevalue("postgres_database")
    with ApiTokens(PostgresStore(dsn), hasher=CHEAP_HASHER) as tokens:
        limited = tokens.create(actor="alice", user="alice", name="ci", rate_limit="100000/day")
        free = tokens.create(actor="alice", user="alice", name="free")
    admin = psycopg.connect(dsn, autocommit=True)

    def total() -> int:
        row = admin.execute(
            "SELECT sum(count) FROM apitokens_requests WHERE token_id = %s", (limited.token.id,)
        ).fetchone()
        return int(row[0] or 0) if row else 0

    def status(client: httpx.Client, issued: Any) -> int:
        headers = {"Authorization": f"Bearer {issued.secret}"}
        return client.get("/rest/x", headers=headers).status_code

    with (
        serve(tmp_path, dsn, "PostgresStore") as (port, _),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        admitted = sum(status(client, limited) == 200 for _ in range(5))
        assert admitted == 5 and status(client, free) == 200
        settled(total, admitted)
        admin.execute("ALTER TABLE apitokens_requests RENAME TO apitokens_requests_away")
        try:
            seen: list[int] = []
            deadline = time.monotonic() + 10
            while 503 not in seen:
                assert time.monotonic() < deadline, "the limited token was never refused"
                seen.append(status(client, limited))
                assert status(client, free) == 200
            assert set(seen) <= {200, 503}
            admitted += seen.count(200)
            assert status(client, limited) == 503  # stays closed while the ledger fails
        finally:
            admin.execute("ALTER TABLE apitokens_requests_away RENAME TO apitokens_requests")
        deadline = time.monotonic() + 10
        while (answer := status(client, limited)) != 200:
            assert answer == 503 and time.monotonic() < deadline
        admitted += 1
        settled(total, admitted)
    admin.close()


def test_the_meter_stays_bounded_while_every_request_is_refused() -> None:
    """Found (fixed): a process whose limited requests are all refused (credits spent,
    with a per-second rate limit; or the store down) sent nothing, so its sending
    thread never pruned: one window kept per second the token was tried, without end.
    (Refill periods that ended were only dropped beyond 100,000 entries.)"""
    clock, monotonic = Clock(), Monotonic()
    tokens = make_tokens(clock=clock, monotonic=monotonic, protected_paths=["/rest/"])
    spent = tokens.create(actor="alice", user="alice", name="spent", credits=1, rate_limit="5/s")
    # Its one request a day spent: every second a new refill period is asked about.
    daily = tokens.create(
        actor="alice", user="alice", name="daily", rate_limit="1/day", credits=5, refill="1/s"
    )

    def status(issued: Any) -> int:
        return tokens.authenticate(get("/rest/x", bearer(issued.secret))).status_code

    assert [status(spent), status(spent), status(daily), status(daily)] == [200, 429, 200, 429]
    meter = tokens._authenticator.meter
    assert meter is not None
    for _ in range(3 * PRUNE_AT):
        clock.advance(seconds=1)
        monotonic.advance(1)  # every count is read again: a new window, a new period
        assert [status(spent), status(daily)] == [429, 429]
        assert len(meter._windows) + len(meter._balances) <= 2 * PRUNE_AT
    tokens.close()


def test_a_request_refused_by_the_routes_requirement_spends_no_credit(tmp_path: Path) -> None:
    """Found (fixed: the flow gives the use back): a READ_ONLY token on an app that
    requires READ_WRITE tokens gets 403 "route requires a READ_WRITE token", and each 403
    spent a credit (and counted against the rate limit): three refusals and the token
    was spent."""
    tokens = ApiTokens(
        SQLiteStore(str(tmp_path / "t.db")),
        hasher=CHEAP_HASHER,
        policy=Policy(protected_paths=["/rest/"]),
    )
    issued = tokens.create(actor="alice", user="alice", name="ci", credits=3)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    try:
        with (
            contextlib.contextmanager(serve_wsgi)(
                tokens.wsgi(app, require=Requirement.READ_WRITE)
            ) as port,
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
        ):
            headers = {"Authorization": f"Bearer {issued.secret}"}
            statuses = [client.get("/rest/x", headers=headers).status_code for _ in range(5)]
        assert statuses == [403] * 5
        assert tokens.credits_left(issued.token.id) == 3
    finally:
        tokens.close()


class CountingStore(MemoryStore):
    """A MemoryStore that counts the ledger's round trips (each a few milliseconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.round_trips = 0

    def count_requests(
        self, counts: Mapping[tuple[str, int, int], int], *, ended_before: int
    ) -> dict[tuple[str, int, int], int]:
        self.round_trips += 1
        time.sleep(0.002)  # a database's round trip: the other requests queue behind it
        return super().count_requests(counts, ended_before=ended_before)


def test_requests_finding_a_count_stale_together_read_it_once() -> None:
    """Found (fixed): every request that found a token's count stale at the same moment
    made its own round trip to the store, one after the other under the send lock: a
    client holding a token over its limit, with 50 connections, made 50 writes to the
    store every 0.8 s (and the last request waited for all of them)."""
    store = CountingStore()
    clock, monotonic = Clock(), Monotonic()
    tokens = make_tokens(store, clock=clock, monotonic=monotonic, protected_paths=["/rest/"])
    issued = tokens.create(actor="alice", user="alice", name="ci", rate_limit="1/day")
    request = get("/rest/x", bearer(issued.secret))
    assert [tokens.authenticate(request).status_code for _ in range(2)] == [200, 429]
    tokens.flush()
    for _ in range(3):
        monotonic.advance(1)  # the count is stale: the next decision reads it again
        before = store.round_trips
        start = threading.Barrier(50)

        def one(start: threading.Barrier) -> int:
            start.wait()
            return tokens.authenticate(request).status_code

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(one, [start] * 50))
        assert statuses == [429] * 50
        assert store.round_trips - before <= 2
    tokens.close()


PRELOADED = """
from apitokens import ApiTokens, AuthRequest, Policy, SQLiteStore
from tests.support import CHEAP_HASHER

tokens = ApiTokens(
    SQLiteStore({db!r}), hasher=CHEAP_HASHER, policy=Policy(protected_paths=["/rest/"])
)
# In gunicorn's master (--preload), before it forks: two uses, this process's to send.
for _ in range(2):
    warm = AuthRequest("GET", "/rest/x", headers=[("Authorization", "Bearer {secret}")])
    assert tokens.authenticate(warm).authenticated


def ok(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


app = tokens.wsgi(ok)
"""


def test_gunicorn_preload_children_neither_resend_nor_reuse_the_masters_counts(
    tmp_path: Path,
) -> None:
    """gunicorn ``--preload --workers 2 --threads 8``: the master admitted two uses
    before forking. Each child starts its counts afresh (register_at_fork): none sends
    the master's again, none admits on them; under concurrent threads the fleet admits
    at most P x N, and the ledger holds exactly what was answered 200 plus the two."""
    db = tmp_path / "tokens.db"
    with ApiTokens(SQLiteStore(str(db)), hasher=CHEAP_HASHER) as tokens:
        issued = tokens.create(actor="alice", user="alice", name="ci", rate_limit="10/day")
    (tmp_path / "preloaded.py").write_text(PRELOADED.format(db=str(db), secret=issued.secret))
    sock = listening()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(
                None, [str(tmp_path), str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")]
            )
        ),
    }
    command = [sys.executable, "-m", "gunicorn", "-b", f"fd://{sock.fileno()}", "--preload"]
    command += ["--workers", "2", "--threads", "8", "--control-socket", str(tmp_path / "g.ctl")]
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [*command, "preloaded:app"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        pass_fds=[sock.fileno()],
    )
    port = sock.getsockname()[1]
    sock.close()  # only gunicorn holds it now: requests wait in its backlog
    try:
        header = {"Authorization": f"Bearer {issued.secret}", "Connection": "close"}

        def one(_: int) -> int:
            url = f"http://127.0.0.1:{port}/rest/x"
            return httpx.get(url, headers=header, timeout=30).status_code

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(one, range(48)))
        assert set(statuses) <= {200, 429}, statuses
        admitted = statuses.count(200)
        assert 8 <= admitted <= 2 * 10
        settled(lambda: ledger_total(db, issued.token.id), admitted + 2)
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()
    assert issued.secret not in (tmp_path / "server.log").read_text()


class PruningLedger(MemoryStore):
    """A ledger during whose read the meter's sending thread takes its turn and prunes."""

    meter: Meter | None = None

    def count_requests(
        self, counts: Mapping[tuple[str, int, int], int], *, ended_before: int
    ) -> dict[tuple[str, int, int], int]:
        totals = super().count_requests(counts, ended_before=ended_before)
        assert self.meter is not None
        self.meter._prune(self.meter._clock())
        return totals


def test_a_window_ending_during_the_decision_is_not_pruned_under_it() -> None:
    """Found (fixed): a decision reads the clock when it starts (here 0.9 s into a
    per-second window) and counts after its hash and the store's read; when the
    sending thread pruned in between (the window had ended by its clock, 1.6 s
    later), the count vanished under the decision, which failed with 503."""
    ledger = PruningLedger()
    start = 1_767_268_800
    meter = Meter(ledger, clock=lambda: start + 2.5, monotonic=Monotonic())
    ledger.meter = meter
    limits = Limits("tid", Rate(5, 1), None, None)
    assert meter.take(limits, start + 0.9) is None
    meter.close()


def test_four_workers_on_postgresql_never_drive_credits_below_zero(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``uvicorn --workers 4`` on PostgreSQL (its upsert does the ledger's arithmetic in
    SQL): the fleet admits at most P x N, the balance stops at 0 however far the
    workers overshot together, every admission of a rate-limited token reaches the
    ledger, and once the counts are a second old every worker refuses both."""
    import psycopg

    dsn = request.getfixturevalue("postgres_database")
    with ApiTokens(PostgresStore(dsn), hasher=CHEAP_HASHER) as tokens:
        credited = tokens.create(actor="alice", user="alice", name="c", credits=10)
        rated = tokens.create(actor="alice", user="alice", name="r", rate_limit="12/day")
    admin = psycopg.connect(dsn, autocommit=True)

    def one(sql: str, token_id: str) -> int:
        row = admin.execute(sql, (token_id,)).fetchone()
        return int(row[0]) if row and row[0] is not None else -1

    (tmp_path / "limits_app.py").write_text(APP.format(store="PostgresStore", db=dsn))
    with uvicorn_workers("limits_app:app", tmp_path, workers=4) as (port, _):

        def burst(issued: Any, n: int) -> list[int]:
            headers = {"Authorization": f"Bearer {issued.secret}", "Connection": "close"}
            url = f"http://127.0.0.1:{port}/rest/x"
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                return list(
                    pool.map(
                        lambda _: httpx.get(url, headers=headers, timeout=30).status_code, range(n)
                    )
                )

        spent = burst(credited, 40)
        counted = burst(rated, 48)
        assert set(spent) | set(counted) <= {200, 429}
        assert 10 <= spent.count(200) <= 40 and 12 <= counted.count(200) <= 48
        balance = "SELECT credits_left FROM apitokens_credits WHERE token_id = %s"
        settled(lambda: one(balance, credited.token.id), 0)
        total = "SELECT sum(count) FROM apitokens_requests WHERE token_id = %s"
        settled(lambda: one(total, rated.token.id), counted.count(200))
        time.sleep(1.0)  # DESIGN §11: every worker's count is now stale, read again
        assert burst(credited, 8) == [429] * 8
        assert burst(rated, 8) == [429] * 8
    admin.close()


def test_drf_429s_carry_the_ratelimit_fields() -> None:
    """Found (fixed in apitokens.drf): outside the middleware's protected paths, where DRF's
    TokenAuthentication decides (the test project's /drf/token-only, werkzeug), an
    over-limit token gets 429 with Retry-After but without ``RateLimit-Policy`` and
    ``RateLimit`` (DESIGN §11); under /api/ the middleware sends them."""
    from django.core.wsgi import get_wsgi_application

    from tests.support.django import make_user, setup

    setup()
    from tests.django_project.tokens import tokens as project_tokens

    user = make_user("limited-drf")
    issued = project_tokens.create(actor=user.username, name="r", rate_limit="1/day")
    headers = {"Authorization": f"Bearer {issued.secret}"}
    with (
        contextlib.contextmanager(serve_wsgi)(get_wsgi_application()) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        for path in ("/api/drf/token-only", "/drf/token-only", "/drf/needs-token"):
            refused = client.get(path, headers=headers)
            if path == "/api/drf/token-only":
                assert refused.status_code == 200
                refused = client.get(path, headers=headers)
            assert refused.status_code == 429, (path, refused.text)
            assert refused.headers["RateLimit-Policy"] == '"rate";q=1;w=86400', path
            assert refused.headers["RateLimit"].startswith('"rate";r=0;t='), path


def test_per_second_windows_rolling_over_under_concurrency_hold_each_window(
    tmp_path: Path,
) -> None:
    """One uvicorn process, a per-second limit, 20 requests at a time for about two
    seconds: every rollover sends the decisions off the event loop to read the new
    window (WouldBlock) while others arrive. No window ever admits more than N (the
    audit log's successes, by the second of the decision's clock)."""
    db = tmp_path / "tokens.db"
    with ApiTokens(SQLiteStore(str(db)), hasher=CHEAP_HASHER) as tokens:
        issued = tokens.create(actor="alice", user="alice", name="ci", rate_limit="3/s")
    burst = [("GET", "/rest/x", {"Authorization": f"Bearer {issued.secret}"})] * 20
    statuses: list[int] = []
    with serve(tmp_path, str(db)) as (port, _):
        deadline = time.monotonic() + 2.2
        while time.monotonic() < deadline:
            statuses += [answer.status_code for answer in asyncio.run(fire(port, burst))]
        assert set(statuses) <= {200, 429}, statuses
        with ApiTokens(SQLiteStore(str(db))) as reader:

            def admitted() -> list[int]:
                found = reader.audit(
                    token_id=issued.token.id, action="authenticate", outcome="success", limit=1000
                )
                return [int(event.at.timestamp()) for event in found]

            settled(lambda: len(admitted()), statuses.count(200))
            per_second = collections.Counter(admitted())
    assert len(per_second) >= 2 and max(per_second.values()) == 3, per_second


WSGI_APP = """
from apitokens import ApiTokens, Policy, SQLiteStore

tokens = ApiTokens(SQLiteStore({db!r}), policy=Policy(protected_paths=["/rest/"]))


def ok(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


app = tokens.wsgi(ok)
"""


def gunicorn(tmp_path: Path, target: str) -> tuple[int, subprocess.Popen[bytes]]:
    """One gunicorn sync worker serving ``target`` (its module in ``tmp_path``)."""
    sock = listening()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(
                None, [str(tmp_path), str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")]
            )
        ),
    }
    command = [sys.executable, "-m", "gunicorn", "-b", f"fd://{sock.fileno()}", "--workers", "1"]
    command += ["--control-socket", str(tmp_path / "g.ctl"), target]
    server = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=[sock.fileno()],
    )
    port = sock.getsockname()[1]
    sock.close()  # only gunicorn holds it now: requests wait in its backlog
    return port, server


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_a_stopping_worker_sends_the_uses_it_admitted_last(tmp_path: Path, server: str) -> None:
    """Found (fixed): the uses a process admitted in its last fifth of a second were
    still waiting for the sending thread when it stopped (a deploy, gunicorn's
    --max-requests recycling a worker, which a client drives by sending requests):
    they never reached the store, so their credits came back, without bound over
    many restarts. A graceful stop now sends them (atexit, and the ASGI lifespan)."""
    db = tmp_path / "tokens.db"
    with ApiTokens(SQLiteStore(str(db)), hasher=CHEAP_HASHER) as tokens:
        issued = tokens.create(actor="alice", user="alice", name="ci", credits=1000)
    header = {"Authorization": f"Bearer {issued.secret}"}

    def use(port: int) -> int:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            return sum(client.get("/rest/x", headers=header).status_code == 200 for _ in range(30))

    if server == "uvicorn":
        with serve(tmp_path, str(db)) as (port, process):
            admitted = use(port)
            process.terminate()  # at once: the last uses are still this process's
            process.wait(timeout=20)
    else:
        (tmp_path / "wsgi_app.py").write_text(WSGI_APP.format(db=str(db)))
        port, process = gunicorn(tmp_path, "wsgi_app:app")
        try:
            admitted = use(port)
        finally:
            process.terminate()
            process.wait(timeout=20)
    assert admitted == 30
    with ApiTokens(SQLiteStore(str(db))) as tokens:
        assert tokens.credits_left(issued.token.id) == 1000 - admitted
