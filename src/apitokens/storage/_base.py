"""The argument checks and semantics every built-in backend shares.

The helpers below make sure both built-in backends agree on validation (naive
datetimes, unknown status strings, negative pages) and on how usage folds, so
the contract suite in ``tests/storage/contract.py`` can hold them to exactly
the same behaviour.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from apitokens._model import (
    Action,
    AuditEvent,
    Outcome,
    Scope,
    StoredToken,
    Token,
    TokenStatus,
    Usage,
)

__all__ = [
    "EventQuery",
    "TokenQuery",
    "UsageTotal",
    "check_page",
    "fold_usage",
    "normalize_event",
    "normalize_stored",
    "optional_utc",
    "parse_action",
    "parse_outcome",
    "parse_status",
    "require_utc",
]


# --- argument checks -------------------------------------------------------


def require_utc(value: datetime, name: str) -> datetime:
    """Return ``value`` converted to UTC; refuse naive datetimes.

    Raises:
        TypeError: ``value`` is not a datetime.
        ValueError: ``value`` is naive.
    """
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (got a naive datetime)")
    return value.astimezone(UTC)


def optional_utc(value: datetime | None, name: str) -> datetime | None:
    """Like :func:`require_utc`, passing ``None`` through."""
    return None if value is None else require_utc(value, name)


_Member = TypeVar("_Member", TokenStatus, Action, Outcome)


def _member(kind: type[_Member], value: _Member | str | None, label: str) -> _Member | None:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(member.value for member in kind)
        raise ValueError(f"unknown {label} {value!r} (expected one of: {known})") from None


def parse_status(status: TokenStatus | str | None) -> TokenStatus | None:
    """Return the status filter as a ``TokenStatus``; unknown strings raise ``ValueError``."""
    return _member(TokenStatus, status, "token status")


def parse_action(action: Action | str | None) -> Action | None:
    """Return the action filter as an ``Action``; unknown strings raise ``ValueError``."""
    return _member(Action, action, "action")


def parse_outcome(outcome: Outcome | str | None) -> Outcome | None:
    """Return the outcome filter as an ``Outcome``; unknown strings raise ``ValueError``."""
    return _member(Outcome, outcome, "outcome")


def check_page(limit: int | None, offset: int) -> None:
    """Refuse negative (or non-integer) limits and offsets with ``ValueError``."""
    for label, value in (("limit", limit), ("offset", offset)):
        if value is None and label == "limit":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{label} must be a non-negative int, not {value!r}")


def normalize_stored(stored: StoredToken) -> StoredToken:
    """Return ``stored`` with every datetime in UTC and the stored status derived.

    Raises:
        ValueError: a datetime is naive, or a secure-mode token carries a
            revealable token string (secure mode promises the plaintext is
            never stored, so the store enforces it too).
    """
    token = stored.token
    if token.secure and stored.revealable is not None:
        raise ValueError(f"token {token.id!r} is in secure mode and cannot be stored revealable")
    revoked_at = optional_utc(token.revoked_at, "revoked_at")
    token = dataclasses.replace(
        token,
        created_at=require_utc(token.created_at, "created_at"),
        expires_at=optional_utc(token.expires_at, "expires_at"),
        last_used_at=optional_utc(token.last_used_at, "last_used_at"),
        revoked_at=revoked_at,
        scope=Scope(token.scope),
        restrictions=tuple(token.restrictions),
        allowed_ips=tuple(token.allowed_ips),
        status=TokenStatus.ACTIVE if revoked_at is None else TokenStatus.REVOKED,
    )
    return dataclasses.replace(
        stored,
        token=token,
        previous_valid_until=optional_utc(stored.previous_valid_until, "previous_valid_until"),
    )


def normalize_event(event: AuditEvent) -> AuditEvent:
    """Return ``event`` with ``at`` in UTC and action/outcome as enums.

    Raises:
        ValueError: ``at`` is naive, or the action or outcome is unknown.
    """
    at = event.at
    # Events from our own writer are already normalized: skip the copy, which
    # costs more than writing the row.
    if (
        type(event.action) is Action
        and type(event.outcome) is Outcome
        and type(at) is datetime
        and at.tzinfo is UTC
    ):
        return event
    action = parse_action(event.action)
    outcome = parse_outcome(event.outcome)
    if action is None or outcome is None:
        raise ValueError("an audit event needs an action and an outcome")
    return dataclasses.replace(
        event, at=require_utc(event.at, "event.at"), action=action, outcome=outcome
    )


# --- usage folding ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """A batch's uses of one token, folded: how many, and the newest one."""

    count: int
    last_at: datetime
    last_ip: str | None


def fold_usage(usage: Sequence[Usage]) -> dict[str, UsageTotal]:
    """Fold a batch of uses per token id (times in UTC).

    The newest use gives ``last_at`` and ``last_ip``; on equal times the later
    item wins, so a batch applied in order and one applied folded agree.

    Raises:
        ValueError: a ``Usage.at`` is naive or a count is negative.
    """
    totals: dict[str, UsageTotal] = {}
    for use in usage:
        at = require_utc(use.at, "usage.at")
        if not isinstance(use.count, int) or use.count < 0:
            raise ValueError(f"usage.count must be a non-negative int, not {use.count!r}")
        seen = totals.get(use.token_id)
        if seen is None:
            totals[use.token_id] = UsageTotal(use.count, at, use.ip)
        elif at >= seen.last_at:
            totals[use.token_id] = UsageTotal(seen.count + use.count, at, use.ip)
        else:
            totals[use.token_id] = dataclasses.replace(seen, count=seen.count + use.count)
    return totals


# --- queries: validated once, then run in SQL or in Python --------------------


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
