"""Throttling failed authentications, per client address."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque

__all__ = ["BUSY", "FailureThrottle"]

BUSY = -1
"""What :meth:`FailureThrottle.reserve` answers when attempts in flight fill the limit."""


class FailureThrottle:
    """A sliding-window count of failures per key, bounded in memory.

    A key with ``limit`` failures within the last ``window`` seconds is
    blocked until the oldest of them leaves the window. It is consulted
    before any hashing, so wrong secrets cannot be used to burn CPU.

    Args:
        limit: failures allowed within the window.
        window: the window, in seconds.
        max_keys: most keys tracked; the least recently failed is forgotten
            first, so a flood of addresses cannot exhaust memory.
    """

    def __init__(self, limit: int, window: float, *, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()
        # The keys whose deque is full (``limit`` failures; a deque never shrinks, so a
        # key stays here until it is forgotten). Kept so that :meth:`suspect` is a set
        # lookup, which the authenticator's hot path makes inline (``key in suspects``)
        # for every request; written only under the lock, read without it.
        self.suspects: set[str] = set()
        # Attempts let start by reserve() and not yet settled, per key (bounded by how
        # many run at once; a key leaves when its last one settles).
        self._in_flight: dict[str, int] = {}

    def suspect(self, key: str) -> bool:
        """Return whether ``key`` has ``limit`` recent failures, so may be blocked.

        A set lookup and no lock: the common case (no failures) costs next to
        nothing. Only when this is true does :meth:`retry_after` need the time.
        """
        return key in self.suspects

    def retry_after(self, key: str, now: float) -> int:
        """Return seconds until ``key`` may try again; 0 when it is not blocked."""
        # reserve() calls this with the lock held; without it, a read races with _add()
        # at most (a deque only grows, its maxlen dropping the oldest): never an error.
        failures = self._failures.get(key)
        if failures is None or len(failures) < self.limit:
            return 0
        try:
            wait = failures[0] + self.window - now
        except IndexError:
            return 0
        return max(1, math.ceil(wait)) if wait > 0 else 0

    def reserve(self, key: str, now: float) -> int:
        """Let one attempt for ``key`` start, counted as in flight until :meth:`settle`.

        Checked and counted in one step under the lock, so concurrent attempts cannot
        all pass the check first: recorded failures and attempts in flight together
        never exceed ``limit``.

        Returns:
            0: go ahead (now in flight). A positive number: seconds to wait, ``key``
            has ``limit`` recorded failures within the window. :data:`BUSY`: not
            that many failures, but with the attempts still in flight the limit is
            reached; try again in a moment (their outcome is not known yet).
        """
        with self._lock:
            wait = self.retry_after(key, now)
            if wait:
                return wait
            failures = self._failures.get(key)
            recent = sum(1 for at in failures if at > now - self.window) if failures else 0
            in_flight = self._in_flight.get(key, 0)
            if recent + in_flight >= self.limit:
                return BUSY
            self._in_flight[key] = in_flight + 1
            return 0

    def settle(self, key: str, now: float, *, failed: bool) -> None:
        """End an attempt :meth:`reserve` let start; a failed one is recorded."""
        with self._lock:
            left = self._in_flight.pop(key, 0) - 1
            if left > 0:
                self._in_flight[key] = left
            if failed:
                self._add(key, now)

    def fail(self, key: str, now: float) -> None:
        """Record one failure for ``key`` at ``now`` (seconds)."""
        with self._lock:
            self._add(key, now)

    def _add(self, key: str, now: float) -> None:
        """Count one attempt for ``key`` (the lock held)."""
        failures = self._failures.get(key)
        if failures is None:
            failures = self._failures[key] = deque(maxlen=self.limit)
            if len(self._failures) > self.max_keys:
                forgotten, _ = self._failures.popitem(last=False)
                self.suspects.discard(forgotten)
        else:
            self._failures.move_to_end(key)
        failures.append(now)
        if len(failures) >= self.limit and key in self._failures:
            self.suspects.add(key)

    def __len__(self) -> int:
        return len(self._failures)
