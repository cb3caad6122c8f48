"""Rows to objects and back, and the searches' SQL."""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
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
from apitokens.postgres._sql import (
    _ACTION_TEXT,
    _AUTHENTICATE,
    _EVENT_COLUMNS,
    _OUTCOME_TEXT,
    _RECORD_COLUMNS,
)
from apitokens.storage._base import (
    normalize_event,
)
from apitokens.storage._filters import EventQuery, TokenQuery

# -- rows ----------------------------------------------------------------------------------

# The most UTF-8 bytes of an indexed text column the store writes from a request (an
# audit row's user and token id, a failure key). A btree entry must fit a third of a
# page (about 2,700 bytes, after compression, which random text defeats): a longer
# value makes PostgreSQL refuse the whole row (SQLSTATE 54000), and with it a batch.
_INDEXED_BYTES = 1024
_CUT_MARK = "\u2026"  # what is left out: "…", then a hash of the whole value


def _indexable(value: str) -> str:
    """``value``, or if it is longer than an index takes, its start and a hash of it.

    Deterministic, so a search for the whole value finds the rows written for it, and
    two long values that share their start stay two values.
    """
    if len(value) <= _INDEXED_BYTES // 4:  # no encoding needed: 4 bytes a character at most
        return value
    # A NUL becomes U+FFFD (three bytes) if the row is written: measure it as that.
    value = value.replace("\x00", "\ufffd")
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) <= _INDEXED_BYTES:
        return value
    digest = hashlib.sha256(encoded).hexdigest()[:32]
    head = encoded[: _INDEXED_BYTES - 64].decode("utf-8", "ignore")  # whole characters only
    return f"{head}{_CUT_MARK}{digest}"


def _indexable_or_none(value: str | None) -> str | None:
    return None if value is None else _indexable(value)


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
        token.rate_limit,
        token.credits,
        token.refill,
        stored.secret_hash,
        stored.previous_hash,
        stored.previous_valid_until,
        stored.revealable,
        list(stored.retired_hashes),
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
            rate_limit=row[14],
            credits=row[15],
            refill=row[16],
        )
    except (ValueError, TypeError, AssertionError) as exc:
        raise StorageError(f"token {row[0]!r} has an unreadable value: {exc}") from None


def _stored_from_row(row: Sequence[Any]) -> StoredToken:
    return StoredToken(
        token=_token_from_row(row),
        secret_hash=row[17],
        previous_hash=row[18],
        previous_valid_until=_utc(row[19]),
        revealable=row[20],
        retired_hashes=tuple(row[21]),
    )


def _event_rows(events: Sequence[AuditEvent | AuthEntry]) -> builtins.list[tuple[object, ...]]:
    """The audit rows of ``events``, in order; an AuthEntry is its ``authenticate`` event.

    A user or token id longer than an index takes is cut (``_indexable``): one such
    event, from a request, must not make the batch unwritable.

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
                (at, _AUTHENTICATE, _OUTCOME_TEXT[outcome], _indexable_or_none(token_id),
                 _indexable_or_none(user), None, ip, method, path, reason)
            )  # fmt: skip
        else:
            e = normalize_event(item)
            rows.append(
                (e.at, _ACTION_TEXT[e.action], _OUTCOME_TEXT[e.outcome],
                 _indexable_or_none(e.token_id), _indexable_or_none(e.user), e.actor,
                 e.client_ip, e.method, e.path, e.reason)
            )  # fmt: skip
    return rows


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
        params.append(_indexable(query.token_id))  # as written: cut if long
    if query.user is not None:
        where.append('"user" = %s')
        params.append(_indexable(query.user))
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
