"""The change feed: LISTEN/NOTIFY, one listener thread, reconnect with backoff."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import psycopg
import psycopg.conninfo
import psycopg.sql
import psycopg_pool

from apitokens._errors import StorageError
from apitokens.postgres._connect import _leak, _safe_message
from apitokens.postgres._watch import WATCHDOG

log = logging.getLogger("apitokens")

# -- the change feed -----------------------------------------------------------------------


class _Source(Protocol):
    """What the feed reads of its store (a PostgresStore; not imported: no cycle)."""

    _closed: bool
    _dsn: str
    _timeout: float
    _channel: str
    _pool: psycopg_pool.ConnectionPool[Any]
    _shown: str
    _password: str | None


_NAMEDATALEN = 64  # PostgreSQL's identifier limit, terminator included
_CHANNEL_PREFIX = "apitokens_changes:"
_IDLE = 1.0  # seconds the listener waits for a notice before it checks for stop anyway
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 5.0
_LISTENER_NAME = "apitokens-listener"
# Defaults for the listener's connection, unless the DSN sets them: a peer that
# vanished without closing (a host gone) is noticed in about a minute; meanwhile the
# record cache's TTL still bounds what is served.
_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


def _channel(conn: psycopg.Connection[Any]) -> str:
    """The notification channel of the store's tables: one per schema.

    NOTIFY reaches the listeners of a channel in the same database, and stores in two
    schemas of one database share nothing else: the schema of the tables (the one
    the trigger that sends the notices names, ``TG_TABLE_SCHEMA``) is in the
    channel's name. A name longer than PostgreSQL's identifiers (63 bytes) is
    hashed, as the trigger does: LISTEN would cut it, and ``pg_notify`` refuses it.
    """
    row = conn.execute(
        "SELECT coalesce((SELECT n.nspname FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE c.oid = to_regclass('apitokens_tokens')),"
        " current_schema())"
    ).fetchone()
    schema = "" if row is None or row[0] is None else str(row[0])
    channel = _CHANNEL_PREFIX + schema
    if len(channel.encode()) >= _NAMEDATALEN:
        channel = _CHANNEL_PREFIX + hashlib.sha256(schema.encode()).hexdigest()[:40]
    return channel


class _Listening:
    """One run of the listener thread: its stop flag and its current connection."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.conn: psycopg.Connection[Any] | None = None
        self.wake = ""  # the wake channel of conn
        self.thread: threading.Thread | None = None

    def use(self, conn: psycopg.Connection[Any] | None) -> None:
        """Make ``conn`` the current connection (call with :attr:`lock` held)."""
        self.conn = conn
        self.wake = "" if conn is None else _wake_channel(conn)


class _ChangeFeed:
    """A store's subscribers, and the thread that listens for its channel's notices."""

    def __init__(self, store: _Source) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._callbacks: builtins.list[Callable[[str | None], None]] = []
        self._listening: _Listening | None = None

    def subscribe(self, callback: Callable[[str | None], None]) -> Callable[[], None]:
        with self._lock:
            if self._store._closed:
                raise StorageError("the PostgreSQL store is closed")
            if self._listening is None:
                # Connected and listening here, on the caller's thread: the
                # subscription is live before subscribe() returns, or it raises.
                self._start(self._connect())
            self._callbacks.append(callback)
        done = False

        def unsubscribe() -> None:
            nonlocal done
            with self._lock:
                if done:
                    return
                done = True
                self._callbacks.remove(callback)
                last = not self._callbacks
            if last:
                self.stop(only_if_idle=True)

        return unsubscribe

    def stop(self, *, only_if_idle: bool = False) -> None:
        """Stop the listener thread and wait for it (unless called from it)."""
        with self._lock:
            listening = self._listening
            if listening is None or (only_if_idle and self._callbacks):
                return
            self._listening = None
        with listening.lock:
            listening.stop.set()
            wake = listening.wake
        if wake:
            self._wake(wake)
        thread = listening.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def after_fork_in_child(self) -> None:
        """In a forked child: the thread is gone, its connection is the parent's.

        That connection is never touched again (see ``_leak``); if anyone subscribed,
        a new thread connects, listens, and tells them "anything may have changed".
        """
        self._lock = threading.Lock()
        listening, self._listening = self._listening, None
        if listening is None:
            return
        if listening.conn is not None:
            _leak(listening.conn)
        if self._callbacks:
            self._start(None)

    def _start(self, conn: psycopg.Connection[Any] | None) -> None:
        listening = _Listening()
        listening.use(conn)
        listening.thread = threading.Thread(
            target=self._run, args=(listening,), name="apitokens-pg-listener", daemon=True
        )
        self._listening = listening
        listening.thread.start()

    def _connect(self) -> psycopg.Connection[Any]:
        """A new connection that listens on the store's channel and its own wake channel."""
        store = self._store
        parts = psycopg.conninfo.conninfo_to_dict(store._dsn)
        extra = {key: value for key, value in _KEEPALIVES.items() if key not in parts}
        conn = psycopg.connect(
            psycopg.conninfo.make_conninfo(store._dsn, **extra),
            autocommit=True,
            connect_timeout=max(1, round(store._timeout)),
            application_name=_LISTENER_NAME,
        )
        try:
            # Bounded as the store's calls are: subscribe() runs on the caller's thread.
            with WATCHDOG.watch(conn, 2 * store._timeout):
                listen = psycopg.sql.SQL("LISTEN {}")
                conn.execute(listen.format(psycopg.sql.Identifier(store._channel)))
                conn.execute(listen.format(psycopg.sql.Identifier(_wake_channel(conn))))
        except BaseException:
            conn.close()
            raise
        return conn

    def _wake(self, channel: str) -> None:
        """Wake the listener out of its wait: a notice on its own channel.

        Sent through the pool (still open: the store closes it after this); if that
        fails, the thread still stops within ``_IDLE`` seconds.
        """
        store = self._store
        with (
            contextlib.suppress(psycopg.Error),
            store._pool.connection() as other,
            WATCHDOG.watch(other, 2 * store._timeout),
        ):
            other.execute("SELECT pg_notify(%s, '')", (channel,))

    def _run(self, listening: _Listening) -> None:
        conn, delay, shown = listening.conn, 0.0, self._store._shown
        # Whether "reconnected" is news: a forked child's listener starts without a
        # connection, and its first is no reconnect unless an attempt failed before it.
        announce = conn is not None
        try:
            while not listening.stop.is_set():
                if conn is None:
                    if listening.stop.wait(delay):
                        break
                    delay = min(max(delay * 2, _FIRST_BACKOFF), _MAX_BACKOFF)
                    try:
                        conn = self._connect()
                    except psycopg.Error as exc:
                        log.warning(
                            "PostgreSQL store %s: the change listener cannot reconnect (%s);"
                            " trying again in %.1f s",
                            shown,
                            _safe_message(exc, self._store._password),
                            delay,
                        )
                        announce = True
                        continue
                    with listening.lock:
                        listening.use(conn)
                        if listening.stop.is_set():
                            break
                    if announce:
                        log.warning("PostgreSQL store %s: the change listener reconnected", shown)
                    announce = True
                    delay = 0.0
                    # A notice sent while no one listened is lost: forget everything.
                    self._deliver(None)
                try:
                    for notice in conn.notifies(timeout=_IDLE):
                        if listening.stop.is_set():
                            break
                        if notice.channel == self._store._channel:
                            self._deliver(notice.payload or None)
                except psycopg.Error as exc:
                    if listening.stop.is_set():
                        break
                    log.warning(
                        "PostgreSQL store %s: the change listener lost its connection (%s);"
                        " reconnecting (meanwhile records are cached for the TTL only)",
                        shown,
                        _safe_message(exc, self._store._password),
                    )
                    with listening.lock:
                        listening.use(None)
                    conn.close()
                    conn = None
        finally:
            with listening.lock:
                listening.use(None)
            if conn is not None:
                conn.close()

    def _deliver(self, token_id: str | None) -> None:
        with self._lock:
            callbacks = tuple(self._callbacks)
        for callback in callbacks:
            try:
                callback(token_id)
            except Exception:
                log.exception("a change-feed callback of a PostgreSQL store failed")


def _wake_channel(conn: psycopg.Connection[Any]) -> str:
    """The listener connection's own channel: only its stop() sends to it."""
    return f"apitokens_wake:{conn.info.backend_pid}"
