"""Helpers shared by the test suites: settable clocks and ready-made ApiTokens."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import argon2

from apitokens import (
    ApiTokens,
    Argon2Hasher,
    AuditEvent,
    AuthRequest,
    MemoryStore,
    Policy,
    TokenStore,
)

# Tests hash with argon2-cffi's cheapest profile: same code path, no 50 ms.
CHEAP_HASHER = Argon2Hasher.from_parameters(argon2.profiles.CHEAPEST)
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class Monotonic:
    """A monotonic clock tests move by hand (``ApiTokens(monotonic=...)``), in seconds.

    It remembers how often each thread read it, and the last value each read: a test
    waits for a thread to reach a point where it reads the clock (a deadline taken)
    instead of polling, and tells at which time a thread decided what it did.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._reads: dict[int, tuple[int, float]] = {}  # thread ident: (reads, last value)
        self._read = threading.Condition()

    def __call__(self) -> float:
        with self._read:
            now = self.now
            count, _ = self._reads.get(threading.get_ident(), (0, now))
            self._reads[threading.get_ident()] = (count + 1, now)
            self._read.notify_all()
        return now

    def advance(self, seconds: float) -> None:
        with self._read:
            self.now += seconds

    def reads(self, thread: threading.Thread) -> int:
        """How many times ``thread`` has read the clock."""
        with self._read:
            return self._reads.get(thread.ident or -1, (0, 0.0))[0]

    def last_read(self, thread: threading.Thread) -> float | None:
        """What ``thread`` read last, or ``None`` if it never read the clock."""
        with self._read:
            entry = self._reads.get(thread.ident or -1)
            return None if entry is None else entry[1]

    def wait_for_read(self, thread: threading.Thread, after: int = 0) -> None:
        """Wait (up to 10 s, then fail) until ``thread`` has read the clock ``after`` + 1 times."""
        with self._read:
            read = self._read.wait_for(
                lambda: self._reads.get(thread.ident or -1, (0, 0.0))[0] > after, timeout=10
            )
        assert read, f"{thread.name} did not read the clock within 10 s"


def make_tokens(
    store: TokenStore | None = None,
    *,
    clock: Clock | None = None,
    monotonic: Monotonic | None = None,
    groups: Callable[[str], Iterable[str]] | None = None,
    **policy: Any,
) -> ApiTokens:
    """An ApiTokens on a MemoryStore (unless given) with the cheap hasher.

    Durations (cache TTL, throttle window, writer intervals) run on ``monotonic``,
    the real monotonic clock unless given.
    """
    return ApiTokens(
        store if store is not None else MemoryStore(),
        policy=Policy(**policy),
        groups=groups,
        hasher=CHEAP_HASHER,
        clock=clock or Clock(),
        monotonic=monotonic,
    )


def last_event(tokens: ApiTokens) -> AuditEvent:
    """The newest audit event (flushes the writer first)."""
    return tokens.audit(limit=1)[0]


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


def basic(user: str, password: str) -> list[tuple[str, str]]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return [("Authorization", f"Basic {raw}")]


def get(path: str, headers: Iterable[tuple[str, str]] = (), **kw: Any) -> AuthRequest:
    return AuthRequest(
        "GET", path, headers=list(headers), client_ip=kw.pop("ip", "192.0.2.1"), **kw
    )


class GatedHasher(Argon2Hasher):
    """The cheap argon2 hasher (a real one), whose verifications wait for ``gate``.

    ``started`` is released as each verification begins, and ``calls`` counts
    them: tests hold hash verifications in flight to see what others do meanwhile.
    """

    def __init__(self, gate: threading.Event) -> None:
        super().__init__(
            time_cost=argon2.profiles.CHEAPEST.time_cost,
            memory_cost=argon2.profiles.CHEAPEST.memory_cost,
            parallelism=argon2.profiles.CHEAPEST.parallelism,
        )
        self.gate = gate
        self.started = threading.Semaphore(0)
        self.calls = 0

    def verify(self, hashed: str, token: str) -> bool:
        self.calls += 1
        self.started.release()
        self.gate.wait(10)
        return super().verify(hashed, token)


async def drive_asgi(
    app: Callable[..., Any], scope: dict[str, Any], inbox: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Call an ASGI ``app`` with ``scope``; ``receive`` yields ``inbox``, then waits forever.

    Returns what the app sent. Bounded at 10 s, so an app that loses a message fails.
    """
    pending = list(inbox)
    sent: list[dict[str, Any]] = []
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await never.wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return sent


def serve_wsgi(app: Callable[..., Any]) -> Iterator[int]:
    """Serve a WSGI ``app`` with werkzeug's threaded server on 127.0.0.1; yield its port."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    # shutdown() waits for the loop's next turn: 50 ms, not the default half second.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
