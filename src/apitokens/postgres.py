"""PostgresStore: a TokenStore in PostgreSQL, shared by every process and host that uses it.

Needs the ``postgres`` extra (psycopg 3 and psycopg-pool)::

    pip install 'apitokens[postgres]'

    from apitokens.postgres import PostgresStore
    store = PostgresStore("postgresql://apitokens@db.internal/app")

The tables are prefixed ``apitokens_`` (they usually live beside the application's
own). The schema is versioned as SQLite's is (``apitokens_schema`` lists the applied
versions) and migrated when a store opens, under a transaction-scoped advisory lock,
so many workers starting at once migrate once. Every change to a token is announced
(NOTIFY) to every process listening on the store's channel, so that each forgets its
cached record at once (``subscribe``). See ``docs/storage.md``.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

try:
    import psycopg
    import psycopg.conninfo
    import psycopg.sql
    import psycopg_pool
except ImportError as error:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "apitokens.postgres needs psycopg 3 and psycopg-pool, which apitokens does not"
        f" install by itself ({error.name} is missing): pip install 'apitokens[postgres]'",
        name=error.name,
    ) from error

from apitokens._errors import SchemaVersionError, StorageError, TokenNotFound
from apitokens._model import (
    Action,
    AuditEvent,
    AuthEntry,
    Outcome,
    Scope,
    StoredToken,
    Token,
    TokenStatus,
    Usage,
)
from apitokens.storage._base import (
    failure_rows,
    fold_usage,
    normalize_event,
    normalize_stored,
    require_utc,
    since_second,
)
from apitokens.storage._filters import EventQuery, TokenQuery

__all__ = ["LATEST_VERSION", "MIGRATIONS", "PostgresStore"]

log = logging.getLogger("apitokens")

# -- the schema ---------------------------------------------------------------------------

_V1 = (
    """
    CREATE TABLE apitokens_tokens (
        id                    text PRIMARY KEY,
        name                  text NOT NULL,
        name_folded           text NOT NULL,
        "user"                text,
        created_by            text NOT NULL,
        created_at            timestamptz NOT NULL,
        expires_at            timestamptz,
        scope                 text NOT NULL,
        restrictions          text[] NOT NULL DEFAULT '{}',
        allowed_ips           text[] NOT NULL DEFAULT '{}',
        secure                boolean NOT NULL DEFAULT true,
        secret_hash           text NOT NULL,
        previous_hash         text,
        previous_valid_until  timestamptz,
        revealable            text,
        last_used_at          timestamptz,
        last_used_ip          text,
        use_count             bigint NOT NULL DEFAULT 0,
        revoked_at            timestamptz
    ) WITH (fillfactor = 70)
    """,
    # Every audit batch updates the usage columns of the tokens it saw. No index holds
    # them, and pages keep room (fillfactor), so those are HOT updates: the row version
    # stays on its page and no index is touched. With 1,000 tokens in each batch that
    # is 26k -> 45k events/s. So no index on last_used_at: a stale-token search
    # (created_at <= cut-off, and not used since) ranges over apitokens_tokens_by_created.
    # list(): by owner, by status, and its order (created_at DESC, id).
    'CREATE INDEX apitokens_tokens_by_user ON apitokens_tokens ("user", created_at DESC, id)',
    "CREATE INDEX apitokens_tokens_by_status ON apitokens_tokens (revoked_at, expires_at)",
    "CREATE INDEX apitokens_tokens_by_created ON apitokens_tokens (created_at DESC, id)",
    # seq keeps insertion order among equal times; every index ends with it so that
    # events() reads its order (at DESC, seq DESC) straight off the index.
    """
    CREATE TABLE apitokens_audit (
        seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at         timestamptz NOT NULL,
        action     text NOT NULL,
        outcome    text NOT NULL,
        token_id   text,
        "user"     text,
        actor      text,
        client_ip  text,
        method     text,
        path       text,
        reason     text NOT NULL DEFAULT ''
    )
    """,
    "CREATE INDEX apitokens_audit_by_token ON apitokens_audit (token_id, at, seq)",
    'CREATE INDEX apitokens_audit_by_user ON apitokens_audit ("user", at, seq)',
    # Nearly every row is a success: only the other outcomes are worth an index entry
    # (a search for successes walks apitokens_audit_by_at, where nearly all match).
    "CREATE INDEX apitokens_audit_by_outcome ON apitokens_audit (outcome, at, seq)"
    " WHERE outcome <> 'success'",
    "CREATE INDEX apitokens_audit_by_at ON apitokens_audit (at, seq)",
)

_V2 = (
    # The failure ledger (FailureLedger): failed attempts per throttle key per second of
    # the wall clock, shared by every process on the database. The primary key serves
    # failures_since and the upsert; the index on second serves the pruning.
    """
    CREATE TABLE apitokens_failures (
        key     text NOT NULL,
        second  bigint NOT NULL,
        count   bigint NOT NULL,
        PRIMARY KEY (key, second)
    )
    """,
    "CREATE INDEX apitokens_failures_by_second ON apitokens_failures (second)",
)

MIGRATIONS: tuple[Sequence[str], ...] = (_V1, _V2)
"""``MIGRATIONS[n]`` upgrades a database from schema version ``n`` to ``n + 1``.

A released migration is never edited: changes are new entries appended.
"""

LATEST_VERSION = len(MIGRATIONS)

_ADD_FAILURES = (
    "INSERT INTO apitokens_failures (key, second, count)"
    " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[])"
    " ON CONFLICT (key, second) DO UPDATE"
    " SET count = apitokens_failures.count + excluded.count"
)
_COUNT_FAILURES = (
    "SELECT coalesce(sum(count), 0) FROM apitokens_failures WHERE key = %s AND second >= %s"
)

_SCHEMA_TABLE = """
    CREATE TABLE IF NOT EXISTS apitokens_schema (
        version     integer PRIMARY KEY,
        applied_at  timestamptz NOT NULL DEFAULT now()
    )
"""
# pg_advisory_xact_lock's key: "apitoken" in ASCII, as a bigint.
_MIGRATION_LOCK = int.from_bytes(b"apitoken", "big")

# -- the statements -----------------------------------------------------------------------

_RECORD_COLUMNS = (
    'id, name, "user", created_by, created_at, expires_at, scope, restrictions, allowed_ips,'
    " secure, last_used_at, last_used_ip, use_count, revoked_at"
)
_STORED_COLUMNS = _RECORD_COLUMNS + ", secret_hash, previous_hash, previous_valid_until, revealable"
_EVENT_COLUMNS = 'at, action, outcome, token_id, "user", actor, client_ip, method, path, reason'

_INSERT_RECORD = (
    f"INSERT INTO apitokens_tokens ({_STORED_COLUMNS}, name_folded)"  # noqa: S608
    f" VALUES ({', '.join(['%s'] * 19)}) ON CONFLICT (id) DO NOTHING"
)
_UPDATE_RECORD = (
    "UPDATE apitokens_tokens SET name = %s, name_folded = %s, expires_at = %s, scope = %s,"
    " restrictions = %s, allowed_ips = %s, secure = %s, secret_hash = %s, previous_hash = %s,"
    " previous_valid_until = %s, revealable = %s WHERE id = %s"
)
# Each change to a token tells every listening process (LISTEN/NOTIFY, PostgresStore's
# change feed) in the same statement, so in the same transaction: the notice goes out
# when the change commits, and never for a change rolled back.
_UPDATE_RECORD_NOTIFY = (
    f"WITH changed AS ({_UPDATE_RECORD} RETURNING id)"  # noqa: S608 - constant fragments
    " SELECT pg_notify(%s, %s) FROM changed"
)
_REPLACE_HASH_NOTIFY = (
    "WITH changed AS (UPDATE apitokens_tokens SET secret_hash = %s"
    " WHERE id = %s AND secret_hash = %s RETURNING id) SELECT pg_notify(%s, %s) FROM changed"
)
# One statement: whether the token exists, and whether this call revoked it (and then
# the notice). A concurrent revoke waits on the row lock and then sees revoked_at set.
_REVOKE_NOTIFY = (
    "WITH revoked AS (UPDATE apitokens_tokens SET revoked_at = %s"
    " WHERE id = %s AND revoked_at IS NULL RETURNING 1)"
    " SELECT EXISTS (SELECT 1 FROM revoked),"
    " EXISTS (SELECT 1 FROM apitokens_tokens WHERE id = %s),"
    " (SELECT pg_notify(%s, %s) FROM revoked)"
)
# A batch's uses, folded per token, in one statement. The rows are locked first, in id
# order: two batches that share tokens then lock them in the same order and never
# deadlock (an UPDATE ... FROM locks rows in whatever order its join produces them).
_LOCK_USED = "SELECT 1 FROM apitokens_tokens WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE"
# SET expressions all see the row as it was, so the order of the two CASEs is irrelevant.
# The ids are unique (folded), so each row is updated once.
_FOLD_USAGE = (
    "UPDATE apitokens_tokens AS t SET use_count = t.use_count + u.count,"
    " last_used_ip = CASE WHEN t.last_used_at IS NULL OR t.last_used_at <= u.at"
    " THEN u.ip ELSE t.last_used_ip END,"
    " last_used_at = CASE WHEN t.last_used_at IS NULL OR t.last_used_at <= u.at"
    " THEN u.at ELSE t.last_used_at END"
    " FROM unnest(%s::text[], %s::bigint[], %s::timestamptz[], %s::text[])"
    " AS u(id, count, at, ip) WHERE t.id = u.id"
)
# Binary: each value goes as PostgreSQL stores it, not formatted (timestamps) and
# escaped (strings) as text first: the writer's CPU per audit row 1.8 -> 0.45 µs
# (benchmarks/findings.md, issue 15). A NUL in a string is still refused by the server.
_COPY_EVENTS = f"COPY apitokens_audit ({_EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_EVENT_TYPES = ("timestamptz", *["text"] * 9)  # the types of _EVENT_COLUMNS, in order

_ACTION_TEXT: dict[Action, str] = {action: action.value for action in Action}
_OUTCOME_TEXT: dict[Outcome, str] = {outcome: outcome.value for outcome in Outcome}
_AUTHENTICATE = Action.AUTHENTICATE.value


# -- the DSN, shown without its password ---------------------------------------------------


def _described(dsn: str) -> tuple[str, str | None]:
    """What to show of ``dsn`` (``host=... dbname=...``, never the password), and the password.

    Raises:
        StorageError: ``dsn`` is not a DSN libpq understands (its message is not
            shown: libpq quotes the part of the string it stumbled on).
    """
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        parts = None
    if parts is None:  # raised here, not in the except block: no __context__ to quote it
        raise StorageError("the PostgreSQL DSN is not valid (not shown: it may hold a password)")
    password = parts.pop("password", None)
    shown = " ".join(
        f"{key}={parts[key]}"
        for key in ("host", "hostaddr", "port", "dbname", "user")
        if key in parts
    )
    return shown or "(libpq defaults)", None if password is None else str(password)


# -- the store ----------------------------------------------------------------------------


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
            kwargs={"autocommit": True, "connect_timeout": max(1, round(self._timeout))},
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


# -- the change feed -----------------------------------------------------------------------

_NAMEDATALEN = 64  # PostgreSQL's identifier limit, terminator included
_MAX_PAYLOAD = 8000  # bytes; a notice's payload must be shorter
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
    schemas of one database share nothing else: the schema (the first of the
    ``search_path``, where the tables are) is in the channel's name. A name longer
    than PostgreSQL's identifiers (63 bytes) is hashed: LISTEN would cut it, and
    ``pg_notify`` refuses it.
    """
    row = conn.execute("SELECT current_schema()").fetchone()
    schema = "" if row is None or row[0] is None else str(row[0])
    channel = _CHANNEL_PREFIX + schema
    if len(channel.encode()) >= _NAMEDATALEN:
        channel = _CHANNEL_PREFIX + hashlib.sha256(schema.encode()).hexdigest()[:40]
    return channel


def _payload(token_id: str) -> str:
    """The notice's payload: the token id, or ``""`` ("anything") if it is too long."""
    return token_id if len(token_id.encode()) < _MAX_PAYLOAD else ""


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

    def __init__(self, store: PostgresStore) -> None:
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
        with contextlib.suppress(psycopg.Error), self._store._pool.connection() as other:
            other.execute("SELECT pg_notify(%s, '')", (channel,))

    def _run(self, listening: _Listening) -> None:
        conn, delay, shown = listening.conn, 0.0, self._store._shown
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
                        continue
                    with listening.lock:
                        listening.use(conn)
                        if listening.stop.is_set():
                            break
                    log.warning("PostgreSQL store %s: the change listener reconnected", shown)
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


# -- connections and errors ----------------------------------------------------------------

_STORES: weakref.WeakSet[PostgresStore] = weakref.WeakSet()
_INHERITED: builtins.list[object] = []


def _leak(pool: object) -> None:
    """Keep ``pool`` alive until the process ends, past interpreter shutdown.

    A module-level list is cleared when the interpreter shuts down, which would free
    the parent's connections (and send their Terminate); one more reference that is
    never released keeps them until the process exits and the kernel closes the
    sockets, silently.
    """
    _INHERITED.append(pool)
    api = getattr(ctypes, "pythonapi", None)  # CPython's; elsewhere the list must do
    if api is not None:
        api.Py_IncRef(ctypes.py_object(pool))


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        with contextlib.suppress(StorageError):
            store._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _configure(conn: psycopg.Connection[Any], *, lock_timeout: float) -> None:
    """Set up each new connection of the pool.

    Datetimes come back in UTC. A call waits at most ``lock_timeout`` for a row or
    table lock another session holds (a long transaction, a migration elsewhere),
    then fails (closed) instead of holding the request that made it.
    """
    conn.execute("SET TIME ZONE 'UTC'")
    # SET takes no parameters; the value is an int we computed.
    conn.execute(f"SET lock_timeout = {max(1, round(lock_timeout * 1000)):d}")


_SQLSTATE = re.compile(r"^[0-9A-Z]{5}$")


def _safe_message(exc: psycopg.Error, password: str | None) -> str:
    """The part of a psycopg error worth showing: its primary message, with no secret."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        message = "timed out waiting for a connection"
    elif isinstance(exc, psycopg_pool.PoolClosed):
        message = "the store is closed"
    else:
        primary = exc.diag.message_primary
        message = primary if primary else (str(exc).splitlines() or [type(exc).__name__])[0]
        state = exc.sqlstate
        if state and _SQLSTATE.match(state):
            message = f"{message} (SQLSTATE {state})"
    if password:
        message = message.replace(password, "********")
    return message


# -- migrations ----------------------------------------------------------------------------


def _version(conn: psycopg.Connection[Any]) -> int:
    """The database's schema version: 0 before apitokens ever wrote to it."""
    row = conn.execute("SELECT to_regclass('apitokens_schema') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM apitokens_schema").fetchone()
    return 0 if row is None else int(row[0])


def _check_version(conn: psycopg.Connection[Any], where: str) -> int:
    version = _version(conn)
    if version > LATEST_VERSION:
        raise SchemaVersionError(
            f"{where} has schema version {version}, but this apitokens supports schema"
            f" versions up to {LATEST_VERSION}: it was written by a newer apitokens;"
            " upgrade apitokens to open it"
        )
    return version


def _migrate(conn: psycopg.Connection[Any], where: str) -> None:
    """Bring the schema to ``LATEST_VERSION``: one transaction per migration, under a lock.

    An advisory lock serializes migrating processes (on any host); each reads the
    version again once it holds the lock, so a migration runs exactly once. The lock
    is the session's (``pg_advisory_lock``), taken before the transactions begin, not
    ``pg_advisory_xact_lock`` inside one: a transaction that began before the wait
    keeps its view of the catalog (it would not see the table that the process it
    waited for created). The lock goes with the connection if the process dies. An
    up-to-date database takes no lock at all.

    Args:
        conn: a connection in autocommit mode.
        where: how to name the database in error messages.

    Raises:
        SchemaVersionError: the database's version is newer than ``LATEST_VERSION``.
        psycopg.Error: a migration failed (its transaction is rolled back).
    """
    if _check_version(conn, where) == LATEST_VERSION:
        return
    conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        while True:
            with conn.transaction():
                version = _check_version(conn, where)
                if version == LATEST_VERSION:
                    return
                conn.execute(_SCHEMA_TABLE)
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute("INSERT INTO apitokens_schema (version) VALUES (%s)", (version + 1,))
    finally:
        if not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))


# -- rows ----------------------------------------------------------------------------------


def _token_params(stored: StoredToken) -> tuple[object, ...]:
    token = stored.token
    return (
        token.id,
        token.name,
        token.user,
        token.created_by,
        token.created_at,
        token.expires_at,
        token.scope.value,
        list(token.restrictions),
        list(token.allowed_ips),
        token.secure,
        token.last_used_at,
        token.last_used_ip,
        token.use_count,
        token.revoked_at,
        stored.secret_hash,
        stored.previous_hash,
        stored.previous_valid_until,
        stored.revealable,
        token.name.casefold(),
    )


def _utc(value: datetime | None) -> datetime | None:
    # Connections are set to UTC, so this is a no-op unless someone changed the setting.
    if value is None or value.tzinfo is UTC:
        return value
    return value.astimezone(UTC)


def _token_from_row(row: Sequence[Any]) -> Token:
    try:
        revoked_at = _utc(row[13])
        created_at = _utc(row[4])
        assert created_at is not None
        return Token(
            id=row[0],
            name=row[1],
            user=row[2],
            created_by=row[3],
            created_at=created_at,
            expires_at=_utc(row[5]),
            scope=Scope(row[6]),
            restrictions=tuple(row[7]),
            allowed_ips=tuple(row[8]),
            secure=bool(row[9]),
            last_used_at=_utc(row[10]),
            last_used_ip=row[11],
            use_count=row[12],
            revoked_at=revoked_at,
            status=TokenStatus.ACTIVE if revoked_at is None else TokenStatus.REVOKED,
        )
    except (ValueError, TypeError, AssertionError) as exc:
        raise StorageError(f"token {row[0]!r} has an unreadable value: {exc}") from None


def _stored_from_row(row: Sequence[Any]) -> StoredToken:
    return StoredToken(
        token=_token_from_row(row),
        secret_hash=row[14],
        previous_hash=row[15],
        previous_valid_until=_utc(row[16]),
        revealable=row[17],
    )


def _event_rows(events: Sequence[AuditEvent | AuthEntry]) -> builtins.list[tuple[object, ...]]:
    """The audit rows of ``events``, in order; an AuthEntry is its ``authenticate`` event.

    Raises:
        ValueError: a time is naive, or an event is otherwise invalid.
    """
    rows: builtins.list[tuple[object, ...]] = []
    for item in events:
        if isinstance(item, AuthEntry):
            at, outcome, token_id, user, ip, method, path, reason, _ = item
            if at.tzinfo is None:
                raise ValueError("entry.at must be timezone-aware")
            rows.append(
                (at, _AUTHENTICATE, _OUTCOME_TEXT[outcome], token_id, user, None, ip, method,
                 path, reason)
            )  # fmt: skip
        else:
            e = normalize_event(item)
            rows.append(
                (e.at, _ACTION_TEXT[e.action], _OUTCOME_TEXT[e.outcome], e.token_id, e.user,
                 e.actor, e.client_ip, e.method, e.path, e.reason)
            )  # fmt: skip
    return rows


class _NulInText(Exception):
    """An audit row holds a NUL character, which PostgreSQL's text type refuses."""


def _has_nul(row: tuple[object, ...]) -> bool:
    return any(isinstance(value, str) and "\x00" in value for value in row)


def _without_nul(row: tuple[object, ...]) -> tuple[object, ...]:
    return tuple(
        value.replace("\x00", "\ufffd") if isinstance(value, str) else value for value in row
    )


def _event_from_row(row: Sequence[Any]) -> AuditEvent:
    try:
        at = _utc(row[0])
        assert at is not None
        return AuditEvent(
            at=at,
            action=Action(row[1]),
            outcome=Outcome(row[2]),
            token_id=row[3],
            user=row[4],
            actor=row[5],
            client_ip=row[6],
            method=row[7],
            path=row[8],
            reason=row[9],
        )
    except (ValueError, TypeError, AssertionError) as exc:
        raise StorageError(f"an audit event has an unreadable value: {exc}") from None


# -- the searches --------------------------------------------------------------------------


def _select_tokens(query: TokenQuery) -> tuple[str, builtins.list[object]]:
    """The SQL of ``list()``: exactly what ``TokenQuery.matches`` accepts."""
    where: builtins.list[str] = []
    params: builtins.list[object] = []
    if query.user is not None:
        where.append('"user" = %s')
        params.append(query.user)
    if query.status is TokenStatus.REVOKED:
        where.append("revoked_at IS NOT NULL")
    elif query.status is TokenStatus.ACTIVE:
        where.append("revoked_at IS NULL AND (expires_at IS NULL OR expires_at > %s)")
        params.append(query.now)
    elif query.status is TokenStatus.EXPIRED:
        where.append("revoked_at IS NULL AND expires_at <= %s")
        params.append(query.now)
    if query.unused_since is not None:
        where.append("created_at <= %s AND (last_used_at IS NULL OR last_used_at < %s)")
        params += [query.unused_since] * 2
    if query.name is not None:
        # name_folded is str.casefold() of the name (the memory store's test); strpos,
        # not LIKE, so that % and _ are plain characters.
        where.append("strpos(name_folded, %s) > 0")
        params.append(query.name)
    sql = (
        f"SELECT {_RECORD_COLUMNS} FROM apitokens_tokens"  # noqa: S608 - constant fragments only
        f" WHERE {' AND '.join(where) or 'true'}"
        " ORDER BY created_at DESC, id ASC LIMIT %s OFFSET %s"
    )
    return sql, [*params, query.limit, query.offset]


def _select_events(query: EventQuery) -> tuple[str, builtins.list[object]]:
    """The SQL of ``events()``: exactly what ``EventQuery.matches`` accepts."""
    where: builtins.list[str] = []
    params: builtins.list[object] = []
    if query.token_id is not None:
        where.append("token_id = %s")
        params.append(query.token_id)
    if query.user is not None:
        where.append('"user" = %s')
        params.append(query.user)
    if query.action is not None:
        where.append("action = %s")
        params.append(query.action.value)
    if query.outcome is not None:
        where.append("outcome = %s")
        params.append(query.outcome.value)
        if query.outcome is not Outcome.SUCCESS:
            # The partial index of outcomes is used only when the query states its
            # condition (a parameter could be 'success' for all the planner knows).
            where.append("outcome <> 'success'")
    if query.since is not None:
        where.append("at >= %s")
        params.append(query.since)
    if query.until is not None:
        where.append("at < %s")
        params.append(query.until)
    sql = (
        f"SELECT {_EVENT_COLUMNS} FROM apitokens_audit"  # noqa: S608 - constant fragments only
        f" WHERE {' AND '.join(where) or 'true'}"
        " ORDER BY at DESC, seq DESC LIMIT %s OFFSET %s"
    )
    return sql, [*params, query.limit, query.offset]
