"""Failed attempts shared by every process on a store (DESIGN §8, ``FailureLedger``).

Each process throttles failures per client address on its own (``_throttle.py``); a
store that offers :class:`~apitokens.storage.FailureLedger` lets the processes add up
their counts, so four workers do not give a guesser four times the attempts.

Nothing here runs on a cached good token's path. A failure is handed to a background
thread, which sends what has gathered to the store in one transaction, at most one
every ``flush_interval`` seconds. The count of a key is read from the store just
before a secret is hashed (where ~50 ms of hashing is about to be spent anyway) and
reused for ``cache_interval`` seconds. What this process has not sent yet is added to
what the store says, so its own failures are never missed.

A process sees the others' failures late by at most ``flush_interval`` (plus one
write) + ``cache_interval``: that is the error bound ``docs/security.md`` states.
A store that fails is never a reason to let more through than the process's own
throttle: its count is then unknown, and the process counts alone (logged once).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta

from .storage import FailureLedger

__all__ = ["CACHE_INTERVAL", "FLUSH_INTERVAL", "SharedFailures"]

log = logging.getLogger("apitokens")

FLUSH_INTERVAL = 0.02
"""Least time between two writes of one process's failures, in seconds.

A failure is sent at once when no write happened within it; failures that come
meanwhile gather into the next transaction. At most one write per failure, and
every failure cost a hash (~50 ms): the writes are a few percent of that at most.
"""
CACHE_INTERVAL = 0.05
"""How long a key's count read from the store is reused, in seconds."""
# Most keys whose count is cached, and most keys waiting to be sent (more are dropped
# from what waits, never from the local throttle, which still counts them).
MAX_KEYS = 100_000


class SharedFailures:
    """This process's side of a :class:`~apitokens.storage.FailureLedger`. Thread-safe.

    Args:
        ledger: the store.
        window: the throttle's window, in seconds.
        clock: the wall clock (aware UTC datetimes) the store's times are read on.
        monotonic: the clock of ``cache_interval`` and ``flush_interval``.
    """

    def __init__(
        self,
        ledger: FailureLedger,
        window: float,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
        *,
        flush_interval: float = FLUSH_INTERVAL,
        cache_interval: float = CACHE_INTERVAL,
    ) -> None:
        self.ledger = ledger
        self.window = window
        self.flush_interval = flush_interval
        self.cache_interval = cache_interval
        self._clock = clock
        self._monotonic = monotonic
        self._start()

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: dict[str, int] = {}  # failures not sent yet
        self._sending: dict[str, int] = {}  # being written now (neither pending nor read)
        self._counts: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key: (count, read at)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._read_failed = False  # logged once until a read works again
        self._write_failed = False
        self._pid = os.getpid()

    def count(self, key: str) -> int | None:
        """Failures of ``key`` within the window, by every process; ``None``: unknown.

        Reads the store when the cached count is older than ``cache_interval``.
        """
        self._check_fork()
        now = self._monotonic()
        with self._lock:
            cached = self._counts.get(key)
            mine = self._pending.get(key, 0) + self._sending.get(key, 0)
        if cached is not None and now - cached[1] < self.cache_interval:
            return cached[0] + mine
        since = self._clock() - timedelta(seconds=self.window)
        try:
            stored = self.ledger.failures_since(key, since)
        except Exception:  # any failure: count alone, never more openly than that
            if not self._read_failed:
                self._read_failed = True
                log.warning(
                    "apitokens: the store's failure ledger could not be read; until it can,"
                    " this process throttles failed attempts on its own count",
                    exc_info=True,
                )
            return None
        if self._read_failed:
            self._read_failed = False
            log.warning("apitokens: the store's failure ledger can be read again")
        with self._lock:
            self._counts[key] = (stored, now)
            self._counts.move_to_end(key)
            if len(self._counts) > MAX_KEYS:
                self._counts.popitem(last=False)
            # Read after the store had what was being sent: count what waits, once.
            mine = self._pending.get(key, 0)
        return stored + mine

    def add(self, key: str) -> None:
        """Count one failure of ``key``; it is sent to the store soon (never on this thread)."""
        self._check_fork()
        with self._lock:
            if self._closed:
                return
            if key in self._pending or len(self._pending) < MAX_KEYS:
                self._pending[key] = self._pending.get(key, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="apitokens-failures", daemon=True
                )
                self._thread.start()
            self._wake.notify_all()  # the thread, and never only a flush() waiting

    def flush(self, timeout: float = 10.0) -> None:
        """Send what waits now, on this thread, and wait for a batch the thread is sending.

        When it returns, every failure counted before the call is in the store (or
        its write failed), up to ``timeout`` seconds for the thread's batch
        (``ApiTokens.flush``, ``close``, tests).
        """
        self._check_fork()
        with self._lock:
            taken = self._take()
        self._send(taken)
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._sending and (left := deadline - time.monotonic()) > 0:
                self._wake.wait(left)

    def close(self) -> None:
        """Send what waits and stop the thread."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()  # the thread, and never only a flush() waiting
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self.flush()

    def _take(self) -> dict[str, int]:
        taken, self._pending = self._pending, {}
        for key, n in taken.items():
            self._sending[key] = self._sending.get(key, 0) + n
        return taken

    def _send(self, taken: dict[str, int]) -> None:
        if not taken:
            return
        sent = False
        try:
            self.ledger.record_failures(taken, self._clock(), keep=timedelta(seconds=self.window))
            sent = True
        except Exception:
            if not self._write_failed:
                self._write_failed = True
                log.warning(
                    "apitokens: failed attempts could not be written to the store's failure"
                    " ledger; other processes do not see them until it works again",
                    exc_info=True,
                )
        with self._lock:
            for key, n in taken.items():
                left = self._sending.get(key, 0) - n
                if left > 0:
                    self._sending[key] = left
                else:
                    self._sending.pop(key, None)
                if not sent and (key in self._pending or len(self._pending) < MAX_KEYS):
                    # Kept to send again; still counted for this process meanwhile.
                    self._pending[key] = self._pending.get(key, 0) + n
            if sent:
                # The cached counts lack what was just sent: this process's own
                # failures must not vanish from its count until the next read.
                for key in taken:
                    self._counts.pop(key, None)
            if not self._sending:
                self._wake.notify_all()  # a flush() waiting for this batch
        if sent and self._write_failed:
            self._write_failed = False
            log.warning("apitokens: the store's failure ledger can be written again")

    def _run(self) -> None:
        pid = os.getpid()
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed or pid != self._pid:
                    return
                taken = self._take()
            self._send(taken)
            # Spaced: what comes meanwhile gathers into the next transaction (a failing
            # store is retried slowly). Real time, not the injected clock; close() wakes it.
            pause = self.flush_interval if not self._write_failed else max(self.flush_interval, 1.0)
            deadline = time.monotonic() + pause
            with self._lock:
                while not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._wake.wait(left)

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            # A forked child: the parent's thread is not here, its lock may be held by
            # a thread that does not exist, and what it had not sent is the parent's.
            self._start()
