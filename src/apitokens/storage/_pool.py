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
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator

from apitokens._errors import StorageError

__all__ = ["Pool"]

_MAX_IDLE = 8
"""Idle connections kept for reuse; more are opened under load and closed after."""

_FORK_WAIT = 5.0
"""Longest ``os.fork()`` waits for connections lent to other threads to come back."""


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
        _POOLS.add(self)

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

    # -- fork: SQLite connections must never cross one (sqlite.org/howtocorrupt.html) ---

    def _before_fork(self) -> None:
        """Hold the pool across the fork with no connection lent and none idle.

        The child gets a pool with no connection of the parent's: it opens its own.
        Idle connections are closed, in the parent (it reopens them as needed), so
        the child has none to close or use: a file database only; a private one
        lives in its one connection, which the child keeps (a copy of its memory).
        """
        self._cond.acquire()
        self._cond.wait_for(lambda: self._lent == 0, timeout=_FORK_WAIT)
        if not self._private:
            idle, self._idle = self._idle, []
            for conn in idle:
                conn.close()

    def _after_fork_in_parent(self) -> None:
        self._cond.release()

    def _after_fork_in_child(self) -> None:
        self._cond = threading.Condition()
        self._lent = 0


_POOLS: weakref.WeakSet[Pool] = weakref.WeakSet()


def _before_fork() -> None:
    for pool in list(_POOLS):
        pool._before_fork()


def _after_fork_in_parent() -> None:
    for pool in list(_POOLS):
        pool._after_fork_in_parent()


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
