"""Expiry notices (DESIGN §11): which tokens expire soon, and telling each owner once.

``notify_expiring`` is meant for a cron job that may run on several hosts at once:
every notice is claimed in the store (:class:`~apitokens.storage.NoticeLedger`)
before it is sent, and only the caller whose claim wins sends it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from ._errors import StorageError
from ._model import Token, TokenStatus
from .storage import NoticeLedger, TokenStore

__all__ = ["DEFAULT_THRESHOLDS", "expiring", "notify_expiring"]

log = logging.getLogger("apitokens")

DEFAULT_THRESHOLDS = (timedelta(days=30), timedelta(days=7))
"""When ``notify_expiring`` warns by default: 30 days and 7 days before expiry."""


def _positive(value: timedelta, name: str) -> timedelta:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ValueError(f"{name} must be a positive timedelta, not {value!r}")
    return value


def expiring(store: TokenStore, now: datetime, within: timedelta) -> list[Token]:
    """Active tokens whose expiry is after ``now`` and at most ``within`` later, soonest first.

    Raises:
        ValueError: ``within`` is not a positive timedelta.
    """
    try:
        until = now + _positive(within, "within")
    except OverflowError:  # past the year 9999: every expiry is within it
        until = datetime.max.replace(tzinfo=now.tzinfo)
    found = [
        token
        for token in store.list(now=now, status=TokenStatus.ACTIVE)
        if token.expires_at is not None and now < token.expires_at <= until
    ]
    return sorted(found, key=lambda token: (token.expires_at, token.id))


def notify_expiring(
    store: TokenStore,
    now: datetime,
    notify: Callable[[Token, timedelta], object],
    thresholds: Iterable[timedelta],
) -> list[tuple[Token, timedelta]]:
    """Call ``notify(token, threshold)`` for each notice due and not yet sent by anyone.

    A token's notice is due for the tightest threshold its expiry is within (the
    looser ones crossed at the same time are never sent). A notice whose ``notify``
    raised is released, so a later run sends it again; the others are still sent,
    and the first error is raised at the end (an interrupt, such as
    ``KeyboardInterrupt``, at once).

    Returns:
        The ``(token, threshold)`` notices sent by this call, soonest expiry first.

    Raises:
        ValueError: no threshold, or one that is not a positive timedelta.
        StorageError: the store records no notices (it is no ``NoticeLedger``), or
            it failed.
    """
    ordered = sorted({_positive(t, "a threshold") for t in thresholds})
    if not ordered:
        raise ValueError("notify_expiring needs at least one threshold")
    if not isinstance(store, NoticeLedger):
        # Without a record in the store, every run (and every host) would send again.
        raise StorageError(
            f"{type(store).__name__} does not record expiry notices (NoticeLedger):"
            " notify_expiring cannot send each notice only once"
        )
    sent: list[tuple[Token, timedelta]] = []
    failure: Exception | None = None
    for token in expiring(store, now, ordered[-1]):
        assert token.expires_at is not None  # expiring() returns only tokens that expire
        left = token.expires_at - now
        threshold = next(t for t in ordered if left <= t)
        if not store.claim_notice(token.id, token.expires_at, threshold, now):
            continue
        try:
            notify(token, threshold)
        except Exception as exc:
            log.warning("expiry notice for token %s failed: %r", token.id, exc)
            failure = failure or exc
            _release(store, token.id, token.expires_at, threshold)
            continue
        except BaseException:
            # Interrupted (Ctrl-C, SystemExit): this notice was not sent, so it is not
            # recorded either, and no other is sent.
            _release(store, token.id, token.expires_at, threshold)
            raise
        sent.append((token, threshold))
    if failure is not None:
        raise failure
    return sent


def _release(
    store: NoticeLedger, token_id: str, expires_at: datetime, threshold: timedelta
) -> None:
    try:
        store.release_notice(token_id, expires_at, threshold)
    except StorageError as lost:
        # Still claimed: this notice is lost rather than ever sent twice.
        log.error("expiry notice for token %s not released: %s", token_id, lost)
