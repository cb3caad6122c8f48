"""A pool of SQLite connections, each lent to one thread at a time.

A pool rather than one connection per thread (``threading.local``) because
servers often run a thread per request: per-thread connections would pile up
with every thread that ever called us, and could only be closed from
``close()``. Lending never shares a connection between two threads at once,
which is what makes ``check_same_thread=False`` safe whatever
``sqlite3.threadsafety`` is.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

from apitokens._errors import StorageError

__all__ = ["Pool"]

_MAX_IDLE = 8
"""Idle connections kept for reuse; more are opened under load and closed after."""


class Pool:
    """Connections lent to one thread at a time; at most ``max_size`` lent (None: no limit)."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        max_size: int | None,
        timeout: float,
        private: bool,
    ) -> None:
        self._connect = connect
        self._max_size = max_size
        self._timeout = timeout
        # A private database lives only as long as its one connection: never drop it.
        self._private = private
        self._cond = threading.Condition()
        self._idle: list[sqlite3.Connection] = []
        self._lent = 0
        self.closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        conn = self._acquire()
        try:
            yield conn
        finally:
            self._release(conn)

    def _acquire(self) -> sqlite3.Connection:
        deadline = time.monotonic() + self._timeout
        with self._cond:
            while True:
                if self.closed:
                    raise StorageError("the SQLite store is closed")
                if self._idle:
                    self._lent += 1
                    return self._idle.pop()
                if self._max_size is None or self._lent < self._max_size:
                    self._lent += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    raise StorageError("timed out waiting for the SQLite connection")
        try:
            return self._connect()  # outside the lock: opening a file can be slow
        except BaseException:
            with self._cond:
                self._lent -= 1
                self._cond.notify()
            raise

    def _release(self, conn: sqlite3.Connection) -> None:
        with self._cond:
            self._lent -= 1
            healthy = self._private or not conn.in_transaction
            keep = not self.closed and healthy and len(self._idle) < _MAX_IDLE
            if keep:
                self._idle.append(conn)
            self._cond.notify()
        if not keep:
            conn.close()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for conn in idle:
            conn.close()
