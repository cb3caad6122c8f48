"""PostgresStore: the TokenStore on a pool of connections."""

from __future__ import annotations

import builtins
import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

import psycopg
import psycopg.conninfo
import psycopg.sql
import psycopg_pool

from apitokens._errors import StorageError, TokenNotFound
from apitokens._limits import check_count
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
from apitokens.postgres._connect import (
    _configure,
    _described,
    _leak,
    _safe_message,
    _tcp_settings,
)
from apitokens.postgres._feed import _ChangeFeed, _channel
from apitokens.postgres._migrate import _migrate
from apitokens.postgres._rows import (
    _event_from_row,
    _event_rows,
    _has_nul,
    _indexable,
    _select_events,
    _select_tokens,
    _stored_from_row,
    _token_from_row,
    _token_params,
    _without_nul,
)
from apitokens.postgres._sql import (
    _ADD_FAILURES,
    _ADD_REQUESTS,
    _CLAIM_BATCH,
    _CLAIM_NOTICE,
    _COPY_EVENTS,
    _COUNT_FAILURES,
    _EVENT_TYPES,
    _FOLD_USAGE,
    _INSERT_RECORD,
    _LOCK_USED,
    _PRUNE_BATCHES,
    _PRUNE_FAILURES,
    _PRUNE_NOTICES,
    _PRUNE_REQUESTS,
    _RELEASE_NOTICE,
    _REPLACE_HASH,
    _RESET_CREDITS,
    _REVOKE,
    _SET_CREDITS,
    _SPEND_CREDITS,
    _STORED_COLUMNS,
    _UPDATE_RECORD,
)
from apitokens.postgres._watch import WATCHDOG, _ended
from apitokens.storage._base import (
    NOTICES_KEPT_AFTER_EXPIRY,
    credit_rows,
    failure_rows,
    fold_usage,
    kept_seconds,
    normalize_stored,
    notice_key,
    request_rows,
    require_utc,
    since_second,
)
from apitokens.storage._filters import EventQuery, TokenQuery
from apitokens.storage._protocol import CreditSpend

log = logging.getLogger("apitokens")

# -- the store ----------------------------------------------------------------------------

_T = TypeVar("_T")
_Conn = psycopg.Connection[Any]

# How long a call may wait for the server's answer once it has its connection, in
# units of ``timeout``: the calls of a request and of the background writers wait at
# most two (``timeout`` for a lock, and as long again for the work), the searches and
# the pruning an administrator runs, which may read or delete many rows, thirty.
_CALL = 2.0
_SLOW_CALL = 30.0

REQUESTS_KEPT_AFTER_END = 300
"""Seconds a window's count is kept after it ended by the server's clock, at least.

Every process prunes the ledger with its own clock; one whose clock runs ahead must
not erase the windows the others are still counting in."""

# insufficient_privilege (most often no CREATE on the schema), and invalid_schema_name
# ("no schema has been selected to create in": no schema of the search_path is usable).
_NO_PRIVILEGE = frozenset({"42501", "3F000"})
_PRIVILEGE_HINT = (
    "the role needs the right to create tables in the first schema of its search_path,"
    " or a deploy role must create them first: docs/deployment.md, 'Many hosts: PostgreSQL'"
)

# lock_not_available: at open, the migration lock another session held all along.
_LOCK_NOT_AVAILABLE = "55P03"
_MIGRATING_HINT = (
    "another session held the schema's migration lock: a migration running elsewhere, or"
    " stuck; docs/deployment.md, 'Running migrations'"
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
        # Batches whose write failed with its connection: content digest -> batch id.
        self._unsure: dict[bytes, uuid.UUID] = {}
        self._prune_batches_at = 0.0
        self._tcp = _tcp_settings(dsn, timeout)
        message = None
        WATCHDOG.open()
        try:
            self._open()
        except psycopg.Error as exc:
            message = self._message("open", exc)
        except BaseException:
            WATCHDOG.close()
            raise
        if message is not None:
            WATCHDOG.close()
            # Raised here, not in the except block: no __context__ holds the psycopg
            # error, whose connection (``pgconn``) shows the DSN's password.
            raise StorageError(message)
        self._feed = _ChangeFeed(self)
        _STORES.add(self)

    def _open(self) -> None:
        connect_timeout = max(1, round(self._timeout))
        dsn = psycopg.conninfo.make_conninfo(self._dsn, **self._tcp)
        with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
            _migrate(conn, f"PostgreSQL database {self._shown!r}", self._timeout)
            with WATCHDOG.watch(conn, _CALL * self._timeout):
                self._channel = _channel(conn)
        self._pool = self._open_pool()

    def _open_pool(self) -> psycopg_pool.ConnectionPool[_Conn]:
        return psycopg_pool.ConnectionPool(
            self._dsn,
            min_size=1,
            max_size=self._pool_size,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, round(self._timeout)),
                # Named in pg_stat_activity, unless the DSN names them itself.
                "application_name": self._application_name,
                **self._tcp,
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
        message = None
        try:
            self._pool = self._open_pool()
        except BaseException as exc:
            self._closed = True  # never the parent's connections: closed, fail closed
            WATCHDOG.close()
            if not isinstance(exc, psycopg.Error):
                raise
            message = self._message("reopen after fork", exc)
        if message is not None:
            raise StorageError(message)

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

    def _message(self, operation: str, exc: psycopg.Error) -> str:
        """A :class:`StorageError`'s message for ``exc``: it holds no secret.

        PostgreSQL's primary message only: its DETAIL may quote a row (a hash among
        its values). The password of the DSN is blanked out of it too. The caller
        raises the StorageError after its ``except`` block, so that neither
        ``__cause__`` nor ``__context__`` holds the psycopg error (whose DETAIL, and
        whose ``pgconn``, show what this message leaves out).
        """
        message = _safe_message(exc, self._password)
        if operation == "open":
            message = f"{self._shown}: {message}"
            if exc.sqlstate in _NO_PRIVILEGE:
                message += f" ({_PRIVILEGE_HINT})"
            elif exc.sqlstate == _LOCK_NOT_AVAILABLE:
                message += f" ({_MIGRATING_HINT})"
        return f"PostgreSQL store {operation} failed: {message}"

    def _call(
        self,
        operation: str,
        work: Callable[[_Conn], _T],
        *,
        read: bool = False,
        slow: bool = False,
        unsure: Callable[[], None] | None = None,
    ) -> _T:
        """``work(conn)`` on a pooled connection (autocommit); failures become StorageError.

        The call waits at most ``timeout`` for a connection and, once it has one,
        ``2 * timeout`` for the server's answers (``30 * timeout`` if ``slow``):
        then its connection is shut down (``_watch``) and it fails, closed. A
        connection the server ended while it sat idle in the pool is noticed
        before use and replaced; one the server ends at the moment of use fails
        the call, and a ``read`` (which changes nothing) is then tried once more
        on a new connection. After a broken connection the pool's idle ones are
        dropped (most likely they went the same way: a restart, a failover).
        ``unsure()`` is called when the connection broke during ``work``: whether
        what it wrote was committed is then unknown.
        """
        seconds = self._timeout * (_SLOW_CALL if slow else _CALL)
        for attempt in (1, 2):
            if self._closed:
                raise StorageError("the PostgreSQL store is closed")
            try:
                return self._attempt(work, seconds)
            except _Broken as broken:
                message = f"PostgreSQL store {operation} failed: {broken}"
                again = read and attempt == 1 and not broken.unanswered
                if unsure is not None:
                    unsure()
            except psycopg.Error as exc:
                message, again = self._message(operation, exc), False
            if not again:
                break
        # Raised here, after the except blocks: no __context__ holds the psycopg error.
        raise StorageError(message)

    def _drop_idle(self) -> None:
        """Close the pool's idle connections; new ones are opened in the background.

        ``drain()`` (psycopg-pool 3.3) closes them without a round trip, where
        ``check()`` would wait for an answer on each (on a silent server, without
        bound). A connection out of the pool is closed when it comes back.
        """
        with contextlib.suppress(psycopg.Error):
            self._pool.drain()

    def _attempt(self, work: Callable[[_Conn], _T], seconds: float) -> _T:
        conn = self._pool.getconn()
        if _ended(conn):
            # The server ended it while idle (idle_session_timeout, a restart): the
            # other idle ones most likely too. Drop them all, take a new one.
            conn.close()
            self._pool.putconn(conn)
            self._drop_idle()
            conn = self._pool.getconn()
        try:
            with WATCHDOG.watch(conn, seconds) as fired:
                return work(conn)
        except psycopg.OperationalError as exc:
            if not conn.broken:
                raise
            self._drop_idle()
            if fired:
                raise _Broken(f"no answer from the server within {seconds:g} s", True) from None
            raise _Broken(_safe_message(exc, self._password), False) from None
        finally:
            self._pool.putconn(conn)

    # -- TokenStore ------------------------------------------------------------------

    def add(self, stored: StoredToken) -> None:
        """Store a new token (see :meth:`TokenStore.add`).

        Raises:
            StorageError: the id exists already, or the database failed.
            ValueError: a datetime is naive, or a secure token is revealable.
        """
        stored = normalize_stored(stored)
        token = stored.token
        params = _token_params(stored)
        added = self._call("add", lambda conn: conn.execute(_INSERT_RECORD, params).rowcount == 1)
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
        row = self._call("get", lambda conn: conn.execute(query, (token_id,)).fetchone(), read=True)
        return None if row is None else _stored_from_row(row)

    def update(self, stored: StoredToken, *, expected_hash: str | None = None) -> bool:
        """Replace a token's editable fields (see :meth:`TokenStore.update`).

        Returns:
            ``True`` if the token was changed; ``False`` if its ``secret_hash`` is
            not ``expected_hash`` (nothing changed).

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
            list(stored.retired_hashes),
            token.rate_limit,
            token.credits,
            token.refill,
            token.id,
        )
        query = _UPDATE_RECORD
        values: tuple[object, ...] = params
        if expected_hash is not None:
            # One statement: the check and the write are one step for every process.
            query, values = _UPDATE_RECORD + " AND secret_hash = %s", (*params, expected_hash)
        updated = self._call("update", lambda conn: conn.execute(query, values).rowcount)
        if updated:
            return True
        # Tokens are never deleted, so one found now was there when the UPDATE ran.
        if self.get(token.id) is None:
            raise TokenNotFound(f"no token has id {token.id!r}")
        return False

    def replace_hash(self, token_id: str, *, old: str, new: str) -> bool:
        """Swap a token's hash if it is still ``old`` (see :meth:`TokenStore.replace_hash`).

        Returns:
            ``True`` if the hash was replaced.

        Raises:
            StorageError: the database failed.
        """
        params = (new, token_id, old)
        return self._call(
            "replace_hash", lambda conn: conn.execute(_REPLACE_HASH, params).rowcount == 1
        )

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
        params = (at, token_id, token_id)
        row = self._call("revoke", lambda conn: conn.execute(_REVOKE, params).fetchone())
        assert row is not None
        revoked, exists = row
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
        rows = self._call(
            "list", lambda conn: conn.execute(sql, params).fetchall(), read=True, slow=True
        )
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
        """One batch, one transaction: its id, the events by COPY, the usage in one UPDATE.

        The id makes the batch idempotent: a batch whose last write failed with its
        connection (the COMMIT may have reached the server, and only its answer been
        lost) is sent again, by the writer, with the same content; it then gets the
        same id, and the transaction that finds that id written writes nothing.
        """
        rows = _event_rows(events)
        totals = sorted(fold_usage(usage).items())
        if not rows and not totals:
            if self._closed:
                raise StorageError("the PostgreSQL store is closed")
            return
        claim = self._claim(rows, totals)
        unsure = functools.partial(self._unsure_of, claim)
        # Each retry below runs after the failed attempt's except block, never in it: a
        # StorageError it raises must not hold the psycopg error as its __context__.
        write = functools.partial(_write_batch, claim, rows, totals)
        problem = self._call("write", write, unsure=unsure)
        if problem == _NUL:
            # PostgreSQL's text cannot hold NUL, and an audit field can carry one from a
            # request (a Basic username, say). Refusing the batch would stall the writer
            # on it for good, so the NULs become U+FFFD and the batch goes in.
            rows = [_without_nul(row) for row in rows]
            write = functools.partial(_write_batch, claim, rows, totals)
            problem = self._call("write", write, unsure=unsure)
        if problem is not None and problem != _WRITTEN:
            # Some row holds a value PostgreSQL refuses (SQLSTATE class 22 or 54): the
            # writer would send the batch again forever, and no later event would
            # ever be written. Write what can be, drop only what cannot.
            salvage = functools.partial(_salvage_batch, claim, rows, totals)
            dropped = self._call("write", salvage, unsure=unsure)
            if not dropped:
                return
            log.warning(
                "PostgreSQL store %s: %s of a batch of %d audit events could not be"
                " written and were dropped",
                self._shown,
                ", ".join(f"{what} (SQLSTATE {state})" for what, state in dropped),
                len(rows),
            )

    def _claim(
        self, rows: Sequence[tuple[object, ...]], totals: Sequence[tuple[str, Any]]
    ) -> _Claim:
        """The batch's id: new, or that of the same batch whose last write was unsure."""
        batch_id = None
        digest = b""
        with self._lock:
            if self._unsure:  # the content is hashed only while a write is in doubt
                digest = _digest(rows, totals)
                batch_id = self._unsure.pop(digest, None)
            prune = time.monotonic() >= self._prune_batches_at
            if prune:
                self._prune_batches_at = time.monotonic() + _PRUNE_BATCHES_EVERY
        return _Claim(batch_id or uuid.uuid4(), digest, rows, totals, prune)

    def _unsure_of(self, claim: _Claim) -> None:
        """The batch's write failed with its connection: it may have been committed."""
        digest = claim.digest or _digest(claim.rows, claim.totals)
        with self._lock:
            self._unsure[digest] = claim.id
            while len(self._unsure) > _UNSURE_KEPT:  # the oldest first
                del self._unsure[next(iter(self._unsure))]

    # -- the failure ledger (FailureLedger) -------------------------------------------

    def record_failures(self, counts: Mapping[str, int], at: datetime, *, keep: timedelta) -> None:
        """Add failed attempts per throttle key (see :class:`~apitokens.storage.FailureLedger`).

        One transaction: one upsert of every key (in key order, so two processes adding
        to the same keys at once queue rather than deadlock), then the old seconds go:
        those older than ``keep`` (at least an hour) both by ``at`` and by the database
        server's clock, so a host whose clock runs ahead, or a service with a shorter
        window on the same database, never erases what the others still count.

        Raises:
            ValueError: ``at`` is naive or a count is negative (nothing written).
            StorageError: the database failed (nothing written).
        """
        rows, oldest = failure_rows(counts, at, keep)
        # A key is an address, but never let one stall the flusher: text cannot hold
        # NUL, and an index no key longer than about 2,700 bytes (_failure_key).
        rows = sorted((_failure_key(key), second, n) for key, second, n in rows)
        columns = ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

        def work(conn: _Conn) -> None:
            with conn.transaction():
                if rows:
                    conn.execute(_ADD_FAILURES, columns)
                conn.execute(_PRUNE_FAILURES, (oldest, kept_seconds(keep) + 1))

        self._call("record_failures", work)

    def failures_since(self, key: str, since: datetime) -> int:
        """Failed attempts for ``key`` at or after ``since`` (by whole seconds, rounded down).

        Raises:
            ValueError: ``since`` is naive.
            StorageError: the database failed.
        """
        first = since_second(since)
        params = (_failure_key(key), first)
        row = self._call(
            "failures_since",
            lambda conn: conn.execute(_COUNT_FAILURES, params).fetchone(),
            read=True,
        )
        return int(row[0]) if row is not None else 0

    # -- the expiry notices (NoticeLedger) ---------------------------------------------

    def claim_notice(
        self, token_id: str, expires_at: datetime, threshold: timedelta, at: datetime
    ) -> bool:
        """Record a notice as sent unless it was (see :class:`~apitokens.storage.NoticeLedger`).

        The insert that only one caller's transaction can make is the claim. A claim
        whose answer was lost raises ``StorageError``: the notice is then not sent
        (at most once, never twice).

        Raises:
            ValueError: a datetime is naive or ``threshold`` is not positive.
            StorageError: the database failed.
        """
        key = notice_key(token_id, expires_at, threshold)
        expires, at = require_utc(expires_at, "expires_at"), require_utc(at, "at")
        params = (token_id, expires, key[2], at)

        def work(conn: _Conn) -> bool:
            with conn.transaction():
                won = conn.execute(_CLAIM_NOTICE, params).rowcount == 1
                conn.execute(_PRUNE_NOTICES, (at, NOTICES_KEPT_AFTER_EXPIRY))
            return won

        return self._call("claim_notice", work)

    def release_notice(self, token_id: str, expires_at: datetime, threshold: timedelta) -> None:
        """Forget a claimed notice (see :class:`~apitokens.storage.NoticeLedger`).

        Raises:
            ValueError: ``expires_at`` is naive or ``threshold`` is not positive.
            StorageError: the database failed.
        """
        key = notice_key(token_id, expires_at, threshold)
        params = (token_id, require_utc(expires_at, "expires_at"), key[2])
        self._call("release_notice", lambda conn: conn.execute(_RELEASE_NOTICE, params))

    # -- rate limits and credits (UsageLedger) -----------------------------------------

    def count_requests(
        self, counts: Mapping[tuple[str, int, int], int], *, ended_before: int
    ) -> dict[tuple[str, int, int], int]:
        """Add requests per window; return the totals (see :class:`~apitokens.storage.UsageLedger`).

        One transaction: windows that ended go (before ``ended_before``, and at least
        ``REQUESTS_KEPT_AFTER_END`` seconds before the server's clock), then one upsert
        adds every count and returns the totals, so concurrent callers on any number
        of hosts never lose a count. Never retried: a call whose answer was lost may
        have been committed (its counts are then sent again by the caller and counted
        twice: towards refusing, never towards admitting).

        Raises:
            ValueError: a negative or malformed count (nothing written).
            StorageError: the database failed.
        """
        rows, ended_before = request_rows(counts, ended_before)
        columns = tuple([row[i] for row in rows] for i in range(4))

        def work(conn: _Conn) -> builtins.list[tuple[Any, ...]]:
            with conn.transaction():
                conn.execute(_PRUNE_REQUESTS, (ended_before, REQUESTS_KEPT_AFTER_END))
                if not rows:
                    return []
                return conn.execute(_ADD_REQUESTS, columns).fetchall()

        totals = self._call("count_requests", work)
        return {(token_id, seconds, start): count for token_id, seconds, start, count in totals}

    def spend_credits(self, spends: Mapping[str, CreditSpend]) -> dict[str, int]:
        """Refill, then spend credits; return those left (:class:`~apitokens.storage.UsageLedger`).

        One statement (an upsert that does :func:`apitokens._limits.settle`'s arithmetic
        on the row it locks), so concurrent callers never lose a spend. Never retried
        (see :meth:`count_requests`).

        Raises:
            ValueError: a negative or malformed spend (nothing written).
            StorageError: the database failed.
        """
        rows = credit_rows(spends)
        if not rows:
            if self._closed:
                raise StorageError("the PostgreSQL store is closed")
            return {}
        columns = tuple([row[i] for row in rows] for i in range(5))
        left = self._call(
            "spend_credits", lambda conn: conn.execute(_SPEND_CREDITS, columns).fetchall()
        )
        return {token_id: int(n) for token_id, n in left}

    def reset_credits(self, token_id: str, credits: int | None = None, period: int = 0) -> None:
        """Start a token's credit balance again (see :class:`~apitokens.storage.UsageLedger`).

        Raises:
            ValueError: ``credits`` or ``period`` negative.
            StorageError: the database failed.
        """
        if credits is not None:
            check_count(credits, "credits")
            check_count(period, "period")
        if "\x00" in token_id:  # text cannot hold one, so no balance has one
            if self._closed:
                raise StorageError("the PostgreSQL store is closed")
            return
        if credits is None:
            self._call("reset_credits", lambda conn: conn.execute(_RESET_CREDITS, (token_id,)))
        else:
            values = (token_id, credits, period)
            self._call("reset_credits", lambda conn: conn.execute(_SET_CREDITS, values))

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
        rows = self._call(
            "events", lambda conn: conn.execute(sql, params).fetchall(), read=True, slow=True
        )
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
        sql = "DELETE FROM apitokens_audit WHERE at < %s"
        return self._call(
            "prune_events", lambda conn: conn.execute(sql, (before,)).rowcount, slow=True
        )

    def close(self) -> None:
        """Close the pool's connections; later calls raise ``StorageError``. Idempotent.

        Calls still running in other threads finish first (for up to ``timeout``).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._feed.stop()
            self._pool.close()
        finally:
            WATCHDOG.close()

    # -- ChangeFeed --------------------------------------------------------------------

    def subscribe(self, callback: Callable[[str | None], None]) -> Callable[[], None]:
        """Call ``callback(token_id)`` after a change to that token, made by any process.

        See :class:`~apitokens.storage.ChangeFeed`. Every change to a token's row
        (``update``, ``replace_hash``, ``revoke``, or an UPDATE, DELETE or TRUNCATE
        made by hand in SQL; not the usage an audit batch adds) sends a notice from a
        trigger (``pg_notify``) in its transaction, so it goes out when the change
        commits. The first subscriber starts one listener thread
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
        message = None
        try:
            return self._feed.subscribe(callback)
        except psycopg.Error as exc:
            message = self._message("subscribe", exc)
        raise StorageError(message)


def _failure_key(key: str) -> str:
    """A throttle key as the ledger stores it: no NUL, and short enough for its index."""
    return _indexable(key.replace("\x00", "\ufffd"))


# -- writing a batch ---------------------------------------------------------------------

_NUL = "NUL"  # what _write_batch says of a batch that failed for a NUL in a text


def _is_data_error(exc: psycopg.Error) -> bool:
    """A value PostgreSQL refuses (class 22, data exception; 54, a limit such as an
    index row's size): the same rows would fail again however often they are sent."""
    # psycopg raises DataError itself, with no SQLSTATE, for a value it cannot send
    # (a NUL in a text).
    return isinstance(exc, psycopg.DataError) or (exc.sqlstate or "")[:2] in ("22", "54")


def _copy_events(conn: _Conn, rows: Sequence[tuple[object, ...]]) -> None:
    with conn.cursor() as cursor, cursor.copy(_COPY_EVENTS) as copy:
        copy.set_types(_EVENT_TYPES)
        for row in rows:
            copy.write_row(row)


def _fold(conn: _Conn, totals: Sequence[tuple[str, Any]]) -> None:
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


class _Claim(NamedTuple):
    """A batch's id, the digest of its content (if computed), and whether to prune."""

    id: uuid.UUID
    digest: bytes
    rows: Sequence[tuple[object, ...]]
    totals: Sequence[tuple[str, Any]]
    prune: bool


_WRITTEN = "written"  # what _write_batch says of a batch a lost answer had committed
_UNSURE_KEPT = 64  # batches in doubt remembered (the writer retries one at a time)
_PRUNE_BATCHES_EVERY = 3600.0  # seconds between two prunings of apitokens_batches


def _digest(rows: Sequence[tuple[object, ...]], totals: Sequence[tuple[str, Any]]) -> bytes:
    return hashlib.sha256(repr((rows, totals)).encode("utf-8", "surrogatepass")).digest()


def _claimed(conn: _Conn, claim: _Claim) -> bool:
    """Record the batch's id in the transaction; ``False`` if it was written already."""
    if claim.prune:
        conn.execute(_PRUNE_BATCHES)
    return conn.execute(_CLAIM_BATCH, (claim.id,)).rowcount == 1


def _write_batch(
    claim: _Claim,
    rows: Sequence[tuple[object, ...]],
    totals: Sequence[tuple[str, Any]],
    conn: _Conn,
) -> str | None:
    """Write the batch in one transaction; ``None``, or why the data was refused.

    Returns ``_NUL`` if a text held a NUL, the SQLSTATE of another data error;
    then nothing was written. Returns ``_WRITTEN`` if the batch's id was found:
    an earlier write whose answer was lost had committed it. Any other error is
    raised.
    """
    problem = None
    try:
        with conn.transaction():
            if not _claimed(conn, claim):
                return _WRITTEN
            if rows:
                _copy_events(conn, rows)
            if totals:
                _fold(conn, totals)
    except psycopg.Error as exc:
        if not _is_data_error(exc):
            raise
        problem = _NUL if any(_has_nul(row) for row in rows) else str(exc.sqlstate or "22000")
    return problem


def _salvage_batch(
    claim: _Claim,
    rows: Sequence[tuple[object, ...]],
    totals: Sequence[tuple[str, Any]],
    conn: _Conn,
) -> builtins.list[tuple[str, str]]:
    """Write what can be of a batch the server refused, in one transaction.

    The events go by halves, each in a savepoint: a half refused is halved again,
    down to the single events that cannot be written, which are left out (one
    refused event among n costs about 2 log2(n) COPYs). The usage goes in a
    savepoint of its own. Returns what was left out: ``(what, SQLSTATE)`` pairs.
    """
    dropped: builtins.list[tuple[str, str]] = []
    with conn.transaction():
        if not _claimed(conn, claim):
            return dropped
        parts = [list(rows)] if rows else []
        while parts:
            part = parts.pop()
            state = _refused(conn, functools.partial(_copy_events, conn, part))
            if state is None:
                continue
            if len(part) == 1:
                dropped.append(("1 event", state))
            else:
                middle = len(part) // 2
                parts += [part[middle:], part[:middle]]  # the first half next: in order
        if totals:
            state = _refused(conn, functools.partial(_fold, conn, totals))
            if state is not None:
                dropped.append((f"the usage of {len(totals)} tokens", state))
    return dropped


def _refused(conn: _Conn, work: Callable[[], None]) -> str | None:
    """``work()`` in a savepoint; the SQLSTATE of a data error (rolled back), or ``None``."""
    state = None
    try:
        with conn.transaction():
            work()
    except psycopg.Error as exc:
        if not _is_data_error(exc):
            raise
        state = str(exc.sqlstate or "22000")
    return state


class _Broken(Exception):
    """A call's connection broke: the server ended it, or it gave no answer in time."""

    def __init__(self, message: str, unanswered: bool) -> None:
        super().__init__(message)
        self.unanswered = unanswered


_STORES: weakref.WeakSet[PostgresStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        with contextlib.suppress(StorageError):
            store._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)
