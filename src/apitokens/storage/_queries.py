"""The SQL of SQLiteStore's two searches: ``list()`` of tokens and ``events()`` of the audit log.

Each builder writes exactly the filter its query object's ``matches`` applies (the
memory store's), so both stores return the same rows in the same order.
"""

from __future__ import annotations

from apitokens._model import Outcome, TokenStatus
from apitokens.storage._filters import EventQuery, TokenQuery
from apitokens.storage._migrations import UNSUCCESSFUL
from apitokens.storage._schema import EVENT_COLUMNS, RECORD_COLUMNS, to_micros

__all__ = ["select_events", "select_tokens"]


def select_tokens(query: TokenQuery) -> tuple[str, list[object]]:
    """Return the SQL and parameters of ``TokenStore.list``.

    Selects exactly what ``TokenQuery.matches`` accepts; the name test uses
    the ``apitokens_casefold`` function every connection registers.
    """
    where: list[str] = []
    params: list[object] = []
    if query.user is not None:
        where.append("user = ?")
        params.append(query.user)
    if query.status is TokenStatus.REVOKED:
        where.append("revoked_at IS NOT NULL")
    elif query.status is TokenStatus.ACTIVE:
        where.append("revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)")
        params.append(to_micros(query.now))
    elif query.status is TokenStatus.EXPIRED:
        where.append("revoked_at IS NULL AND expires_at <= ?")
        params.append(to_micros(query.now))
    if query.unused_since is not None:
        where.append("created_at <= ? AND (last_used_at IS NULL OR last_used_at < ?)")
        params += [to_micros(query.unused_since)] * 2
    if query.name is not None:
        where.append("instr(apitokens_casefold(name), ?) > 0")
        params.append(query.name)
    sql = (
        f"SELECT {RECORD_COLUMNS} FROM tokens"  # noqa: S608 - constant fragments only
        f" WHERE {' AND '.join(where) or '1'}"
        " ORDER BY created_at DESC, id ASC LIMIT ? OFFSET ?"
    )
    return sql, [*params, -1 if query.limit is None else query.limit, query.offset]


def select_events(query: EventQuery) -> tuple[str, list[object]]:
    """Return the SQL and parameters of ``TokenStore.events`` (``EventQuery.matches``)."""
    where: list[str] = []
    params: list[object] = []
    if query.token_id is not None:
        where.append("token_id = ?")
        params.append(query.token_id)
    if query.user is not None:
        where.append("user = ?")
        params.append(query.user)
    if query.action is not None:
        where.append("action = ?")
        params.append(query.action.value)
    if query.outcome is not None:
        where.append("outcome = ?")
        params.append(query.outcome.value)
        if query.outcome is not Outcome.SUCCESS:
            # The index of outcomes holds only these rows (schema version 3); SQLite
            # uses a partial index only when the query states its condition.
            where.append(UNSUCCESSFUL)
    if query.since is not None:
        where.append("at >= ?")
        params.append(to_micros(query.since))
    if query.until is not None:
        where.append("at < ?")
        params.append(to_micros(query.until))
    sql = (
        f"SELECT {EVENT_COLUMNS} FROM audit"  # noqa: S608 - constant fragments only
        f" WHERE {' AND '.join(where) or '1'}"
        " ORDER BY at DESC, seq DESC LIMIT ? OFFSET ?"
    )
    return sql, [*params, query.limit, query.offset]
