"""Fixtures for the integration tests: one ApiTokens, a token of every kind, ASGI drivers.

Every test gets a fresh :class:`ApiTokens` on a ``MemoryStore`` protecting
``/rest/``, with a small body limit (for 413) and a throttle high enough that
the many refusals a test provokes never turn into 429s (one test lowers it
on purpose).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest

from apitokens import ApiTokens, IssuedToken, MemoryStore, Scope
from tests.support import Clock, drive_asgi, make_tokens

MAX_BODY = 64
"""``Policy.max_body_bytes`` of the ``tokens`` fixture."""

ALLOWED_NET = "203.0.113.0/24"

Message = dict[str, Any]
ASGIApp = Callable[..., Any]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _tokens(clock: Clock, **policy: Any) -> Iterator[ApiTokens]:
    store = MemoryStore()
    try:
        with make_tokens(
            store,
            clock=clock,
            protected_paths=["/rest/"],
            max_body_bytes=MAX_BODY,
            max_failed_attempts=10_000,
            **policy,
        ) as tokens:
            yield tokens
    finally:
        store.close()


@pytest.fixture
def tokens(clock: Clock) -> Iterator[ApiTokens]:
    """Protects ``/rest/``; other credentials pass through to the app."""
    yield from _tokens(clock)


@pytest.fixture
def strict_tokens(clock: Clock) -> Iterator[ApiTokens]:
    """Protects ``/rest/`` with ``allow_other_auth=False``: only tokens get in."""
    yield from _tokens(clock, allow_other_auth=False)


def issue_all(tokens: ApiTokens) -> dict[str, IssuedToken]:
    """One token of every kind, each owned by its own user."""
    return {
        "read": tokens.create(actor="alice", name="read"),
        "write": tokens.create(actor="bob", name="write", scope=Scope.READ_WRITE),
        "rules": tokens.create(actor="carol", name="rules", restrictions=[".*/rest/api/.*"]),
        "ip": tokens.create(actor="dave", name="ip", allowed_ips=[ALLOWED_NET, "2001:db8::/32"]),
        "json": tokens.create(
            actor="erin",
            name="json",
            scope=Scope.READ_WRITE,
            restrictions=["[post].*/rest/echo[JsonData::project==ABC]"],
        ),
    }


@pytest.fixture
def issued(tokens: ApiTokens) -> dict[str, IssuedToken]:
    """Tokens of ``tokens``: read (alice), write (bob), rules (carol), ip (dave), json (erin)."""
    return issue_all(tokens)


@pytest.fixture
def asgi_client() -> Callable[..., httpx.AsyncClient]:
    """``asgi_client(app, client=(ip, port))``: an httpx client that calls ``app`` in-process."""

    def make(app: ASGIApp, client: tuple[str, int] = ("127.0.0.1", 50000)) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=client)
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    return make


def http_scope(
    path: str,
    *,
    method: str = "GET",
    raw_path: bytes | None = None,
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    client: tuple[str, int] = ("127.0.0.1", 50000),
    kind: str = "http",
) -> Message:
    scope: Message = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http" if kind == "http" else "ws",
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"testserver"), *headers],
        "client": client,
        "server": ("testserver", 80),
    }
    if kind == "http":
        scope["method"] = method
    else:
        scope["subprotocols"] = []
    return scope


@pytest.fixture
def raw_asgi() -> Callable[..., list[Message]]:
    """``raw_asgi(app, scope, inbox)``: run one ASGI call by hand, return what it sent.

    For what httpx cannot send: literal ``..`` segments (httpx removes them),
    websocket handshakes and lifespan messages. Starlette's TestClient is not
    used: with plain httpx installed it warns (``StarletteDeprecationWarning``,
    "install httpx2"), which ``filterwarnings = error`` turns into a failure.
    """

    def run(app: ASGIApp, scope: Message, inbox: Sequence[Message] = ()) -> list[Message]:
        return asyncio.run(drive_asgi(app, scope, inbox))

    return run


@pytest.fixture
def make_scope() -> Callable[..., Message]:
    """``make_scope(path, method=, raw_path=, query=, headers=, client=, kind=)``."""
    return http_scope
