"""Throttling failed authentications, per client address."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque

__all__ = ["FailureThrottle"]


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

    def suspect(self, key: str) -> bool:
        """Return whether ``key`` has ``limit`` recent failures, so may be blocked.

        A set lookup and no lock: the common case (no failures) costs next to
        nothing. Only when this is true does :meth:`retry_after` need the time.
        """
        return key in self.suspects

    def retry_after(self, key: str, now: float) -> int:
        """Return seconds until ``key`` may try again; 0 when it is not blocked."""
        # reserve() calls this with the lock held; a caller without it may race with
        # release() shrinking the deque: off by one attempt at most, never an error.
        failures = self._failures.get(key)
        if failures is None or len(failures) < self.limit:
            return 0
        try:
            wait = failures[0] + self.window - now
        except IndexError:
            return 0
        return max(1, math.ceil(wait)) if wait > 0 else 0

    def reserve(self, key: str, now: float) -> int:
        """Count an attempt for ``key`` before it is made; seconds to wait if it may not be.

        Checking and counting in one step under the lock, so concurrent attempts
        cannot all pass the check before any of them is counted: at most ``limit``
        run within the window. An attempt that succeeds is released (:meth:`release`).

        Returns:
            0 when the attempt is counted and may go ahead, else seconds to wait.
        """
        with self._lock:
            wait = self.retry_after(key, now)
            if wait:
                return wait
            self._add(key, now)
            return 0

    def release(self, key: str, now: float) -> None:
        """Uncount an attempt :meth:`reserve` counted at ``now`` that turned out good."""
        with self._lock:
            failures = self._failures.get(key)
            if failures is None:
                return
            try:
                failures.remove(now)
            except ValueError:
                return  # pushed out of the window by later attempts already
            if len(failures) < self.limit:
                self.suspects.discard(key)

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
