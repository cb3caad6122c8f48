"""The app uvicorn serves in the end-to-end benchmark: bare, wrapped, or both in turn.

``create()`` is a uvicorn factory; it reads ``BENCH_E2E_MODE`` (``bare``, ``wrapped`` or
``alternate``) and ``BENCH_E2E_DB`` (the SQLite file, holding the token the load
generator sends).

``alternate`` serves the bare app and the wrapped one in turn, switching every
``WINDOW`` seconds, and counts the process's CPU time (all threads) and the requests of
each. Both then run in the same process, under the same load, in the same minutes, so a
slow phase of a shared machine lands on both alike. At each switch the audit writer is
flushed, so the CPU it spends writing a window's records is counted in that window. At
exit the totals go to the JSON file ``BENCH_E2E_REPORT``.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from apitokens import ApiTokens, Policy, SQLiteStore
from benchmarks.apps import ASGIApp, Message, Scope, bare_asgi

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

__all__ = ["create"]

WINDOW = 0.5
WARM_UP_WINDOWS = 6  # not counted: first requests, first store reads, first batches


def create() -> ASGIApp:
    mode = os.environ.get("BENCH_E2E_MODE", "bare")
    if mode == "bare":
        return bare_asgi
    store = SQLiteStore(os.environ["BENCH_E2E_DB"])
    tokens = ApiTokens(store, policy=Policy(protected_paths=["/rest/"]))
    wrapped = tokens.asgi(bare_asgi)
    if mode == "wrapped":
        return wrapped
    return _alternating(tokens, wrapped, Path(os.environ["BENCH_E2E_REPORT"]))


def _alternating(tokens: ApiTokens, wrapped: ASGIApp, report: Path) -> ASGIApp:
    apps = (bare_asgi, wrapped)
    requests = [0, 0]
    cpu = [0.0, 0.0]
    state: dict[str, float] = {
        "current": 0,
        "windows": 0,
        "cpu0": time.process_time(),
        "t0": time.monotonic(),
    }

    def switch() -> None:
        tokens.flush()  # the writer's work for this window's records counts in it
        now_cpu = time.process_time()
        cpu[int(state["current"])] += now_cpu - state["cpu0"]
        state.update(current=1 - state["current"], cpu0=now_cpu, t0=time.monotonic())
        state["windows"] += 1
        if state["windows"] == WARM_UP_WINDOWS:
            requests[:] = [0, 0]
            cpu[:] = [0.0, 0.0]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await wrapped(scope, receive, send)
            return
        if time.monotonic() - state["t0"] >= WINDOW:
            switch()
        current = int(state["current"])
        requests[current] += 1
        await apps[current](scope, receive, send)

    def write_report() -> None:
        report.write_text(
            json.dumps(
                {
                    mode: {"requests": requests[i], "cpu_seconds": cpu[i]}
                    for i, mode in enumerate(("bare", "wrapped"))
                }
            )
        )

    atexit.register(write_report)
    return app
