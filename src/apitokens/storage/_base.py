"""The argument checks and semantics every built-in backend shares.

The helpers below make sure both built-in backends agree on validation (naive
datetimes, unknown status strings, negative pages) and on how usage folds, so
the contract suite (``apitokens.testing``) can hold them to exactly
the same behaviour.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from apitokens._limits import check_count, check_credits, normalize_rate
from apitokens._model import (
    Action,
    AuditEvent,
    Outcome,
    Scope,
    StoredToken,
    TokenStatus,
    Usage,
)

__all__ = [
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
        ValueError: a datetime is naive, a secure-mode token carries a
            revealable token string (secure mode promises the plaintext is
            never stored, so the store enforces it too), or a limit is malformed
            (a refill without credits included).
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
        rate_limit=normalize_rate(token.rate_limit),
        credits=check_credits(token.credits),
        refill=normalize_rate(token.refill, "refill"),
    )
    if token.refill is not None and token.credits is None:
        raise ValueError(f"token {token.id!r} has a refill but no credits")
    return dataclasses.replace(
        stored,
        token=token,
        previous_valid_until=optional_utc(stored.previous_valid_until, "previous_valid_until"),
        retired_hashes=tuple(stored.retired_hashes),
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


# --- the failure ledger (FailureLedger) --------------------------------------------


FAILURES_KEPT_AT_LEAST = timedelta(hours=1)
"""The shortest time a failure stays in a shared ledger, whatever ``keep`` a caller gives.

Every process that shares a store prunes the ledger: one with a shorter
``failure_window`` (another service on the same database), or whose clock runs
ahead, would otherwise erase the failures the others still count.
"""


def kept_seconds(keep: timedelta) -> int:
    """How many seconds back from now a ledger keeps failures: ``keep``, at least the floor."""
    return max(math.ceil(keep.total_seconds()), int(FAILURES_KEPT_AT_LEAST.total_seconds()))


def failure_rows(
    counts: Mapping[str, int], at: datetime, keep: timedelta
) -> tuple[list[tuple[str, int, int]], int]:
    """``(key, second, count)`` rows for ``record_failures``, and the oldest second to keep.

    Failures are counted by whole seconds of the wall clock (``at`` rounded down), so
    a key under attack is one row per second, however many processes add to it.
    What is kept reaches back ``keep``, but never less than ``FAILURES_KEPT_AT_LEAST``.

    Raises:
        ValueError: ``at`` is naive or a count is negative.
    """
    second = math.floor(require_utc(at, "at").timestamp())
    rows = []
    for key, count in counts.items():
        if count < 0:
            raise ValueError(f"a failure count must be >= 0, not {count}")
        if count:
            rows.append((key, second, count))
    # One second more than asked: failures_since rounds ``since`` down, and must find them.
    return rows, second - kept_seconds(keep) - 1


def since_second(since: datetime) -> int:
    """The first second ``failures_since`` counts: rounded down, erring towards counting."""
    return math.floor(require_utc(since, "since").timestamp())


# --- the expiry notices (NoticeLedger) ----------------------------------------------


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

NOTICES_KEPT_AFTER_EXPIRY = timedelta(days=1)
"""How long after its expiry a token's claimed notices are kept.

An expired token gets no notice, so its claims are no longer needed; a day's margin
keeps them while a host whose clock runs behind may still see the token as expiring.
"""


def notice_key(token_id: str, expires_at: datetime, threshold: timedelta) -> tuple[str, int, int]:
    """``(token_id, expiry in µs since the epoch, threshold in µs)``: a notice's name.

    Raises:
        ValueError: ``expires_at`` is naive or ``threshold`` is not positive.
    """
    expires = require_utc(expires_at, "expires_at")
    if not isinstance(threshold, timedelta) or threshold <= timedelta(0):
        raise ValueError(f"a notice threshold must be a positive timedelta, not {threshold!r}")
    micro = timedelta(microseconds=1)
    return token_id, (expires - _EPOCH) // micro, threshold // micro


def notices_kept_from(at: datetime) -> int:
    """The oldest expiry (µs since the epoch) whose claimed notices are still kept at ``at``.

    Raises:
        ValueError: ``at`` is naive.
    """
    return (require_utc(at, "at") - NOTICES_KEPT_AFTER_EXPIRY - _EPOCH) // timedelta(microseconds=1)


# --- the usage ledger (UsageLedger) -----------------------------------------------


LEDGER_MAX = 2**53
"""The largest count, window or period a SQL ledger takes: sums stay within 64 bits."""


def _ledger_int(value: object, what: str) -> int:
    number = check_count(value, what)
    if number > LEDGER_MAX:
        raise ValueError(f"{what} is too large")
    return number


def request_rows(
    counts: Mapping[tuple[str, int, int], int], ended_before: object
) -> tuple[list[tuple[str, int, int, int]], int]:
    """``(token_id, seconds, start, count)`` rows for ``count_requests``, in key order.

    In key order, so two processes adding to the same windows lock them in the same
    order (PostgreSQL) and queue rather than deadlock.

    Raises:
        ValueError: a negative or malformed count or key, or ``ended_before`` not an int.
    """
    if isinstance(ended_before, bool) or not isinstance(ended_before, int):
        raise ValueError("ended_before must be a whole number of Unix seconds")
    rows = []
    for key, count in counts.items():
        if not isinstance(key, tuple) or len(key) != 3 or not isinstance(key[0], str):
            raise ValueError("a window is named (token_id, seconds, start)")
        token_id, seconds, start = key
        if isinstance(start, bool) or not isinstance(start, int) or abs(start) > LEDGER_MAX:
            raise ValueError("a window's start must be a whole number of Unix seconds")
        seconds = _ledger_int(seconds, "a window's length")
        rows.append((token_id, seconds, start, _ledger_int(count, "a request count")))
    return sorted(rows), ended_before


def credit_rows(spends: Mapping[str, object]) -> list[tuple[str, int, int, int, int]]:
    """``(token_id, spent, credits, refill, period)`` rows for ``spend_credits``, by id.

    Raises:
        ValueError: a negative or malformed spend.
    """
    rows = []
    for token_id, spend in spends.items():
        if not isinstance(token_id, str) or not isinstance(spend, tuple) or len(spend) != 4:
            raise ValueError("a spend is a CreditSpend(spent, credits, refill, period)")
        spent, credits, refill, period = (
            _ledger_int(value, what)
            for value, what in zip(spend, ("spent", "credits", "refill", "period"), strict=True)
        )
        rows.append((token_id, spent, credits, refill, period))
    return sorted(rows)
