"""The schema's versions: read, checked, migrated once under an advisory lock."""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.sql

from apitokens._errors import SchemaVersionError, StorageError
from apitokens.postgres._connect import _described, _safe_message
from apitokens.postgres._sql import _MIGRATION_LOCK, _SCHEMA_TABLE, LATEST_VERSION, MIGRATIONS
from apitokens.postgres._watch import WATCHDOG
from apitokens.storage._dsn import redact_dsn

# How long opening a store waits for the lock of a migration another process runs, in
# units of the store's ``timeout``: generous, so that the workers that start at once
# while one migrates all open (migrating the schema from nothing takes well under a
# second); a migration that takes longer is run ahead (docs/deployment.md).
_LOCK_WAIT = 2.0

# -- migrations ----------------------------------------------------------------------------


def _version(conn: psycopg.Connection[Any]) -> int:
    """The database's schema version: 0 before apitokens ever wrote to it."""
    row = conn.execute("SELECT to_regclass('apitokens_schema') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM apitokens_schema").fetchone()
    return 0 if row is None else int(row[0])


def schema_version(dsn: str, *, connect_timeout: int = 5) -> int:
    """The apitokens schema version of the database ``dsn`` names; 0 when it has none.

    Reads it over one connection of its own and changes nothing, where opening a
    ``PostgresStore`` creates or upgrades the schema (the CLI's read commands use it
    to refuse a database without apitokens' tables).

    Raises:
        StorageError: the server cannot be reached or refuses the connection (the
            message holds no password).
    """
    _, password = _described(dsn)
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
            return _version(conn)
    except psycopg.Error as exc:
        message = _safe_message(exc, password)
    # Raised here, not in the except block: no __context__ holds psycopg's own text.
    raise StorageError(f"cannot read PostgreSQL database {redact_dsn(dsn)!r}: {message}")


def _check_version(conn: psycopg.Connection[Any], where: str) -> int:
    version = _version(conn)
    if version > LATEST_VERSION:
        raise SchemaVersionError(
            f"{where} has schema version {version}, but this apitokens supports schema"
            f" versions up to {LATEST_VERSION}: it was written by a newer apitokens;"
            " upgrade apitokens to open it"
        )
    return version


def _migrate(conn: psycopg.Connection[Any], where: str, timeout: float) -> None:
    """Bring the schema to ``LATEST_VERSION``: one transaction per migration, under a lock.

    An advisory lock serializes migrating processes (on any host); each reads the
    version again once it holds the lock, so a migration runs exactly once. The lock
    is the session's (``pg_advisory_lock``), taken before the transactions begin, not
    ``pg_advisory_xact_lock`` inside one: a transaction that began before the wait
    keeps its view of the catalog (it would not see the table that the process it
    waited for created). The lock goes with the connection if the process dies. An
    up-to-date database takes no lock.

    The wait for the lock is bounded (``lock_timeout``, ``_LOCK_WAIT * timeout``):
    a session that holds it and never finishes (a stuck migrator) makes this open
    fail, closed, instead of waiting forever. Reading the version and taking the lock
    are under the watchdog too (a server that stopped answering); the migrations
    themselves are not (one may rightly take long on a large table).

    Args:
        conn: a connection in autocommit mode.
        where: how to name the database in error messages.
        timeout: the store's ``timeout``.

    Raises:
        SchemaVersionError: the database's version is newer than ``LATEST_VERSION``.
        psycopg.Error: a migration failed (its transaction is rolled back), or the
            lock was not granted in time (SQLSTATE 55P03).
    """
    wait = _LOCK_WAIT * timeout
    with WATCHDOG.watch(conn, 2 * timeout):
        if _check_version(conn, where) == LATEST_VERSION:
            return
    with WATCHDOG.watch(conn, wait + 2 * timeout):
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{round(wait * 1000)}ms",))
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        finally:
            if not conn.broken:
                conn.execute("RESET lock_timeout")
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
