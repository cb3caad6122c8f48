"""Per-token rate limits and credits: what they add to a good token's warm overhead.

One ``ApiTokens`` on the 100k-token SQLiteStore (its ``UsageLedger`` counts for every
process), five tokens of the same shape as the in-process benchmark's (READ_WRITE, the
same 5 restriction rules, argon2id), differing only in their limits: none; a rate limit;
credits; a rate limit, credits and a refill; none (a second token: the noise floor).
Every limit is far above what the run sends, so every request must be admitted
(checked: every status is 200, and the store's counts equal the requests sent). Bare
vs wrapped, WSGI and ASGI, the five cases' rounds interleaved (their order turning from
one round to the next); each case's overhead minus the unlimited one's is taken round
by round, each pair from the same moment of the run.
"""

from __future__ import annotations

import cProfile
import gc
import io
import pstats
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from apitokens import ApiTokens, Scope, Token
from apitokens._limits import Limits
from benchmarks.apps import ASGIDriver, WSGIDriver, bare_asgi, bare_wsgi
from benchmarks.bench_inprocess import FIVE_RULES, POLICY, TARGET
from benchmarks.common import QUICK, Section, bulk_store, median, store_copy, us
from benchmarks.measure import Sample, _asgi_batches, _per_request, _round, _wsgi_batches

# Far above what a run sends: the limits are counted on every request, never reached.
RATE = "1000000000/day"
CREDITS = 1_000_000_000
REFILL = "1000000000/day"
CASES: list[tuple[str, dict[str, object]]] = [
    ("no limits", {}),
    ("rate limit", {"rate_limit": RATE}),
    ("credits", {"credits": CREDITS}),
    ("rate limit + credits + refill", {"rate_limit": RATE, "credits": CREDITS, "refill": REFILL}),
    # A second token without limits: what two tokens differ by with nothing between them.
    (CONTROL := "another token without limits", {}),
]
LINE_US = 3.0  # issue 18: a good token's warm overhead may grow by at most this much
DAY = 86_400


@dataclass
class Rounds:
    """One case's per-round numbers (µs per request), for one adapter."""

    samples: list[Sample] = field(default_factory=list)  # bare, wrapped, audit, CPU of all
    thread: list[float] = field(default_factory=list)  # request thread's CPU, wrapped - bare

    def request(self) -> list[float]:
        return [w - b for b, w, _, _ in self.samples]

    def cpu(self) -> list[float]:
        return [s[3] for s in self.samples]


def _thread_round(
    tokens: ApiTokens, bare: Callable[[], None], wrapped: Callable[[], None], batch: int
) -> tuple[Sample, float]:
    """One measure.py round, plus the request thread's own CPU time (wrapped - bare, µs)."""
    times: list[float] = []

    def timed(run: Callable[[], None]) -> Callable[[], None]:
        def inner() -> None:
            start = time.thread_time()
            run()
            times.append(time.thread_time() - start)

        return inner

    sample = _round(tokens, timed(bare), timed(wrapped))
    return _per_request(sample, batch), (times[1] - times[0]) / batch * 1e6


def limit_rounds(
    tokens: ApiTokens,
    drivers: list[tuple[WSGIDriver, ASGIDriver]],
    *,
    rounds: int,
    batch: int,
    warmup: int = 2,
) -> list[tuple[Rounds, Rounds]]:
    """Each case's WSGI and ASGI rounds, round ``k`` of every case before ``k + 1``.

    The cases' order turns by one each round, so no case always runs right after
    another (the one before may leave work behind: the meter's thread waking up).
    """
    runs = [
        (
            _wsgi_batches(wsgi, bare_wsgi, batch),
            _wsgi_batches(wsgi, tokens.wsgi(bare_wsgi), batch),
            _asgi_batches(asgi, bare_asgi, batch),
            _asgi_batches(asgi, tokens.asgi(bare_asgi), batch),
        )
        for wsgi, asgi in drivers
    ]
    found = [(Rounds(), Rounds()) for _ in drivers]
    for index in range(warmup + rounds):
        order = list(range(len(runs)))
        turn = index % len(order)
        for slot in order[turn:] + order[:turn]:
            wsgi_bare, wsgi_wrapped, asgi_bare, asgi_wrapped = runs[slot]
            wsgi = _thread_round(tokens, wsgi_bare, wsgi_wrapped, batch)
            asgi = _thread_round(tokens, asgi_bare, asgi_wrapped, batch)
            if index >= warmup:
                for rounds_, (sample, thread) in zip(found[slot], (wsgi, asgi), strict=True):
                    rounds_.samples.append(sample)
                    rounds_.thread.append(thread)
    return found


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median and the quartiles around it."""
    ordered = sorted(values)
    n = len(ordered)
    return median(ordered), ordered[n // 4], ordered[(3 * n) // 4]


def shown(values: list[float]) -> str:
    mid, low, high = spread(values)
    return f"{mid:+.1f} µs ({low:+.1f} … {high:+.1f})"


def minus(limited: list[float], plain: list[float]) -> list[float]:
    return [a - b for a, b in zip(limited, plain, strict=True)]


def take_costs(tokens: ApiTokens, limited: list[Token], count: int, rounds: int) -> list[float]:
    """CPU µs per ``Meter.take`` alone, for each limited token (medians of ``rounds``)."""
    meter = tokens._authenticator.meter
    assert meter is not None
    results = []
    for token in limited:
        limits = Limits.of(token)
        assert limits is not None

        def calls(limits: Limits = limits, take: Callable[..., object] = meter.take) -> float:
            # This thread's CPU time: a neighbour's burst does not land in it.
            gc.disable()
            try:
                start = time.thread_time()
                for _ in range(count):
                    take(limits, time.time())
                return (time.thread_time() - start) / count * 1e6
            finally:
                gc.enable()

        assert meter.take(limits, time.time()) is None  # admitted: the others are too
        results.append(median([calls() for _ in range(rounds)]))
        meter.flush()
    return results


def profile_take(tokens: ApiTokens, driver: WSGIDriver, count: int) -> str:
    """cProfile of ``count`` WSGI requests of the fully limited token: the top entries."""
    app = tokens.wsgi(bare_wsgi)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        driver.call(app)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    return out.getvalue()


def main() -> None:
    rounds, batch = (7, 500) if QUICK else (35, 2000)
    section = Section(
        "limits",
        "Rate limits and credits: the warm overhead they add",
        intro=(
            "The in-process set-up (bare apps called the way a server calls them, vs "
            "wrapped), one `ApiTokens` on the `SQLiteStore` holding 100,000 tokens "
            "(`journal=False`: the audit journal is the same for every case), and five "
            "tokens of the in-process benchmark's shape (READ_WRITE, its 5 restriction "
            f"rules, argon2id; `GET {TARGET}`) that differ only in their limits: none; "
            f'`rate_limit="{RATE}"`; `credits={CREDITS:_}`; all three '
            f'(`rate_limit`, `credits`, `refill="{REFILL}"`); and none again, a second '
            "token that shows what two tokens differ by with nothing between them (the "
            "noise). The limits are far above what "
            "the run sends, so every use is counted and none is refused (checked: every "
            "status is 200, and the store's counts equal the requests sent). "
            f"{rounds} rounds of {batch} requests each, bare and wrapped interleaved, WSGI "
            "and ASGI rounds alternating, the five cases' rounds alternating (their order "
            "turning each round). *Added* is a limited case's overhead minus the "
            "unlimited case's, taken round by round: the median, and in brackets the "
            "quartiles of the rounds."
        ),
    )
    bulk = bulk_store(100_000)
    with (
        tempfile.TemporaryDirectory() as tmp,
        store_copy(bulk, Path(tmp)) as store,
        ApiTokens(store, policy=POLICY, journal=False) as tokens,
    ):
        assert tokens._authenticator.meter is not None, "the store keeps no usage counts"
        issued = [
            tokens.create(
                actor="alice",
                name=f"bench {name}",
                scope=Scope.READ_WRITE,
                restrictions=FIVE_RULES,
                **limits,  # type: ignore[arg-type]
            )
            for name, limits in CASES
        ]
        drivers = [
            (
                WSGIDriver("GET", TARGET, f"Bearer {each.secret}"),
                ASGIDriver("GET", TARGET, f"Bearer {each.secret}"),
            )
            for each in issued
        ]
        started = time.time()
        found = limit_rounds(tokens, drivers, rounds=rounds, batch=batch)
        tokens.flush()
        for _, asgi_driver in drivers:
            asgi_driver.close()
        # Per token, wrapped: WSGI and ASGI, warm-up included (its drivers ran the bare
        # app as often: a status each).
        sent = 2 * (rounds + 2) * batch
        for (name, _), (wsgi_driver, asgi_driver) in zip(CASES, drivers, strict=True):
            assert wsgi_driver.statuses == {"200 OK": sent}, (name, wsgi_driver.statuses)
            assert asgi_driver.statuses == {200: sent}, (name, asgi_driver.statuses)
        # Every admission reached the store, once: the meter counted what it let through.
        window_start = int(started // DAY) * DAY
        assert int(time.time() // DAY) * DAY == window_start, "the run crossed midnight UTC"
        for (name, limits), each in zip(CASES, issued, strict=True):
            token_id = each.token.id
            if "rate_limit" in limits:
                key = (token_id, DAY, window_start)
                counted = store.count_requests({key: 0}, ended_before=0)[key]
                assert counted == sent, (name, counted, sent)
            if "credits" in limits:
                left = tokens.credits_left(token_id)
                assert left == CREDITS - sent, (name, left, CREDITS - sent)
        count = 2000 if QUICK else 20000
        takes = take_costs(tokens, [each.token for each in issued[1:-1]], count, 5)
        profile = profile_take(tokens, drivers[-1][0], count)
    print(profile)
    (plain_wsgi, plain_asgi), *limited = found
    header = ["", "WSGI", "ASGI"]
    rows = [
        [
            "no limits: warm overhead, request thread (wall)",
            us(median(plain_wsgi.request())),
            us(median(plain_asgi.request())),
        ],
        [
            "no limits: warm overhead, CPU time of the request thread",
            us(median(plain_wsgi.thread)),
            us(median(plain_asgi.thread)),
        ],
        [
            "no limits: warm overhead, CPU time of all threads",
            us(median(plain_wsgi.cpu())),
            us(median(plain_asgi.cpu())),
        ],
    ]
    added: list[tuple[str, list[float], list[float]]] = []
    for (name, _), (wsgi, asgi) in zip(CASES[1:], limited, strict=True):
        bold = "" if name == CONTROL else "**"
        rows.append(
            [
                f"{name}: added, request thread (wall)",
                shown(minus(wsgi.request(), plain_wsgi.request())),
                shown(minus(asgi.request(), plain_asgi.request())),
            ]
        )
        rows.append(
            [
                f"{name}: added, CPU time of the request thread",
                shown(minus(wsgi.thread, plain_wsgi.thread)),
                shown(minus(asgi.thread, plain_asgi.thread)),
            ]
        )
        cpu = (minus(wsgi.cpu(), plain_wsgi.cpu()), minus(asgi.cpu(), plain_asgi.cpu()))
        rows.append(
            [
                f"{bold}{name}: added, CPU time of all threads{bold}",
                *(f"{bold}{shown(each)}{bold}" for each in cpu),
            ]
        )
        if name != CONTROL:
            added.append((name, *cpu))
    section.table(header, rows)
    section.table(
        ["", *(name for name, _ in CASES[1:-1])],
        [["`Meter.take` alone, per call", *(us(value) for value in takes)]],
    )
    section.notes.append(
        "*Request thread (wall)*: wrapped minus bare, as the thread serving the request "
        "sees it. *CPU time of the request thread*: the same in that thread's own CPU "
        "time, which leaves out the time the neighbours on this shared machine ran instead "
        "of us. *CPU time of all threads*: the process's CPU time for the wrapped batch "
        "and the flush after it (the audit writer's rows, and the meter's counts sent to "
        "the store), minus the bare batch's; the in-process budget is judged on it, and "
        "so is the 3 µs line. Each round ends with a flush, so the meter sends once per "
        f"{batch:,} requests here at least; a busy server sends once per 0.2 s, so "
        "this counts the send's share high."
    )
    section.notes.append(
        "*`Meter.take` alone*: the limited tokens' counting, called directly in a loop "
        f"({count:,} calls, median of 5, the thread's CPU time): the lock, the dictionary "
        "reads and the counters a request pays on top of the unlimited token's path, "
        "without the request around it."
    )
    for name, wsgi_cpu, asgi_cpu in added:
        worst = max(median(wsgi_cpu), median(asgi_cpu))
        section.verdict(
            f"{name}: a good token's warm overhead grows by <= {LINE_US:.0f} µs (CPU time of "
            "all threads, WSGI and ASGI, vs the same token without limits)",
            f"WSGI {shown(wsgi_cpu)}, ASGI {shown(asgi_cpu)}",
            worst <= LINE_US,
        )
    section.save()


if __name__ == "__main__":
    main()
