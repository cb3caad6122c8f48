"""Shared pieces of the benchmark suite: timing, the machine, results, and the stores.

Every number the suite publishes is a median of repeated rounds, and every headline
is a ratio of two things measured in the same run (the machines are shared and noisy).
Rounds of the things compared are interleaved, so a burst of noise hits both.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apitokens import HmacSha256Hasher, SQLiteStore
from apitokens._model import Scope, StoredToken, Token
from apitokens._tokens import TokenFormat
from apitokens.storage import _migrations, _schema

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache"
RESULTS = CACHE / "results"
DOC = ROOT / "docs" / "performance.md"

# Benchmark-only key and tokens: nothing here protects anything.
BENCH_KEY = b"apitokens-benchmark-key-not-a-secret!"
KNOWN_TOKENS = 1000  # tokens in every bulk store whose secrets the suite knows
QUICK = os.environ.get("BENCH_QUICK") == "1"  # shorter rounds, for trying the suite out


# --- timing ---------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def per_call_us(
    fn: Callable[[], object], count: int, after: Callable[[], object] | None = None
) -> float:
    """Microseconds per call of ``fn``, over ``count`` calls (``after`` inside the timing)."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(count):
            fn()
        if after is not None:
            after()
        return (time.perf_counter() - start) / count * 1e6
    finally:
        if gc_was:
            gc.enable()


def interleaved(
    cases: dict[str, Callable[[], float]], rounds: int, warmup: int = 1
) -> dict[str, float]:
    """Run every case ``rounds`` times, interleaved; return each case's median."""
    for _ in range(warmup):
        for run in cases.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            samples[name].append(run())
    return {name: median(values) for name, values in samples.items()}


# --- the machine ----------------------------------------------------------------------


def reference_ms() -> float:
    """A fixed pure-Python workload, in ms (median of 7): how fast the machine is now.

    Shared machines slow down and speed up from one minute to the next; this number,
    taken when a section is measured, says how to compare two runs' absolute numbers.
    """
    times = []
    for _ in range(7):
        start = time.perf_counter()
        total = 0
        for value in range(200_000):
            total += value & 7
        times.append((time.perf_counter() - start) * 1000)
    return median(times)


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": load,
    }


def versions(*names: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


# --- results --------------------------------------------------------------------------


@dataclass
class Section:
    """One benchmark's part of docs/performance.md: a title, tables, notes, verdicts."""

    key: str
    title: str
    intro: str = ""
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verdicts: list[tuple[str, str, bool]] = field(default_factory=list)  # target, measured, met

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.tables.append((header, rows))
        print()
        print(render_table(header, rows))

    def verdict(self, target: str, measured: str, met: bool) -> None:
        self.verdicts.append((target, measured, met))
        print(f"  {'MET ' if met else 'MISS'} {target}: {measured}")

    def save(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        data = {
            "key": self.key,
            "title": self.title,
            "intro": self.intro,
            "tables": self.tables,
            "notes": self.notes,
            "verdicts": self.verdicts,
            "machine": machine(),
            "reference_ms": reference_ms(),
        }
        (RESULTS / f"{self.key}.json").write_text(json.dumps(data, indent=1))


def render_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def us(value: float) -> str:
    return f"{value:,.1f} µs" if value < 10_000 else f"{value / 1000:,.1f} ms"


def ratio(value: float) -> str:
    return f"{value:.2f}x"


# --- stores ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BulkStore:
    """A SQLite file with ``size`` tokens, ``KNOWN_TOKENS`` of them with known secrets."""

    path: Path
    size: int
    secrets: list[str]


def bulk_store(size: int) -> BulkStore:
    """Return the cached store of ``size`` tokens, building it once (one transaction).

    The tokens are written with the store's own SQL and row layout, straight into one
    transaction: going through ``ApiTokens.create`` would cost a commit each. Their
    secrets are hashed with keyed SHA-256 (``BENCH_KEY``); the suite knows the secrets
    of ``KNOWN_TOKENS`` of them, spread over the id space.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"tokens-{size}-v{_migrations.LATEST_VERSION}.db"
    sidecar = path.with_suffix(".json")
    if path.exists() and sidecar.exists():
        return BulkStore(path, size, json.loads(sidecar.read_text()))
    for stale in (path, sidecar):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    print(f"building a store of {size:,} tokens in {path.name} ...", flush=True)
    SQLiteStore(path).close()  # the schema, made by the store itself
    hasher = HmacSha256Hasher(BENCH_KEY)
    fmt = TokenFormat()
    now = datetime.now(UTC)
    template = StoredToken(
        Token(
            id="0" * 12,
            name="bulk",
            user="bulk-user",
            created_by="bulk-user",
            created_at=now,
            scope=Scope.READ_ONLY,
        ),
        secret_hash=hasher.hash(fmt.issue().value),
    )
    base = _schema.token_params(template)
    columns = [name.strip() for name in _schema.STORED_COLUMNS.split(",")]
    at_id, at_user, at_hash = (columns.index(c) for c in ("id", "user", "secret_hash"))
    known_every = max(1, size // KNOWN_TOKENS)
    secrets: list[str] = []

    def rows() -> Iterator[tuple[object, ...]]:
        for index in range(size):
            issued = fmt.issue()
            row = list(base)
            row[at_id] = issued.id
            row[at_user] = f"user{index % 5000}"
            if index % known_every == 0 and len(secrets) < KNOWN_TOKENS:
                secrets.append(issued.value)
                row[at_hash] = hasher.hash(issued.value)
            yield tuple(row)

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_schema.INSERT_RECORD, rows())
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    sidecar.write_text(json.dumps(secrets))
    print(f"  built in {time.perf_counter() - started:.1f} s", flush=True)
    return BulkStore(path, size, secrets)


@contextmanager
def store_copy(bulk: BulkStore, tmp: Path) -> Iterator[SQLiteStore]:
    """A fresh copy of a bulk store (the benchmark writes to it), opened."""
    target = tmp / f"run-{bulk.size}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(bulk.path, target)
    store = SQLiteStore(target)
    try:
        yield store
    finally:
        store.close()


# --- PostgreSQL -----------------------------------------------------------------------


@contextmanager
def postgres_server() -> Iterator[Any]:
    """A throwaway PostgreSQL server for one benchmark (``tests/support/pgserver.py``).

    Started here and stopped at the end; Unix socket only, ``fsync`` off (it lives for
    one run). PostgreSQL or psycopg missing is a failure whose message names what to
    install, never a skip: the suite's PostgreSQL numbers would silently be missing.
    """
    from tests.support.pgserver import ServerUnavailable, running_server

    try:
        server = running_server()
        entered = server.__enter__()
    except ServerUnavailable as exc:
        raise SystemExit(f"the PostgreSQL benchmarks cannot run: {exc}") from None
    try:
        yield entered
    finally:
        server.__exit__(None, None, None)


def postgres_cpu_seconds(server: Any) -> float:
    """CPU time of the server's processes alive now, in seconds.

    The postmaster and its children: the backends serving connections still open, the
    WAL writer, the checkpointer and the others. A backend whose connection has closed
    is gone, and so is its CPU time: read this before the clients disconnect. Read from
    ``/proc/PID/schedstat`` (nanoseconds on the CPU; ``stat`` counts 10 ms ticks).
    """
    data = Path(server.directory) / "data" / "postmaster.pid"
    postmaster = int(data.read_text().split()[0])
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if int(entry.name) == postmaster or parent == postmaster:
                total += int((entry / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
    return total / 1e9


def postgres_database(server: Any, name: str) -> str:
    """Create the database ``name`` on ``server`` (with apitokens' schema); its DSN."""
    from apitokens.postgres import PostgresStore

    server.execute(f'CREATE DATABASE "{name}"')
    dsn: str = server.dsn(name)
    PostgresStore(dsn).close()  # the schema, made by the store itself
    return dsn


def postgres_bulk(server: Any, bulk: BulkStore) -> str:
    """A database holding the tokens of ``bulk`` (same ids, hashes, owners); its DSN.

    Loaded with one COPY of the SQLite file's ids, owners and hashes, every other column
    the same for all, as ``bulk_store`` makes them. The secondary indexes (``list()``'s) are
    dropped for the COPY and made again from their own definitions afterwards (1M rows:
    about 8 s instead of 25); the primary key, which every lookup uses, is built row by
    row as in a store that grew. Then the table is vacuumed and analysed, as a
    long-lived one would be.
    """
    import psycopg

    started = time.perf_counter()
    dsn = postgres_database(server, f"tokens_{bulk.size}")
    # The columns a READ_ONLY token without rules or expiry sets; the others keep their
    # defaults (no rules, no addresses, secure, unused, not revoked).
    copy_sql = (
        'COPY apitokens_tokens (id, "user", secret_hash, name, name_folded, created_by,'
        " created_at, scope) FROM STDIN"
    )
    created = datetime.now(UTC).isoformat()
    constant = ("bulk", "bulk", "bulk-user", created, Scope.READ_ONLY.value)
    source = sqlite3.connect(bulk.path)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            indexes = conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'apitokens_tokens'"
                " AND indexname <> 'apitokens_tokens_pkey'"
            ).fetchall()
            with conn.transaction():
                for name, _ in indexes:
                    conn.execute(f'DROP INDEX "{name}"')
                with conn.cursor() as cursor, cursor.copy(copy_sql) as copy:
                    for row in source.execute('SELECT id, "user", secret_hash FROM tokens'):
                        copy.write_row(row + constant)
                for _, definition in indexes:
                    conn.execute(definition)
            conn.execute("VACUUM ANALYZE apitokens_tokens")
    finally:
        source.close()
    elapsed = time.perf_counter() - started
    print(f"  {bulk.size:,} tokens loaded into PostgreSQL in {elapsed:.1f} s", flush=True)
    return dsn


def run_module(module: str, *args: str, timeout: float = 900) -> int:
    """Run ``python -m module`` in a fresh interpreter (each benchmark gets its own)."""
    cmd = [sys.executable, "-m", module, *args]
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    return subprocess.run(cmd, cwd=ROOT, timeout=timeout, check=False).returncode


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
