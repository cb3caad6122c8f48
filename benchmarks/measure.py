"""Bare vs wrapped, measured the same way by every in-process benchmark.

One round runs a batch of requests through the bare app, then the same batch through
the wrapped app, then waits for the audit writer to write that batch's records
(``ApiTokens.flush``), timing each. Rounds repeat; the results are medians of the
per-round numbers, so bare and wrapped always come from the same moment of the run.

Two overheads come out of it:

- *request*: wrapped minus bare, what a request costs the thread serving it (the writer
  thread runs alongside, as in production, and its work partly lands here);
- *with audit*: the same plus the time the writer needed afterwards to write that
  batch's audit events and usage: everything the request costs, sooner or later.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

from apitokens import ApiTokens
from benchmarks.apps import ASGIDriver, WSGIDriver, bare_asgi, bare_wsgi
from benchmarks.common import median


@dataclass(frozen=True)
class Overhead:
    bare: float  # µs per request
    wrapped: float  # µs per request, on the request thread
    audit: float  # µs per request the writer needed after the batch
    request: float  # median per-round (wrapped - bare)
    total: float  # median per-round (wrapped + audit - bare)


def _rounds(samples: list[tuple[float, float, float]]) -> Overhead:
    bare = [s[0] for s in samples]
    wrapped = [s[1] for s in samples]
    audit = [s[2] for s in samples]
    return Overhead(
        bare=median(bare),
        wrapped=median(wrapped),
        audit=median(audit),
        request=median([w - b for b, w, _ in samples]),
        total=median([w + a - b for b, w, a in samples]),
    )


def wsgi_overhead(
    tokens: ApiTokens, driver: WSGIDriver, *, rounds: int, batch: int, warmup: int = 2
) -> Overhead:
    wrapped = tokens.wsgi(bare_wsgi)
    bare_call, wrapped_call = driver.caller(bare_wsgi), driver.caller(wrapped)
    samples = []
    for index in range(warmup + rounds):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(batch):
                bare_call()
            middle = time.perf_counter()
            for _ in range(batch):
                wrapped_call()
            end = time.perf_counter()
            tokens.flush()
            flushed = time.perf_counter()
        finally:
            gc.enable()
        if index >= warmup:
            samples.append(
                (
                    (middle - start) / batch * 1e6,
                    (end - middle) / batch * 1e6,
                    (flushed - end) / batch * 1e6,
                )
            )
    return _rounds(samples)


def asgi_overhead(
    tokens: ApiTokens, driver: ASGIDriver, *, rounds: int, batch: int, warmup: int = 2
) -> Overhead:
    wrapped = tokens.asgi(bare_asgi)
    samples = []
    for index in range(warmup + rounds):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            driver.run(bare_asgi, batch)
            middle = time.perf_counter()
            driver.run(wrapped, batch)
            end = time.perf_counter()
            tokens.flush()
            flushed = time.perf_counter()
        finally:
            gc.enable()
        if index >= warmup:
            samples.append(
                (
                    (middle - start) / batch * 1e6,
                    (end - middle) / batch * 1e6,
                    (flushed - end) / batch * 1e6,
                )
            )
    return _rounds(samples)
