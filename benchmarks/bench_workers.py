"""Many workers on one store: ``uvicorn --workers 4``, revocation latency and throughput.

Real processes on 127.0.0.1: uvicorn with four workers on one listening socket serves
``benchmarks.workers_app`` (every answer's body is the worker's pid), on a SQLite file
and on a PostgreSQL server the benchmark starts itself (``tests/support/pgserver.py``)
and stops at the end.

*Revocation*: the client pins keep-alive connections to every worker (it opens
connections until each worker holds ``PER_WORKER`` of them, telling workers apart by
the pid they answer) and sends requests on all of them without pause. For each of many
tokens in turn: every worker serves the token (its record is cached), a random pause
later a process of its own revokes it through its own ``ApiTokens``, and the time from
the commit (when ``revoke`` returned or, on PostgreSQL, when the first worker heard the
notice, whichever came first) until every worker's first refusal is taken. SQLite has
no change feed: a worker sees the revocation when its cached record expires
(``cache_ttl``, default 1 s). PostgreSQL tells every worker through LISTEN/NOTIFY; its
workers run with a record cache of 60 s so that only the notice can make them refuse.

*Throughput*: bare, wrapped on SQLite and wrapped on PostgreSQL (each four workers,
one warm token, audit written) run side by side; wrk (or the async client of
``bench_e2e``) drives them in turn, rounds interleaved.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from tests.support.pgserver import PostgresServer, ServerUnavailable, running_server

from apitokens import ApiTokens, Policy, Scope, open_store
from benchmarks.bench_e2e import (
    CONNECTIONS,
    Load,
    _httpx_load,
    free_port,
    parse_duration_ms,
    process_cpu_seconds,
)
from benchmarks.bench_inprocess import FIVE_RULES, TARGET
from benchmarks.common import QUICK, ROOT, Section, versions

WORKERS = 4
PER_WORKER = 3  # pinned connections per worker while revoking
SQLITE_TTL = 1.0  # ApiTokens' default cache_ttl: the bound on SQLite
PG_TTL = 60.0  # no cached record expires during a round: only the notice can act
PG_BOUND = 0.1  # DESIGN §8: within 100 ms on PostgreSQL
PG_DATABASE = "apitokens_bench"
ACTOR = "alice"


# --- servers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path


@contextlib.contextmanager
def managing(db: str) -> Iterator[ApiTokens]:
    """An ``ApiTokens`` on the store ``db`` names; both closed at the end."""
    store = open_store(db)
    try:
        with ApiTokens(store, policy=Policy(protected_paths=["/rest/"])) as tokens:
            yield tokens
    finally:
        store.close()


def _get_pid(port: int) -> str:
    url = f"http://127.0.0.1:{port}/pid"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@contextlib.contextmanager
def serving(
    name: str, mode: str, db: str, ttl: float, tmp: Path, notices: Path | None = None
) -> Iterator[Server]:
    """``uvicorn --workers 4`` on a port of ours; stopped (SIGTERM: flushed) at the end.

    With ``notices``, every worker writes there when it heard of each change
    (``workers_app``: only stores with a change feed).
    """
    # uvicorn binds the port itself: a socket handed over with --fd is taken for a Unix
    # socket, without TCP_NODELAY, and every answer then waits for a delayed ACK.
    port = free_port()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(
        os.environ,
        BENCH_WORKERS_MODE=mode,
        BENCH_WORKERS_DB=db,
        BENCH_WORKERS_TTL=str(ttl),
        PYTHONPATH=path,
    )
    if notices is not None:
        env["BENCH_WORKERS_NOTICES"] = str(notices)
    log = tmp / f"server-{name}.log"
    command = [sys.executable, "-m", "uvicorn", "--factory", "benchmarks.workers_app:create"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(WORKERS)]
    command += ["--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "300"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(name, process, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get_pid(port)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"uvicorn ({name}) did not start:\n{log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)  # each worker's lifespan shutdown flushes
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and every process below it (Linux ``/proc``), all threads."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        total += process_cpu_seconds(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total


def postmaster_pid(server: PostgresServer) -> int:
    return int((server.directory / "data" / "postmaster.pid").read_text().split()[0])


# --- a small keep-alive HTTP/1.1 client --------------------------------------------------


class Connection:
    """One keep-alive connection, so one worker: requests one after another."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def get(self, target: str, authorization: str | None = None) -> tuple[int, bytes]:
        head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if authorization is not None:
            head += f"Authorization: {authorization}\r\n"
        self.writer.write((head + "\r\n").encode("latin-1"))
        status = int((await self.reader.readuntil(b"\r\n")).split()[1])
        length = None
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError("an answer without Content-Length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def pinned(port: int, per_worker: int, tries: int = 1000) -> dict[str, list[Connection]]:
    """Connections to every worker, ``per_worker`` each, keyed by the worker's pid.

    The workers share one listening socket, so which one takes a new connection is up
    to the kernel and to which worker is idle first: open connections until each
    worker holds enough, close the surplus.
    """
    found: dict[str, list[Connection]] = {}
    for _ in range(tries):
        batch = await asyncio.gather(*(Connection.open(port) for _ in range(WORKERS)))
        for conn in batch:
            pid = (await conn.get("/pid"))[1].decode()
            held = found.setdefault(pid, [])
            if len(held) < per_worker:
                held.append(conn)
            else:
                conn.close()
        if len(found) == WORKERS and all(len(c) == per_worker for c in found.values()):
            return found
    for conns in found.values():
        for conn in conns:
            conn.close()
    raise RuntimeError(
        f"after {tries * WORKERS} connections only {len(found)} of {WORKERS} workers "
        f"held {per_worker} each: {sorted((p, len(c)) for p, c in found.items())}"
    )


# --- revocation ---------------------------------------------------------------------------


@dataclass
class WorkerLog:
    """What one worker answered for one token."""

    ok: int = 0
    last_ok_sent: float = -math.inf
    refused_sent: float | None = None  # the first refusal: when sent, when answered
    refused_received: float | None = None
    accepted_after_refusal: int = 0  # accepted, though sent after a refusal came back
    other: dict[int, int] = field(default_factory=dict)  # neither 200 nor 401


@dataclass
class Round:
    logs: dict[str, WorkerLog]
    called: float = math.nan  # revoke() called
    commit: float = math.nan  # revoke() returned: committed

    def served(self) -> bool:
        """Every worker accepted the token twice: verified, its record cached."""
        return all(log.ok >= 2 for log in self.logs.values())

    def refused(self) -> bool:
        return all(log.refused_sent is not None for log in self.logs.values())


@dataclass(frozen=True)
class Revocation:
    """One revocation, seen from the commit: seconds to each worker's first refusal."""

    latencies: dict[str, float]  # answered; a worker that never refused is missing
    late_ok: float  # the latest accepted request's start, after the commit (<= 0: none)
    never: int  # workers that had not refused when the wait ended
    flaps: int  # 200s to requests sent after that worker's refusal came back
    other: int  # answers neither 200 nor 401
    revoke: float  # how long revoke() took
    heard: dict[str, float]  # when each worker heard the change feed's notice, if any

    @property
    def last(self) -> float:
        return max(self.latencies.values()) if not self.never else math.inf


class Hammer:
    """Requests without pause on every pinned connection, each with the current token."""

    def __init__(self, conns: dict[str, list[Connection]], authorizations: list[str]) -> None:
        self.conns = conns
        self.authorizations = authorizations
        self.rounds = [Round({pid: WorkerLog() for pid in conns}) for _ in authorizations]
        self.current = 0
        self.stopped = False
        self.error: BaseException | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for pid, conns in self.conns.items():
            for conn in conns:
                self.tasks.append(asyncio.create_task(self._run(pid, conn)))

    async def stop(self) -> None:
        self.stopped = True
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for conns in self.conns.values():
            for conn in conns:
                conn.close()

    async def _run(self, pid: str, conn: Connection) -> None:
        try:
            while not self.stopped:
                index = self.current
                sent = time.monotonic()
                status, _ = await conn.get(TARGET, self.authorizations[index])
                received = time.monotonic()
                log = self.rounds[index].logs[pid]
                if status == 200:
                    log.ok += 1
                    log.last_ok_sent = max(log.last_ok_sent, sent)
                    # Sent once a refusal had come back: decided after it, on any
                    # connection to this worker.
                    if log.refused_received is not None and sent > log.refused_received:
                        log.accepted_after_refusal += 1
                elif status == 401:
                    if log.refused_sent is None or sent < log.refused_sent:
                        log.refused_sent, log.refused_received = sent, received
                else:
                    log.other[status] = log.other.get(status, 0) + 1
        except BaseException as exc:  # the controller reports it
            self.error = exc
            raise

    async def until(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            if self.error is not None:
                raise RuntimeError(f"a client connection failed: {self.error!r}")
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.002)
        return True


class Revoker:
    """A process of its own that revokes tokens (as the CLI or another host would).

    In the client's process a revoke would wait for the GIL behind the event loop
    handling answers, and the time it returned would come late. It reports the
    monotonic clock (system-wide on Linux) before and after each ``revoke``.
    """

    def __init__(self, db: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_workers", "--revoker", db],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._expect("ready")

    def _expect(self, what: str) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith(what):
            raise RuntimeError(f"the revoker answered {line!r}")
        return line

    def revoke(self, token_id: str) -> tuple[float, float]:
        """Revoke; return the monotonic times the call started and returned (committed)."""
        assert self.process.stdin is not None
        self.process.stdin.write(token_id + "\n")
        self.process.stdin.flush()
        started, returned = self._expect("revoked").split()[1:]
        return float(started), float(returned)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def revoker(db: str) -> None:
    """The revoker's side: a token id per line in, the two times per line out."""
    with managing(db) as tokens:
        print("ready", flush=True)
        for line in sys.stdin:
            started = time.monotonic()
            tokens.revoke(actor=ACTOR, token_id=line.strip())
            print(f"revoked {started!r} {time.monotonic()!r}", flush=True)


async def measure_revocations(
    port: int,
    revoker: Revoker,
    ids: list[str],
    secrets: list[str],
    *,
    pause: float,
    wait: float,
    seed: int,
) -> list[Round]:
    """Revoke each token in turn while every worker is asked for it without pause.

    Returns the rounds once the requests in flight at each switch have come back.
    """
    conns = await pinned(port, PER_WORKER)
    hammer = Hammer(conns, [f"Bearer {secret}" for secret in secrets])
    rng = random.Random(seed)
    hammer.start()
    try:
        for index, token_id in enumerate(ids):
            hammer.current = index
            current = hammer.rounds[index]
            if not await hammer.until(current.served, 60):
                raise RuntimeError(f"not every worker served token {index}: {current.logs}")
            # A random moment in the cached records' lives (they are refreshed every
            # cache_ttl on SQLite), as a revocation comes at any time.
            await asyncio.sleep(rng.uniform(0, pause))
            current.called, current.commit = await asyncio.to_thread(revoker.revoke, token_id)
            await hammer.until(current.refused, wait)
    finally:
        await hammer.stop()
    return hammer.rounds


def summarize(done: Round, heard: dict[str, float]) -> Revocation:
    """One round, seen from the commit; ``heard``: pid -> when it heard of the change.

    The commit is inside the ``revoke`` call, and the call can return long after it (a
    busy machine: up to 200 ms here). A change feed's notice is sent at the commit, so
    the first worker to hear it bounds the commit too: the earlier of the two is taken.
    """
    commit = min([done.commit, *heard.values()])
    logs = done.logs.items()
    return Revocation(
        latencies={
            pid: log.refused_received - commit
            for pid, log in logs
            if log.refused_received is not None
        },
        late_ok=max(log.last_ok_sent for _, log in logs) - commit,
        never=sum(1 for _, log in logs if log.refused_sent is None),
        flaps=sum(log.accepted_after_refusal for _, log in logs),
        other=sum(sum(log.other.values()) for _, log in logs),
        revoke=commit - done.called,
        heard={pid: at - commit for pid, at in heard.items()},
    )


def create_tokens(tokens: ApiTokens, count: int, name: str) -> tuple[list[str], list[str]]:
    ids, secrets = [], []
    for number in range(count):
        issued = tokens.create(
            actor=ACTOR, name=f"{name}-{number}", scope=Scope.READ_WRITE, restrictions=FIVE_RULES
        )
        ids.append(issued.token.id)
        secrets.append(issued.secret)
    return ids, secrets


def revocation_phase(
    name: str, db: str, ttl: float, count: int, tmp: Path, *, pause: float, wait: float
) -> list[Revocation]:
    with managing(db) as tokens:
        ids, secrets = create_tokens(tokens, count, f"revoke-{name}")
    notices = tmp / f"notices-{name}"
    notices.mkdir()
    revoking = Revoker(db)
    try:
        with serving(f"revoke-{name}", "wrapped", db, ttl, tmp, notices) as server:
            print(f"{name}: {count} revocations, cache_ttl {ttl:g} s ...", flush=True)
            rounds = asyncio.run(
                measure_revocations(
                    server.port, revoking, ids, secrets, pause=pause, wait=wait, seed=15
                )
            )
    finally:
        revoking.close()
    heard: dict[str, dict[str, float]] = {token_id: {} for token_id in ids}
    for path in notices.glob("*.log"):
        for line in path.read_text().splitlines():
            at, token_id = line.split()
            if token_id in heard:
                heard[token_id].setdefault(path.stem, float(at))
    found = [summarize(done, heard[token_id]) for done, token_id in zip(rounds, ids, strict=True)]
    for number, one in enumerate(found):
        shown = ", ".join(f"{value * 1000:.0f}" for value in sorted(one.latencies.values()))
        print(
            f"  {number:2}: workers refused after [{shown}] ms; latest accept started "
            f"{one.late_ok * 1000:.0f} ms after; never {one.never}, flaps {one.flaps}, "
            f"other {one.other}; revoke took {one.revoke * 1000:.1f} ms; notice heard after "
            f"[{', '.join(f'{v * 1000:.0f}' for v in sorted(one.heard.values()))}] ms",
            flush=True,
        )
    return found


def ms(seconds: float) -> str:
    return "never" if math.isinf(seconds) else f"{seconds * 1000:,.0f} ms"


def report_revocations(
    section: Section, label: str, found: list[Revocation], bound: float, how: str
) -> None:
    lasts = [one.last for one in found]
    every = [value for one in found for value in one.latencies.values()]
    # The commit is somewhere inside the revoke call: from its start is an upper bound.
    from_call = max(one.last + one.revoke for one in found)
    late_ok = max(one.late_ok for one in found)
    never = sum(one.never for one in found)
    flaps = sum(one.flaps for one in found)
    other = sum(one.other for one in found)
    took = [one.revoke for one in found]
    if any(one.heard for one in found):
        heard = [
            max(one.heard.values()) if len(one.heard) == WORKERS else math.inf for one in found
        ]
        heard_text = f"{ms(statistics.median(heard))}, {ms(max(heard))}"
        heard_note = f"; the notice heard by the last worker {heard_text} (p50, max)"
    else:
        heard_text, heard_note = "no change feed", ""
    section.table(
        [
            label,
            "revocations",
            "last worker refuses: p50",
            "max",
            "max, from the call",
            "each worker: p50",
            "`revoke` took: p50, max",
            "notice heard by the last worker: p50, max",
            "latest accepted request started",
            "never refused",
            "accepted after refusing",
        ],
        [
            [
                how,
                str(len(found)),
                ms(statistics.median(lasts)),
                ms(max(lasts)),
                ms(from_call),
                ms(statistics.median(every)) if every else "-",
                f"{ms(statistics.median(took))}, {ms(max(took))}",
                heard_text,
                f"{ms(late_ok)} after the commit",
                str(never),
                str(flaps),
            ]
        ],
    )
    # A worker decides a request between its sending and its answer: one accepted
    # after the bound must have been sent within it. The refusal's own answer may come
    # later (the "+ one request").
    met = never == 0 and flaps == 0 and other == 0 and late_ok <= bound
    section.verdict(
        f"{label}, uvicorn --workers 4: every worker refuses a revoked token within "
        f"{ms(bound)} of the commit (+ one request)",
        f"latest accepted request sent {ms(late_ok)} after the commit (of "
        f"{len(found)} revocations); the last worker's first refusal answered "
        f"{ms(statistics.median(lasts))} (p50), {ms(max(lasts))} (max) after the commit, "
        f"{ms(from_call)} at most after the `revoke` call began{heard_note}; {never} "
        f"never refused, {flaps} accepted after refusing, {other} other answers",
        met,
    )


# --- throughput ---------------------------------------------------------------------------


def load(port: int, authorization: str, seconds: int) -> tuple[Load, int]:
    """A timed load; also the number of answers the generator counted (wrk's exact count)."""
    if not shutil.which("wrk"):
        found = asyncio.run(_httpx_load(port, authorization, seconds))
        return found, round(found.rps * seconds)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-H",
         f"Authorization: {authorization}", f"http://127.0.0.1:{port}{TARGET}"],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout  # fmt: skip
    answered = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    if answered is None or rps is None or p50 is None or p99 is None:
        raise RuntimeError(f"unreadable wrk output:\n{out}")
    errors = 0
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        errors += int(bad.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    found = Load(
        float(rps.group(1)),
        parse_duration_ms(p50.group(1)),
        parse_duration_ms(p99.group(1)),
        errors,
    )
    return found, int(answered.group(1))


async def warm(port: int, authorization: str) -> None:
    """Every worker verifies the token once (argon2id) before it is timed."""
    conns = await pinned(port, 1)
    for held in conns.values():
        for conn in held:
            for _ in range(3):
                status, body = await conn.get(TARGET, authorization)
                if status != 200:
                    raise RuntimeError(f"warm-up answered {status}: {body[:200]!r}")
            conn.close()


def count_authentications(db: str, token_id: str) -> int:
    if db.startswith("host="):
        import psycopg

        with psycopg.connect(db) as conn:
            row = conn.execute(
                "SELECT count(*) FROM apitokens_audit"
                " WHERE action = 'authenticate' AND token_id = %s",
                (token_id,),
            ).fetchone()
    else:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            row = conn.execute(
                "SELECT count(*) FROM audit WHERE action = 'authenticate' AND token_id = ?",
                (token_id,),
            ).fetchone()
    assert row is not None
    return int(row[0])


def throughput_phase(
    section: Section, stores: dict[str, str], pg: PostgresServer, tmp: Path
) -> None:
    rounds, seconds = (1, 3) if QUICK else (3, 6)
    issued = {}
    for name, db in stores.items():
        with managing(db) as tokens:
            issued[name] = tokens.create(
                actor=ACTOR, name="throughput", scope=Scope.READ_WRITE, restrictions=FIVE_RULES
            )
    # Whatever the bare app is sent: it reads no header.
    authorization = {name: f"Bearer {one.secret}" for name, one in issued.items()}
    authorization["bare"] = authorization[next(iter(stores))]
    runs: dict[str, list[Load]] = {name: [] for name in ("bare", *stores)}
    pg_cpu: list[float] = []
    with contextlib.ExitStack() as stack:
        servers = {"bare": stack.enter_context(serving("bare", "bare", "", SQLITE_TTL, tmp))}
        for name, db in stores.items():
            servers[name] = stack.enter_context(serving(name, "wrapped", db, SQLITE_TTL, tmp))
        for name, server in servers.items():
            asyncio.run(warm(server.port, authorization[name]))
        order = list(servers)
        sent = dict.fromkeys(stores, WORKERS * 3)  # the warm-up's requests
        for number in range(rounds):
            for name in order[number % len(order) :] + order[: number % len(order)]:
                server = servers[name]
                before = tree_cpu_seconds(server.process.pid)
                pg_before = tree_cpu_seconds(postmaster_pid(pg))
                found, requests = load(server.port, authorization[name], seconds)
                spent = tree_cpu_seconds(server.process.pid) - before
                if name == "PostgreSQL":
                    pg_cpu.append((tree_cpu_seconds(postmaster_pid(pg)) - pg_before) / requests)
                if name in sent:
                    sent[name] += requests
                found = replace(found, cpu_us=spent / requests * 1e6)
                print(f"  {name}: {found}", flush=True)
                runs[name].append(found)
    # The servers stopped (flushed): every answered request is in the audit log.
    audited = {
        name: count_authentications(db, issued[name].token.id) for name, db in stores.items()
    }
    report_throughput(section, runs, pg_cpu, audited, sent)


def report_throughput(
    section: Section,
    runs: dict[str, list[Load]],
    pg_cpu: list[float],
    audited: dict[str, int],
    sent: dict[str, int],
) -> None:
    rows = []
    for name, loads in runs.items():
        rps = statistics.median(x.rps for x in loads)
        if name == "bare":
            share = ""
        else:
            share = f"{statistics.median(w.rps / b.rps for b, w in zip(runs['bare'], loads, strict=True)):.1%}"  # noqa: E501
        cpu = statistics.median(x.cpu_us for x in loads)
        extra = (
            f" + {statistics.median(pg_cpu) * 1e6:,.0f} µs PostgreSQL"
            if name == "PostgreSQL"
            else ""
        )
        rows.append(
            [
                "bare" if name == "bare" else f"wrapped, {name} store",
                f"{rps:,.0f}",
                share,
                f"{statistics.median(x.p50_ms for x in loads):.2f} ms",
                f"{statistics.median(x.p99_ms for x in loads):.2f} ms",
                f"{cpu:,.0f} µs{extra}",
                str(sum(x.errors for x in loads)),
            ]
        )
    section.table(
        [
            "uvicorn --workers 4",
            "requests/s",
            "of bare (paired runs)",
            "p50 latency",
            "p99 latency",
            "server CPU / request",
            "errors",
        ],
        rows,
    )
    lost = {name: max(0, sent[name] - audited[name]) for name in audited}
    section.notes.append(
        "Audit log after the servers stopped (their lifespan shutdown flushes each "
        "worker's writer): "
        + "; ".join(
            f"{name}, {audited[name]:,} authentications of the benchmark token for "
            f"{sent[name]:,} answers the load generator counted"
            for name in audited
        )
        + ". The generator drops the requests in flight when a run ends, which the "
        "servers still answered and audited, so there may be more rows than answers; "
        f"fewer would be events lost: {sum(lost.values())}."
    )


# --- main ---------------------------------------------------------------------------------


def main() -> None:
    sqlite_count, pg_count = (4, 6) if QUICK else (20, 30)
    generator = "wrk" if shutil.which("wrk") else "an async httpx client (wrk not installed)"
    section = Section(
        "workers",
        "Many workers: uvicorn --workers 4 on one store",
        intro=(
            f"uvicorn ({versions('uvicorn', 'uvloop', 'httptools', 'psycopg')}) with "
            f"`--workers {WORKERS}` (real processes on one listening socket, 127.0.0.1) "
            "serving a bare ASGI app or the same app wrapped by `tokens.asgi` "
            f"(`GET {TARGET}`, a Bearer token with 5 rules, audit written), on a SQLite "
            "file and on a PostgreSQL 15 server the benchmark starts (Unix socket, "
            "`fsync=off`: a throwaway server on the same 2 cores as everything else). "
            f"*Revocation*: {PER_WORKER} keep-alive connections pinned to each worker "
            "(told apart by the pid the app answers) send requests without pause; for "
            "each of many tokens in turn, once every worker has served it, another process "
            "revokes it (`ApiTokens.revoke`, a random pause after the warm-up) and the "
            "time is taken from the commit to each worker's first refusal (its answer "
            "received). The commit is inside the `revoke` call: it is taken as the moment "
            "the call returned or, on PostgreSQL, the first worker heard the notice (sent "
            "at the commit), whichever came first; *max, from the call* counts from the "
            "call's start instead, and *`revoke` took* is the call up to that commit. "
            f"SQLite workers run with the default `cache_ttl` ({SQLITE_TTL:g} s) and see a "
            "revocation when their cached record expires; PostgreSQL workers with "
            f"`cache_ttl={PG_TTL:g}` so that only the LISTEN/NOTIFY notice can make them "
            "refuse. *Throughput*: bare, SQLite and PostgreSQL servers (default "
            "`cache_ttl`) run side by side, driven "
            f"in turn by {generator} with {CONNECTIONS} connections, "
            f"{1 if QUICK else 3} interleaved round(s) of {3 if QUICK else 6} s; medians. "
            "Server CPU counts the uvicorn master and its workers, all threads; for "
            "PostgreSQL the server's own processes are added after the +."
        ),
    )
    with (
        tempfile.TemporaryDirectory(prefix="bench-workers-") as name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(name)
        try:
            pg = stack.enter_context(running_server())
        except ServerUnavailable as error:
            raise SystemExit(f"bench_workers needs PostgreSQL: {error}") from None
        pg.execute(f"CREATE DATABASE {PG_DATABASE} TEMPLATE template0")
        stores = {"SQLite": str(tmp / "tokens.db"), "PostgreSQL": pg.dsn(PG_DATABASE)}
        for db in stores.values():
            open_store(db).close()  # the schema, before the workers start
        found = revocation_phase(
            "SQLite", stores["SQLite"], SQLITE_TTL, sqlite_count, tmp,
            pause=SQLITE_TTL, wait=SQLITE_TTL + 5,
        )  # fmt: skip
        report_revocations(section, "SQLite file", found, SQLITE_TTL, f"cache_ttl {SQLITE_TTL:g} s")
        found = revocation_phase(
            "PostgreSQL", stores["PostgreSQL"], PG_TTL, pg_count, tmp, pause=PG_BOUND, wait=5
        )
        report_revocations(
            section, "PostgreSQL", found, PG_BOUND, f"LISTEN/NOTIFY, cache_ttl {PG_TTL:g} s"
        )
        print("throughput:", flush=True)
        throughput_phase(section, stores, pg, tmp)
    section.save()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--revoker"]:
        revoker(sys.argv[2])
    else:
        main()
