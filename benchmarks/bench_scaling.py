"""Scaling: the overhead with 1k, 100k and 1M tokens; 1, 10 and 100 rules; JSON bodies.

Token counts: requests cycle through 1,000 tokens spread over the store (keyed SHA-256
hashes, so only the lookup differs between sizes), in SQLite and in PostgreSQL (the same
tokens, loaded by COPY into a throwaway server). Measured twice: warm (default
``cache_ttl``, records cached for a second) and with ``cache_ttl=0``, where every
request reads its record from the store: that is the lookup whose cost must stay flat.

Rules: one token with 1, 10 or 100 rules, the request matching the last one. Rules
without clauses are joined into one regex per method; a second series gives every
rule a QueryParam clause, so each is matched on its own (the worst case).

JSON bodies: a rule with a JsonData clause, POST bodies of 1 KB, 100 KB and 1 MB.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import tempfile
import time
from pathlib import Path

from apitokens import ApiTokens, HmacSha256Hasher, Policy, Scope, TokenStore
from apitokens._tokens import TokenFormat
from apitokens.postgres import PostgresStore
from benchmarks.apps import WSGIDriver
from benchmarks.common import (
    BENCH_KEY,
    QUICK,
    Section,
    bulk_store,
    median,
    postgres_bulk,
    postgres_cpu_seconds,
    postgres_server,
    ratio,
    store_copy,
    us,
)
from benchmarks.measure import Overhead, interleaved_wsgi_overheads, wsgi_overhead

POLICY = Policy(protected_paths=["/rest/"])
SIZES = (1_000, 100_000, 1_000_000)
RULE_COUNTS = (1, 10, 100)
BODY_SIZES = ((1_000, "1 KB"), (100_000, "100 KB"), (1_000_000, "1 MB"))
STORES = ("SQLite", "PostgreSQL")


def token_counts(section: Section, rounds: int, batch: int) -> None:
    # The store-read ratio is taken round by round, each pair measured in the same minute
    # of this shared machine (measured one store after another, it moved from 0.65x to
    # 1.66x between runs).
    labels = (("warm", 1.0), ("store read", 0.0))
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(postgres_server())
        cases: list[tuple[ApiTokens, WSGIDriver]] = []
        keys: list[tuple[str, int, str]] = []
        pg_stores: dict[int, tuple[TokenStore, list[str]]] = {}
        for size in SIZES:
            bulk = bulk_store(size)
            authorizations = [f"Bearer {secret}" for secret in bulk.secrets]
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            pg_store = stack.enter_context(PostgresStore(postgres_bulk(server, bulk)))
            stores: list[tuple[str, TokenStore]] = [
                ("SQLite", stack.enter_context(store_copy(bulk, tmp))),
                ("PostgreSQL", pg_store),
            ]
            fmt = TokenFormat()
            ids = [parsed.id for secret in bulk.secrets if (parsed := fmt.parse(secret))]
            pg_stores[size] = (pg_store, ids)
            for kind, store in stores:
                for label, ttl in labels:
                    tokens = stack.enter_context(
                        ApiTokens(
                            store,
                            policy=POLICY,
                            hasher=HmacSha256Hasher(BENCH_KEY),
                            cache_ttl=ttl,
                        )
                    )
                    cases.append((tokens, WSGIDriver("GET", "/rest/api/2/myself", authorizations)))
                    keys.append((kind, size, label))
        results: dict[tuple[str, int, str], Overhead] = {}
        per_round: dict[tuple[str, int, str], list[float]] = {}
        # Warm: one store after the other. A round with its audit flush takes about half
        # a second, so several stores in turn would let the records' one-second cache
        # expire between a store's own rounds, and "warm" would read every other round.
        for index, key in enumerate(keys):
            if key[2] == "warm":
                tokens, driver = cases[index]
                results[key] = wsgi_overhead(tokens, driver, rounds=rounds, batch=batch)
        # A store read on every request: all stores in turn, round by round.
        chosen = [index for index, key in enumerate(keys) if key[2] == "store read"]
        measured = interleaved_wsgi_overheads(
            [cases[index] for index in chosen], rounds=rounds, batch=batch
        )
        for index, (overhead, found) in zip(chosen, measured, strict=True):
            results[keys[index]] = overhead
            per_round[keys[index]] = found
        for _, driver in cases:
            assert set(driver.statuses) == {"200 OK"}, driver.statuses
        reads = postgres_reads(server, pg_stores, rounds, 2 * batch)
    rows = [
        [
            kind,
            f"{size:,}",
            us(results[(kind, size, "warm")].request),
            us(results[(kind, size, "warm")].total),
            us(results[(kind, size, "store read")].request),
            us(results[(kind, size, "store read")].total),
        ]
        for kind in STORES
        for size in SIZES
    ]
    section.table(
        [
            "store",
            "tokens in store",
            "warm, request thread",
            "warm, audit included",
            "record read every request (cache_ttl=0), request thread",
            "same, audit included",
        ],
        rows,
    )
    section.table(
        [
            "PostgreSQL, tokens in store",
            "`store.get`, wall clock",
            "this thread's CPU time",
            "the server's CPU time",
        ],
        [[f"{size:,}", *(us(value) for value in reads[size])] for size in SIZES],
    )
    section.notes.append(
        "*`store.get`*: a `PostgresStore` read of each of the 1,000 tokens in turn, outside "
        f"any request, the three stores in turn, {rounds} rounds of {2 * batch:,}; medians. "
        "The server's CPU time is its processes' (`/proc/PID/schedstat`), per read: the "
        "lookup itself, what grows if anything does with the store; the rest of the wall "
        "clock is the client (psycopg, the pool, the row made a record) and the round "
        "trip between two processes."
    )
    small, large = SIZES[0], SIZES[-1]
    server_ratio = reads[large][2] / reads[small][2]
    for kind in STORES:
        pairs = zip(
            per_round[(kind, large, "store read")],
            per_round[(kind, small, "store read")],
            strict=True,
        )
        lookup = median([big / little for big, little in pairs])
        warm = results[(kind, large, "warm")].request / results[(kind, small, "warm")].request
        server_cpu = (
            f"; the server's CPU per read {ratio(server_ratio)}" if kind != "SQLite" else ""
        )
        section.verdict(
            f"{kind}: lookup cost flat: 1M tokens within 1.3x of 1k",
            f"{ratio(lookup)} with a store read on every request, {ratio(warm)} warm{server_cpu}",
            lookup <= 1.3 and warm <= 1.3,
        )


def postgres_reads(
    server: object, stores: dict[int, tuple[TokenStore, list[str]]], rounds: int, count: int
) -> dict[int, tuple[float, float, float]]:
    """Per store: µs of wall clock, of this thread's CPU and of the server's CPU per read.

    ``count`` reads per round, going round the store's known tokens; the stores in turn,
    round by round, in a rotating order; medians.
    """
    samples: dict[int, list[tuple[float, float, float]]] = {size: [] for size in stores}
    sizes = list(stores)
    for index in range(rounds):
        # Each store first, middle and last in turn: no store always follows another.
        turn = index % len(sizes)
        for size in sizes[turn:] + sizes[:turn]:
            store, ids = stores[size]
            chosen = itertools.islice(itertools.cycle(ids), count)
            server_start = postgres_cpu_seconds(server)
            cpu, start = time.thread_time(), time.perf_counter()
            for token_id in chosen:
                store.get(token_id)
            wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
            used = postgres_cpu_seconds(server) - server_start
            samples[size].append((wall / count * 1e6, cpu / count * 1e6, used / count * 1e6))
    return {
        size: (
            median([s[0] for s in found]),
            median([s[1] for s in found]),
            median([s[2] for s in found]),
        )
        for size, found in samples.items()
    }


def rule_counts(section: Section, rounds: int, batch: int) -> None:
    bulk = bulk_store(100_000)
    rows = []
    results: dict[tuple[int, str], Overhead] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        store_copy(bulk, Path(tmp)) as store,
        ApiTokens(store, policy=POLICY, hasher=HmacSha256Hasher(BENCH_KEY)) as tokens,
    ):
        for count in RULE_COUNTS:
            for kind in ("joined", "one by one"):
                clause = "[QueryParam::fields==.*]" if kind == "one by one" else ""
                rules = [f"[GET].*/rest/api/2/project{i}/.*{clause}" for i in range(count - 1)]
                rules.append(f"[GET].*/rest/api/2/issue/[A-Z]+-[0-9]+{clause}")
                issued = tokens.create(actor="alice", name=f"{count} rules", restrictions=rules)
                driver = WSGIDriver(
                    "GET", "/rest/api/2/issue/JRA-123?fields=summary", f"Bearer {issued.secret}"
                )
                result = wsgi_overhead(tokens, driver, rounds=rounds, batch=batch)
                assert set(driver.statuses) == {"200 OK"}, driver.statuses
                results[(count, kind)] = result
    for count in RULE_COUNTS:
        joined, alone = results[(count, "joined")], results[(count, "one by one")]
        rows.append(
            [
                str(count),
                us(joined.request),
                us(joined.total),
                us(alone.request),
                us(alone.total),
            ]
        )
    section.table(
        [
            "rules on the token",
            "no clauses (joined), request thread",
            "audit included",
            "each with a QueryParam clause, request thread",
            "audit included",
        ],
        rows,
    )
    first, last = RULE_COUNTS[0], RULE_COUNTS[-1]
    joined_ratio = results[(last, "joined")].total / results[(first, "joined")].total
    alone_ratio = results[(last, "one by one")].total / results[(first, "one by one")].total
    section.verdict(
        f"{last} rules <= 3x the cost of {first} rule",
        f"{ratio(joined_ratio)} for rules without clauses; {ratio(alone_ratio)} when every "
        "rule has a clause (matched one by one)",
        joined_ratio <= 3.0,
    )


def json_bodies(section: Section, rounds: int) -> None:
    bulk = bulk_store(100_000)
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        store_copy(bulk, Path(tmp)) as store,
        ApiTokens(store, policy=POLICY, hasher=HmacSha256Hasher(BENCH_KEY)) as tokens,
    ):
        issued = tokens.create(
            actor="alice",
            name="json",
            scope=Scope.READ_WRITE,
            restrictions=["[POST].*/rest/api/2/filter[JsonData::editable==false]"],
        )
        for size, label in BODY_SIZES:
            head = b'{"editable": false, "name": "bench", "filler": "'
            body = head + b"x" * (size - len(head) - 2) + b'"}'
            assert len(body) == size and json.loads(body)["editable"] is False
            driver = WSGIDriver("POST", "/rest/api/2/filter", f"Bearer {issued.secret}", body)
            batch = max(5, 200_000 // size)
            result = wsgi_overhead(tokens, driver, rounds=rounds, batch=batch)
            assert set(driver.statuses) == {"200 OK"}, driver.statuses
            rows.append([label, us(result.bare), us(result.request), us(result.total)])
    section.table(
        ["JSON body", "bare app (reads the body)", "overhead, request thread", "audit included"],
        rows,
    )
    section.notes.append(
        "A JSON rule makes the middleware read the body, parse it (duplicate keys "
        "refused, numbers kept as written) and replay it to the app: the cost grows with "
        "the body, mostly `json.loads`."
    )


def main() -> None:
    rounds, batch = (4, 300) if QUICK else (11, 1000)
    section = Section(
        "scaling",
        "Scaling",
        intro=(
            "WSGI overhead (wrapped minus bare, see the in-process section for the two "
            "columns) as the store, the rules and the body grow. "
            f"{rounds} interleaved rounds of {batch} requests each; medians. Requests cycle "
            "through 1,000 tokens spread over the store; with the default `cache_ttl` "
            "their records are cached, with `cache_ttl=0` every request reads the store. "
            "The token counts are measured on a `SQLiteStore` and on a `PostgresStore` "
            "holding the same tokens (a throwaway PostgreSQL server on this machine, Unix "
            "socket, `fsync` off; loaded by COPY, then vacuumed and analysed). With "
            "`cache_ttl=0` the six stores are measured round by round in turn and each "
            "1M-vs-1k ratio is the median of per-round ratios (warm, one store after the "
            "other: in turn, the one-second record cache would expire between rounds). "
            "The rules and bodies are measured on SQLite only (the store plays no part)."
        ),
    )
    token_counts(section, rounds, batch)
    rule_counts(section, rounds, batch)
    json_bodies(section, rounds)
    section.save()


if __name__ == "__main__":
    main()
