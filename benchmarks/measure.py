"""Bare vs wrapped, measured the same way by every in-process benchmark.

One round runs a batch of requests through the bare app, then the same batch through
the wrapped app, then waits for the audit writer to write that batch's records
(``ApiTokens.flush``), timing each. Rounds repeat; the results are medians of the
per-round numbers, so bare and wrapped always come from the same moment of the run.

Two overheads come out of it:

- *request*: wrapped minus bare, what a request costs the thread serving it (the writer
  thread runs alongside, as in production, and its work partly lands here);
- *with audit*: the same plus the time the writer needed afterwards to write that
  batch's audit events and usage: everything the request costs, sooner or later;
- *CPU*: the process's CPU time (every thread: the request's and the writer's) for the
  wrapped batch and its flush, minus the bare batch's. Wall-clock time on a shared
  machine includes the time the neighbours ran instead of us; CPU time counts only
  what this process spent (the writer included), though neighbours still slow it
  down through the caches they share.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from apitokens import ApiTokens
from benchmarks.apps import ASGIApp, ASGIDriver, WSGIApp, WSGIDriver, bare_asgi, bare_wsgi
from benchmarks.common import median


@dataclass(frozen=True)
class Overhead:
    bare: float  # µs per request
    wrapped: float  # µs per request, on the request thread
    audit: float  # µs per request the writer needed after the batch
    request: float  # median per-round (wrapped - bare)
    total: float  # median per-round (wrapped + audit - bare)
    cpu: float  # median per-round process CPU time (wrapped + flush - bare), all threads


Sample = tuple[float, float, float, float]  # bare, wrapped, audit (wall µs), CPU overhead µs


def _rounds(samples: list[Sample]) -> Overhead:
    bare = [s[0] for s in samples]
    wrapped = [s[1] for s in samples]
    audit = [s[2] for s in samples]
    return Overhead(
        bare=median(bare),
        wrapped=median(wrapped),
        audit=median(audit),
        request=median([w - b for b, w, _, _ in samples]),
        total=median([w + a - b for b, w, a, _ in samples]),
        cpu=median([s[3] for s in samples]),
    )


def _round(tokens: ApiTokens, bare: Callable[[], None], wrapped: Callable[[], None]) -> Sample:
    """One round: ``bare()`` then ``wrapped()`` (each runs a batch), then the flush."""
    gc.collect()
    gc.disable()
    try:
        cpu_start, start = time.process_time(), time.perf_counter()
        bare()
        cpu_middle, middle = time.process_time(), time.perf_counter()
        wrapped()
        end = time.perf_counter()
        tokens.flush()
        cpu_end, flushed = time.process_time(), time.perf_counter()
    finally:
        gc.enable()
    return (
        middle - start,
        end - middle,
        flushed - end,
        (cpu_end - cpu_middle) - (cpu_middle - cpu_start),
    )


def _per_request(sample: Sample, batch: int) -> Sample:
    b, w, a, c = (value / batch * 1e6 for value in sample)
    return b, w, a, c


def _wsgi_batches(driver: WSGIDriver, app: WSGIApp, batch: int) -> Callable[[], None]:
    call = driver.caller(app)

    def run() -> None:
        for _ in range(batch):
            call()

    return run


def _asgi_batches(driver: ASGIDriver, app: ASGIApp, batch: int) -> Callable[[], None]:
    return lambda: driver.run(app, batch)


def wsgi_overhead(
    tokens: ApiTokens, driver: WSGIDriver, *, rounds: int, batch: int, warmup: int = 2
) -> Overhead:
    """Bare vs wrapped WSGI, ``rounds`` rounds of ``batch`` requests (after ``warmup``)."""
    bare = _wsgi_batches(driver, bare_wsgi, batch)
    wrapped = _wsgi_batches(driver, tokens.wsgi(bare_wsgi), batch)
    samples = [_round(tokens, bare, wrapped) for _ in range(warmup + rounds)][warmup:]
    return _rounds([_per_request(sample, batch) for sample in samples])


def interleaved_wsgi_overheads(
    cases: Sequence[tuple[ApiTokens, WSGIDriver]], *, rounds: int, batch: int, warmup: int = 2
) -> list[tuple[Overhead, list[float]]]:
    """Bare vs wrapped WSGI for several cases, round ``k`` of each before round ``k + 1``.

    Returns, per case, its overhead and its per-round request overheads (wrapped minus
    bare, µs): a ratio of two cases is then best taken round by round, each pair from
    the same moment of the run.
    """
    runs = [
        (
            tokens,
            _wsgi_batches(driver, bare_wsgi, batch),
            _wsgi_batches(driver, tokens.wsgi(bare_wsgi), batch),
        )
        for tokens, driver in cases
    ]
    samples: list[list[Sample]] = [[] for _ in cases]
    for index in range(warmup + rounds):
        for slot, (tokens, bare, wrapped) in enumerate(runs):
            sample = _round(tokens, bare, wrapped)
            if index >= warmup:
                samples[slot].append(_per_request(sample, batch))
    return [(_rounds(found), [w - b for b, w, _, _ in found]) for found in samples]


def both_overheads(
    tokens: ApiTokens,
    wsgi_driver: WSGIDriver,
    asgi_driver: ASGIDriver,
    *,
    rounds: int,
    batch: int,
    warmup: int = 2,
) -> tuple[Overhead, Overhead]:
    """WSGI and ASGI overheads with their rounds interleaved.

    A noisy minute on a shared machine then lands on both adapters alike, instead of
    on whichever happened to be measured in it.
    """
    wsgi_bare = _wsgi_batches(wsgi_driver, bare_wsgi, batch)
    wsgi_wrapped = _wsgi_batches(wsgi_driver, tokens.wsgi(bare_wsgi), batch)
    asgi_bare = _asgi_batches(asgi_driver, bare_asgi, batch)
    asgi_wrapped = _asgi_batches(asgi_driver, tokens.asgi(bare_asgi), batch)
    wsgi: list[Sample] = []
    asgi: list[Sample] = []
    for index in range(warmup + rounds):
        w = _round(tokens, wsgi_bare, wsgi_wrapped)
        a = _round(tokens, asgi_bare, asgi_wrapped)
        if index >= warmup:
            wsgi.append(_per_request(w, batch))
            asgi.append(_per_request(a, batch))
    return _rounds(wsgi), _rounds(asgi)
