"""The two drivers: an ASGI app and a WSGI app around the pages' one handler.

They only translate: the request read whole (at most ``MAX_BODY`` bytes, else 413)
into a :class:`Request`, the :class:`Response` back out with the headers every
response carries. The handler's calls block (the store), so the ASGI driver runs
it in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from apitokens.asgi import ASGIApp, Receive, Scope, Send
from apitokens.wsgi import Environ, StartResponse, WSGIApplication

from ._http import MAX_BODY, Request, Response, finish

__all__ = ["asgi_app", "wsgi_app"]

Handler = Callable[[Request], Response]

_TOO_LARGE = Response(413, b"Request body too large.", "text/plain; charset=utf-8")
_REASONS = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _mount(root: str) -> str:
    return root.rstrip("/")


def _under(path: str, root: str) -> str:
    """The path under the mount point (a server or router may leave the prefix on)."""
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return path or "/"


def asgi_app(handle: Handler) -> ASGIApp:
    """An ASGI app answering with ``handle``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        response = await _asgi_answer(handle, scope, receive)
        if response is None:
            return  # the client went away before it sent the whole request
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in finish(response)
                ],
            }
        )
        body = b"" if scope.get("method") == "HEAD" else response.body
        await send({"type": "http.response.body", "body": body})

    return app


async def _asgi_answer(handle: Handler, scope: Scope, receive: Receive) -> Response | None:
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return _TOO_LARGE
        chunks.append(chunk)
        more = message.get("more_body", False)
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    root = _mount(scope.get("root_path", ""))
    request = Request(
        method=scope.get("method", "GET").upper(),
        path=_under(scope.get("path", "/"), root),
        query=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        body=b"".join(chunks),
        root_path=root,
        native=scope,
        scheme=scope.get("scheme", "http"),
    )
    return await asyncio.to_thread(handle, request)


def wsgi_app(handle: Handler) -> WSGIApplication:
    """A WSGI app answering with ``handle``."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        response = _wsgi_answer(handle, environ)
        status = f"{response.status} {_REASONS.get(response.status, 'Unknown')}"
        start_response(status, finish(response))
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else response.body]

    return app


def _wsgi_text(value: Any) -> str:
    # PEP 3333: native strings hold the bytes as latin-1; the pages' paths are UTF-8.
    return str(value).encode("latin-1", "replace").decode("utf-8", "replace")


def _wsgi_answer(handle: Handler, environ: Environ) -> Response:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY:
        return _TOO_LARGE
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    headers = {
        key[5:].replace("_", "-").lower(): str(value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = str(environ["CONTENT_TYPE"])
    request = Request(
        method=str(environ.get("REQUEST_METHOD", "GET")).upper(),
        path=_wsgi_text(environ.get("PATH_INFO", "")) or "/",
        query=str(environ.get("QUERY_STRING", "")),
        headers=headers,
        body=body,
        root_path=_mount(_wsgi_text(environ.get("SCRIPT_NAME", ""))),
        native=environ,
        scheme=str(environ.get("wsgi.url_scheme", "http")),
    )
    return handle(request)
