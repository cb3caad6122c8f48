"""The app ``uvicorn --workers 4`` serves in the many-workers benchmark: bare or wrapped.

``create()`` is a uvicorn factory, called once in every worker process. It reads
``BENCH_WORKERS_MODE`` (``bare`` or ``wrapped``), ``BENCH_WORKERS_DB`` (a store URL for
``open_store``: a SQLite file or a PostgreSQL DSN) and ``BENCH_WORKERS_TTL`` (the record
cache's ``cache_ttl``, seconds); ``BENCH_WORKERS_JOURNAL=0`` turns the audit journal off
(for diagnostic runs). With ``BENCH_WORKERS_NOTICES`` (a directory), a store that has a
change feed also tells the worker of each change, and the worker appends the monotonic
time it heard of it (system-wide on Linux) and the token id to ``<pid>.log`` there.

Every answer's body is the worker's process id, so a client knows which worker a
connection reached; bare and wrapped answer the same body.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from apitokens import ApiTokens, Policy, open_store
from apitokens.storage import ChangeFeed
from benchmarks.apps import ASGIApp, Message, Scope

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

__all__ = ["create"]


def _pid_app() -> ASGIApp:
    body = str(os.getpid()).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message: Message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def create() -> ASGIApp:
    app = _pid_app()
    if os.environ.get("BENCH_WORKERS_MODE", "bare") == "bare":
        return app
    store = open_store(os.environ["BENCH_WORKERS_DB"])
    notices = os.environ.get("BENCH_WORKERS_NOTICES")
    if notices and isinstance(store, ChangeFeed):
        # Open for the worker's life, a line at a time.
        heard = (Path(notices) / f"{os.getpid()}.log").open("a", buffering=1)

        def note(token_id: str | None) -> None:
            heard.write(f"{time.monotonic()!r} {token_id}\n")

        store.subscribe(note)
    tokens = ApiTokens(
        store,
        policy=Policy(protected_paths=["/rest/"]),
        cache_ttl=float(os.environ.get("BENCH_WORKERS_TTL", "1.0")),
        journal=None if os.environ.get("BENCH_WORKERS_JOURNAL", "1") == "1" else False,
    )
    return tokens.asgi(app)
