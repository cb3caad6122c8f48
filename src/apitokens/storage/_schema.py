"""SQLite statements and row conversion for SQLiteStore (the tables: ``_migrations``).

Datetimes are integer microseconds since the Unix epoch, UTC: exact for
Python datetimes, and they sort and index as integers.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from apitokens._errors import StorageError
from apitokens._model import (
    Action,
    AuditEvent,
    AuthEntry,
    Outcome,
    Scope,
    StoredToken,
    Token,
    TokenStatus,
)
from apitokens.storage._base import normalize_event

__all__ = [
    "EVENT_COLUMNS",
    "FOLD_USAGE",
    "INSERT_EVENT",
    "INSERT_RECORD",
    "RECORD_COLUMNS",
    "STORED_COLUMNS",
    "UPDATE_RECORD",
    "event_from_row",
    "event_params",
    "event_values",
    "from_micros",
    "stored_from_row",
    "to_micros",
    "token_from_row",
    "token_params",
    "update_params",
]


RECORD_COLUMNS = (
    "id, name, user, created_by, created_at, expires_at, scope, restrictions, allowed_ips,"
    " secure, last_used_at, last_used_ip, use_count, revoked_at, rate_limit, credits, refill"
)
STORED_COLUMNS = (
    RECORD_COLUMNS
    + ", secret_hash, previous_hash, previous_valid_until, revealable, retired_hashes"
)
EVENT_COLUMNS = "at, action, outcome, token_id, user, actor, client_ip, method, path, reason"

INSERT_RECORD = f"INSERT INTO tokens ({STORED_COLUMNS}) VALUES ({', '.join('?' * 22)})"  # noqa: S608
UPDATE_RECORD = (
    "UPDATE tokens SET name = ?, expires_at = ?, scope = ?, restrictions = ?, allowed_ips = ?,"
    " secure = ?, secret_hash = ?, previous_hash = ?, previous_valid_until = ?, revealable = ?,"
    " retired_hashes = ?, rate_limit = ?, credits = ?, refill = ? WHERE id = ?"
)
# SET expressions all see the row as it was, so the order of the two CASEs is irrelevant.
FOLD_USAGE = (
    "UPDATE tokens SET use_count = use_count + :count,"
    " last_used_ip = CASE WHEN last_used_at IS NULL OR last_used_at <= :at"
    " THEN :ip ELSE last_used_ip END,"
    " last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at <= :at"
    " THEN :at ELSE last_used_at END"
    " WHERE id = :id"
)
INSERT_EVENT = f"INSERT INTO audit ({EVENT_COLUMNS}) VALUES ({', '.join('?' * 10)})"  # noqa: S608

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(value: datetime) -> int:
    """Return an aware datetime as integer microseconds since the epoch."""
    return (value - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    """Return integer microseconds since the epoch as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=value)


def _micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def token_params(stored: StoredToken) -> tuple[object, ...]:
    """Return the parameters of ``INSERT_RECORD`` for a normalized token."""
    token = stored.token
    return (
        token.id,
        token.name,
        token.user,
        token.created_by,
        to_micros(token.created_at),
        _micros(token.expires_at),
        token.scope.value,
        json.dumps(list(token.restrictions)),
        json.dumps(list(token.allowed_ips)),
        int(token.secure),
        _micros(token.last_used_at),
        token.last_used_ip,
        token.use_count,
        _micros(token.revoked_at),
        token.rate_limit,
        token.credits,
        token.refill,
        stored.secret_hash,
        stored.previous_hash,
        _micros(stored.previous_valid_until),
        stored.revealable,
        json.dumps(list(stored.retired_hashes)),
    )


def update_params(stored: StoredToken) -> tuple[object, ...]:
    """Return the parameters of ``UPDATE_RECORD`` for a normalized token."""
    token = stored.token
    return (
        token.name,
        _micros(token.expires_at),
        token.scope.value,
        json.dumps(list(token.restrictions)),
        json.dumps(list(token.allowed_ips)),
        int(token.secure),
        stored.secret_hash,
        stored.previous_hash,
        _micros(stored.previous_valid_until),
        stored.revealable,
        json.dumps(list(stored.retired_hashes)),
        token.rate_limit,
        token.credits,
        token.refill,
        token.id,
    )


# Many rows per INSERT statement: SQLite then does the per-statement work once
# for many rows, which roughly halves the cost of an audit row. 10 columns x 90
# rows stays under the 999-variable limit of older SQLite builds.
ROWS_PER_INSERT = 90
_EVENT_FIELDS = 10
INSERT_EVENTS = (
    f"INSERT INTO audit ({EVENT_COLUMNS}) VALUES "  # noqa: S608 - constant fragments only
    + ", ".join([f"({', '.join('?' * _EVENT_FIELDS)})"] * ROWS_PER_INSERT)
)


def insert_events(conn: sqlite3.Connection, values: list[object]) -> None:
    """Insert the events of :func:`event_values` with as few statements as possible."""
    step = ROWS_PER_INSERT * _EVENT_FIELDS
    full = len(values) - len(values) % step
    if full:
        conn.executemany(INSERT_EVENTS, (values[i : i + step] for i in range(0, full, step)))
    if full < len(values):
        rest = range(full, len(values), _EVENT_FIELDS)
        conn.executemany(INSERT_EVENT, (values[i : i + _EVENT_FIELDS] for i in rest))


# An enum's ``.value`` goes through a descriptor that costs more than the rest of
# the row; the writer turns thousands of events a second into rows.
_ACTION_TEXT: dict[Action, str] = {action: action.value for action in Action}
_OUTCOME_TEXT: dict[Outcome, str] = {outcome: outcome.value for outcome in Outcome}
_AUTHENTICATE = Action.AUTHENTICATE.value


def event_values(events: Iterable[AuditEvent | AuthEntry]) -> list[object]:
    """The parameters of ``events``' rows, in order, as one flat list (ten per event).

    An :class:`~apitokens.storage.AuthEntry` (the audit writer's compact record of an
    authentication) gives the row :func:`event_params` gives for its ``authenticate``
    event; an :class:`AuditEvent` is normalized first. One flat list, not a tuple per
    row flattened later: the writer builds thousands a second.

    Raises:
        ValueError: a time is naive, or an event is otherwise invalid.
    """
    values: list[object] = []
    for event in events:
        if isinstance(event, AuthEntry):
            at, outcome, token_id, user, ip, method, path, reason, _ = event
            if at.tzinfo is None:
                raise ValueError("entry.at must be timezone-aware")
            values += (
                (at - _EPOCH) // _MICROSECOND,
                _AUTHENTICATE,
                _OUTCOME_TEXT[outcome],
                token_id,
                user,
                None,
                ip,
                method,
                path,
                reason,
            )
        else:
            values += event_params(normalize_event(event))
    return values


def event_params(event: AuditEvent) -> tuple[object, ...]:
    """Return the parameters of ``INSERT_EVENT`` for a normalized event."""
    return (
        (event.at - _EPOCH) // _MICROSECOND,
        _ACTION_TEXT[event.action],
        _OUTCOME_TEXT[event.outcome],
        event.token_id,
        event.user,
        event.actor,
        event.client_ip,
        event.method,
        event.path,
        event.reason,
    )


def _optional_datetime(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def _strings(text: str) -> tuple[str, ...]:
    values = json.loads(text)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError("expected a JSON array of strings")
    return tuple(values)


def token_from_row(row: Sequence[Any]) -> Token:
    """Build a ``Token`` from a row selected with ``RECORD_COLUMNS``.

    Raises:
        StorageError: the row holds values apitokens did not write.
    """
    try:
        revoked_at = _optional_datetime(row[13])
        return Token(
            id=row[0],
            name=row[1],
            user=row[2],
            created_by=row[3],
            created_at=from_micros(row[4]),
            expires_at=_optional_datetime(row[5]),
            scope=Scope(row[6]),
            restrictions=_strings(row[7]),
            allowed_ips=_strings(row[8]),
            secure=bool(row[9]),
            last_used_at=_optional_datetime(row[10]),
            last_used_ip=row[11],
            use_count=row[12],
            revoked_at=revoked_at,
            status=TokenStatus.ACTIVE if revoked_at is None else TokenStatus.REVOKED,
            rate_limit=row[14],
            credits=row[15],
            refill=row[16],
        )
    except (ValueError, TypeError, OverflowError) as exc:
        raise StorageError(f"token {row[0]!r} has an unreadable value: {exc}") from None


def stored_from_row(row: Sequence[Any]) -> StoredToken:
    """Build a ``StoredToken`` from a row selected with ``STORED_COLUMNS``.

    Raises:
        StorageError: the row holds values apitokens did not write.
    """
    try:
        previous_valid_until = _optional_datetime(row[19])
    except (ValueError, TypeError, OverflowError):
        raise StorageError(f"token {row[0]!r} has an unreadable grace period") from None
    try:
        retired_hashes = _strings(row[21])
    except (ValueError, TypeError):
        raise StorageError(f"token {row[0]!r} has unreadable retired hashes") from None
    return StoredToken(
        token=token_from_row(row),
        secret_hash=row[17],
        previous_hash=row[18],
        previous_valid_until=previous_valid_until,
        revealable=row[20],
        retired_hashes=retired_hashes,
    )


def event_from_row(row: Sequence[Any]) -> AuditEvent:
    """Build an ``AuditEvent`` from a row selected with ``EVENT_COLUMNS``.

    Raises:
        StorageError: the row holds values apitokens did not write.
    """
    try:
        return AuditEvent(
            at=from_micros(row[0]),
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
    except (ValueError, TypeError, OverflowError) as exc:
        raise StorageError(f"an audit event has an unreadable value: {exc}") from None
