"""The SQLite schema and its migrations, for SQLiteStore.

Schema policy: ``PRAGMA user_version`` is the schema version. ``MIGRATIONS[n]``
takes a database from version ``n`` to ``n + 1``; each runs in its own
``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash
leaves the file at a whole version. A released migration is never edited:
changes are new entries appended to the list. A file whose version is newer
than ``LATEST_VERSION`` is refused, never written to.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from apitokens._errors import SchemaVersionError

__all__ = ["LATEST_VERSION", "MIGRATIONS", "check_version", "migrate", "user_version"]

_V1 = (
    """
    CREATE TABLE tokens (
        id            TEXT PRIMARY KEY NOT NULL,
        name          TEXT NOT NULL,
        user          TEXT,
        created_by    TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        expires_at    INTEGER,
        scope         TEXT NOT NULL,
        restrictions  TEXT NOT NULL DEFAULT '[]',
        allowed_ips   TEXT NOT NULL DEFAULT '[]',
        secure        INTEGER NOT NULL DEFAULT 1,
        secret_hash   TEXT NOT NULL,
        revealable    TEXT,
        last_used_at  INTEGER,
        last_used_ip  TEXT,
        use_count     INTEGER NOT NULL DEFAULT 0,
        revoked_at    INTEGER
    )
    """,
    "CREATE INDEX tokens_by_user ON tokens (user)",
    "CREATE INDEX tokens_by_status ON tokens (revoked_at, expires_at)",
    "CREATE INDEX tokens_by_last_used ON tokens (last_used_at)",
    # seq is the rowid: it keeps insertion order for events with equal times.
    """
    CREATE TABLE audit (
        seq        INTEGER PRIMARY KEY,
        at         INTEGER NOT NULL,
        action     TEXT NOT NULL,
        outcome    TEXT NOT NULL,
        token_id   TEXT,
        user       TEXT,
        actor      TEXT,
        client_ip  TEXT,
        method     TEXT,
        path       TEXT,
        reason     TEXT NOT NULL DEFAULT ''
    )
    """,
    "CREATE INDEX audit_by_token ON audit (token_id, at)",
    "CREATE INDEX audit_by_user ON audit (user, at)",
    "CREATE INDEX audit_by_outcome ON audit (outcome, at)",
    "CREATE INDEX audit_by_at ON audit (at)",
)

_V2 = (
    # Rotation: the replaced secret's hash stays valid until its grace ends.
    "ALTER TABLE tokens ADD COLUMN previous_hash TEXT",
    "ALTER TABLE tokens ADD COLUMN previous_valid_until INTEGER",
    # list() orders by (created_at DESC, id); without this it sorts every row.
    "CREATE INDEX tokens_by_created ON tokens (created_at DESC, id)",
    # No index on audit (action, at): every audit row pays for each index on
    # insert, and a query by action alone walks audit_by_at newest first.
)

# The condition of the partial index of outcomes; queries by outcome repeat it.
UNSUCCESSFUL = "outcome != 'success'"

_V3 = (
    # Nearly every audit row is a success, and each paid for its entry in the index
    # of outcomes (about 0.5 µs of a row's 4 µs), which only searches for the other
    # outcomes use: a search for successes walks audit_by_at newest first, where
    # nearly every row matches. The index now holds the other outcomes only.
    "DROP INDEX audit_by_outcome",
    f"CREATE INDEX audit_by_outcome ON audit (outcome, at) WHERE {UNSUCCESSFUL}",
)

_V4 = (
    # The audit journals (_journal.py): how far each process's journal is in the
    # store, moved in the same transaction as the rows it wrote, so a dead
    # process's journal is replayed from exactly there.
    """
    CREATE TABLE journal (
        name    TEXT PRIMARY KEY NOT NULL,
        events  INTEGER NOT NULL,
        usage   INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
)

_V5 = (
    # The failure ledger (FailureLedger): failed attempts per throttle key per second of
    # the wall clock, shared by every process on the file. The primary key serves
    # failures_since and the upsert; the index on second serves the pruning.
    """
    CREATE TABLE failures (
        key     TEXT NOT NULL,
        second  INTEGER NOT NULL,
        count   INTEGER NOT NULL,
        PRIMARY KEY (key, second)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX failures_by_second ON failures (second)",
)

_V6 = (
    # Reuse detection (DESIGN §11): the hashes of the secrets rotated out before the
    # previous one, newest first, as a JSON array.
    "ALTER TABLE tokens ADD COLUMN retired_hashes TEXT NOT NULL DEFAULT '[]'",
)

_V7 = (
    # The expiry notices claimed (NoticeLedger): one row per token, expiry and
    # threshold (both in µs), inserted by the one caller that sends the notice. The
    # primary key makes the claim atomic; the index on expires_at serves the pruning.
    """
    CREATE TABLE notices (
        token_id    TEXT NOT NULL,
        expires_at  INTEGER NOT NULL,
        threshold   INTEGER NOT NULL,
        claimed_at  INTEGER NOT NULL,
        PRIMARY KEY (token_id, expires_at, threshold)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX notices_by_expiry ON notices (expires_at)",
)

_V8 = (
    # Per-token rate limits and credits (DESIGN §11): their canonical text ("100/min",
    # "1000/day") and the credits, NULL for none; existing tokens get none.
    "ALTER TABLE tokens ADD COLUMN rate_limit TEXT",
    "ALTER TABLE tokens ADD COLUMN credits INTEGER",
    "ALTER TABLE tokens ADD COLUMN refill TEXT",
    # The usage ledger (UsageLedger): requests per token per window (its length and its
    # start, in Unix seconds), added to by every process on the file. The primary key
    # serves the upsert and the read back; the index on the window's end, the pruning.
    """
    CREATE TABLE request_counts (
        token_id  TEXT NOT NULL,
        seconds   INTEGER NOT NULL,
        start     INTEGER NOT NULL,
        count     INTEGER NOT NULL,
        PRIMARY KEY (token_id, seconds, start)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX request_counts_by_end ON request_counts (start + seconds)",
    # And each credited token's balance: the credits left, as of a refill period (whole
    # refill periods since the epoch; 0 without refill).
    """
    CREATE TABLE credit_balances (
        token_id      TEXT PRIMARY KEY NOT NULL,
        credits_left  INTEGER NOT NULL,
        period        INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
)

MIGRATIONS: tuple[Sequence[str], ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8)
"""``MIGRATIONS[n]`` upgrades a database from schema version ``n`` to ``n + 1``."""

LATEST_VERSION = len(MIGRATIONS)


def user_version(conn: sqlite3.Connection) -> int:
    """Return the schema version recorded in the database file."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def check_version(conn: sqlite3.Connection, where: str) -> int:
    """Return the file's schema version, refusing one newer than this apitokens knows.

    Raises:
        SchemaVersionError: the file's version is newer than ``LATEST_VERSION``.
    """
    version = user_version(conn)
    if version > LATEST_VERSION:
        raise SchemaVersionError(
            f"{where} has schema version {version}, but this apitokens supports schema"
            f" versions up to {LATEST_VERSION}: it was written by a newer apitokens;"
            " upgrade apitokens to open it"
        )
    return version


def migrate(conn: sqlite3.Connection, where: str) -> None:
    """Bring the database up to ``LATEST_VERSION``, one transaction per migration.

    The version is re-read inside each write transaction, so several processes
    opening an old file at once apply each migration exactly once.

    Args:
        conn: a connection in autocommit mode (``isolation_level=None``).
        where: how to name the database in error messages.

    Raises:
        SchemaVersionError: the file's version is newer than ``LATEST_VERSION``.
        sqlite3.Error: a migration failed (its transaction is rolled back).
    """
    while check_version(conn, where) < LATEST_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = check_version(conn, where)
            if version < LATEST_VERSION:
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                # PRAGMA takes no parameters; version is an int we computed.
                conn.execute(f"PRAGMA user_version = {version + 1:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
