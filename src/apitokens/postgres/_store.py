"""PostgresStore: the TokenStore on a pool of connections."""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.sql
import psycopg_pool

from apitokens._errors import StorageError, TokenNotFound
from apitokens._model import (
    Action,
    AuditEvent,
    AuthEntry,
    Outcome,
    StoredToken,
    Token,
    TokenStatus,
    Usage,
)
from apitokens.postgres._connect import _configure, _described, _leak, _safe_message
from apitokens.postgres._feed import _ChangeFeed, _channel, _payload
from apitokens.postgres._migrate import _migrate
from apitokens.postgres._rows import (
    _event_from_row,
    _event_rows,
    _has_nul,
    _NulInText,
    _select_events,
    _select_tokens,
    _stored_from_row,
    _token_from_row,
    _token_params,
    _without_nul,
)
from apitokens.postgres._sql import (
    _ADD_FAILURES,
    _COPY_EVENTS,
    _COUNT_FAILURES,
    _EVENT_TYPES,
    _FOLD_USAGE,
    _INSERT_RECORD,
    _LOCK_USED,
    _REPLACE_HASH_NOTIFY,
    _REVOKE_NOTIFY,
    _STORED_COLUMNS,
    _UPDATE_RECORD_NOTIFY,
)
from apitokens.storage._base import (
    failure_rows,
    fold_usage,
    normalize_stored,
    require_utc,
    since_second,
)
from apitokens.storage._filters import EventQuery, TokenQuery

# -- the store ----------------------------------------------------------------------------

# insufficient_privilege (most often no CREATE on the schema), and invalid_schema_name
# ("no schema has been selected to create in": no schema of the search_path is usable).
_NO_PRIVILEGE = frozenset({"42501", "3F000"})
_PRIVILEGE_HINT = (
    "the role needs the right to create tables in the first schema of its search_path,"
    " or a deploy role must create them first: docs/deployment.md, 'Many hosts: PostgreSQL'"
)


class PostgresStore:
    """A :class:`~apitokens.TokenStore` in a PostgreSQL database.

    Any number of processes, on any number of hosts, may share one database. The
    schema is created or upgraded when the store opens (once, however many open it
    at once) and a database written by a newer apitokens is refused. Only hashes of
    secure-mode secrets are written; see ``docs/storage.md`` for the schema.
    """

    def __init__(self, dsn: str, *, pool_size: int = 10, timeout: float = 5.0) -> None:
        """Connect, create or upgrade the schema, and open the connection pool.

        Args:
            dsn: a libpq connection string (``host=... dbname=...``) or URL
                (``postgresql://user@host/db``). Its password is never shown in a
                repr, an error or a log line.
            pool_size: the most connections this store holds open at once.
            timeout: seconds a call waits for a connection, for connecting, and
                for a lock another session holds.

        Raises:
            ValueError: ``pool_size`` is not a positive int, or ``timeout`` not positive.
            SchemaVersionError: the database was written by a newer apitokens.
            StorageError: the DSN is invalid, the server cannot be reached, or the
                schema cannot be upgraded.
        """
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, not {pool_size!r}")
        if not (isinstance(timeout, int | float) and 0 < timeout < float("inf")):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self._shown, self._password = _described(dsn)
        self._dsn = dsn
        given = psycopg.conninfo.conninfo_to_dict(dsn).get("application_name")
        self._application_name = str(given) if given else "apitokens"
        self._pool_size = pool_size
        self._timeout = timeout
        self._closed = False
        self._lock = threading.Lock()
        with self._failures("open"):
            connect_timeout = max(1, round(timeout))
            with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
                _migrate(conn, f"PostgreSQL database {self._shown!r}")
                self._channel = _channel(conn)
            self._pool = self._open_pool()
        self._feed = _ChangeFeed(self)
        _STORES.add(self)

    def _open_pool(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
        return psycopg_pool.ConnectionPool(
            self._dsn,
            min_size=1,
            max_size=self._pool_size,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, round(self._timeout)),
                # Named in pg_stat_activity, unless the DSN names them itself.
                "application_name": self._application_name,
            },
            configure=functools.partial(_configure, lock_timeout=self._timeout),
            timeout=self._timeout,
            name="apitokens",
            open=True,
        )

    def _after_fork_in_child(self) -> None:
        """In a forked child: leave the parent's connections alone, open new ones.

        A connection's socket is shared with the parent after a fork: using it would
        mix two processes' messages, and closing it (even by the garbage collector, at
        exit) would send the server a Terminate that ends the parent's session. So
        the inherited pool is never touched again, nor ever freed (its worker
        threads did not survive the fork either), and the child gets a pool of its
        own (threads start here: nothing else runs in the child yet).
        """
        self._lock = threading.Lock()
        if self._closed:
            return
        _leak(self._pool)
        self._feed.after_fork_in_child()
        try:
            with self._failures("reopen after fork"):
                self._pool = self._open_pool()
        except BaseException:
            self._closed = True  # never the parent's connections: closed, fail closed
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({self._shown!r})"

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- connections and failures ------------------------------------------------------

    @contextlib.contextmanager
    def _failures(self, operation: str) -> Iterator[None]:
        """Turn a psycopg error into a :class:`StorageError` that holds no secret.

        The message is PostgreSQL's primary message only: its DETAIL may quote a
        row (a hash among its values). The password of the DSN is blanked out of it
        too, and the psycopg error, which carries the DETAIL, is not chained: ``from
        None``, so neither a traceback nor a logger shows it.
        """
        try:
            yield
        except psycopg.Error as exc:
            message = _safe_message(exc, self._password)
            if operation == "open":
                message = f"{self._shown}: {message}"
                if exc.sqlstate in _NO_PRIVILEGE:
                    message += f" ({_PRIVILEGE_HINT})"
            raise StorageError(f"PostgreSQL store {operation} failed: {message}") from None

    @contextlib.contextmanager
    def _connection(self, operation: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection (autocommit) for one call; failures become StorageError."""
        if self._closed:
            raise StorageError("the PostgreSQL store is closed")
        broken = False
        try:
            with self._failures(operation), self._pool.connection() as conn:
                try:
                    yield conn
                except psycopg.OperationalError:
                    broken = conn.broken
                    raise
        finally:
            if broken:
                # The server went away (restart, failover, killed backend): the idle
                # connections are most likely dead too. Drop them now, so that only
                # this call fails and the next ones get new connections.
                with contextlib.suppress(psycopg.Error):
                    self._pool.check()

    @contextlib.contextmanager
    def _transaction(self, operation: str) -> Iterator[psycopg.Connection[Any]]:
        with self._connection(operation) as conn, conn.transaction():
            yield conn

    # -- TokenStore ------------------------------------------------------------------

    def add(self, stored: StoredToken) -> None:
        """Store a new token (see :meth:`TokenStore.add`).

        Raises:
            StorageError: the id exists already, or the database failed.
            ValueError: a datetime is naive, or a secure token is revealable.
        """
        stored = normalize_stored(stored)
        token = stored.token
        with self._connection("add") as conn:
            cursor = conn.execute(_INSERT_RECORD, _token_params(stored))
            added = cursor.rowcount == 1
        if not added:
            raise StorageError(f"add failed: a token with id {token.id!r} exists")

    def get(self, token_id: str) -> StoredToken | None:
        """Return the token with its hashes, or ``None`` (see :meth:`TokenStore.get`).

        Raises:
            StorageError: the database failed or holds unreadable values.
        """
        query = f"SELECT {_STORED_COLUMNS} FROM apitokens_tokens WHERE id = %s"  # noqa: S608
        if "\x00" in token_id:  # text cannot hold one, so no stored id has one
            if self._closed:
                raise StorageError("the PostgreSQL store is closed")
            return None
        with self._connection("get") as conn:
            row = conn.execute(query, (token_id,)).fetchone()
        return None if row is None else _stored_from_row(row)

    def update(self, stored: StoredToken) -> None:
        """Replace a token's editable fields (see :meth:`TokenStore.update`).

        Raises:
            TokenNotFound: no token has this id.
            StorageError: the database failed.
            ValueError: a datetime is naive, or a secure token is revealable.
        """
        stored = normalize_stored(stored)
        token = stored.token
        params = (
            token.name,
            token.name.casefold(),
            token.expires_at,
            token.scope.value,
            list(token.restrictions),
            list(token.allowed_ips),
            token.secure,
            stored.secret_hash,
            stored.previous_hash,
            stored.previous_valid_until,
            stored.revealable,
            token.id,
        )
        with self._connection("update") as conn:
            notice = (self._channel, _payload(token.id))
            updated = conn.execute(_UPDATE_RECORD_NOTIFY, params + notice).rowcount
        if updated == 0:
            raise TokenNotFound(f"no token has id {token.id!r}")

    def replace_hash(self, token_id: str, *, old: str, new: str) -> bool:
        """Swap a token's hash if it is still ``old`` (see :meth:`TokenStore.replace_hash`).

        Returns:
            ``True`` if the hash was replaced.

        Raises:
            StorageError: the database failed.
        """
        with self._connection("replace_hash") as conn:
            notice = (self._channel, _payload(token_id))
            cursor = conn.execute(_REPLACE_HASH_NOTIFY, (new, token_id, old, *notice))
            return cursor.rowcount == 1

    def revoke(self, token_id: str, at: datetime) -> bool:
        """Revoke a token unless it already is (see :meth:`TokenStore.revoke`).

        Returns:
            ``True`` if this call revoked it.

        Raises:
            TokenNotFound: no token has this id.
            StorageError: the database failed.
            ValueError: ``at`` is naive.
        """
        at = require_utc(at, "at")
        with self._connection("revoke") as conn:
            notice = (self._channel, _payload(token_id))
            row = conn.execute(_REVOKE_NOTIFY, (at, token_id, token_id, *notice)).fetchone()
        assert row is not None
        revoked, exists, _ = row
        if not (revoked or exists):
            raise TokenNotFound(f"no token has id {token_id!r}")
        return bool(revoked)

    def list(
        self,
        *,
        now: datetime,
        user: str | None = None,
        status: TokenStatus | str | None = None,
        unused_since: datetime | None = None,
        name: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> builtins.list[Token]:
        """Return tokens newest first, status as of ``now`` (see :meth:`TokenStore.list`).

        Raises:
            ValueError: unknown status, naive datetime, negative limit or offset.
            StorageError: the database failed.
        """
        query = TokenQuery.from_arguments(
            now=now,
            user=user,
            status=status,
            unused_since=unused_since,
            name=name,
            limit=limit,
            offset=offset,
        )
        sql, params = _select_tokens(query)
        with self._connection("list") as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_token_from_row(row).as_of(query.now) for row in rows]

    def write(self, *, events: Sequence[AuditEvent] = (), usage: Sequence[Usage] = ()) -> None:
        """Record events and fold usage in one transaction (see :meth:`TokenStore.write`).

        Raises:
            ValueError: a datetime is naive or a count negative (nothing written).
            StorageError: the database failed (nothing written).
        """
        self._write(events, usage)

    def write_entries(
        self,
        *,
        events: Sequence[AuditEvent | AuthEntry] = (),
        usage: Sequence[Usage] = (),
    ) -> None:
        """:meth:`write`, with authentications as compact entries (``EntryWriter``).

        Raises:
            ValueError: a datetime is naive or a count negative (nothing written).
            StorageError: the database failed (nothing written).
        """
        self._write(events, usage)

    def _write(self, events: Sequence[AuditEvent | AuthEntry], usage: Sequence[Usage]) -> None:
        """One batch, one transaction: the events by COPY, then the usage in one UPDATE."""
        rows = _event_rows(events)
        totals = sorted(fold_usage(usage).items())
        if not rows and not totals:
            if self._closed:
                raise StorageError("the PostgreSQL store is closed")
            return
        try:
            self._write_rows(rows, totals)
        except _NulInText:
            # PostgreSQL's text cannot hold NUL, and an audit field can carry one from a
            # request (a Basic username, say). Refusing the batch would stall the writer
            # on it for good, so the NULs become U+FFFD and the batch goes in.
            self._write_rows([_without_nul(row) for row in rows], totals)

    def _write_rows(
        self, rows: builtins.list[tuple[object, ...]], totals: builtins.list[tuple[str, Any]]
    ) -> None:
        with self._transaction("write") as conn:
            if rows:
                try:
                    with conn.cursor() as cursor, cursor.copy(_COPY_EVENTS) as copy:
                        copy.set_types(_EVENT_TYPES)
                        for row in rows:
                            copy.write_row(row)
                except psycopg.DataError:
                    if any(_has_nul(row) for row in rows):
                        raise _NulInText from None
                    raise
            if totals:
                ids = [token_id for token_id, _ in totals]
                conn.execute(_LOCK_USED, (ids,))
                conn.execute(
                    _FOLD_USAGE,
                    (
                        ids,
                        [t.count for _, t in totals],
                        [t.last_at for _, t in totals],
                        [t.last_ip for _, t in totals],
                    ),
                )

    # -- the failure ledger (FailureLedger) -------------------------------------------

    def record_failures(self, counts: Mapping[str, int], at: datetime, *, keep: timedelta) -> None:
        """Add failed attempts per throttle key (see :class:`~apitokens.storage.FailureLedger`).

        One transaction: one upsert of every key (in key order, so two processes adding
        to the same keys at once queue rather than deadlock), then the old seconds go.

        Raises:
            ValueError: ``at`` is naive or a count is negative (nothing written).
            StorageError: the database failed (nothing written).
        """
        rows, oldest = failure_rows(counts, at, keep)
        # text cannot hold NUL; a key is an address, but never let one stall the flusher.
        rows = sorted((key.replace("\x00", "\ufffd"), second, n) for key, second, n in rows)
        with self._transaction("record_failures") as conn:
            if rows:
                conn.execute(
                    _ADD_FAILURES,
                    ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
                )
            conn.execute("DELETE FROM apitokens_failures WHERE second < %s", (oldest,))

    def failures_since(self, key: str, since: datetime) -> int:
        """Failed attempts for ``key`` at or after ``since`` (by whole seconds, rounded down).

        Raises:
            ValueError: ``since`` is naive.
            StorageError: the database failed.
        """
        first = since_second(since)
        with self._connection("failures_since") as conn:
            row = conn.execute(_COUNT_FAILURES, (key.replace("\x00", "\ufffd"), first)).fetchone()
        return int(row[0]) if row is not None else 0

    def events(
        self,
        *,
        token_id: str | None = None,
        user: str | None = None,
        action: Action | str | None = None,
        outcome: Outcome | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[AuditEvent]:
        """Return audit events newest first (see :meth:`TokenStore.events`).

        Raises:
            ValueError: unknown action or outcome, naive datetime, negative
                limit or offset.
            StorageError: the database failed.
        """
        query = EventQuery.from_arguments(
            token_id=token_id,
            user=user,
            action=action,
            outcome=outcome,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
        )
        sql, params = _select_events(query)
        with self._connection("events") as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_event_from_row(row) for row in rows]

    def prune_events(self, *, before: datetime) -> int:
        """Delete events with ``at < before`` (see :meth:`TokenStore.prune_events`).

        Returns:
            How many events were deleted.

        Raises:
            ValueError: ``before`` is naive.
            StorageError: the database failed.
        """
        before = require_utc(before, "before")
        with self._connection("prune_events") as conn:
            return conn.execute("DELETE FROM apitokens_audit WHERE at < %s", (before,)).rowcount

    def close(self) -> None:
        """Close the pool's connections; later calls raise ``StorageError``. Idempotent.

        Calls still running in other threads finish first (for up to ``timeout``).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._feed.stop()
        self._pool.close()

    # -- ChangeFeed --------------------------------------------------------------------

    def subscribe(self, callback: Callable[[str | None], None]) -> Callable[[], None]:
        """Call ``callback(token_id)`` after a change to that token, made by any process.

        See :class:`~apitokens.storage.ChangeFeed`. Every ``update``, ``replace_hash``
        and ``revoke`` sends a notice (``pg_notify``) in its own transaction, so it goes
        out when the change commits. The first subscriber starts one listener thread
        for the store, on a connection of its own (not the pool's); its ``LISTEN`` has
        been confirmed by the server when this returns. If that connection drops, the
        thread reconnects (0.1 s doubling to 5 s between attempts) and then calls every
        callback with ``None``: "anything may have changed" (a notice may have been
        sent while no one listened). The last unsubscriber, or :meth:`close`, stops
        the thread. A callback that raises is logged, and the others still called.

        Returns:
            The unsubscriber: after it returns, ``callback`` is not called again.

        Raises:
            StorageError: the store is closed, or the listener could not connect.
        """
        with self._failures("subscribe"):
            return self._feed.subscribe(callback)


_STORES: weakref.WeakSet[PostgresStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        with contextlib.suppress(StorageError):
            store._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)
