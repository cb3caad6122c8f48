"""Audit ingestion: events per second through the buffered writer into SQLite.

1 and 8 threads submit authentication records one at a time, as request threads do
(each record is an audit event and a use of the token); the clock stops when the
writer has written the last one (``flush``). Then the audit table is counted: every
event submitted must be there, and the token's use count must have grown by as much.
A second measurement spreads the records over 1,000 tokens of the 100k-token store,
as a busy service's traffic would be: each batch then updates 1,000 token rows and
inserts at 1,000 places of the audit indexes.
"""

from __future__ import annotations

import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from apitokens import ApiTokens, SQLiteStore
from apitokens._model import Outcome
from apitokens._tokens import TokenFormat
from apitokens.storage import AuthEntry
from benchmarks.common import KNOWN_TOKENS, QUICK, Section, bulk_store, median, store_copy

TARGET_PER_SECOND = 50_000


def ingest(
    tokens: ApiTokens, owners: dict[str, str | None], threads: int, total: int, tag: str
) -> float:
    """Submit ``total`` records from ``threads`` threads; return events per second.

    The records go round the tokens of ``owners`` (token id -> user).
    """
    writer = tokens._writer
    each = total // threads
    now = datetime.now(UTC)
    records: list[tuple[AuthEntry]] = [
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
    start_line = threading.Barrier(threads + 1)

    def produce() -> None:
        start_line.wait()
        submit = writer.submit
        count = len(records)
        for index in range(each):
            submit(records[index % count])

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


def spread_rate(tmp: Path, total: int, repeats: int) -> float:
    """Events per second with the records spread over the bulk store's known tokens."""
    bulk = bulk_store(100_000)
    fmt = TokenFormat("apt")
    ids = [parsed.id for secret in bulk.secrets if (parsed := fmt.parse(secret)) is not None]
    with store_copy(bulk, tmp) as store, ApiTokens(store) as tokens:
        owners = {}
        for token_id in ids:
            stored = store.get(token_id)
            assert stored is not None
            owners[token_id] = stored.token.user
        rates = [ingest(tokens, owners, 1, total, f"spread-{run}") for run in range(repeats)]
        tokens.flush()
        written = store.events(action="authenticate", limit=100_000_000)
        assert len(written) == total * repeats, (len(written), total * repeats)
    return median(rates)


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
                    rates.append(ingest(tokens, {token_id: "alice"}, threads, total, tag))
                    submitted += total // threads * threads
                results[threads] = median(rates)
            tokens.flush()
            events = store.events(action="authenticate", limit=100_000_000)
            stored = len(events)
            token = tokens.get(token_id)
            uses = token.use_count if token is not None else -1
        for threads in (1, 8):
            rows.append(["1", str(threads), f"{results[threads]:,.0f} events/s"])
        spread = spread_rate(Path(tmp), total, repeats)
        rows.append([f"{KNOWN_TOKENS:,} (of 100,000 in the store)", "1", f"{spread:,.0f} events/s"])
    section.table(["tokens used", "submitting threads", "events per second (median)"], rows)
    section.notes.append(
        f"Spread over {KNOWN_TOKENS:,} tokens, every batch also folds the uses of up to "
        f"{KNOWN_TOKENS:,} tokens into their rows, and the audit indexes by token and by "
        "user take each row at its own place instead of at one end: see *Still open* in "
        "the findings. The target is judged on the single-token runs, as the issue states "
        "it (1 and 8 submitting threads)."
    )
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
