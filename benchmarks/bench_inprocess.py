"""In-process: a bare WSGI and ASGI app vs the same apps wrapped, no network.

SQLiteStore with 100k tokens, and a PostgresStore with the same tokens; the request
carries a Bearer token with 5 restriction rules (READ_WRITE, default argon2id hashing),
the same token in both. Reports the warm overhead per request on SQLite with the audit
journal (its default) and without it (``journal=False``) and on PostgreSQL, in the same
run, rounds interleaved; the cost of a record read on every request (``cache_ttl=0``)
on both stores; and the cost of the first request (cold: store read and an argon2id
verification).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from apitokens import ApiTokens, Policy, Scope, TokenStore
from apitokens.postgres import PostgresStore
from benchmarks.apps import ASGIDriver, WSGIDriver, bare_asgi, bare_wsgi
from benchmarks.common import (
    QUICK,
    Section,
    bulk_store,
    interleaved,
    median,
    per_call_us,
    postgres_bulk,
    postgres_server,
    store_copy,
    us,
    versions,
)
from benchmarks.measure import (
    Overhead,
    Sample,
    _asgi_batches,
    _per_request,
    _round,
    _rounds,
    _wsgi_batches,
    interleaved_wsgi_overheads,
)

FIVE_RULES = [
    "[GET].*/rest/api/2/search.*[QueryParam::jql==project ?= ?[A-Z]+.*]",
    "[GET,HEAD].*/rest/api/2/project/[A-Z]+",
    "[POST].*/rest/api/2/issue/[A-Z]+-[0-9]+/comment",
    "[GET].*/rest/agile/1.0/board/[0-9]+/sprint.*",
    "[GET].*/rest/api/2/issue/[A-Z]+-[0-9]+",
]
TARGET = "/rest/api/2/issue/JRA-123?fields=summary,status"
POLICY = Policy(protected_paths=["/rest/"])
BUDGET_US = 25.0
# "Equal" on this shared machine: what two runs of one case differ by.
SAME_US = 2.0
SAME_SHARE = 0.10


def cold_costs(store_path: Path, store: object, secret: str, samples: int) -> tuple[float, float]:
    """First request through a fresh ApiTokens (empty caches): WSGI, then ASGI."""
    wsgi_times, asgi_times = [], []
    authorization = f"Bearer {secret}"
    for _ in range(samples):
        with ApiTokens(store, policy=POLICY) as fresh:  # type: ignore[arg-type]
            driver = WSGIDriver("GET", TARGET, authorization)
            app = fresh.wsgi(bare_wsgi)
            start = time.perf_counter()
            driver.call(app)
            wsgi_times.append((time.perf_counter() - start) * 1e6)
            assert driver.statuses == {"200 OK": 1}, driver.statuses
        with ApiTokens(store, policy=POLICY) as fresh:  # type: ignore[arg-type]
            adriver = ASGIDriver("GET", TARGET, authorization)
            aapp = fresh.asgi(bare_asgi)
            start = time.perf_counter()
            adriver.run(aapp, 1)
            asgi_times.append((time.perf_counter() - start) * 1e6)
            adriver.close()
            assert adriver.statuses == {200: 1}, adriver.statuses
    return statistics.median(wsgi_times), statistics.median(asgi_times)


@dataclass(frozen=True)
class Case:
    """One ApiTokens' WSGI and ASGI overheads, and its request thread's CPU time."""

    wsgi: Overhead
    asgi: Overhead
    wsgi_thread: float  # µs per request: the request thread's CPU time, wrapped - bare
    asgi_thread: float


def _thread_timed(run: Callable[[], None], sink: list[float]) -> Callable[[], None]:
    """``run``, appending the CPU time it took on this thread (seconds) to ``sink``."""

    def timed() -> None:
        start = time.thread_time()
        run()
        sink.append(time.thread_time() - start)

    return timed


def journal_overheads(
    cases: list[ApiTokens],
    wsgi_driver: WSGIDriver,
    asgi_driver: ASGIDriver,
    *,
    rounds: int,
    batch: int,
    warmup: int = 2,
) -> list[Case]:
    """WSGI and ASGI overheads of several ApiTokens, round ``k`` of each before ``k + 1``.

    A noisy minute of the shared machine then lands on every case alike. Besides the
    wall clock and the process's CPU time, the request thread's own CPU time: what the
    middleware's code costs, leaving out the other threads (the audit writer, a store's
    threads) and the time spent waiting for the GIL.
    """
    threads: list[tuple[list[float], ...]] = [([], [], [], []) for _ in cases]
    runs = [
        (
            tokens,
            _thread_timed(_wsgi_batches(wsgi_driver, bare_wsgi, batch), sinks[0]),
            _thread_timed(_wsgi_batches(wsgi_driver, tokens.wsgi(bare_wsgi), batch), sinks[1]),
            _thread_timed(_asgi_batches(asgi_driver, bare_asgi, batch), sinks[2]),
            _thread_timed(_asgi_batches(asgi_driver, tokens.asgi(bare_asgi), batch), sinks[3]),
        )
        for tokens, sinks in zip(cases, threads, strict=True)
    ]
    samples: list[tuple[list[Sample], list[Sample]]] = [([], []) for _ in cases]
    for index in range(warmup + rounds):
        for slot, (tokens, wsgi_bare, wsgi_wrapped, asgi_bare, asgi_wrapped) in enumerate(runs):
            wsgi = _round(tokens, wsgi_bare, wsgi_wrapped)
            asgi = _round(tokens, asgi_bare, asgi_wrapped)
            if index >= warmup:
                samples[slot][0].append(_per_request(wsgi, batch))
                samples[slot][1].append(_per_request(asgi, batch))

    def thread_overhead(bare: list[float], wrapped: list[float]) -> float:
        pairs = list(zip(bare, wrapped, strict=True))[warmup:]
        return median([(w - b) / batch * 1e6 for b, w in pairs])

    return [
        Case(
            _rounds(wsgi),
            _rounds(asgi),
            thread_overhead(sinks[0], sinks[1]),
            thread_overhead(sinks[2], sinks[3]),
        )
        for (wsgi, asgi), sinks in zip(samples, threads, strict=True)
    ]


def cold_reads(
    cases: list[tuple[ApiTokens, WSGIDriver]], *, rounds: int, batch: int
) -> list[Overhead]:
    """WSGI overheads with ``cache_ttl=0`` (a store read on every request), interleaved."""
    return [
        overhead for overhead, _ in interleaved_wsgi_overheads(cases, rounds=rounds, batch=batch)
    ]


def store_reads(
    stores: dict[str, TokenStore], token_id: str, rounds: int, count: int
) -> dict[str, float]:
    """Microseconds per ``store.get`` of one token, the stores in turn; medians."""

    def reads(store: TokenStore) -> Callable[[], float]:
        return lambda: per_call_us(lambda: store.get(token_id), count)

    return interleaved({name: reads(store) for name, store in stores.items()}, rounds)


def main() -> None:
    rounds, batch = (5, 500) if QUICK else (15, 2000)
    cold_batch = 200 if QUICK else 500
    section = Section(
        "inprocess",
        "In-process overhead: bare vs wrapped",
        intro=(
            "A bare WSGI app and a bare ASGI app, called in-process the way a server "
            "calls them, vs the same apps wrapped by `tokens.wsgi` / `tokens.asgi`. "
            "`SQLiteStore` holding 100,000 tokens, and a `PostgresStore` holding the same "
            "tokens (a throwaway PostgreSQL server on this machine, Unix socket, `fsync` "
            f"off; {versions('psycopg', 'psycopg-pool')}); the request is "
            f"`GET {TARGET}` with a Bearer token that has 5 restriction rules "
            "(the last one matches) and default argon2id hashing, the same token in "
            "both stores. "
            f"{rounds} rounds of {batch} requests each, bare and wrapped interleaved, WSGI "
            "and ASGI rounds alternating, and the three cases' rounds alternating: SQLite "
            "without the audit journal (`journal=False`), SQLite with it (the default for a "
            "`SQLiteStore`: one `write(2)` of each request's audit record before the "
            "answer), PostgreSQL (no journal: its default); medians."
        ),
    )
    bulk = bulk_store(100_000)
    with (
        tempfile.TemporaryDirectory() as tmp,
        store_copy(bulk, Path(tmp)) as store,
        postgres_server() as server,
        PostgresStore(postgres_bulk(server, bulk)) as pg_store,
    ):
        with (
            ApiTokens(store, policy=POLICY, journal=False) as plain,
            ApiTokens(store, policy=POLICY) as tokens,
            ApiTokens(pg_store, policy=POLICY) as pg,
        ):
            assert plain._writer.journal is None and tokens._writer.journal is not None
            assert pg._writer.journal is None
            issued = tokens.create(
                actor="alice",
                name="bench",
                scope=Scope.READ_WRITE,
                restrictions=FIVE_RULES,
            )
            token_id = issued.token.id
            stored = store.get(token_id)
            assert stored is not None
            pg_store.add(stored)  # the very same token, hash and rules
            authorization = f"Bearer {issued.secret}"
            wsgi_driver = WSGIDriver("GET", TARGET, authorization)
            asgi_driver = ASGIDriver("GET", TARGET, authorization)
            plain_case, journal_case, pg_case = journal_overheads(
                [plain, tokens, pg], wsgi_driver, asgi_driver, rounds=rounds, batch=batch
            )
            asgi_driver.close()
            for each in (plain, tokens, pg):
                each.flush()
            refused = [
                (event.outcome.value, event.reason)
                for each in (tokens, pg)
                for event in each.audit(token_id=token_id, outcome="forbidden", limit=100)
            ]
            assert set(wsgi_driver.statuses) == {"200 OK"}, (wsgi_driver.statuses, refused)
            assert set(asgi_driver.statuses) == {200}, (asgi_driver.statuses, refused)
            audited = len(tokens.audit(token_id=token_id, action="authenticate", limit=10**8))
            audited_pg = len(pg.audit(token_id=token_id, action="authenticate", limit=10**8))
        with (
            ApiTokens(store, policy=POLICY, journal=False, cache_ttl=0) as sqlite_cold,
            ApiTokens(pg_store, policy=POLICY, cache_ttl=0) as pg_cold,
        ):
            driver = WSGIDriver("GET", TARGET, authorization)
            read_sqlite, read_pg = cold_reads(
                [(sqlite_cold, driver), (pg_cold, driver)], rounds=rounds, batch=cold_batch
            )
            assert set(driver.statuses) == {"200 OK"}, driver.statuses
        gets = store_reads({"SQLite": store, "PostgreSQL": pg_store}, token_id, rounds, cold_batch)
        samples = 3 if QUICK else 5
        cold_wsgi, cold_asgi = cold_costs(Path(tmp), store, issued.secret, samples)
        cold_wsgi_pg, cold_asgi_pg = cold_costs(Path(tmp), pg_store, issued.secret, samples)
    expected = 2 * (rounds + 2) * batch  # WSGI and ASGI, one case, warm-up included
    wsgi_plain, asgi_plain = plain_case.wsgi, plain_case.asgi
    wsgi, asgi = journal_case.wsgi, journal_case.asgi
    cases = (wsgi_plain, asgi_plain, wsgi, asgi, pg_case.wsgi, pg_case.asgi)
    threads = [
        value
        for case in (plain_case, journal_case, pg_case)
        for value in (case.wsgi_thread, case.asgi_thread)
    ]
    section.table(
        [
            "",
            "SQLite, WSGI",
            "SQLite, ASGI",
            "SQLite + journal, WSGI",
            "SQLite + journal, ASGI",
            "PostgreSQL, WSGI",
            "PostgreSQL, ASGI",
        ],
        [
            ["bare app, per request", *(us(c.bare) for c in cases)],
            ["wrapped, per request (request thread)", *(us(c.wrapped) for c in cases)],
            ["audit writing afterwards, per request", *(us(c.audit) for c in cases)],
            ["**warm overhead, request thread**", *(us(c.request) for c in cases)],
            ["**warm overhead, audit write included**", *(us(c.total) for c in cases)],
            ["**warm overhead, CPU time of all threads**", *(us(c.cpu) for c in cases)],
            ["warm overhead, CPU time of the request thread", *(us(value) for value in threads)],
            [
                "record read every request (`cache_ttl=0`), request thread",
                us(read_sqlite.request),
                "",
                "",
                "",
                us(read_pg.request),
                "",
            ],
            [
                "`store.get` of the token alone",
                us(gets["SQLite"]),
                "",
                "",
                "",
                us(gets["PostgreSQL"]),
                "",
            ],
            [
                "cold first request (store read + argon2id)",
                "",
                "",
                us(cold_wsgi),
                us(cold_asgi),
                us(cold_wsgi_pg),
                us(cold_asgi_pg),
            ],
        ],
    )
    section.notes.append(
        '*journal*: the default for a `SQLiteStore` (docs/storage.md, "The audit journal"): '
        "each request's audit record is appended to this process's journal file before "
        f"the answer. What it costs, CPU time of all threads: {us(wsgi.cpu - wsgi_plain.cpu)} "
        f"(WSGI) and {us(asgi.cpu - asgi_plain.cpu)} (ASGI) per request; on the request "
        f"thread: {us(wsgi.request - wsgi_plain.request)} and "
        f"{us(asgi.request - asgi_plain.request)}."
    )
    section.notes.append(
        "*Request thread*: wrapped minus bare, as the thread serving the request sees it "
        "(the audit writer runs alongside, as in production). *Audit write included*: "
        "plus the time the writer needed after each batch to finish writing that batch's "
        "audit events and usage into the store, i.e. everything a request costs. *CPU time "
        "of all threads*: the process's CPU time for the wrapped batch and its audit "
        "write, minus the bare batch's, per request. It counts the same work as the row "
        "above but not the time the process waited while other tenants of this shared "
        "machine ran (their effect on shared caches it does count); the budget is judged "
        "on it. For PostgreSQL it leaves out the server's own work on the audit rows "
        "(another process, possibly another host): see the audit ingestion section."
    )
    section.notes.append(
        "*Record read every request*: the same WSGI request with `cache_ttl=0`, so every "
        "request reads the token's record from the store (a cache miss, as after the "
        "one-second TTL or a change notice); the two stores' rounds alternate "
        f"({rounds} rounds of {cold_batch}). The hash is not verified again: the "
        "verification cache still knows the secret (the first request after a restart "
        "also pays argon2id: the last row). *`store.get` alone*: the read itself, "
        "through the store's API, outside any request."
    )
    section.notes.append(
        f"Authentications audited for the benchmark token, of {expected:,} wrapped "
        f"requests per store case: {audited - expected:,} + {expected:,} in SQLite (journal "
        f"off and on, {2 * expected - audited:,} lost), {audited_pg:,} in PostgreSQL "
        f"({expected - audited_pg:,} lost)."
    )
    for name, result in (("WSGI", wsgi), ("ASGI", asgi)):
        section.verdict(
            f"{name} warm overhead <= {BUDGET_US:.0f} µs (5 rules, 100k-token SQLite store,"
            " audit journal on)",
            f"{us(result.cpu)} CPU time of all threads, audit write included "
            f"(wall clock: {us(result.request)} on the request thread, "
            f"{us(result.total)} with the audit write)",
            result.cpu <= BUDGET_US,
        )
    for name, sqlite_thread, pg_thread, sqlite_wall, pg_wall in (
        ("WSGI", plain_case.wsgi_thread, pg_case.wsgi_thread, wsgi_plain, pg_case.wsgi),
        ("ASGI", plain_case.asgi_thread, pg_case.asgi_thread, asgi_plain, pg_case.asgi),
    ):
        difference = pg_thread - sqlite_thread
        section.verdict(
            f"{name} warm overhead (cache hit) on PostgreSQL equals SQLite's (request "
            f"thread's CPU time, journal off on both; within {SAME_US:.0f} µs or "
            f"{SAME_SHARE:.0%})",
            f"{us(pg_thread)} vs {us(sqlite_thread)} ({difference:+.1f} µs); wall clock on "
            f"the request thread {us(pg_wall.request)} vs {us(sqlite_wall.request)}",
            abs(difference) <= max(SAME_US, SAME_SHARE * sqlite_thread),
        )
    section.save()


if __name__ == "__main__":
    main()
