"""End to end: uvicorn serving the bare ASGI app vs the wrapped one, on 127.0.0.1.

uvicorn (one worker) runs in a subprocess on a free port; the load generator is wrk
(Debian's package) when installed, else an async httpx client of our own. Each run is
bounded in time; bare and wrapped runs alternate; the server is stopped after each.
The wrapped app checks a Bearer token with 5 rules against a 100k-token SQLite store
and writes every request's audit event, as in production.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from apitokens import ApiTokens, Scope
from benchmarks import e2e_app
from benchmarks.bench_inprocess import FIVE_RULES, POLICY, TARGET
from benchmarks.common import QUICK, ROOT, Section, bulk_store, store_copy, versions

TARGET_RATIO = 0.85
CONNECTIONS = 32


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float = 0.0  # the server's CPU time per request, all its threads


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far, all threads (Linux ``/proc``).

    Throughput on a shared machine moves with the neighbours; the CPU time the server
    spent per request moves much less, and it counts the audit writer's thread too.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # not Linux: the column reads "nan"
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, authorization: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}{TARGET}"
    while True:
        try:
            request = urllib.request.Request(url, headers={"Authorization": authorization})
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def parse_duration_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unreadable wrk duration {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def run_wrk(port: int, authorization: str, seconds: int) -> Load:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: {authorization}",
            f"http://127.0.0.1:{port}{TARGET}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = parse_duration_ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = parse_duration_ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        errors += int(bad.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return Load(rps, p50, p99, errors)


async def _httpx_load(port: int, authorization: str, seconds: float) -> Load:
    import httpx

    url = f"http://127.0.0.1:{port}{TARGET}"
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            response = await client.get(url, headers={"Authorization": authorization})
            latencies.append(time.perf_counter() - start)
            if response.status_code != 200:
                errors += 1

    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(CONNECTIONS)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return Load(
        rps=len(latencies) / elapsed,
        p50_ms=latencies[len(latencies) // 2] * 1000,
        p99_ms=latencies[int(len(latencies) * 0.99)] * 1000,
        errors=errors,
    )


STACKS = {
    "h11 + asyncio (`pip install uvicorn`)": ["--http", "h11", "--loop", "asyncio"],
    "httptools + uvloop (`pip install uvicorn[standard]`)": [
        "--http",
        "httptools",
        "--loop",
        "uvloop",
    ],
}


def available(stack: list[str]) -> bool:
    try:
        if "httptools" in stack:
            import httptools  # noqa: F401
        if "uvloop" in stack:
            import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def serve_and_load(
    mode: str,
    db: Path,
    authorization: str,
    seconds: int,
    stack: list[str],
    report: Path | None = None,
) -> Load:
    port = free_port()
    # Keep the caller's PYTHONPATH after ROOT: it may point at the tree to measure
    # (an editable install elsewhere would otherwise win in the server).
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, BENCH_E2E_MODE=mode, BENCH_E2E_DB=str(db), PYTHONPATH=path)
    if report is not None:
        env["BENCH_E2E_REPORT"] = str(report)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "benchmarks.e2e_app:create",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            *stack,
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        wait_ready(port, authorization)
        for _ in range(50):  # warm: the first request verifies the token (argon2id)
            wait_ready(port, authorization)
        before = process_cpu_seconds(server.pid)
        if shutil.which("wrk"):
            load = run_wrk(port, authorization, seconds)
        else:
            load = asyncio.run(_httpx_load(port, authorization, seconds))
        spent = process_cpu_seconds(server.pid) - before
        return replace(load, cpu_us=spent / (load.rps * seconds) * 1e6)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@dataclass(frozen=True)
class Alternating:
    """CPU per request of bare and wrapped, served in turn by one server (``e2e_app``)."""

    bare_us: float
    wrapped_us: float

    @property
    def ratio(self) -> float:
        """Bare CPU over wrapped CPU: the throughput ratio of a CPU-bound server."""
        return self.bare_us / self.wrapped_us


def alternate(db: Path, authorization: str, seconds: int, stack: list[str]) -> Alternating:
    """One server switching between bare and wrapped every 0.5 s under one wrk run."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "alternate.json"
        serve_and_load("alternate", db, authorization, seconds, stack, report)
        totals = json.loads(report.read_text())
    per = {
        mode: totals[mode]["cpu_seconds"] / totals[mode]["requests"] * 1e6
        for mode in ("bare", "wrapped")
    }
    return Alternating(per["bare"], per["wrapped"])


def main() -> None:
    rounds, seconds = (1, 3) if QUICK else (3, 8)
    alternate_seconds = 8 if QUICK else 30
    generator = "wrk" if shutil.which("wrk") else "an async httpx client (wrk not installed)"
    section = Section(
        "e2e",
        "End to end under uvicorn",
        intro=(
            f"uvicorn ({versions('uvicorn', 'uvloop', 'httptools', 'h11')}; one worker) "
            "serving the "
            "bare ASGI app vs the app wrapped by `tokens.asgi`, on 127.0.0.1, driven by "
            f"{generator} with {CONNECTIONS} connections from the same machine "
            f"(`GET {TARGET}`, Bearer token with 5 rules, 100k-token SQLite store, "
            f"audit written). {rounds} alternating runs of {seconds} s each; medians. Two "
            "server stacks: uvicorn's pure-Python one and its fast one. Then one server "
            f"serves bare and wrapped in turn, switching every {e2e_app.WINDOW} s for "
            f"{alternate_seconds} s under one wrk run, and counts its CPU time per "
            "request for each (all threads; the audit writer is flushed at each switch so "
            "its work counts where it belongs): both see the same minutes of this shared "
            "machine, which separate runs do not."
        ),
    )
    bulk = bulk_store(100_000)
    with tempfile.TemporaryDirectory() as tmp:
        with store_copy(bulk, Path(tmp)) as store, ApiTokens(store, policy=POLICY) as tokens:
            issued = tokens.create(
                actor="alice", name="e2e", scope=Scope.READ_WRITE, restrictions=FIVE_RULES
            )
        db = Path(tmp) / f"run-{bulk.size}.db"
        authorization = f"Bearer {issued.secret}"
        for stack_name, stack in STACKS.items():
            if not available(stack):
                section.notes.append(f"{stack_name}: not installed, not measured.")
                continue
            print(f"{stack_name}:", flush=True)
            runs: dict[str, list[Load]] = {"bare": [], "wrapped": []}
            for _ in range(rounds):
                for mode in ("bare", "wrapped"):
                    load = serve_and_load(mode, db, authorization, seconds, stack)
                    print(f"  {mode}: {load}", flush=True)
                    runs[mode].append(load)
            turns = alternate(db, authorization, alternate_seconds, stack)
            print(f"  alternating: {turns}", flush=True)
            report(section, stack_name, runs, turns)
    section.notes.append(
        "The wrapped p99 is dominated by the audit writer thread: see *Under uvicorn* in "
        "the findings below."
    )
    section.save()


def report(
    section: Section, stack_name: str, runs: dict[str, list[Load]], turns: Alternating
) -> None:
    med = {
        mode: Load(
            rps=statistics.median(x.rps for x in loads),
            p50_ms=statistics.median(x.p50_ms for x in loads),
            p99_ms=statistics.median(x.p99_ms for x in loads),
            errors=sum(x.errors for x in loads),
            cpu_us=statistics.median(x.cpu_us for x in loads),
        )
        for mode, loads in runs.items()
    }
    paired = statistics.median(
        w.rps / b.rps for b, w in zip(runs["bare"], runs["wrapped"], strict=True)
    )
    per_request = 1e6 / med["wrapped"].rps - 1e6 / med["bare"].rps
    cpu_paired = statistics.median(
        w.cpu_us - b.cpu_us for b, w in zip(runs["bare"], runs["wrapped"], strict=True)
    )
    section.table(
        [stack_name, "requests/s", "p50 latency", "p99 latency", "server CPU / request", "errors"],
        [
            [
                mode,
                f"{m.rps:,.0f}",
                f"{m.p50_ms:.2f} ms",
                f"{m.p99_ms:.2f} ms",
                f"{m.cpu_us:,.0f} µs",
                str(m.errors),
            ]
            for mode, m in med.items()
        ],
    )
    section.table(
        [f"{stack_name}, one server alternating", "server CPU / request", "bare / wrapped"],
        [
            ["bare", f"{turns.bare_us:,.0f} µs", ""],
            ["wrapped", f"{turns.wrapped_us:,.0f} µs", f"{turns.ratio:.1%}"],
        ],
    )
    section.verdict(
        f"{stack_name}: wrapped throughput >= {TARGET_RATIO:.0%} of bare",
        f"{paired:.1%} (median of paired runs; {per_request:.0f} µs more wall time and "
        f"{cpu_paired:.0f} µs more server CPU per request); alternating in one server, "
        f"CPU per request bare / wrapped {turns.ratio:.1%} "
        f"({turns.wrapped_us - turns.bare_us:.0f} µs more)",
        paired >= TARGET_RATIO and med["wrapped"].errors == 0,
    )


if __name__ == "__main__":
    main()
