"""Audit ingestion: events per second through the buffered writer, SQLite and PostgreSQL.

Authentication records are submitted one at a time, as request threads do (each record
is an audit event and a use of the token), and the clock stops when the writer has
written the last one (``flush``). From one process (1 and 8 threads) and from 4
processes (real ones, started with ``spawn``, each with its own ``ApiTokens`` on the
same store; the clock runs from the moment they all start submitting until the last
one has flushed). The two stores are measured in the same run, their runs alternating.
Afterwards the audit table is counted: every event submitted must be there, and the
tokens' use counts must have grown by as much.

A second measurement spreads the records over 1,000 tokens of a 100k-token store, as
a busy service's traffic would be: each batch then updates 1,000 token rows and inserts
at 1,000 places of the audit indexes.
"""

from __future__ import annotations

import functools
import multiprocessing
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from apitokens import ApiTokens, open_store
from apitokens._model import Outcome
from apitokens._tokens import TokenFormat
from apitokens.storage import AuthEntry, TokenStore
from benchmarks.common import (
    KNOWN_TOKENS,
    QUICK,
    Section,
    bulk_store,
    median,
    postgres_bulk,
    postgres_cpu_seconds,
    postgres_database,
    postgres_server,
    store_copy,
    versions,
)

TARGET_PER_SECOND = 50_000
PROCESSES = 4
THREADS = (1, 8)
STORES = ("SQLite", "PostgreSQL")


def records(owners: dict[str, str | None], tag: str) -> list[tuple[AuthEntry]]:
    """One authentication record per token of ``owners`` (token id -> user)."""
    now = datetime.now(UTC)
    return [
        (
            AuthEntry(
                now,
                Outcome.SUCCESS,
                token_id,
                user,
                "192.0.2.1",
                "GET",
                "/rest/api/2/issue/JRA-123",
                tag,
                True,
            ),
        )
        for token_id, user in owners.items()
    ]


def submit_all(tokens: ApiTokens, batch: list[tuple[AuthEntry]], each: int) -> None:
    submit = tokens._writer.submit
    count = len(batch)
    for index in range(each):
        submit(batch[index % count])


class Run(NamedTuple):
    """One ingestion run."""

    rate: float  # events per second, wall clock
    client_us: float  # CPU per event in the submitting processes (submit, writer, SQLite)
    server_us: float  # CPU per event in the PostgreSQL server's processes


def ingest(
    tokens: ApiTokens,
    owners: dict[str, str | None],
    threads: int,
    total: int,
    tag: str,
    server_cpu: Callable[[], float],
) -> Run:
    """Submit ``total`` records from ``threads`` threads of this process.

    The records go round the tokens of ``owners`` (token id -> user).
    """
    each = total // threads
    batch = records(owners, tag)
    start_line = threading.Barrier(threads + 1)

    def produce() -> None:
        start_line.wait()
        submit_all(tokens, batch, each)

    workers = [threading.Thread(target=produce) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start_line.wait()
    started, cpu, server = time.perf_counter(), time.process_time(), server_cpu()
    for worker in workers:
        worker.join()
    tokens.flush()
    elapsed = time.perf_counter() - started
    cpu, server = time.process_time() - cpu, server_cpu() - server
    events = each * threads
    return Run(events / elapsed, cpu / events * 1e6, server / events * 1e6)


def _produce_in_process(
    target: str,
    owners: dict[str, str | None],
    each: int,
    tag: str,
    barriers: tuple[Any, Any],
    done: Any,
) -> None:
    """A child process: its own store and ApiTokens; submit ``each`` records, flush.

    Reports the events and its CPU time, then keeps its connections open until the
    parent has read the server's CPU time (``barriers[1]``).
    """
    start_line, finish_line = barriers
    with open_store(target) as store, ApiTokens(store) as tokens:
        batch = records(owners, tag)
        start_line.wait(timeout=120)
        cpu = time.process_time()
        submit_all(tokens, batch, each)
        tokens.flush()
        done.put((each, time.process_time() - cpu))
        finish_line.wait(timeout=300)


def ingest_processes(
    target: str,
    owners: dict[str, str | None],
    processes: int,
    total: int,
    tag: str,
    server_cpu: Callable[[], float],
) -> Run:
    """Submit ``total`` records from ``processes`` processes, each with its own ApiTokens.

    The clock starts when every process has opened its store and is about to submit
    (a barrier), and stops when the last has flushed.
    """
    context = multiprocessing.get_context("spawn")
    each = total // processes
    barriers = (context.Barrier(processes + 1), context.Barrier(processes + 1))
    done = context.Queue()
    children = [
        context.Process(
            target=_produce_in_process, args=(target, owners, each, tag, barriers, done)
        )
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    try:
        barriers[0].wait(timeout=120)
        started, server = time.perf_counter(), server_cpu()
        reports = [done.get(timeout=300) for _ in children]
        elapsed = time.perf_counter() - started
        server = server_cpu() - server
        barriers[1].wait(timeout=60)
    finally:
        for child in children:
            child.join(timeout=60)
    failed = [child.exitcode for child in children if child.exitcode != 0]
    assert not failed, f"a submitting process failed: exit codes {failed}"
    events = sum(count for count, _ in reports)
    cpu = sum(seconds for _, seconds in reports)
    return Run(events / elapsed, cpu / events * 1e6, server / events * 1e6)


@dataclass
class Target:
    """One store to ingest into: how to open it again, and the tokens to use."""

    kind: str  # "SQLite" or "PostgreSQL"
    url: str  # for open_store, in another process
    store: TokenStore
    tokens: ApiTokens
    owners: dict[str, str | None]
    count_written: Callable[[], tuple[int, int]]  # audit rows, sum of the tokens' uses
    server_cpu: Callable[[], float]  # seconds of CPU the server has used (0 for SQLite)
    submitted: int = 0


def _sqlite_counts(path: Path, ids: list[str]) -> Callable[[], tuple[int, int]]:
    def count() -> tuple[int, int]:
        conn = sqlite3.connect(path)
        try:
            (rows,) = conn.execute(
                "SELECT count(*) FROM audit WHERE action = 'authenticate'"
            ).fetchone()
            marks = ",".join("?" * len(ids))
            (uses,) = conn.execute(
                f"SELECT coalesce(sum(use_count), 0) FROM tokens WHERE id IN ({marks})",  # noqa: S608
                ids,
            ).fetchone()
        finally:
            conn.close()
        return int(rows), int(uses)

    return count


def _postgres_counts(dsn: str, ids: list[str]) -> Callable[[], tuple[int, int]]:
    def count() -> tuple[int, int]:
        import psycopg

        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM apitokens_audit WHERE action = 'authenticate'"
            ).fetchone()
            uses = conn.execute(
                "SELECT coalesce(sum(use_count), 0) FROM apitokens_tokens WHERE id = ANY(%s)",
                (ids,),
            ).fetchone()
        assert row is not None and uses is not None
        return int(row[0]), int(uses[0])

    return count


def _no_server() -> float:
    return 0.0


def _owners(store: TokenStore, ids: list[str]) -> dict[str, str | None]:
    owners = {}
    for token_id in ids:
        stored = store.get(token_id)
        assert stored is not None
        owners[token_id] = stored.token.user
    return owners


@contextmanager
def single_token_targets(tmp: Path, server: Any) -> Iterator[list[Target]]:
    """A fresh store of each kind with one token."""
    with ExitStack() as stack:
        targets = []
        path = tmp / "audit.db"
        dsn = postgres_database(server, "audit_one")
        for kind, url in (("SQLite", str(path)), ("PostgreSQL", dsn)):
            store = stack.enter_context(open_store(url))
            tokens = stack.enter_context(ApiTokens(store))
            issued = tokens.create(actor="alice", name="audit bench")
            ids = [issued.token.id]
            sqlite = kind == "SQLite"
            counts = _sqlite_counts(path, ids) if sqlite else _postgres_counts(dsn, ids)
            cpu = _no_server if sqlite else functools.partial(postgres_cpu_seconds, server)
            targets.append(Target(kind, url, store, tokens, {ids[0]: "alice"}, counts, cpu))
        yield targets


@contextmanager
def spread_targets(tmp: Path, server: Any) -> Iterator[list[Target]]:
    """The 100k-token store of each kind; records go round its 1,000 known tokens."""
    bulk = bulk_store(100_000)
    fmt = TokenFormat("apt")
    ids = [parsed.id for secret in bulk.secrets if (parsed := fmt.parse(secret)) is not None]
    with ExitStack() as stack:
        sqlite = stack.enter_context(store_copy(bulk, tmp))
        path = tmp / f"run-{bulk.size}.db"
        dsn = postgres_bulk(server, bulk)
        postgres = stack.enter_context(open_store(dsn))
        targets = []
        server_cpu = functools.partial(postgres_cpu_seconds, server)
        for kind, url, store, counts, cpu in (
            ("SQLite", str(path), sqlite, _sqlite_counts(path, ids), _no_server),
            ("PostgreSQL", dsn, postgres, _postgres_counts(dsn, ids), server_cpu),
        ):
            tokens = stack.enter_context(ApiTokens(store))
            targets.append(Target(kind, url, store, tokens, _owners(store, ids), counts, cpu))
        yield targets


def measure(
    targets: list[Target], ways: list[tuple[str, int]], total: int, repeats: int
) -> dict[tuple[str, str], Run]:
    """Medians of ``repeats`` runs per (store, way); the stores' runs alternate."""
    runs: dict[tuple[str, str], list[Run]] = {}
    for run in range(repeats):
        for way, count in ways:
            for target in targets:
                tag = f"{way}-{count}-{run}"
                if way == "threads":
                    found = ingest(
                        target.tokens, target.owners, count, total, tag, target.server_cpu
                    )
                else:
                    found = ingest_processes(
                        target.url, target.owners, count, total, tag, target.server_cpu
                    )
                target.submitted += total // count * count
                runs.setdefault((target.kind, f"{way}-{count}"), []).append(found)
    return {
        key: Run(*(median([getattr(r, name) for r in found]) for name in Run._fields))
        for key, found in runs.items()
    }


def check(target: Target) -> tuple[int, int, int]:
    """Submitted, written and used counts of ``target`` after a flush."""
    target.tokens.flush()
    written, uses = target.count_written()
    return target.submitted, written, uses


def main() -> None:
    total = 50_000 if QUICK else 200_000
    repeats = 1 if QUICK else 3
    section = Section(
        "audit",
        "Audit ingestion",
        intro=(
            "Events per second through the buffered writer (`AuditWriter`, default "
            "settings) into a `SQLiteStore` file and into a `PostgresStore` "
            f"({versions('psycopg', 'psycopg-pool')}; a throwaway PostgreSQL server on "
            "this machine, Unix socket, `fsync` off), measured in the same run, the two "
            "stores' runs alternating. "
            f"{total:,} events per run, submitted one per call as request threads do "
            "(each is an audit event and a use of the token): from one process (1 and 8 "
            f"submitting threads) and from {PROCESSES} processes (started with `spawn`, "
            f"each with its own `ApiTokens` on the same store, {total // PROCESSES:,} "
            "events each). Timed from the start of submitting until the writer (the last "
            f"writer, with {PROCESSES} processes) has written the last event. Median of "
            f"{repeats} runs. Afterwards the events and the tokens' uses are counted in "
            "each store."
        ),
    )
    ways = [("threads", count) for count in THREADS] + [("processes", PROCESSES)]
    spread_ways = [("threads", 1), ("processes", PROCESSES)]
    with tempfile.TemporaryDirectory() as tmp_name, postgres_server() as server:
        tmp = Path(tmp_name)
        with single_token_targets(tmp, server) as targets:
            single = measure(targets, ways, total, repeats)
            single_checks = {target.kind: check(target) for target in targets}
        with spread_targets(tmp, server) as targets:
            spread = measure(targets, spread_ways, total, repeats)
            spread_checks = {target.kind: check(target) for target in targets}

    def label(way: str) -> str:
        kind, count = way.split("-")
        return (
            f"1 process, {count} thread{'s' if count != '1' else ''}"
            if kind == "threads"
            else (f"{count} processes, 1 thread each")
        )

    rows = []
    for tokens_used, results, chosen in (
        ("1", single, ways),
        (f"{KNOWN_TOKENS:,} (of 100,000 in the store)", spread, spread_ways),
    ):
        for way, count in chosen:
            key = f"{way}-{count}"
            sqlite, postgres = (results[(kind, key)] for kind in STORES)
            rows.append(
                [
                    tokens_used,
                    label(key),
                    f"{sqlite.rate:,.0f} events/s",
                    f"{postgres.rate:,.0f} events/s",
                    f"{sqlite.client_us:.1f} µs",
                    f"{postgres.client_us:.1f} + {postgres.server_us:.1f} µs",
                ]
            )
    section.table(
        [
            "tokens used",
            "submitting",
            "SQLite",
            "PostgreSQL",
            "SQLite: CPU per event",
            "PostgreSQL: CPU per event, client + server",
        ],
        rows,
    )
    section.notes.append(
        "*CPU per event*: the CPU time of the submitting processes (all their threads: "
        "submitting, the writer, and SQLite's work, which runs inside them) and of the "
        "PostgreSQL server's processes, per event written, over the timed run. On this "
        "shared machine the wall-clock rate moves with the neighbours' load; the CPU per "
        "event much less. 1,000,000 divided by the sum is what one core would ingest."
    )
    section.notes.append(
        f"Spread over {KNOWN_TOKENS:,} tokens, the audit indexes by token and by user take "
        "each row at its own place instead of at one end (and each flush folds the uses "
        f"of {KNOWN_TOKENS:,} tokens into their rows): see *Still open* and *Issue 15* in "
        "the findings."
    )
    section.notes.append(
        "With 8 submitting threads the submitters also contend for the writer's lock and "
        f"the GIL. With {PROCESSES} processes on this machine's "
        f"{multiprocessing.cpu_count()} cores, the submitting processes, their writers "
        "and (for PostgreSQL) the server share the cores; SQLite's writers also queue "
        "for the file's write lock, PostgreSQL's write side by side."
    )
    lost_notes = []
    for kind in STORES:
        submitted = single_checks[kind][0] + spread_checks[kind][0]
        written = single_checks[kind][1] + spread_checks[kind][1]
        uses = single_checks[kind][2] + spread_checks[kind][2]
        lost_notes.append(
            f"{kind}: submitted {submitted:,} events; the store holds {written:,}; the "
            f"tokens' use counts add up to {uses:,}. Lost: {submitted - written:,}."
        )
    section.notes.append(" ".join(lost_notes))
    for kind in STORES:
        for tokens_used, results, chosen, checks in (
            ("one token", single, ways, single_checks),
            (f"{KNOWN_TOKENS:,} tokens", spread, spread_ways, spread_checks),
        ):
            submitted, written, uses = checks[kind]
            found = {f"{way}-{count}": results[(kind, f"{way}-{count}")] for way, count in chosen}
            slowest = min(run.rate for run in found.values())
            section.verdict(
                f"{kind}, {tokens_used}: >= {TARGET_PER_SECOND:,} events/s from 1 and from "
                f"{PROCESSES} processes, zero lost",
                ", ".join(f"{run.rate:,.0f} ({label(key)})" for key, run in found.items())
                + f" events/s; {submitted - written:,} lost",
                slowest >= TARGET_PER_SECOND and written == submitted and uses == submitted,
            )
    section.save()


if __name__ == "__main__":
    main()
