"""What ``list()`` and ``events()`` were asked for: validated once, then run in SQL or Python.

:class:`TokenQuery` and :class:`EventQuery` hold the checked arguments. Their
``matches`` methods are the reference semantics: the memory store filters with
them, and the SQLite store's SQL (``_queries.py``) must select exactly what they
accept, which the contract suite checks on both.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from apitokens._model import Action, AuditEvent, Outcome, Token, TokenStatus
from apitokens.storage._base import (
    check_page,
    optional_utc,
    parse_action,
    parse_outcome,
    parse_status,
    require_utc,
)

__all__ = ["EventQuery", "TokenQuery"]


@dataclass(frozen=True, slots=True)
class TokenQuery:
    """The validated arguments of :meth:`TokenStore.list`.

    :meth:`matches` is the reference semantics; an SQL backend must select
    exactly the tokens it accepts. ``name`` is already ``casefold()``-ed.
    """

    now: datetime
    user: str | None = None
    status: TokenStatus | None = None
    unused_since: datetime | None = None
    name: str | None = None
    limit: int | None = None
    offset: int = 0

    @classmethod
    def from_arguments(
        cls,
        *,
        now: datetime,
        user: str | None = None,
        status: TokenStatus | str | None = None,
        unused_since: datetime | None = None,
        name: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> TokenQuery:
        """Validate and normalize ``list()``'s arguments.

        Raises:
            ValueError: unknown status, naive datetime, negative limit or offset.
        """
        check_page(limit, offset)
        return cls(
            now=require_utc(now, "now"),
            user=user,
            status=parse_status(status),
            unused_since=optional_utc(unused_since, "unused_since"),
            name=None if name is None else name.casefold(),
            limit=limit,
            offset=offset,
        )

    def matches(self, token: Token) -> bool:
        """Return whether ``token`` passes the filters (paging aside).

        ``revoked`` means ``revoked_at`` is set, whatever ``now`` is; ``active``
        and ``expired`` are the unrevoked tokens on either side of ``now``.
        """
        if self.user is not None and token.user != self.user:
            return False
        if self.status is TokenStatus.REVOKED and token.revoked_at is None:
            return False
        if self.status in (TokenStatus.ACTIVE, TokenStatus.EXPIRED):
            if token.revoked_at is not None:
                return False
            expired = token.expires_at is not None and token.expires_at <= self.now
            if expired != (self.status is TokenStatus.EXPIRED):
                return False
        if self.unused_since is not None and (
            token.created_at > self.unused_since
            or (token.last_used_at is not None and token.last_used_at >= self.unused_since)
        ):
            return False
        return self.name is None or self.name in token.name.casefold()

    def page(self, tokens: Sequence[Token]) -> builtins.list[Token]:
        """Order matching tokens (``created_at`` DESC, ``id`` ASC), page them, apply ``now``."""
        ordered = sorted(tokens, key=lambda t: t.id)
        ordered.sort(key=lambda t: t.created_at, reverse=True)
        end = None if self.limit is None else self.offset + self.limit
        return [token.as_of(self.now) for token in ordered[self.offset : end]]


@dataclass(frozen=True, slots=True)
class EventQuery:
    """The validated arguments of :meth:`TokenStore.events`."""

    token_id: str | None = None
    user: str | None = None
    action: Action | None = None
    outcome: Outcome | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    offset: int = 0

    @classmethod
    def from_arguments(
        cls,
        *,
        token_id: str | None = None,
        user: str | None = None,
        action: Action | str | None = None,
        outcome: Outcome | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> EventQuery:
        """Validate and normalize ``events()``'s arguments.

        Raises:
            ValueError: unknown action or outcome, naive datetime, negative
                limit or offset.
        """
        check_page(limit, offset)
        return cls(
            token_id=token_id,
            user=user,
            action=parse_action(action),
            outcome=parse_outcome(outcome),
            since=optional_utc(since, "since"),
            until=optional_utc(until, "until"),
            limit=limit,
            offset=offset,
        )

    def matches(self, event: AuditEvent) -> bool:
        """Return whether ``event`` passes the filters (``since`` inclusive, ``until`` not)."""
        return (
            (self.token_id is None or event.token_id == self.token_id)
            and (self.user is None or event.user == self.user)
            and (self.action is None or event.action is self.action)
            and (self.outcome is None or event.outcome is self.outcome)
            and (self.since is None or event.at >= self.since)
            and (self.until is None or event.at < self.until)
        )
