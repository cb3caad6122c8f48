"""The ASGI lifespan, seen by the middleware: flush the audit writer at shutdown.

uvicorn answers SIGTERM by shutting down gracefully (the lifespan's shutdown
included) and then raising the signal again with its default action, which
ends the process without running ``atexit``: the writer's exit flush never
runs. The lifespan shutdown is the last moment the process is known to be
alive, so the middleware flushes there, before it lets the server hear that
the app's shutdown is complete. For an app that does not speak the lifespan
protocol (it raises or returns before reading its first message), the
middleware speaks it in its place, so the flush happens all the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["FLUSH_TIMEOUT", "lifespan", "other_scope"]

log = logging.getLogger("apitokens")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]
Flush = Callable[[float], bool]
"""``flush(timeout)``: write what is buffered; ``False`` if the timeout ran out."""

FLUSH_TIMEOUT = 10.0
"""Longest the shutdown waits for the audit writer, in seconds (the journal keeps the rest)."""

_DONE = ("lifespan.shutdown.complete", "lifespan.shutdown.failed")


async def other_scope(
    app: App, flush: Flush, scope: MutableMapping[str, Any], receive: Receive, send: Send
) -> None:
    """A scope that is neither ``http`` nor ``websocket``: lifespan handled, others passed."""
    if scope["type"] == "lifespan":
        await lifespan(app, flush, scope, receive, send)
    else:
        await app(scope, receive, send)


async def _flush(flush: Flush) -> None:
    if not await asyncio.to_thread(flush, FLUSH_TIMEOUT):
        log.error(
            "apitokens: audit records not all written at shutdown within %g s;"
            " the journal keeps them for the next start",
            FLUSH_TIMEOUT,
        )


async def lifespan(
    app: App, flush: Flush, scope: MutableMapping[str, Any], receive: Receive, send: Send
) -> None:
    """Run ``app``'s lifespan, flushing the audit writer before its shutdown is reported."""
    started = False

    async def receive_first() -> Message:
        nonlocal started
        started = True
        return await receive()

    async def send_flushed(message: Message) -> None:
        if message.get("type") in _DONE:
            await _flush(flush)
        await send(message)

    try:
        await app(scope, receive_first, send_flushed)
    except Exception:
        if started:
            raise  # the app's own startup or shutdown failed: the server reports it
        log.debug("apitokens: the app does not support the lifespan; handled for it")
        await _speak(flush, receive, send)
        return
    if not started:
        await _speak(flush, receive, send)


async def _speak(flush: Flush, receive: Receive, send: Send) -> None:
    """The lifespan protocol for an app without one: start, and flush at shutdown."""
    while True:
        message = await receive()
        kind = message.get("type")
        if kind == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await _flush(flush)
            await send({"type": "lifespan.shutdown.complete"})
            return
