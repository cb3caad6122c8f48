"""The bare applications the suite wraps, and drivers that call them in-process.

The bare apps do the least a real endpoint does: answer 200 with a small body (and read
the request body, when there is one, as an endpoint taking JSON would). The drivers
build the environ / scope a server would, a fresh one per request, so bare and wrapped
calls differ only by the middleware.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

BODY = b'{"ok":true}'
_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]
_RAW_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]


def bare_wsgi(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """A WSGI endpoint: reads the body if one was sent, answers 200."""
    if environ.get("CONTENT_LENGTH"):
        environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
    start_response("200 OK", _HEADERS)
    return [BODY]


async def bare_asgi(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """An ASGI endpoint: reads the body, answers 200 (lifespan accepted)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _RAW_HEADERS})
    await send({"type": "http.response.body", "body": BODY})


class WSGIDriver:
    """Calls a WSGI app the way a server would, one request after another.

    ``authorization`` is one header value, or several used in turn.
    """

    def __init__(
        self, method: str, target: str, authorization: str | list[str], body: bytes = b""
    ) -> None:
        parts = urlsplit(target)
        values = [authorization] if isinstance(authorization, str) else list(authorization)
        self._authorizations = itertools.cycle(values) if len(values) > 1 else None
        self.template: Environ = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": parts.path,
            "QUERY_STRING": parts.query,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "50000",
            "HTTP_HOST": "127.0.0.1:8000",
            "HTTP_USER_AGENT": "apitokens-bench",
            "HTTP_ACCEPT": "*/*",
            "HTTP_AUTHORIZATION": values[0],
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if body:
            self.template["CONTENT_TYPE"] = "application/json"
            self.template["CONTENT_LENGTH"] = str(len(body))
        self.body = body
        self.statuses: dict[str, int] = {}

    def _start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def call(self, app: WSGIApp) -> None:
        environ = self.template.copy()
        environ["wsgi.input"] = io.BytesIO(self.body)
        if self._authorizations is not None:
            environ["HTTP_AUTHORIZATION"] = next(self._authorizations)
        for chunk in app(environ, self._start_response):
            del chunk

    def caller(self, app: WSGIApp) -> Callable[[], None]:
        return lambda: self.call(app)


class ASGIDriver:
    """Calls an ASGI app the way a server would, on one event loop."""

    def __init__(self, method: str, target: str, authorization: str, body: bytes = b"") -> None:
        parts = urlsplit(target)
        headers = [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"apitokens-bench"),
            (b"accept", b"*/*"),
            (b"authorization", authorization.encode("latin-1")),
        ]
        if body:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        self.template: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": method,
            "root_path": "",
            "path": parts.path,
            "raw_path": parts.path.encode("latin-1"),
            "query_string": parts.query.encode("latin-1"),
            "headers": headers,
            "state": {},
        }
        self.body = body
        self.statuses: dict[int, int] = {}
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    async def _many(self, app: ASGIApp, count: int) -> None:
        body = self.body
        statuses = self.statuses

        async def receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                statuses[status] = statuses.get(status, 0) + 1

        template = self.template
        for _ in range(count):
            await app(template.copy(), receive, send)

    def run(self, app: ASGIApp, count: int) -> None:
        self.loop.run_until_complete(self._many(app, count))
