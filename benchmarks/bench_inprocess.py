"""In-process: a bare WSGI and ASGI app vs the same apps wrapped, no network.

SQLiteStore with 100k tokens; the request carries a Bearer token with 5 restriction
rules (READ_WRITE, default argon2id hashing). Reports the warm overhead per request,
with the audit journal (the default for a SQLiteStore) and without it (``journal=False``)
in the same run, rounds interleaved, and the cost of the first request (cold: store read
and an argon2id verification).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from apitokens import ApiTokens, Policy, Scope
from benchmarks.apps import ASGIDriver, WSGIDriver, bare_asgi, bare_wsgi
from benchmarks.common import QUICK, Section, bulk_store, store_copy, us
from benchmarks.measure import (
    Overhead,
    Sample,
    _asgi_batches,
    _per_request,
    _round,
    _rounds,
    _wsgi_batches,
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


def journal_overheads(
    cases: list[ApiTokens],
    wsgi_driver: WSGIDriver,
    asgi_driver: ASGIDriver,
    *,
    rounds: int,
    batch: int,
    warmup: int = 2,
) -> list[tuple[Overhead, Overhead]]:
    """WSGI and ASGI overheads of several ApiTokens, round ``k`` of each before ``k + 1``.

    A noisy minute of the shared machine then lands on every case alike.
    """
    runs = [
        (
            tokens,
            _wsgi_batches(wsgi_driver, bare_wsgi, batch),
            _wsgi_batches(wsgi_driver, tokens.wsgi(bare_wsgi), batch),
            _asgi_batches(asgi_driver, bare_asgi, batch),
            _asgi_batches(asgi_driver, tokens.asgi(bare_asgi), batch),
        )
        for tokens in cases
    ]
    samples: list[tuple[list[Sample], list[Sample]]] = [([], []) for _ in cases]
    for index in range(warmup + rounds):
        for slot, (tokens, wsgi_bare, wsgi_wrapped, asgi_bare, asgi_wrapped) in enumerate(runs):
            wsgi = _round(tokens, wsgi_bare, wsgi_wrapped)
            asgi = _round(tokens, asgi_bare, asgi_wrapped)
            if index >= warmup:
                samples[slot][0].append(_per_request(wsgi, batch))
                samples[slot][1].append(_per_request(asgi, batch))
    return [(_rounds(wsgi), _rounds(asgi)) for wsgi, asgi in samples]


def main() -> None:
    rounds, batch = (5, 500) if QUICK else (15, 2000)
    section = Section(
        "inprocess",
        "In-process overhead: bare vs wrapped",
        intro=(
            "A bare WSGI app and a bare ASGI app, called in-process the way a server "
            "calls them, vs the same apps wrapped by `tokens.wsgi` / `tokens.asgi`. "
            "`SQLiteStore` holding 100,000 tokens; the request is "
            f"`GET {TARGET}` with a Bearer token that has 5 restriction rules "
            "(the last one matches) and default argon2id hashing. "
            f"{rounds} rounds of {batch} requests each, bare and wrapped interleaved, WSGI "
            "and ASGI rounds alternating, and the rounds without the audit journal "
            "(`journal=False`) alternating with the rounds with it (the default for a "
            "`SQLiteStore`: one `write(2)` of each request's audit record before the "
            "answer); medians."
        ),
    )
    bulk = bulk_store(100_000)
    with tempfile.TemporaryDirectory() as tmp, store_copy(bulk, Path(tmp)) as store:
        with (
            ApiTokens(store, policy=POLICY, journal=False) as plain,
            ApiTokens(store, policy=POLICY) as tokens,
        ):
            assert plain._writer.journal is None and tokens._writer.journal is not None
            issued = tokens.create(
                actor="alice",
                name="bench",
                scope=Scope.READ_WRITE,
                restrictions=FIVE_RULES,
            )
            authorization = f"Bearer {issued.secret}"
            wsgi_driver = WSGIDriver("GET", TARGET, authorization)
            asgi_driver = ASGIDriver("GET", TARGET, authorization)
            (wsgi_plain, asgi_plain), (wsgi, asgi) = journal_overheads(
                [plain, tokens], wsgi_driver, asgi_driver, rounds=rounds, batch=batch
            )
            asgi_driver.close()
            assert set(wsgi_driver.statuses) == {"200 OK"}, wsgi_driver.statuses
            assert set(asgi_driver.statuses) == {200}, asgi_driver.statuses
            plain.flush()
            tokens.flush()
            audited = len(
                tokens.audit(token_id=issued.token.id, action="authenticate", limit=10_000_000)
            )
        cold_wsgi, cold_asgi = cold_costs(Path(tmp), store, issued.secret, 3 if QUICK else 5)
    expected = 2 * 2 * (rounds + 2) * batch  # WSGI and ASGI, both cases, warm-up included
    cases = (wsgi_plain, asgi_plain, wsgi, asgi)
    section.table(
        ["", "WSGI", "ASGI", "WSGI, journal", "ASGI, journal"],
        [
            ["bare app, per request", *(us(c.bare) for c in cases)],
            ["wrapped, per request (request thread)", *(us(c.wrapped) for c in cases)],
            ["audit writing afterwards, per request", *(us(c.audit) for c in cases)],
            ["**warm overhead, request thread**", *(us(c.request) for c in cases)],
            ["**warm overhead, audit write included**", *(us(c.total) for c in cases)],
            ["**warm overhead, CPU time of all threads**", *(us(c.cpu) for c in cases)],
            ["cold first request (store read + argon2id)", "", "", us(cold_wsgi), us(cold_asgi)],
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
        "audit events and usage into SQLite, i.e. everything a request costs. *CPU time "
        "of all threads*: the process's CPU time for the wrapped batch and its audit "
        "write, minus the bare batch's, per request. It counts the same work as the row "
        "above but not the time the process waited while other tenants of this shared "
        "machine ran (their effect on shared caches it does count); the budget is judged "
        "on it."
    )
    section.notes.append(
        f"Authentications audited for the benchmark token: {audited:,} of {expected:,} "
        f"wrapped requests ({expected - audited:,} lost)."
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
    section.save()


if __name__ == "__main__":
    main()
