"""ASGI middleware: pure ASGI, never blocks the event loop.

It translates a scope into an :class:`AuthRequest` and the flow's result into
a response or the scope the app sees; the flow (``_flow.py``) decides without
blocking the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from ._flow import RequestFlow, Requirement
from ._lifespan import other_scope
from ._model import Outcome
from ._request import AuthRequest
from ._result import AuthResult

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


def _spellings(name: str) -> list[bytes]:
    """``name`` with each "-" written "-" or "_".

    An ASGI-to-WSGI bridge (Starlette's WSGIMiddleware, a2wsgi) hands a header sent as
    ``X_HTTP_Method_Override`` to a WSGI app as ``HTTP_X_HTTP_METHOD_OVERRIDE``, so the
    core must see it under that name too.
    """
    first, *rest = name.encode().split(b"-")
    spellings = [first]
    for part in rest:
        spellings = [s + sep + part for s in spellings for sep in (b"-", b"_")]
    return spellings


# The headers the core reads: credentials, the proxy chain and the body's media type
# (JSON rules) as named, and the method-override headers by every spelling a bridge would
# pass on (more of them checked is safe; more spellings of X-Forwarded-For believed would
# not be: a proxy appends to its own header, never to a client's X_Forwarded_For).
_WANTED = {
    b"authorization": "authorization",
    b"x-forwarded-for": "x-forwarded-for",
    b"content-type": "content-type",
} | {
    spelling: name
    for name in ("x-http-method-override", "x-http-method", "x-method-override")
    for spelling in _spellings(name)
}
# Characters left as they are when quoting a decoded path: RFC 3986 pchar and "/".
_PATH_SAFE = "/!$&'()*+,;=:@-._~"
# AuthRequest's fast constructor, bound once: it is called on every request.
_trusted = AuthRequest._trusted


class TokenUser:
    """``scope["user"]`` after a token authenticated: what Starlette's ``request.user`` expects."""

    __slots__ = ("result",)

    def __init__(self, result: AuthResult) -> None:
        self.result = result

    @property
    def is_authenticated(self) -> bool:
        """Always ``True``."""
        return True

    @property
    def display_name(self) -> str:
        """The username."""
        return self.result.user or ""

    @property
    def identity(self) -> str:
        """The username."""
        return self.result.user or ""

    @property
    def token_id(self) -> str | None:
        """The id of the token used."""
        return self.result.token.id if self.result.token else None

    def __repr__(self) -> str:
        return f"TokenUser({self.display_name!r})"


class TokenAuth:
    """``scope["auth"]``: ``.scopes`` as Starlette's ``request.auth`` expects."""

    __slots__ = ("result",)

    def __init__(self, result: AuthResult) -> None:
        self.result = result

    @property
    def scopes(self) -> list[str]:
        """``authenticated``, ``read`` and, if the token allows it, ``write``.

        Built when read: most endpoints never look (one made per request).
        """
        return self.result.scopes


class AnonymousUser:
    """``scope["user"]`` when no token authenticated the request (like Starlette's own)."""

    __slots__ = ()

    @property
    def is_authenticated(self) -> bool:
        """Always ``False``."""
        return False

    @property
    def display_name(self) -> str:
        """Empty."""
        return ""

    @property
    def identity(self) -> str:
        """Empty."""
        return ""

    def __repr__(self) -> str:
        return "AnonymousUser()"


ANONYMOUS = AnonymousUser()
_NO_AUTH = TokenAuth(AuthResult(Outcome.PASS_THROUGH))  # .scopes == []


def _raw_path(scope: Scope) -> str:
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(scope.get("path", "/").encode("utf-8"))
    root = scope.get("root_path", "")
    # Some servers already include root_path in raw_path; never count it twice.
    if root and not (path == root or path.startswith(root.rstrip("/") + "/")):
        path = root.rstrip("/") + path
    return path.split("?", 1)[0] if "?" in path else path


def request_from_scope(scope: Scope, body: bytes = b"") -> AuthRequest:
    """Build the :class:`AuthRequest` for an HTTP or websocket scope."""
    # A plain loop (a comprehension is a function call of its own), decoding
    # only the headers the core reads; every one of them is kept, in order, so
    # a repeated Authorization header still reaches the core (which refuses it).
    wanted: list[tuple[str, str]] = []
    for name, value in scope.get("headers", ()):
        if name in _WANTED:
            wanted.append((_WANTED[name], value.decode("latin-1")))
    client = scope.get("client")
    return _trusted(
        scope.get("method", "GET") if scope["type"] == "http" else "GET",
        _raw_path(scope),
        scope.get("query_string", b"").decode("latin-1"),
        tuple(wanted),  # lower-case names and str values already, as AuthRequest stores them
        client[0] if client else "",
        body,
        _app_path(scope) if scope.get("root_path") else "",
    )


def _app_path(scope: Scope) -> str:
    """The path a mounted app routes (``root_path`` stripped, as Starlette does), quoted."""
    path: str = scope.get("path", "/")
    root: str = scope["root_path"]
    if path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        path = path[len(root) :]
    return quote(path.encode("utf-8", "surrogateescape"), safe=_PATH_SAFE) or "/"


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
            chunk = message.get("body", b"")
            chunks.append(chunk)
            got += len(chunk)
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

    On success the app sees ``scope["apitokens.auth"]`` (the
    :class:`AuthResult`), ``scope["user"]`` (:class:`TokenUser`) and
    ``scope["auth"]`` (:class:`TokenAuth`); otherwise, unless an outer
    middleware set them, an anonymous ``scope["user"]`` and empty ``scope["auth"]``.
    Lifespan and other scopes pass through (the lifespan's shutdown flushes
    the audit writer first).

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
        # A copy (the ASGI spec asks middleware not to change the server's scope).
        scope = dict(scope)
        if result.authenticated:
            scope["apitokens.auth"] = result
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
            scope.setdefault("auth", _NO_AUTH)
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
