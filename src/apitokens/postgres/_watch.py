"""Deadlines on connections: no call waits for a server that stopped answering.

TCP keepalives and ``tcp_user_timeout`` notice a peer that is gone, but not a
path that still acknowledges every byte and answers nothing (a hung pgbouncer, a
stopped database host behind a proxy, a frozen middlebox): libpq then waits for
an answer forever. The watchdog bounds that wait on the client: a call registers
its connection with a deadline, and a connection still registered when its
deadline passes has its socket shut down, so libpq's wait ends at once (the
connection is broken, the pool drops it, the call raises). One thread serves every
store of the process and sleeps while no call is running; a call costs a lock
and a dict entry, no thread and no system call. The thread ends when the last
open store closes: a closed store leaves nothing running.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.pq


class _Watchdog:
    """Shuts down the socket of a connection whose call outlived its deadline."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._watched: dict[int, tuple[float, psycopg.Connection[Any]]] = {}
        self._keys = itertools.count()
        self._wake_at = math.inf  # when the thread wakes next (inf: it waits for a call)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()  # the current thread's
        self._users = 0  # stores open

    def open(self) -> None:
        """A store opens: the thread runs (from its first call) until the last closes."""
        with self._cond:
            self._users += 1

    def close(self) -> None:
        """A store closed: the last one out stops the thread and waits for it."""
        with self._cond:
            self._users -= 1
            thread = self._thread
            if self._users > 0 or thread is None:
                return
            self._stop.set()
            self._cond.notify_all()
            self._thread = None
        if thread is not threading.current_thread():
            thread.join()

    @contextlib.contextmanager
    def watch(self, conn: psycopg.Connection[Any], seconds: float) -> Iterator[list[bool]]:
        """Run the block with ``conn`` shut down if the block is still running in ``seconds``.

        Yields a list that holds ``True`` once the deadline fired (read it after a
        failure: the error is then the deadline's, not the server's).
        """
        fired: list[bool] = []
        key = next(self._keys)
        deadline = time.monotonic() + seconds
        with self._cond:
            if self._thread is None:
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name="apitokens-pg-watchdog", daemon=True
                )
                self._thread.start()
                self._wake_at = math.inf
            self._watched[key] = (deadline, conn)
            # Calls of one store share a length, so a new deadline is nearly always
            # the latest: the thread is woken only when it sleeps past this one.
            if deadline < self._wake_at:
                self._cond.notify()
        try:
            yield fired
        finally:
            with self._cond:
                if self._watched.pop(key, None) is None:
                    fired.append(True)

    def _run(self, stop: threading.Event) -> None:
        with self._cond:
            while not stop.is_set():
                now = time.monotonic()
                for key, (deadline, conn) in list(self._watched.items()):
                    if deadline <= now:
                        del self._watched[key]
                        _shut_down(conn)
                self._wake_at = min((d for d, _ in self._watched.values()), default=math.inf)
                self._cond.wait(None if self._wake_at == math.inf else self._wake_at - now)

    def after_fork_in_child(self) -> None:
        # The thread did not survive the fork, and its lock may have been held then;
        # the stores open in the parent are open in the child too.
        users = self._users
        self._reset()
        self._users = users


def _shut_down(conn: psycopg.Connection[Any]) -> None:
    """End ``conn``'s socket both ways: libpq's wait sees the end and fails at once."""
    # fromfd duplicates the descriptor; shutdown acts on the socket itself.
    with (
        contextlib.suppress(OSError, psycopg.Error),
        socket.fromfd(conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM) as sock,
    ):
        sock.shutdown(socket.SHUT_RDWR)


WATCHDOG = _Watchdog()

if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=WATCHDOG.after_fork_in_child)


def _ended(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server ended this idle connection (it said so, or closed it).

    An idle connection has nothing to read, unless the server ended the session
    (``idle_session_timeout``, a restart, ``pg_terminate_backend``: a FATAL error,
    then the end of the stream) or sent a parameter change. A poll that does not
    wait tells them apart from a healthy connection at the cost of a system call,
    where a query to check would cost a round trip to the server.
    """
    try:
        fd = conn.pgconn.socket
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            readable = bool(poller.poll(0))
        else:  # Windows
            readable = bool(select.select([fd], [], [], 0)[0])
        if not readable:
            return False
        conn.pgconn.consume_input()  # a parameter change is read; an end is an error
    except (OSError, psycopg.Error):
        return True
    return conn.pgconn.status != psycopg.pq.ConnStatus.OK
