"""The connections of a SQLiteStore: how each is set up, pooled, and used for transactions.

Threading model: a small pool of connections, each lent to one thread for one
call (see ``_pool.py`` for why a pool). In WAL mode readers never wait for the
writer.

Writers in this process queue on a lock before ``BEGIN IMMEDIATE``: SQLite's
busy handler polls with sleeps, so a lock is both faster and fairer among our
own threads; ``busy_timeout`` still covers writers in other processes.

``:memory:`` (and ``""``) give each connection its own private database, so
for them the pool holds exactly one connection, lent to one thread at a time.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator

from apitokens._errors import StorageError
from apitokens.storage._pool import Pool

__all__ = ["Database"]


def _casefold(value: object) -> str | None:
    return None if value is None else str(value).casefold()


class Database:
    """One SQLite database: its connection pool, its write lock, its transactions.

    Args:
        path: the file, or ``":memory:"`` / ``""`` for a private database.
        timeout: seconds a write waits for the lock (ours, then SQLite's).
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self._timeout = timeout
        self.private = path in ("", ":memory:")
        self.pool = Pool(
            self._connect,
            max_size=1 if self.private else None,
            timeout=timeout,
            private=self.private,
        )
        self._write_lock = threading.Lock()
        self._fork_held = False
        _DATABASES.add(self)

    def _connect(self) -> sqlite3.Connection:
        """A new connection, set up as every connection of the pool is."""
        conn = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000):d}")
            # Overwrite deleted content (old revealable strings, replaced hashes) with zeros.
            conn.execute("PRAGMA secure_delete = ON")
            # Set, not assumed: a build may default to NORMAL. Audit batches relax it.
            conn.execute("PRAGMA synchronous = FULL")
            # Audit batches spread over many tokens dirty a leaf page per token in each
            # index, every batch. A page cache that holds them (16 MB, not 2) and a WAL
            # checkpointed every 10,000 pages (40 MB, not 1,000) write each of them once
            # per checkpoint instead of once per batch: 30-36k to 53-60k events/s with
            # 1,000 tokens in use (benchmarks/findings.md).
            conn.execute("PRAGMA cache_size = -16384")
            conn.execute("PRAGMA wal_autocheckpoint = 10000")
            # SQLite's lower() folds ASCII only; the memory store uses str.casefold().
            conn.create_function("apitokens_casefold", 1, _casefold, deterministic=True)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def failures(self, operation: str) -> Iterator[None]:
        """Turn a ``sqlite3.Error`` into a :class:`StorageError` naming ``operation``."""
        try:
            yield
        except sqlite3.Error as exc:
            # sqlite3 messages name tables and constraints, never bound values.
            raise StorageError(f"SQLite store {operation} failed: {exc}") from exc

    @contextlib.contextmanager
    def write(self, operation: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction.

        ``durable=False`` commits without an fsync (``synchronous=NORMAL``): a
        power cut, never a crash of the process, may lose that commit. Audit
        batches use it; token changes (a revocation above all) never do, and
        their fsync also makes every earlier commit in the WAL durable.
        """
        with self.failures(operation):
            if not self._write_lock.acquire(timeout=self._timeout):
                raise StorageError(f"SQLite store {operation} failed: timed out behind writers")
            try:
                with self.pool.connection() as conn:
                    if not durable:
                        conn.execute("PRAGMA synchronous = NORMAL")
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                        try:
                            yield conn
                            conn.execute("COMMIT")
                        except BaseException:
                            if conn.in_transaction:
                                with contextlib.suppress(sqlite3.Error):
                                    conn.execute("ROLLBACK")
                            raise
                    finally:
                        if not durable:
                            conn.execute("PRAGMA synchronous = FULL")
            finally:
                self._write_lock.release()

    @contextlib.contextmanager
    def read(self, operation: str) -> Iterator[sqlite3.Connection]:
        """A connection for reading (WAL: it never waits for the writer)."""
        with self.failures(operation), self.pool.connection() as conn:
            yield conn

    def close(self) -> None:
        """Close every connection (see :meth:`Pool.close`)."""
        self.pool.close()

    # -- fork: never in the middle of one of our write transactions --------------------

    def _before_fork(self) -> None:
        self._fork_held = self._write_lock.acquire(timeout=self._timeout)

    def _after_fork_in_parent(self) -> None:
        if self._fork_held:
            self._fork_held = False
            self._write_lock.release()

    def _after_fork_in_child(self) -> None:
        self._write_lock = threading.Lock()
        self._fork_held = False


_DATABASES: weakref.WeakSet[Database] = weakref.WeakSet()


def _before_fork() -> None:
    for database in list(_DATABASES):
        database._before_fork()


def _after_fork_in_parent() -> None:
    for database in list(_DATABASES):
        database._after_fork_in_parent()


def _after_fork_in_child() -> None:
    for database in list(_DATABASES):
        database._after_fork_in_child()


# Registered after the pool's hooks (this module imports _pool first), so this runs
# before them at a fork: the write lock first, then the wait for lent connections.
if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
