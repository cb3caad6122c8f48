"""ASGI middleware: translate the scope for the request flow, then answer or call the app.

The flow (``_flow.py``) decides without blocking the event loop. Lifespan and
other non-HTTP scopes pass through (the lifespan's shutdown flushes the audit
writer first: ``_lifespan.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from ._flow import RequestFlow, Requirement
from ._lifespan import other_scope
from ._request import METHOD_OVERRIDES, READ_HEADERS, RUN_AS, AuthRequest, quote_path
from ._result import AuthResult
from ._users import ANONYMOUS, NO_AUTH, AnonymousUser, TokenAuth, TokenUser

__all__ = [
    "ANONYMOUS",
    "ASGIApp",
    "ASGIMiddleware",
    "AnonymousUser",
    "TokenAuth",
    "TokenUser",
    "request_from_scope",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DECIDED_BY = "apitokens.flow"
"""The scope key naming the flow that decided ``scope["apitokens.auth"]``: a route reuses
a decision only from its own ``ApiTokens`` (another's tokens are not its tokens)."""


def decided_here(scope: Scope, flow: RequestFlow) -> AuthResult | None:
    """The result ``flow`` already put in ``scope``, or ``None`` (none, or another's)."""
    result = scope.get("apitokens.auth")
    if isinstance(result, AuthResult) and scope.get(DECIDED_BY) is flow:
        return result
    return None


# The headers the core reads, by the name an ASGI server passes (lower case).
_WANTED = {name.encode(): name for name in READ_HEADERS}
# The method overrides and X-Run-As also as spelt with "_": an ASGI-to-WSGI bridge
# (Starlette's WSGIMiddleware, a2wsgi) hands ``X_HTTP_Method_Override`` to a WSGI app as
# HTTP_X_HTTP_METHOD_OVERRIDE, so the core must check it too. (Not X-Forwarded-For:
# a proxy appends to its own header, never to a client's X_Forwarded_For.)
_OVERRIDES = {name.encode(): name for name in (*METHOD_OVERRIDES, RUN_AS)}


def _raw_path(scope: Mapping[str, Any]) -> str:
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote_path(scope.get("path", "/"), "utf-8")
    root = scope.get("root_path", "")
    # Some servers already include root_path in raw_path; never count it twice.
    if root and not (path == root or path.startswith(root.rstrip("/") + "/")):
        path = root.rstrip("/") + path
    return path.split("?", 1)[0]


def _app_path(scope: Mapping[str, Any]) -> str:
    """The path a mounted app routes (``root_path`` stripped, as Starlette does), quoted."""
    path: str = scope.get("path", "/")
    root: str = scope["root_path"]
    if path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        path = path[len(root) :]
    return quote_path(path, "utf-8") or "/"


def request_from_scope(scope: Mapping[str, Any], body: bytes = b"") -> AuthRequest:
    """Build the :class:`AuthRequest` for an HTTP or websocket scope."""
    # Every header the core reads is kept, in order, so a repeated Authorization
    # header still reaches the core (which refuses it).
    headers = []
    for name, value in scope.get("headers", ()):
        wanted = _WANTED.get(name)
        if wanted is None and b"_" in name:
            wanted = _OVERRIDES.get(name.replace(b"_", b"-"))
        if wanted is not None:
            headers.append((wanted, value.decode("latin-1")))
    client = scope.get("client")
    return AuthRequest(
        scope.get("method", "GET") if scope["type"] == "http" else "GET",
        _raw_path(scope),
        scope.get("query_string", b"").decode("latin-1"),
        headers,
        client[0] if client else "",
        body,
        _app_path(scope) if scope.get("root_path") else "",
    )


class _Body:
    """Reads the body for the flow, once, and replays it to the app (``receive``)."""

    __slots__ = ("_receive", "receive")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.receive = receive  # what the app gets: the server's own until the body is read

    async def __call__(self, limit: int) -> bytes:
        """The body, at most ``limit + 1`` bytes; the app then gets the same messages."""
        chunks: list[bytes] = []
        got = 0
        more = True
        replay: list[Message] = []
        while more and got <= limit:
            message = await self._receive()
            if message["type"] != "http.request":
                replay = [message]  # a disconnect: the app hears of it too
                break
            chunks.append(message.get("body", b""))
            got += len(chunks[-1])
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if not replay:
            # Stopped past the limit with more to come (the decision is then 413, unless the
            # token changed in between): the app is told so, and reads the rest from the server.
            replay = [{"type": "http.request", "body": body, "more_body": more}]
        receive = self._receive

        async def replayed() -> Message:
            return replay.pop(0) if replay else await receive()

        self.receive = replayed
        return body


class ASGIMiddleware:
    """Checks tokens on protected paths, then calls the wrapped app (``tokens.asgi(app)``).

    On success the app sees ``scope["apitokens.auth"]`` (the :class:`AuthResult`),
    ``scope["user"]`` (:class:`TokenUser`) and ``scope["auth"]`` (:class:`TokenAuth`);
    otherwise, unless an outer middleware set them, an anonymous user and no scopes.

    Args:
        app: the ASGI application.
        flow: the request flow (:attr:`ApiTokens.flow`).
        require: the wrapped app's requirement (every request needs a token, or
            a read-write one).
    """

    def __init__(
        self, app: ASGIApp, flow: RequestFlow, *, require: Requirement = Requirement.NONE
    ) -> None:
        self.app = app
        self.flow = flow
        self.require = require

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await other_scope(self.app, self.flow.flush, scope, receive, send)
            return
        body = _Body(receive)
        result = await self.flow.run_async(request_from_scope(scope), body, require=self.require)
        scope = dict(scope)  # a copy: the ASGI spec asks middleware not to change the server's
        if result.authenticated:
            scope["apitokens.auth"] = result
            scope[DECIDED_BY] = self.flow
            scope["user"] = TokenUser(result)
            scope["auth"] = TokenAuth(result)
        elif result.status_code != 200:
            await _refuse(scope, send, result)
            return
        else:
            # Starlette's request.user raises unless scope["user"] is set: a route that
            # reads it must work for anonymous and public requests too. An outer
            # authentication middleware's user is kept.
            scope.setdefault("user", ANONYMOUS)
            scope.setdefault("auth", NO_AUTH)
        await self.app(scope, body.receive, send)


async def _refuse(scope: Scope, send: Send, result: AuthResult) -> None:
    if scope["type"] == "websocket":
        # Closing before accept makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008, "reason": result.error or ""})
        return
    body = result.body
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in result.headers]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": result.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
