"""The uniform client the adapter contract drives, over the frameworks' own in-process clients.

A :class:`ContractClient` sends one request (method, path, query, headers, a body whole
or in chunks) and returns a :class:`Reply`: status, headers, body and, when the request
reached the app, what the app saw (:class:`Seen`). WSGI apps are driven by werkzeug's
test ``Client``, ASGI apps by ``httpx.ASGITransport``; what those clients cannot send
(a request target as written on the wire, a websocket handshake, the lifespan) is handed
to the app as a server would (an environ with ``RAW_URI``; a raw ASGI scope).

Both clients put a probe between the "server" and the adapter that counts the body
bytes pulled from the server, so an app can tell how much the adapter read before it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from apitokens import AuthResult
from tests.support import drive_asgi

CLIENT_IP = "192.0.2.10"
"""The client address of every request that does not name one."""

Body = bytes | Sequence[bytes]
"""A body: bytes sent whole, or a sequence of chunks sent streamed (chunked)."""
Headers = Sequence[tuple[str, str]]
Message = dict[str, Any]
Environ = dict[str, Any]
WSGIApp = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]
ASGIApp = Callable[..., Any]


@dataclass
class Seen:
    """What the app saw of one request.

    Attributes:
        method, path, query: as the app's framework reports them.
        authorization: the ``Authorization`` header as the app got it.
        body: every byte the app read from the body.
        read_before_app: body bytes the adapter had pulled from the server before
            the app ran (0: the body was left to the app unread).
        user: the authenticated user by the adapter's own channel (WSGI
            ``REMOTE_USER``; ASGI ``scope["user"]`` when authenticated), else ``None``.
        scopes: WSGI: the result's ``scopes``; ASGI: ``scope["auth"].scopes``
            (``None`` if ``scope["auth"]`` is missing, where ``request.auth`` raises).
        result: ``environ["apitokens.auth"]`` / ``scope["apitokens.auth"]``.
        native: the raw objects: WSGI ``REMOTE_USER``; ASGI ``user`` and ``auth``.
    """

    method: str
    path: str
    query: str
    authorization: str | None
    body: bytes
    read_before_app: int
    user: str | None
    scopes: list[str] | None
    result: AuthResult | None
    native: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recorder:
    """Shared by an app and its client: what the app saw, and the probe's count."""

    seen: list[Seen] = field(default_factory=list)
    pulled: int = 0
    """Body bytes pulled from the server so far (this request)."""
    messages: int = 0
    """Pieces they came in: ASGI ``http.request`` messages, WSGI non-empty reads."""
    lifespan: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.seen.clear()
        self.pulled = 0
        self.messages = 0


@dataclass
class Reply:
    """A response, and what the app saw (``None``: the request never reached it)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    seen: Seen | None

    def header(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def seen_from_environ(environ: Environ, body: bytes, read_before_app: int) -> Seen:
    """What a WSGI app sees: ``REMOTE_USER`` and ``environ["apitokens.auth"]``."""
    result = environ.get("apitokens.auth")
    return Seen(
        method=environ["REQUEST_METHOD"],
        path=environ.get("PATH_INFO", ""),
        query=environ.get("QUERY_STRING", ""),
        authorization=environ.get("HTTP_AUTHORIZATION"),
        body=body,
        read_before_app=read_before_app,
        user=environ.get("REMOTE_USER"),
        scopes=result.scopes if isinstance(result, AuthResult) else [],
        result=result,
        native={"REMOTE_USER": environ.get("REMOTE_USER")},
    )


def seen_from_scope(scope: Message, body: bytes, read_before_app: int) -> Seen:
    """What an ASGI app sees: ``scope["user"]``, ``scope["auth"]``, ``scope["apitokens.auth"]``."""
    user = scope.get("user")
    auth = scope.get("auth")
    headers = dict(scope.get("headers", ()))
    authorization = headers.get(b"authorization")
    return Seen(
        method=scope.get("method", "GET"),
        path=scope.get("path", ""),
        query=scope.get("query_string", b"").decode("latin-1"),
        authorization=authorization.decode("latin-1") if authorization is not None else None,
        body=body,
        read_before_app=read_before_app,
        user=user.display_name if user is not None and user.is_authenticated else None,
        scopes=list(auth.scopes) if auth is not None else None,
        result=scope.get("apitokens.auth"),
        native={"user": user, "auth": auth},
    )


# -- WSGI -------------------------------------------------------------------------------------


class _Trickle:
    """A server's ``wsgi.input`` for a chunked request: each read returns one chunk at most."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = [c for c in chunks if c]

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            data = b"".join(self._chunks)
            self._chunks.clear()
            return data
        if not self._chunks or size == 0:
            return b""
        head = self._chunks[0]
        taken, rest = head[:size], head[size:]
        if rest:
            self._chunks[0] = rest
        else:
            self._chunks.pop(0)
        return taken

    def readline(self, size: int | None = -1) -> bytes:
        data = b"".join(self._chunks)
        end = data.find(b"\n") + 1 or len(data)
        if size is not None and size >= 0:
            end = min(end, size)
        self._chunks = [data[end:]] if data[end:] else []
        return data[:end]


class _Counting:
    """Counts the body bytes pulled from the server's stream."""

    def __init__(self, stream: Any, recorder: Recorder) -> None:
        self._stream = stream
        self._recorder = recorder

    def read(self, size: int | None = -1) -> bytes:
        return self._count(bytes(self._stream.read(-1 if size is None else size)))

    def readline(self, size: int | None = -1) -> bytes:
        return self._count(bytes(self._stream.readline(-1 if size is None else size)))

    def _count(self, data: bytes) -> bytes:
        if data:
            self._recorder.pulled += len(data)
            self._recorder.messages += 1
        return data

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def _not_found(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


class WSGIContractClient:
    """Drives a WSGI app with werkzeug's test ``Client`` (which sets ``RAW_URI`` as gunicorn does).

    Several headers of one name arrive joined with ", ", as WSGI servers hand them on.
    A chunked body arrives as a server gives it: no ``CONTENT_LENGTH``,
    ``wsgi.input_terminated`` set, and a stream that returns one chunk per read.
    """

    def __init__(self, app: WSGIApp, recorder: Recorder, *, mount: str = "") -> None:
        self.recorder = recorder
        if mount:
            app = DispatcherMiddleware(_not_found, {mount: app})
        self._client = Client(self._probe(app))

    def _probe(self, app: WSGIApp) -> WSGIApp:
        recorder = self.recorder

        def probed(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
            chunks = environ.pop("contract.chunks", None)
            stream = environ["wsgi.input"]
            if chunks is not None:
                stream = _Trickle(chunks)
                environ.pop("CONTENT_LENGTH", None)
                environ["wsgi.input_terminated"] = True
            environ["wsgi.input"] = _Counting(stream, recorder)
            return app(environ, start_response)

        return probed

    def send(
        self,
        method: str = "GET",
        path: str = "/rest/x",
        *,
        query: str = "",
        headers: Headers = (),
        body: Body = b"",
        client_ip: str = CLIENT_IP,
        target: str | None = None,
    ) -> Reply:
        """Send one request; ``target``: the request target exactly as on the wire."""
        self.recorder.reset()
        overrides: dict[str, Any] = {"REMOTE_ADDR": client_ip}
        data = body
        if not isinstance(body, bytes):
            overrides["contract.chunks"] = list(body)
            data = b""
        if target is not None:
            # What a server hands on for a target it routes as it can: the raw URI as
            # written, PATH_INFO its path (fragment and query dropped, as urlsplit does).
            routed = unquote(urlsplit(target).path)
            overrides.update(REQUEST_URI=target, RAW_URI=target, PATH_INFO=routed)
            path = routed if routed.startswith("/") else "/" + routed
        response = self._client.open(
            path,
            method=method,
            query_string=query,
            headers=list(headers),
            data=data,
            environ_overrides=overrides,
        )
        reply = Reply(
            status=response.status_code,
            headers=[(k.lower(), v) for k, v in response.headers.to_wsgi_list()],
            body=response.get_data(),
            seen=self.recorder.seen[-1] if self.recorder.seen else None,
        )
        response.close()
        return reply


# -- ASGI -------------------------------------------------------------------------------------


def _scope(kind: str, raw_path: bytes, path: str, headers: Headers, client_ip: str) -> Message:
    scope: Message = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http" if kind == "http" else "ws",
        "path": path,
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")]
        + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": (client_ip, 50000),
        "server": ("testserver", 80),
    }
    if kind == "http":
        scope["method"] = "GET"
    else:
        scope["subprotocols"] = []
    return scope


class ASGIContractClient:
    """Drives an ASGI app with ``httpx.ASGITransport``; by hand what httpx cannot send.

    Each header is its own ``(name, value)`` pair in the scope, as ASGI servers pass
    them. Starlette's ``TestClient`` is not used: with plain httpx installed it warns,
    and ``filterwarnings = error`` would fail the test.
    """

    def __init__(self, app: ASGIApp, recorder: Recorder, *, mount: str = "") -> None:
        self.recorder = recorder
        if mount:
            app = Starlette(routes=[Mount(mount, app=app)])
        self.app = self._probe(app)

    def _probe(self, app: ASGIApp) -> ASGIApp:
        recorder = self.recorder

        async def probed(scope: Message, receive: Any, send: Any) -> None:
            async def counted() -> Message:
                message: Message = await receive()
                if message["type"] == "http.request":
                    recorder.pulled += len(message.get("body", b""))
                    recorder.messages += 1
                return message

            await app(scope, counted, send)

        return probed

    def send(
        self,
        method: str = "GET",
        path: str = "/rest/x",
        *,
        query: str = "",
        headers: Headers = (),
        body: Body = b"",
        client_ip: str = CLIENT_IP,
        target: str | None = None,
    ) -> Reply:
        """Send one request; ``target``: the request target exactly as on the wire."""
        self.recorder.reset()
        if target is not None:
            return asyncio.run(self._raw(method, target, headers, body, client_ip))
        # A bound: an adapter that loses the body would leave the app waiting for it.
        sending = self._send(method, path, query, headers, body, client_ip)
        return asyncio.run(asyncio.wait_for(sending, timeout=10))

    async def _send(
        self, method: str, path: str, query: str, headers: Headers, body: Body, client_ip: str
    ) -> Reply:
        transport = httpx.ASGITransport(app=self.app, client=(client_ip, 50000))
        content: bytes | AsyncIterator[bytes]
        if isinstance(body, bytes):
            content = body
        else:
            chunks = list(body)

            async def streamed() -> AsyncIterator[bytes]:
                for chunk in chunks:
                    yield chunk

            content = streamed()
        url = f"{path}?{query}" if query else path
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.request(method, url, headers=list(headers), content=content)
        return Reply(
            status=response.status_code,
            headers=[(k.lower(), v) for k, v in response.headers.multi_items()],
            body=response.content,
            seen=self.recorder.seen[-1] if self.recorder.seen else None,
        )

    async def _raw(
        self, method: str, target: str, headers: Headers, body: Body, client_ip: str
    ) -> Reply:
        # As uvicorn (h11) hands on a target: raw_path up to "?", path its decoding.
        raw, _, query = target.partition("?")
        scope = _scope("http", raw.encode("latin-1"), unquote(raw), headers, client_ip)
        scope["method"] = method
        scope["query_string"] = query.encode("latin-1")
        whole = body if isinstance(body, bytes) else b"".join(body)
        sent = await drive_asgi(self.app, scope, [{"type": "http.request", "body": whole}])
        start = sent[0]
        return Reply(
            status=start["status"],
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]],
            body=b"".join(m.get("body", b"") for m in sent[1:]),
            seen=self.recorder.seen[-1] if self.recorder.seen else None,
        )

    def websocket(
        self, path: str, headers: Headers = (), client_ip: str = CLIENT_IP
    ) -> list[Message]:
        """A websocket handshake; what the app sent (accept, text, close, ...)."""
        self.recorder.reset()
        scope = _scope("websocket", path.encode(), path, headers, client_ip)
        return asyncio.run(drive_asgi(self.app, scope, [{"type": "websocket.connect"}]))

    def lifespan(self) -> list[Message]:
        """A lifespan: startup, then shutdown; what the app sent."""
        scope: Message = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        return asyncio.run(drive_asgi(self.app, scope, inbox))
