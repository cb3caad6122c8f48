"""The TokenStore protocol: what a storage backend implements, and what it may add.

Write your own backend (Postgres, Redis...) by implementing :class:`TokenStore`
and subclassing ``apitokens.testing.StoreContract`` in its tests
(``docs/storage.md``). :class:`EntryWriter` is an optional, faster way in for the
audit writer's batches; :class:`ChangeFeed` and :class:`FailureLedger` share what one
process knows with the others on the store; :class:`NoticeLedger` records the expiry
notices sent, so that no two processes send the same one; :class:`UsageLedger` counts
rate-limited and credited tokens' uses for every process.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple, Protocol, runtime_checkable

from apitokens._model import (
    Action,
    AuditEvent,
    AuthEntry,
    Outcome,
    StoredToken,
    Token,
    TokenStatus,
    Usage,
)

__all__ = [
    "ChangeFeed",
    "CreditSpend",
    "EntryWriter",
    "FailureLedger",
    "NoticeLedger",
    "TokenStore",
    "UsageLedger",
    "offers",
]


@runtime_checkable
class TokenStore(Protocol):
    """Where tokens, their usage and the audit log live.

    Every datetime going in must be timezone-aware (naive ones raise
    ``ValueError``); every datetime coming out is aware and in UTC. Every
    method may be called from many threads at once. Every backend failure is
    raised as :class:`~apitokens.StorageError`, whose message never contains a
    hash or a secret. Returned objects are frozen model objects, never the
    backend's own state.
    """

    def add(self, stored: StoredToken) -> None:
        """Store a new token.

        Args:
            stored: the token record and its hashes. ``token.status`` is ignored:
                it is derived from ``revoked_at``.

        Raises:
            StorageError: a token with this id already exists (nothing changed),
                or the backend failed.
            ValueError: a datetime is naive, a secure-mode token carries a
                revealable token string, or a limit is malformed (``rate_limit`` or
                ``refill`` not of the form ``N/unit``, ``credits`` not in 1..10**9,
                a ``refill`` without ``credits``). A store keeps the limits in their
                canonical text (``storage._base.normalize_stored`` gives it).
        """

    def get(self, token_id: str) -> StoredToken | None:
        """Return a token with its hashes, or ``None`` if no token has this id.

        ``token.status`` is the stored status: ``REVOKED`` if ``revoked_at`` is
        set, else ``ACTIVE``; the caller applies its clock with ``Token.as_of``.

        Raises:
            StorageError: the backend failed.
        """

    def update(self, stored: StoredToken, *, expected_hash: str | None = None) -> bool:
        """Replace a token's editable fields, if its secret is still ``expected_hash``.

        Replaces ``name``, ``expires_at``, ``scope``, ``restrictions``,
        ``allowed_ips``, ``secure``, ``rate_limit``, ``credits``, ``refill``,
        ``secret_hash``, ``previous_hash``, ``previous_valid_until``, ``revealable``
        and ``retired_hashes``. Never touches usage
        (``last_used_at``, ``last_used_ip``, ``use_count``), ``user``,
        ``created_by``, ``created_at`` or ``revoked_at``: those belong to
        :meth:`write` and :meth:`revoke`, which may run concurrently.

        With ``expected_hash``, the row is changed only if its stored
        ``secret_hash`` is still ``expected_hash``, checked and written atomically
        for every handle on the store (one ``UPDATE ... WHERE id = ? AND
        secret_hash = ?``; under the store's lock in memory). ``TokenManager``
        passes the hash it read, so an ``edit`` or ``rotate`` that read the record
        before another process rotated it can never write the replaced hashes
        back (it reads again and re-applies its change). Without it, the row is
        replaced unconditionally, as before the guard existed.

        Returns:
            ``True`` if the token was changed (always, without ``expected_hash``);
            ``False`` if its ``secret_hash`` is no longer ``expected_hash``
            (nothing changed).

        Raises:
            TokenNotFound: no token has ``stored.token.id`` (guarded or not).
            StorageError: the backend failed.
            ValueError: as for :meth:`add`.
        """

    def replace_hash(self, token_id: str, *, old: str, new: str) -> bool:
        """Replace a token's ``secret_hash`` with ``new`` only if it is still ``old``.

        For re-hashing a verified secret under new hasher parameters. The
        compare-and-swap makes a rotation (or any update) that happened in
        between win, so a stale re-hash can never bring back a replaced secret.
        Nothing else changes.

        Returns:
            ``True`` if the hash was replaced; ``False`` if the token is gone or
            its hash is no longer ``old``.

        Raises:
            StorageError: the backend failed.
        """

    def revoke(self, token_id: str, at: datetime) -> bool:
        """Mark a token revoked at ``at`` unless it already is.

        Returns:
            ``True`` if this call revoked the token, ``False`` if it was
            already revoked (its ``revoked_at`` is kept).

        Raises:
            TokenNotFound: no token has this id.
            StorageError: the backend failed.
            ValueError: ``at`` is naive.
        """

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
        """Return tokens (without hashes), newest first, with status as of ``now``.

        Args:
            now: the moment statuses are computed for (``Token.as_of``).
            user: only tokens owned by exactly this user.
            status: ``active`` (not revoked, no expiry or ``expires_at > now``),
                ``expired`` (not revoked, ``expires_at <= now``) or
                ``revoked`` (``revoked_at`` set).
            unused_since: only stale tokens: created at or before this, and
                never used or last used before it (a token created after
                the cut-off has had no chance to be used, so it is not stale).
            name: only tokens whose name contains this, ignoring case.
            limit: at most this many tokens (``None``: all).
            offset: skip this many first.

        Returns:
            Tokens ordered by ``created_at`` descending, then ``id`` ascending.

        Raises:
            ValueError: unknown status, naive datetime, negative limit or offset.
            StorageError: the backend failed.
        """

    def write(self, *, events: Sequence[AuditEvent] = (), usage: Sequence[Usage] = ()) -> None:
        """Record audit events and fold token usage, in one transaction.

        Either the whole batch is stored or none of it. For each token:
        ``use_count += count``, ``last_used_at = max(existing, at)``, and
        ``last_used_ip`` becomes the IP of the newest use (when that use is
        newer than or as new as the stored one; among equal times the later
        item of the batch wins). Usage for an unknown token id is ignored: the
        token may have been deleted since the request.

        Raises:
            ValueError: a datetime is naive or a count is negative (nothing written).
            StorageError: the backend failed (nothing written).
        """

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
        """Return audit events, newest first (by ``at``, then by insertion, latest first).

        Args:
            token_id: only events about this token.
            user: only events for this user.
            action: only this action.
            outcome: only this outcome.
            since: only events at or after this moment (inclusive).
            until: only events before this moment (exclusive).
            limit: at most this many events.
            offset: skip this many first.

        Raises:
            ValueError: unknown action or outcome, naive datetime, negative
                limit or offset.
            StorageError: the backend failed.
        """

    def prune_events(self, *, before: datetime) -> int:
        """Delete audit events older than ``before`` (``at < before``).

        Returns:
            How many events were deleted.

        Raises:
            ValueError: ``before`` is naive.
            StorageError: the backend failed.
        """

    def close(self) -> None:
        """Release the store's resources; later calls raise ``StorageError``. Idempotent."""


@runtime_checkable
class EntryWriter(Protocol):
    """Optional: a store that writes the audit writer's batches as they come.

    apitokens' audit writer records every authentication as a compact
    :class:`~apitokens.storage.AuthEntry`. A store whose class has a
    ``write_entries`` method (found by attribute; no base class to inherit) gets
    each batch through it, entries as they are; any other store gets the batch
    through :meth:`TokenStore.write`, each entry expanded into its
    :class:`~apitokens.AuditEvent` (and, when used, a :class:`~apitokens.Usage`
    of the token, folded into ``usage``). Offer it when turning an entry into
    your row directly is cheaper than building the event first: ``SQLiteStore``
    does, and saves about a third of the writer's work per request.

    A subclass that overrides ``write()`` but not ``write_entries()`` (to copy
    events elsewhere, say) is honoured: the writer then calls its ``write()``
    (see :func:`offers`).
    """

    def write_entries(
        self,
        *,
        events: Sequence[AuditEvent | AuthEntry] = (),
        usage: Sequence[Usage] = (),
    ) -> None:
        """Exactly :meth:`TokenStore.write`, with entries among the events.

        Each :class:`~apitokens.storage.AuthEntry` is stored as the
        ``authenticate`` event it stands for, in its place in ``events`` (so
        ``events()`` returns it in the same order as the event would be). Its
        ``used`` flag is not a use: the writer has already folded the uses of
        the batch's entries into ``usage``. One transaction, all or nothing,
        exactly as ``write``.

        Raises:
            ValueError: a datetime is naive or a count negative (nothing written).
            StorageError: the backend failed (nothing written).
        """


@runtime_checkable
class ChangeFeed(Protocol):
    """Optional: a store that tells when a token changed through another handle on it.

    ``ApiTokens`` caches token records for ``cache_ttl``; a change made by another
    process (a revocation from the command, another worker, another host) shows
    within that TTL. A store that can say so sooner (``MemoryStore`` to every
    ``ApiTokens`` sharing it; a database with a notification channel to every
    process) offers ``subscribe``, and the record is forgotten at once.
    """

    def subscribe(self, callback: Callable[[str | None], None]) -> Callable[[], None]:
        """Call ``callback(token_id)`` after a change to that token; return the unsubscriber.

        A change is an ``update``, a ``replace_hash`` or a ``revoke``, made through
        any handle on the store (this process's own changes included: forgetting a
        record twice is harmless). ``callback(None)`` means "anything may have
        changed": the store may have missed changes (a dropped connection), so every
        cached record is to be forgotten. The subscription is live before this
        returns. The callback must be cheap and must not raise; it may be called on
        any thread.
        """
        ...


@runtime_checkable
class FailureLedger(Protocol):
    """Optional: a store that counts failed attempts for every process that shares it.

    Each ``ApiTokens`` throttles failed attempts per client address (DESIGN §4). Alone,
    each process counts its own, so N workers would give a guesser N times the
    attempts. A store that offers these two methods (found by attribute) holds the
    counts of all of them: a process sends its failures in batches and reads the
    others' before it hashes a secret it has not verified before (never on a cached
    good token's path). ``docs/security.md`` gives the error bound the batching leaves.

    Keys are opaque strings (apitokens' throttle keys for client addresses). Times are
    the wall clock (processes share no monotonic clock); a store may count by whole
    seconds, as long as it errs towards counting: ``failures_since`` may include
    failures up to one second older than ``since``, never leave out newer ones.
    """

    def record_failures(self, counts: Mapping[str, int], at: datetime, *, keep: timedelta) -> None:
        """Add ``counts[key]`` failures for each key at ``at``, in one transaction.

        Failures older than ``at - keep`` may be forgotten (``keep`` is the longest
        window anyone asks about), so the ledger stays as small as the attacks of
        the last window.

        Raises:
            ValueError: ``at`` is naive or a count is negative (nothing written).
            StorageError: the backend failed (nothing written).
        """
        ...

    def failures_since(self, key: str, since: datetime) -> int:
        """How many failures were recorded for ``key`` at or after ``since``.

        Raises:
            ValueError: ``since`` is naive.
            StorageError: the backend failed.
        """
        ...


@runtime_checkable
class NoticeLedger(Protocol):
    """Optional: a store that records which expiry notices were sent (DESIGN §11).

    ``ApiTokens.notify_expiring`` sends each token's notice for a threshold once,
    ever, though a cron job may run it on several hosts at once: before it sends
    one it claims it here, and only the caller whose claim wins sends. A notice is
    named by the token, the expiry it warns of and the threshold; a new expiry is a
    new name, so editing ``expires_at`` resets a token's notices.
    """

    def claim_notice(
        self, token_id: str, expires_at: datetime, threshold: timedelta, at: datetime
    ) -> bool:
        """Record the notice as sent at ``at``, unless it already was: atomically.

        Of any number of concurrent callers (threads, processes, hosts on the same
        store) with the same ``token_id``, ``expires_at`` and ``threshold``, exactly
        one gets ``True``, and every later caller ``False``. Notices of expiries long
        past (a day before ``at``) may be forgotten.

        Raises:
            ValueError: a datetime is naive or ``threshold`` is not positive
                (nothing recorded).
            StorageError: the backend failed (whether the claim was recorded may be
                unknown: the caller must then not send the notice).
        """
        ...

    def release_notice(self, token_id: str, expires_at: datetime, threshold: timedelta) -> None:
        """Forget a claimed notice, so a later :meth:`claim_notice` may win it again.

        For a notice that could not be sent. Forgetting one never claimed is harmless.

        Raises:
            ValueError: ``expires_at`` is naive or ``threshold`` is not positive.
            StorageError: the backend failed.
        """
        ...


class CreditSpend(NamedTuple):
    """Credits used by one token since the last send, with what the ledger needs to refill.

    Attributes:
        spent: uses to take off (0: only read the balance).
        credits: the token's credits: the balance of a token the ledger has never
            seen, and the most a refill brings it back to.
        refill: credits added per refill period (0: never refilled).
        period: the current refill period's number (whole refill periods since the
            Unix epoch; 0 without refill). A balance last written in an earlier
            period gets ``refill`` for each period since, capped at ``credits``.
    """

    spent: int
    credits: int
    refill: int
    period: int


@runtime_checkable
class UsageLedger(Protocol):
    """Optional: counts of rate-limited and credited tokens' uses, shared by every process.

    A token's rate limit (``"100/min"``) and credits hold across all the processes
    that share a store only if the store counts for them: each process sends what it
    admitted in batches (at most every 0.2 s) and reads the totals back, and reads
    them again before deciding on a count more than a second old (DESIGN §11). A
    token with limits can only be created on a store that offers these methods (the
    built-in stores all do).

    Both methods add and read in one transaction, so concurrent callers never lose
    each other's counts.
    """

    def count_requests(
        self, counts: Mapping[tuple[str, int, int], int], *, ended_before: int
    ) -> dict[tuple[str, int, int], int]:
        """Add ``counts[(token_id, seconds, start)]`` requests; return each key's total after.

        A key names one window: its length and its start, in whole seconds since the
        Unix epoch. A count of 0 only reads. Windows that ended before
        ``ended_before`` (Unix seconds) may be forgotten.

        Raises:
            ValueError: a count is negative (nothing written).
            StorageError: the backend failed (nothing written).
        """
        ...

    def spend_credits(self, spends: Mapping[str, CreditSpend]) -> dict[str, int]:
        """Refill, then take off ``spent``, for each token id; return the credits left.

        A token's balance starts at ``credits``; each period since the one it was last
        written in adds ``refill``, never above ``credits``; then ``spent`` is taken
        off, never below 0 (processes that overshot together cannot make it negative).

        Raises:
            ValueError: a negative or malformed spend (nothing written).
            StorageError: the backend failed (nothing written).
        """
        ...

    def reset_credits(self, token_id: str, credits: int | None = None, period: int = 0) -> None:
        """Start a token's balance again (after an edit gives it new credits).

        With ``credits``: the balance becomes ``credits`` left, written as of refill
        period ``period`` (0 without refill), whatever it was; a spend another process
        sends late is then taken off it (never bringing an old, larger balance back).
        Without: the balance is forgotten (the token has no credits any more).

        Raises:
            ValueError: ``credits`` or ``period`` negative (nothing written).
            StorageError: the backend failed.
        """
        ...


def offers(store: object, name: str) -> bool:
    """Whether ``store``'s class offers the optional method ``name`` in place of ``write``.

    It does when a class of the store defines ``name`` and no class overrides
    ``write`` more specifically (earlier in the method resolution order) than the
    class that defines ``name``: a subclass that overrides only ``write()`` gets
    every event through its ``write()``, whatever its base offers. The audit
    writer asks this for ``write_entries`` (:class:`EntryWriter`) and for the
    journal's ``write_journaled``.
    """
    mro = type(store).__mro__
    given = next((i for i, cls in enumerate(mro) if name in vars(cls)), None)
    if given is None or not callable(getattr(store, name, None)):
        return False
    written = next((i for i, cls in enumerate(mro) if "write" in vars(cls)), None)
    return written is None or written >= given
