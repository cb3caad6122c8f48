"""The app ``uvicorn --workers 4`` serves in the many-workers benchmark: bare or wrapped.

``create()`` is a uvicorn factory, called once in every worker process. It reads
``BENCH_WORKERS_MODE`` (``bare`` or ``wrapped``), ``BENCH_WORKERS_DB`` (a store URL for
``open_store``: a SQLite file or a PostgreSQL DSN) and ``BENCH_WORKERS_TTL`` (the record
cache's ``cache_ttl``, seconds); ``BENCH_WORKERS_JOURNAL=0`` turns the audit journal off
(for diagnostic runs). Every answer's body is the worker's process id, so a
client knows which worker a connection reached; bare and wrapped answer the same body.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from apitokens import ApiTokens, Policy, open_store
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
    tokens = ApiTokens(
        open_store(os.environ["BENCH_WORKERS_DB"]),
        policy=Policy(protected_paths=["/rest/"]),
        cache_ttl=float(os.environ.get("BENCH_WORKERS_TTL", "1.0")),
        journal=None if os.environ.get("BENCH_WORKERS_JOURNAL", "1") == "1" else False,
    )
    return tokens.asgi(app)
