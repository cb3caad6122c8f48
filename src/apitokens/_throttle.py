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

    Every ``now`` is a reading of a monotonic clock, in seconds (the
    authenticator's, injectable for tests), never the wall clock: setting the
    wall clock back or forward must neither lock an address out nor free it.

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
        # Attempts let start by reserve() and not yet settled, per key (bounded by how
        # many run at once; a key leaves when its last one settles).
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str, now: float) -> int:
        """Return seconds until ``key`` may try again; 0 when it is not blocked."""
        with self._lock:
            return self._retry_after(key, now)

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
            wait = self._retry_after(key, now)
            if wait:
                return wait
            failures = self._failures.get(key, ())
            recent = sum(1 for at in failures if at > now - self.window)
            in_flight = self._in_flight.get(key, 0)
            if recent + in_flight >= self.limit:
                return BUSY
            self._in_flight[key] = in_flight + 1
            return 0

    def check_shared(self, key: str, failures: int) -> int:
        """Whether an attempt :meth:`reserve` let start may go on, given ``failures``.

        ``failures`` are ``key``'s failures within the window as every process that
        shares the store counts them (``_ledger.py``), this one's included. Checked as
        :meth:`reserve` checks this process's own: the greater of the two counts, and
        the attempts in flight here (this one among them).

        Returns:
            0: go on. 1: ``failures`` reach the limit (seconds to wait: the store
            counts by seconds and does not say when its oldest leaves the window).
            :data:`BUSY`: with the attempts in flight the limit is reached.
        """
        if failures >= self.limit:
            return 1
        with self._lock:
            in_flight = self._in_flight.get(key, 0)
        if failures + in_flight > self.limit:
            return BUSY
        return 0

    def settle(self, key: str, now: float, *, failed: bool) -> None:
        """End an attempt :meth:`reserve` let start; a failed one is recorded at ``now``."""
        with self._lock:
            left = self._in_flight.pop(key, 0) - 1
            if left > 0:
                self._in_flight[key] = left
            if failed:
                self._record(key, now)

    def _retry_after(self, key: str, now: float) -> int:
        failures = self._failures.get(key)
        if failures is None or len(failures) < self.limit:
            return 0
        wait = failures[0] + self.window - now  # the oldest of the last ``limit``
        return max(1, math.ceil(wait)) if wait > 0 else 0

    def _record(self, key: str, now: float) -> None:
        failures = self._failures.get(key)
        if failures is None:
            failures = self._failures[key] = deque(maxlen=self.limit)
            if len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        failures.append(now)

    def __len__(self) -> int:
        return len(self._failures)
