"""Helpers shared by the test suites: a settable clock and ready-made ApiTokens."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterable
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


def make_tokens(
    store: TokenStore | None = None,
    *,
    clock: Clock | None = None,
    groups: Callable[[str], Iterable[str]] | None = None,
    **policy: Any,
) -> ApiTokens:
    """An ApiTokens on a MemoryStore (unless given) with the cheap hasher."""
    return ApiTokens(
        store if store is not None else MemoryStore(),
        policy=Policy(**policy),
        groups=groups,
        hasher=CHEAP_HASHER,
        clock=clock or Clock(),
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
