"""Connections: a DSN shown without its password, the pool's connections, errors."""

from __future__ import annotations

import builtins
import ctypes
import re
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.sql
import psycopg_pool

from apitokens._errors import StorageError

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


# -- connections and errors ----------------------------------------------------------------

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


def _configure(conn: psycopg.Connection[Any], *, lock_timeout: float) -> None:
    """Set up each new connection of the pool.

    Datetimes come back in UTC. A call waits at most ``lock_timeout`` for a row or
    table lock another session holds (a long transaction, a migration elsewhere),
    then fails (closed) instead of holding the request that made it.
    """
    conn.execute("SET TIME ZONE 'UTC'")
    # SET takes no parameters; the value is an int we computed.
    conn.execute(f"SET lock_timeout = {max(1, round(lock_timeout * 1000)):d}")


def _tcp_settings(dsn: str, timeout: float) -> dict[str, str]:
    """libpq's TCP settings for a store's connections, from ``timeout``, unless the DSN sets them.

    Keepalives notice a server host that vanished while a connection is idle
    (probes after ``timeout`` s of silence, three ``timeout / 3`` s apart), and
    ``tcp_user_timeout`` one that stops acknowledging what was sent (``2 *
    timeout``): the kernel ends the connection instead of retransmitting for
    about 15 minutes. A path that acknowledges but never answers is bounded by
    the watchdog (``_watch``). libpq ignores them on a Unix socket.
    """
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    wanted = {
        "keepalives": "1",
        "keepalives_idle": str(max(1, round(timeout))),
        "keepalives_interval": str(max(1, round(timeout / 3))),
        "keepalives_count": "3",
        "tcp_user_timeout": str(max(1000, round(2 * timeout * 1000))),
    }
    return {key: value for key, value in wanted.items() if key not in parts}


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
