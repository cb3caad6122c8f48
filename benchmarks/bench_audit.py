"""Audit ingestion: events per second through the buffered writer into SQLite.

1 and 8 threads submit authentication records one at a time, as request threads do
(each record is an audit event and a use of the token); the clock stops when the
writer has written the last one (``flush``). Then the audit table is counted: every
event submitted must be there, and the token's use count must have grown by as much.
"""

from __future__ import annotations

import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from apitokens import ApiTokens, SQLiteStore
from apitokens._audit import AuthEntry
from apitokens._model import Outcome
from benchmarks.common import QUICK, Section, median

TARGET_PER_SECOND = 50_000


def ingest(tokens: ApiTokens, token_id: str, threads: int, total: int, tag: str) -> float:
    """Submit ``total`` records from ``threads`` threads; return events per second."""
    writer = tokens.writer
    each = total // threads
    now = datetime.now(UTC)
    record: AuthEntry = (
        now,
        Outcome.SUCCESS,
        token_id,
        "alice",
        "192.0.2.1",
        "GET",
        "/rest/api/2/issue/JRA-123",
        tag,
        True,
    )
    batch = (record,)
    start_line = threading.Barrier(threads + 1)

    def produce() -> None:
        start_line.wait()
        submit = writer.submit
        for _ in range(each):
            submit(batch)

    workers = [threading.Thread(target=produce) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start_line.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    tokens.flush()
    elapsed = time.perf_counter() - started
    return each * threads / elapsed


def main() -> None:
    total = 50_000 if QUICK else 200_000
    repeats = 1 if QUICK else 3
    section = Section(
        "audit",
        "Audit ingestion",
        intro=(
            "Events per second through the buffered writer (`AuditWriter`, default "
            "settings) into a `SQLiteStore` file, from 1 and from 8 submitting threads. "
            f"{total:,} events per run, submitted one per call as request threads do "
            "(each is an audit event and a use of the token); timed until the writer "
            f"has written the last one. Median of {repeats} runs. Afterwards the events "
            "are counted in the store."
        ),
    )
    rows = []
    results: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.db"
        with SQLiteStore(path) as store, ApiTokens(store) as tokens:
            issued = tokens.create(actor="alice", name="audit bench")
            token_id = issued.token.id
            submitted = 0
            for threads in (1, 8):
                rates = []
                for run in range(repeats):
                    tag = f"bench-{threads}-{run}"
                    rates.append(ingest(tokens, token_id, threads, total, tag))
                    submitted += total // threads * threads
                results[threads] = median(rates)
            tokens.flush()
            events = store.events(action="authenticate", limit=100_000_000)
            stored = len(events)
            token = tokens.get(token_id)
            uses = token.use_count if token is not None else -1
        for threads in (1, 8):
            rows.append([str(threads), f"{results[threads]:,.0f} events/s"])
    section.table(["submitting threads", "events per second (median)"], rows)
    section.notes.append(
        "With 8 submitting threads the submitters also contend for the writer's lock and "
        "the GIL; the writer's own cost per event (mostly `SQLiteStore.write`, see the "
        "findings) bounds both."
    )
    lost = submitted - stored
    section.notes.append(
        f"Submitted {submitted:,} events; the store holds {stored:,}; the token's use count "
        f"is {uses:,}. Lost: {lost:,}."
    )
    slowest = min(results.values())
    section.verdict(
        f">= {TARGET_PER_SECOND:,} events/s batched, zero lost",
        f"{slowest:,.0f} events/s (slowest of 1 and 8 threads), {lost} lost",
        slowest >= TARGET_PER_SECOND and lost == 0 and uses == submitted,
    )
    section.save()


if __name__ == "__main__":
    main()
