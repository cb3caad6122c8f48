"""MemoryStore: a TokenStore in this process's memory, for tests and single-process demos."""

from __future__ import annotations

import builtins
import dataclasses
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType

from apitokens._errors import StorageError, TokenNotFound
from apitokens._limits import check_count, settle
from apitokens._model import Action, AuditEvent, Outcome, StoredToken, Token, TokenStatus, Usage
from apitokens.storage._base import (
    fold_usage,
    normalize_event,
    normalize_stored,
    notice_key,
    notices_kept_from,
    require_utc,
)
from apitokens.storage._filters import EventQuery, TokenQuery
from apitokens.storage._protocol import CreditSpend

__all__ = ["MemoryStore"]


class MemoryStore:
    """A :class:`~apitokens.TokenStore` kept in dictionaries, guarded by one lock.

    Nothing survives the process. Records are kept as frozen dataclasses, so
    what a call returns can be shared with the caller safely. Every change
    happens entirely under the lock, which makes it atomic (a :meth:`write`
    batch is validated before anything changes, so it is all or nothing);
    queries copy a snapshot under the lock and filter it outside, so a long
    listing does not stall authentication. It tells every subscriber
    (:class:`~apitokens.storage.ChangeFeed`: each ``ApiTokens`` sharing it) of a
    changed token at once.
    """

    def __init__(self) -> None:
        """Create an empty store."""
        self._lock = threading.Lock()
        self._tokens: dict[str, StoredToken] = {}
        # (sequence number, event): the number breaks ties between equal times.
        self._events: builtins.list[tuple[int, AuditEvent]] = []
        self._sequence = itertools.count()
        self._closed = False
        self._subscribers: builtins.list[Callable[[str], None]] = []
        # The claimed expiry notices (NoticeLedger): notice_key -> when claimed.
        self._notices: dict[tuple[str, int, int], datetime] = {}
        # The usage ledger: requests per (token id, window length, window start), and
        # each credited token's (credits left, refill period of that balance).
        self._requests: dict[tuple[str, int, int], int] = {}
        self._credits: dict[str, tuple[int, int]] = {}

    def subscribe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(token_id)`` after each change to a token; return the unsubscriber."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _changed(self, token_id: str) -> None:
        """Tell the subscribers (outside the lock: a callback may read the store)."""
        with self._lock:
            subscribers = tuple(self._subscribers)
        for callback in subscribers:
            callback(token_id)

    def __repr__(self) -> str:
        return f"MemoryStore(tokens={len(self._tokens)}, events={len(self._events)})"

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the memory store is closed")

    def add(self, stored: StoredToken) -> None:
        """Store a new token (see :meth:`TokenStore.add`).

        Raises:
            StorageError: the id exists already, or the store is closed.
            ValueError: a datetime is naive, or a secure token is revealable.
        """
        stored = normalize_stored(stored)
        with self._lock:
            self._check_open()
            if stored.token.id in self._tokens:
                raise StorageError(f"add failed: a token with id {stored.token.id!r} exists")
            self._tokens[stored.token.id] = stored

    def get(self, token_id: str) -> StoredToken | None:
        """Return the token with its hashes, or ``None`` (see :meth:`TokenStore.get`).

        Raises:
            StorageError: the store is closed.
        """
        with self._lock:
            self._check_open()
            return self._tokens.get(token_id)

    def update(self, stored: StoredToken, *, expected_hash: str | None = None) -> bool:
        """Replace a token's editable fields (see :meth:`TokenStore.update`).

        Returns:
            ``True`` if the token was changed; ``False`` if its ``secret_hash`` is
            not ``expected_hash`` (nothing changed).

        Raises:
            TokenNotFound: no token has this id.
            StorageError: the store is closed.
            ValueError: a datetime is naive, a secure token is revealable, or a limit
                is malformed.
        """
        new = normalize_stored(stored)
        with self._lock:
            self._check_open()
            old = self._tokens.get(new.token.id)
            if old is None:
                raise TokenNotFound(f"no token has id {new.token.id!r}")
            if expected_hash is not None and old.secret_hash != expected_hash:
                return False
            token = dataclasses.replace(
                old.token,
                name=new.token.name,
                expires_at=new.token.expires_at,
                scope=new.token.scope,
                restrictions=new.token.restrictions,
                allowed_ips=new.token.allowed_ips,
                secure=new.token.secure,
                rate_limit=new.token.rate_limit,
                credits=new.token.credits,
                refill=new.token.refill,
            )
            self._tokens[token.id] = dataclasses.replace(new, token=token)
        self._changed(token.id)
        return True

    def replace_hash(self, token_id: str, *, old: str, new: str) -> bool:
        """Swap a token's hash if it is still ``old`` (see :meth:`TokenStore.replace_hash`).

        Returns:
            ``True`` if the hash was replaced.

        Raises:
            StorageError: the store is closed.
        """
        with self._lock:
            self._check_open()
            stored = self._tokens.get(token_id)
            if stored is None or stored.secret_hash != old:
                return False
            self._tokens[token_id] = dataclasses.replace(stored, secret_hash=new)
        self._changed(token_id)
        return True

    def revoke(self, token_id: str, at: datetime) -> bool:
        """Revoke a token unless it already is (see :meth:`TokenStore.revoke`).

        Returns:
            ``True`` if this call revoked it.

        Raises:
            TokenNotFound: no token has this id.
            StorageError: the store is closed.
            ValueError: ``at`` is naive.
        """
        at = require_utc(at, "at")
        with self._lock:
            self._check_open()
            old = self._tokens.get(token_id)
            if old is None:
                raise TokenNotFound(f"no token has id {token_id!r}")
            if old.token.revoked_at is not None:
                return False
            token = dataclasses.replace(old.token, revoked_at=at, status=TokenStatus.REVOKED)
            self._tokens[token_id] = dataclasses.replace(old, token=token)
        self._changed(token_id)
        return True

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
            StorageError: the store is closed.
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
        with self._lock:
            self._check_open()
            tokens = [stored.token for stored in self._tokens.values()]
        return query.page([token for token in tokens if query.matches(token)])

    def write(self, *, events: Sequence[AuditEvent] = (), usage: Sequence[Usage] = ()) -> None:
        """Record events and fold usage atomically (see :meth:`TokenStore.write`).

        Raises:
            ValueError: a datetime is naive or a count negative (nothing written).
            StorageError: the store is closed (nothing written).
        """
        normalized = [normalize_event(event) for event in events]
        totals = fold_usage(usage)
        with self._lock:
            self._check_open()
            self._events.extend((next(self._sequence), event) for event in normalized)
            for token_id, total in totals.items():
                old = self._tokens.get(token_id)
                if old is None:
                    continue
                token = old.token
                newest = token.last_used_at is None or total.last_at >= token.last_used_at
                token = dataclasses.replace(
                    token,
                    use_count=token.use_count + total.count,
                    last_used_at=total.last_at if newest else token.last_used_at,
                    last_used_ip=total.last_ip if newest else token.last_used_ip,
                )
                self._tokens[token_id] = dataclasses.replace(old, token=token)

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
            StorageError: the store is closed.
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
        with self._lock:
            self._check_open()
            entries = builtins.list(self._events)
        found = [entry for entry in entries if query.matches(entry[1])]
        # Newest first; the sequence number orders events with equal times.
        found.sort(key=lambda entry: (entry[1].at, entry[0]), reverse=True)
        return [event for _, event in found[query.offset : query.offset + query.limit]]

    def prune_events(self, *, before: datetime) -> int:
        """Delete events with ``at < before`` (see :meth:`TokenStore.prune_events`).

        Returns:
            How many events were deleted.

        Raises:
            ValueError: ``before`` is naive.
            StorageError: the store is closed.
        """
        before = require_utc(before, "before")
        with self._lock:
            self._check_open()
            kept = [entry for entry in self._events if entry[1].at >= before]
            removed = len(self._events) - len(kept)
            self._events = kept
            return removed

    # -- the expiry notices (NoticeLedger) ---------------------------------------------

    def claim_notice(
        self, token_id: str, expires_at: datetime, threshold: timedelta, at: datetime
    ) -> bool:
        """Record a notice as sent unless it was (see :class:`~apitokens.storage.NoticeLedger`).

        Raises:
            ValueError: a datetime is naive or ``threshold`` is not positive.
            StorageError: the store is closed.
        """
        key = notice_key(token_id, expires_at, threshold)
        at = require_utc(at, "at")
        oldest = notices_kept_from(at)
        with self._lock:
            self._check_open()
            if key in self._notices:
                return False
            self._notices = {k: v for k, v in self._notices.items() if k[1] >= oldest}
            self._notices[key] = at
            return True

    def release_notice(self, token_id: str, expires_at: datetime, threshold: timedelta) -> None:
        """Forget a claimed notice (see :class:`~apitokens.storage.NoticeLedger`).

        Raises:
            ValueError: ``expires_at`` is naive or ``threshold`` is not positive.
            StorageError: the store is closed.
        """
        key = notice_key(token_id, expires_at, threshold)
        with self._lock:
            self._check_open()
            self._notices.pop(key, None)

    # -- rate limits and credits (UsageLedger) -------------------------------------------

    def count_requests(
        self, counts: Mapping[tuple[str, int, int], int], *, ended_before: int
    ) -> dict[tuple[str, int, int], int]:
        """Add requests per window; return the totals (see :class:`~apitokens.storage.UsageLedger`).

        Raises:
            ValueError: a negative count.
            StorageError: the store is closed.
        """
        for count in counts.values():
            check_count(count, "a request count")
        with self._lock:
            self._check_open()
            totals = {}
            for key, count in counts.items():
                totals[key] = self._requests[key] = self._requests.get(key, 0) + count
            self._requests = {
                key: n for key, n in self._requests.items() if key[1] + key[2] >= ended_before
            }
            return totals

    def spend_credits(self, spends: Mapping[str, CreditSpend]) -> dict[str, int]:
        """Refill, then spend credits; return those left (:class:`~apitokens.storage.UsageLedger`).

        Raises:
            ValueError: a negative or malformed spend.
            StorageError: the store is closed.
        """
        for spend in spends.values():
            for value, what in zip(spend, CreditSpend._fields, strict=True):
                check_count(value, what)
        with self._lock:
            self._check_open()
            left = {}
            for token_id, (spent, credits, refill, period) in spends.items():
                balance = settle(self._credits.get(token_id), spent, credits, refill, period)
                self._credits[token_id] = balance
                left[token_id] = balance[0]
            return left

    def reset_credits(self, token_id: str, credits: int | None = None, period: int = 0) -> None:
        """Start a token's credit balance again (see :class:`~apitokens.storage.UsageLedger`).

        Raises:
            ValueError: ``credits`` or ``period`` negative.
            StorageError: the store is closed.
        """
        if credits is not None:
            check_count(credits, "credits")
            check_count(period, "period")
        with self._lock:
            self._check_open()
            if credits is None:
                self._credits.pop(token_id, None)
            else:
                self._credits[token_id] = (credits, period)

    def close(self) -> None:
        """Drop everything; later calls raise ``StorageError``. Idempotent."""
        with self._lock:
            self._closed = True
            self._tokens.clear()
            self._events.clear()
            self._notices.clear()
            self._requests.clear()
            self._credits.clear()
