"""SQLiteStore: a TokenStore in one SQLite file (stdlib ``sqlite3``, WAL), safe across threads.

How connections are set up, pooled and used for transactions is in
``_database.py``; the SQL is in ``_schema.py`` and ``_queries.py``, the schema
and its migrations in ``_migrations.py``. This module maps the
:class:`~apitokens.TokenStore` calls onto them.
"""

from __future__ import annotations

import builtins
import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType

from apitokens._errors import StorageError, TokenNotFound
from apitokens._limits import check_count, settle
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
from apitokens.storage import _migrations, _queries, _schema
from apitokens.storage._base import (
    credit_rows,
    failure_rows,
    fold_usage,
    normalize_stored,
    notice_key,
    notices_kept_from,
    request_rows,
    require_utc,
    since_second,
)
from apitokens.storage._database import Database
from apitokens.storage._filters import EventQuery, TokenQuery
from apitokens.storage._protocol import CreditSpend
from apitokens.storage._schema import to_micros

__all__ = ["SQLiteStore"]

_ADD_FAILURES = (
    "INSERT INTO failures (key, second, count) VALUES (?, ?, ?)"
    " ON CONFLICT (key, second) DO UPDATE SET count = count + excluded.count"
)
_COUNT_FAILURES = "SELECT coalesce(sum(count), 0) FROM failures WHERE key = ? AND second >= ?"

_CLAIM_NOTICE = (
    "INSERT INTO notices (token_id, expires_at, threshold, claimed_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
_RELEASE_NOTICE = "DELETE FROM notices WHERE token_id = ? AND expires_at = ? AND threshold = ?"

_ADD_REQUESTS = (
    "INSERT INTO request_counts (token_id, seconds, start, count) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (token_id, seconds, start) DO UPDATE SET count = count + excluded.count"
)
_READ_REQUESTS = "SELECT count FROM request_counts WHERE token_id = ? AND seconds = ? AND start = ?"
# The expression is the index's (request_counts_by_end), so the index serves it.
_PRUNE_REQUESTS = "DELETE FROM request_counts WHERE start + seconds < ?"
_READ_BALANCE = "SELECT credits_left, period FROM credit_balances WHERE token_id = ?"
_WRITE_BALANCE = (
    "INSERT INTO credit_balances (token_id, credits_left, period) VALUES (?, ?, ?)"
    " ON CONFLICT (token_id) DO UPDATE SET credits_left = excluded.credits_left,"
    " period = excluded.period"
)

# A mark's usage position is None when the transaction wrote no usage: keep the old one.
_MARK_JOURNAL = (
    "INSERT INTO journal (name, events, usage) VALUES (?1, ?2, coalesce(?3, 0))"
    " ON CONFLICT (name) DO UPDATE SET events = ?2, usage = coalesce(?3, usage)"
)


class SQLiteStore:
    """A :class:`~apitokens.TokenStore` in a SQLite database file.

    The file is created if missing, upgraded if an older apitokens wrote it,
    and refused if a newer one did. Several processes, and several stores in
    one process, may share a file. Only hashes of secure-mode secrets are
    written; see ``docs/storage.md`` for the schema.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 5.0) -> None:
        """Open (creating or upgrading) the database at ``path``.

        Args:
            path: the database file, or ``":memory:"`` for a private database
                that lives as long as this store.
            timeout: seconds a call waits for a lock held by another writer
                (SQLite's ``busy_timeout``, and our own queue) before failing.

        Raises:
            ValueError: ``timeout`` is negative or not finite.
            SchemaVersionError: the file was written by a newer apitokens.
            StorageError: the file cannot be opened, is not a SQLite database,
                or cannot be upgraded.
        """
        if not (timeout >= 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a finite, non-negative number, not {timeout!r}")
        self._path = os.fspath(path)
        _create_private(self._path)
        self._db = db = Database(self._path, timeout)
        where = f"database {self._path!r}"
        try:
            with db.failures("open"), db.pool.connection() as conn:
                _migrations.check_version(conn, where)  # before any write to a file we may refuse
                if not db.private:
                    conn.execute("PRAGMA journal_mode = WAL")
                _migrations.migrate(conn, where)
        except BaseException:
            db.close()
            raise

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r})"

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add(self, stored: StoredToken) -> None:
        """Store a new token (see :meth:`TokenStore.add`).

        Raises:
            StorageError: the id exists already, or the database failed.
            ValueError: a datetime is naive, or a secure token is revealable.
        """
        stored = normalize_stored(stored)
        token = stored.token
        with self._db.write("add") as conn:
            if conn.execute("SELECT 1 FROM tokens WHERE id = ?", (token.id,)).fetchone():
                raise StorageError(f"add failed: a token with id {token.id!r} exists")
            conn.execute(_schema.INSERT_RECORD, _schema.token_params(stored))

    def get(self, token_id: str) -> StoredToken | None:
        """Return the token with its hashes, or ``None`` (see :meth:`TokenStore.get`).

        Raises:
            StorageError: the database failed or holds unreadable values.
        """
        query = f"SELECT {_schema.STORED_COLUMNS} FROM tokens WHERE id = ?"  # noqa: S608
        with self._db.read("get") as conn:
            row = conn.execute(query, (token_id,)).fetchone()
        return None if row is None else _schema.stored_from_row(row)

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
        params = _schema.update_params(stored)
        with self._db.write("update") as conn:
            if expected_hash is None:
                cursor = conn.execute(_schema.UPDATE_RECORD, params)
            else:
                # One statement: the check and the write are one step for every process.
                guarded = _schema.UPDATE_RECORD + " AND secret_hash = ?"
                cursor = conn.execute(guarded, (*params, expected_hash))
            if cursor.rowcount == 1:
                return True
            # In the same write transaction: nothing can add or change the row meanwhile.
            if conn.execute("SELECT 1 FROM tokens WHERE id = ?", (token.id,)).fetchone() is None:
                raise TokenNotFound(f"no token has id {token.id!r}")
            return False

    def replace_hash(self, token_id: str, *, old: str, new: str) -> bool:
        """Swap a token's hash if it is still ``old`` (see :meth:`TokenStore.replace_hash`).

        Returns:
            ``True`` if the hash was replaced.

        Raises:
            StorageError: the database failed.
        """
        with self._db.write("replace_hash") as conn:
            cursor = conn.execute(
                "UPDATE tokens SET secret_hash = ? WHERE id = ? AND secret_hash = ?",
                (new, token_id, old),
            )
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
        micros = to_micros(require_utc(at, "at"))
        with self._db.write("revoke") as conn:
            if conn.execute("SELECT 1 FROM tokens WHERE id = ?", (token_id,)).fetchone() is None:
                raise TokenNotFound(f"no token has id {token_id!r}")
            cursor = conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (micros, token_id),
            )
            return cursor.rowcount == 1

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
        sql, params = _queries.select_tokens(query)
        with self._db.read("list") as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_schema.token_from_row(row).as_of(query.now) for row in rows]

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

        An :class:`~apitokens.storage.AuthEntry` becomes its row directly; the rows
        are the ones :meth:`write` would store for the entries' events, in the same
        order.

        Raises:
            ValueError: a datetime is naive or a count negative (nothing written).
            StorageError: the database failed (nothing written).
        """
        self._write(events, usage)

    def _write(
        self,
        events: Sequence[AuditEvent | AuthEntry],
        usage: Sequence[Usage],
        marks: Sequence[tuple[str, int, int | None]] = (),
    ) -> None:
        """Events (entries among them), usage and journal positions, in one transaction.

        ``marks`` are journal positions (``_journal.Mark``).
        """
        values = _schema.event_values(events)
        totals = [
            {"id": token_id, "count": t.count, "at": to_micros(t.last_at), "ip": t.last_ip}
            for token_id, t in fold_usage(usage).items()
        ]
        if not values and not totals and not marks:
            if self._db.pool.closed:
                raise StorageError("the SQLite store is closed")
            return
        with self._db.write("write", durable=False) as conn:
            _schema.insert_events(conn, values)
            conn.executemany(_schema.FOLD_USAGE, totals)
            if marks:
                conn.executemany(_MARK_JOURNAL, marks)

    # -- the audit journal's positions (apitokens._journal.Positions) ----------------

    @property
    def journal_directory(self) -> Path | None:
        """Where apitokens keeps this file's audit journals; ``None`` for ``:memory:``."""
        # Absolute: the process may change its working directory later.
        return (
            None if self._db.private else Path(os.path.abspath(self._path + ".apitokens-journal"))
        )

    def journal_positions(self) -> dict[str, tuple[int, int]]:
        """How far each journal's records are in the store: ``{name: (events, usage)}``.

        Raises:
            StorageError: the database failed.
        """
        with self._db.read("journal_positions") as conn:
            rows = conn.execute("SELECT name, events, usage FROM journal").fetchall()
        return {name: (events, usage) for name, events, usage in rows}

    def forget_journals(self, names: Sequence[str]) -> None:
        """Drop the positions of journals that are gone.

        Raises:
            StorageError: the database failed.
        """
        with self._db.write("forget_journals", durable=False) as conn:
            conn.executemany("DELETE FROM journal WHERE name = ?", [(n,) for n in names])

    def write_journaled(
        self,
        events: Sequence[AuditEvent | AuthEntry],
        usage: Sequence[Usage],
        marks: Sequence[tuple[str, int, int | None]],
    ) -> None:
        """Write events and usage, and move journal positions, in one transaction.

        Raises:
            ValueError: a datetime is naive or a count negative (nothing written).
            StorageError: the database failed (nothing written).
        """
        self._write(events, usage, marks)

    # -- the failure ledger (FailureLedger) -------------------------------------------

    def record_failures(self, counts: Mapping[str, int], at: datetime, *, keep: timedelta) -> None:
        """Add failed attempts per throttle key (see :class:`~apitokens.storage.FailureLedger`).

        Raises:
            ValueError: ``at`` is naive or a count is negative (nothing written).
            StorageError: the database failed (nothing written).
        """
        rows, oldest = failure_rows(counts, at, keep)
        with self._db.write("record_failures", durable=False) as conn:
            conn.executemany(_ADD_FAILURES, rows)
            conn.execute("DELETE FROM failures WHERE second < ?", (oldest,))

    def failures_since(self, key: str, since: datetime) -> int:
        """Failed attempts for ``key`` at or after ``since`` (by whole seconds, rounded down).

        Raises:
            ValueError: ``since`` is naive.
            StorageError: the database failed.
        """
        first = since_second(since)
        with self._db.read("failures_since") as conn:
            row = conn.execute(_COUNT_FAILURES, (key, first)).fetchone()
        return int(row[0])

    # -- the expiry notices (NoticeLedger) ---------------------------------------------

    def claim_notice(
        self, token_id: str, expires_at: datetime, threshold: timedelta, at: datetime
    ) -> bool:
        """Record a notice as sent unless it was (see :class:`~apitokens.storage.NoticeLedger`).

        The insert that only one caller's transaction can make is the claim.

        Raises:
            ValueError: a datetime is naive or ``threshold`` is not positive.
            StorageError: the database failed (nothing recorded).
        """
        key = notice_key(token_id, expires_at, threshold)
        claimed_at = to_micros(require_utc(at, "at"))
        oldest = notices_kept_from(at)
        with self._db.write("claim_notice") as conn:
            won = conn.execute(_CLAIM_NOTICE, (*key, claimed_at)).rowcount == 1
            conn.execute("DELETE FROM notices WHERE expires_at < ?", (oldest,))
        return won

    def release_notice(self, token_id: str, expires_at: datetime, threshold: timedelta) -> None:
        """Forget a claimed notice (see :class:`~apitokens.storage.NoticeLedger`).

        Raises:
            ValueError: ``expires_at`` is naive or ``threshold`` is not positive.
            StorageError: the database failed.
        """
        key = notice_key(token_id, expires_at, threshold)
        with self._db.write("release_notice") as conn:
            conn.execute(_RELEASE_NOTICE, key)

    # -- rate limits and credits (UsageLedger) -----------------------------------------

    def count_requests(
        self, counts: Mapping[tuple[str, int, int], int], *, ended_before: int
    ) -> dict[tuple[str, int, int], int]:
        """Add requests per window; return the totals (see :class:`~apitokens.storage.UsageLedger`).

        One write transaction adds and reads back, so two processes adding to one
        window at once never lose a count. Not fsynced (as audit batches): a power
        cut may forget the last counts of a window, never corrupt them.

        Raises:
            ValueError: a negative or malformed count (nothing written).
            StorageError: the database failed (nothing written).
        """
        rows, ended_before = request_rows(counts, ended_before)
        with self._db.write("count_requests", durable=False) as conn:
            conn.executemany(_ADD_REQUESTS, rows)
            totals = {
                (token_id, seconds, start): int(
                    conn.execute(_READ_REQUESTS, (token_id, seconds, start)).fetchone()[0]
                )
                for token_id, seconds, start, _ in rows
            }
            conn.execute(_PRUNE_REQUESTS, (ended_before,))
        return totals

    def spend_credits(self, spends: Mapping[str, CreditSpend]) -> dict[str, int]:
        """Refill, then spend credits; return those left (:class:`~apitokens.storage.UsageLedger`).

        Each balance is read, settled (:func:`apitokens._limits.settle`) and written in
        one write transaction, which no other process's can interleave with.

        Raises:
            ValueError: a negative or malformed spend (nothing written).
            StorageError: the database failed (nothing written).
        """
        rows = credit_rows(spends)
        left: dict[str, int] = {}
        with self._db.write("spend_credits") as conn:
            for token_id, spent, credits, refill, period in rows:
                row = conn.execute(_READ_BALANCE, (token_id,)).fetchone()
                balance = None if row is None else (int(row[0]), int(row[1]))
                now_left, since = settle(balance, spent, credits, refill, period)
                if (now_left, since) != balance:  # a read (0 spent, no refill) writes nothing
                    conn.execute(_WRITE_BALANCE, (token_id, now_left, since))
                left[token_id] = now_left
        return left

    def reset_credits(self, token_id: str, credits: int | None = None, period: int = 0) -> None:
        """Start a token's credit balance again (see :class:`~apitokens.storage.UsageLedger`).

        Raises:
            ValueError: ``credits`` or ``period`` negative.
            StorageError: the database failed.
        """
        if credits is not None:
            check_count(credits, "credits")
            check_count(period, "period")
        with self._db.write("reset_credits") as conn:
            if credits is None:
                conn.execute("DELETE FROM credit_balances WHERE token_id = ?", (token_id,))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO credit_balances (token_id, credits_left, period)"
                    " VALUES (?, ?, ?)",
                    (token_id, credits, period),
                )

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
        sql, params = _queries.select_events(query)
        with self._db.read("events") as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_schema.event_from_row(row) for row in rows]

    def prune_events(self, *, before: datetime) -> int:
        """Delete events with ``at < before`` (see :meth:`TokenStore.prune_events`).

        Returns:
            How many events were deleted.

        Raises:
            ValueError: ``before`` is naive.
            StorageError: the database failed.
        """
        micros = to_micros(require_utc(before, "before"))
        with self._db.write("prune_events") as conn:
            return conn.execute("DELETE FROM audit WHERE at < ?", (micros,)).rowcount

    def close(self) -> None:
        """Close every connection; later calls raise ``StorageError``. Idempotent.

        A call still running in another thread finishes, and its connection is
        closed when it returns.
        """
        self._db.close()


def _create_private(path: str) -> None:
    """Create a new database file readable by its owner only (0600).

    It holds token hashes, standard-mode secrets and the audit log; SQLite gives
    its ``-wal`` and ``-shm`` files the database file's permissions. An existing
    file keeps its own.
    """
    if path == ":memory:" or path.startswith("file:") or not path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return  # it exists, or cannot be made: SQLite's own open says why
    os.close(fd)
