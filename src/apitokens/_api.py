"""ApiTokens: the one object an application creates."""

from __future__ import annotations

import builtins
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ._audit import AuditWriter
from ._auth import Authenticator
from ._errors import TokenNotFound
from ._flow import RequestFlow, Requirement
from ._hashing import Hasher, SecretVerifier
from ._journal import SUPPORTED, FilePositions, Positions
from ._limits import Limits
from ._manager import TokenManager
from ._model import AuditEvent, IssuedToken, Outcome, Scope, Token
from ._notices import DEFAULT_THRESHOLDS, expiring, notify_expiring
from ._policy import Policy
from ._request import AuthRequest
from ._result import AuthResult
from ._validate import UNSET, Unset
from .asgi import ASGIApp, ASGIMiddleware
from .storage import ChangeFeed, MemoryStore, TokenStore
from .storage._protocol import offers
from .wsgi import WSGIApplication, WSGIMiddleware

__all__ = ["ApiTokens"]

log = logging.getLogger("apitokens")
audit_log = logging.getLogger("apitokens.audit")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ApiTokens:
    """Personal access tokens for one application: management, decisions, middleware.

    Args:
        store: where tokens and the audit log live (``SQLiteStore``,
            ``MemoryStore`` or your own ``TokenStore``).
        policy: what is enforced; safe defaults.
        groups: ``groups(user) -> set[str]``, the user's groups for the policy.
        hasher: a :class:`Hasher`, or several (the first hashes, all verify);
            argon2id by default.
        clock: ``clock() -> datetime`` (aware, UTC), the wall clock of expiry,
            rotation grace and audit times; for tests.
        monotonic: ``monotonic() -> float``, seconds (``time.monotonic`` by default),
            the clock of durations: the record and groups caches' ``cache_ttl``, the
            failure throttle's window and the audit writer's intervals and
            backpressure bound; for tests. Setting the wall clock back or forward
            moves none of them.
        cache_ttl: seconds a token record read from the store is reused in
            this process; a change made by another process shows within it.
        max_concurrent_verifications: uncached hash verifications at once
            (default: the number of CPUs, at most 16). A WSGI request waits
            for a place up to 10 s; under ``asgi()`` two more may wait, and
            beyond that a request that needs one gets 503 at once.
        journal: the audit journal, which keeps every answered request's audit
            event and use on disk until the store has them (``docs/storage.md``):
            ``None`` (default) turns it on for a store that names a
            ``journal_directory`` (a ``SQLiteStore`` file: a directory beside
            it), and off otherwise; a directory turns it on for
            any store (a ``MemoryStore`` refuses: nothing would recover it);
            ``False`` turns it off.

    The object owns a background writer thread: call :meth:`close` (or use it
    as a context manager) when done; interpreter exit also flushes it.

    Raises:
        ValueError: ``journal`` given for a ``MemoryStore``.
    """

    def __init__(
        self,
        store: TokenStore,
        *,
        policy: Policy | None = None,
        groups: Callable[[str], Iterable[str]] | None = None,
        hasher: Hasher | Sequence[Hasher] | None = None,
        clock: Callable[[], datetime] | None = None,
        cache_ttl: float = 1.0,
        max_concurrent_verifications: int | None = None,
        journal: str | os.PathLike[str] | bool | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._store = store
        self.policy = policy if policy is not None else Policy()
        self._clock = clock if clock is not None else _utcnow
        ticks = monotonic if monotonic is not None else time.monotonic
        self._verifier = verifier = SecretVerifier(hasher)
        directory = _journal_directory(store, journal)
        self._writer = AuditWriter(
            store,
            journal=directory,
            positions=None if directory is None else _positions(store, directory),
            monotonic=ticks,
        )
        self._authenticator = authenticator = Authenticator(
            store,
            self.policy,
            verifier,
            self._clock,
            groups,
            cache_ttl=cache_ttl,
            # At most 16 by default: with the two that may wait, shorter than asyncio's
            # default thread pool (CPUs + 4, at most 32), so store reads always find one.
            max_concurrent_verifications=max_concurrent_verifications
            or min(os.cpu_count() or 2, 16),
            monotonic=ticks,
        )
        self._flow = RequestFlow(authenticator, self._writer, self.policy)
        # A store that tells of tokens changed elsewhere (ChangeFeed) makes a revocation
        # there show here at once; otherwise within cache_ttl.
        try:
            self._unsubscribe = (
                store.subscribe(authenticator.changed) if isinstance(store, ChangeFeed) else None
            )
        except BaseException:
            self._writer.close()  # its thread is running already
            raise
        self._manager = TokenManager(
            store,
            self.policy,
            verifier,
            self._clock,
            groups,
            self._writer.submit,
            authenticator.forget,
            None if authenticator.meter is None else self._reset_credits,
        )

    def __repr__(self) -> str:
        return f"ApiTokens(store={self._store!r}, policy={self.policy!r})"

    def _reset_credits(self, token: Token) -> None:
        """After an edit gave ``token`` a new allotment: its balance starts again."""
        meter = self._authenticator.meter
        if meter is not None:
            meter.reset_credits(token, self._clock().timestamp())

    def __enter__(self) -> ApiTokens:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- deciding requests ------------------------------------------------

    def check_users(self, is_active: Callable[[str], bool]) -> None:
        """From now on, a token authenticates only while ``is_active(owner)`` is true.

        For an application whose users can be deleted or deactivated without
        their tokens being revoked (the Django integration adds one: the owner
        must be an active Django user). A token of a user it says no to gets
        401, audited; an exception in it gets 503 (fail closed). The answer is
        cached per user for ``cache_ttl`` seconds, as the groups are; adding
        the same check twice adds it once, and every check added must pass.
        """
        self._authenticator.check_users(is_active)

    @property
    def flow(self) -> RequestFlow:
        """The one request flow every adapter drives (for writing an adapter of your own).

        See ``docs/architecture.md``.
        """
        return self._flow

    def authenticate(self, request: AuthRequest) -> AuthResult:
        """Decide one request (its body, if any, given whole).

        Returns:
            The :class:`AuthResult`. Its audit event and usage are queued
            for the writer; this call never writes on the caller's thread.
        """
        return self._flow.run_whole(request)

    def wsgi(
        self, app: WSGIApplication, *, require: Requirement = Requirement.NONE
    ) -> WSGIMiddleware:
        """Wrap a WSGI application (Flask, Django): ``app.wsgi_app = tokens.wsgi(app.wsgi_app)``.

        Args:
            app: the WSGI application.
            require: ``Requirement.TOKEN`` (or ``READ_WRITE``): every request to
                ``app`` needs a token (a read-write one), whatever the policy's
                ``allow_other_auth``.
        """
        return WSGIMiddleware(app, self._flow, require=require)

    def asgi(self, app: ASGIApp, *, require: Requirement = Requirement.NONE) -> ASGIMiddleware:
        """Wrap an ASGI application (FastAPI, Starlette, Django): ``app = tokens.asgi(app)``.

        Args:
            app: the ASGI application.
            require: as for :meth:`wsgi`.
        """
        return ASGIMiddleware(app, self._flow, require=require)

    # -- management ------------------------------------------------------------

    def create(
        self,
        *,
        actor: str,
        name: str,
        user: str | None = None,
        unbound: bool = False,
        scope: Scope | str = Scope.READ_ONLY,
        expires_in: timedelta | None = None,
        expires_at: datetime | None = None,
        restrictions: Iterable[str] = (),
        allowed_ips: Iterable[str] = (),
        secure: bool = True,
        rate_limit: str | None = None,
        credits: int | None = None,
        refill: str | None = None,
    ) -> IssuedToken:
        """Create a token and return it with its secret, shown this once.

        Args:
            actor: who is creating it.
            name: what it is for, e.g. ``"CI report"``.
            user: the owner; default the actor. Another user needs admin rights.
            unbound: no owner: any Basic username may use it (admins only,
                and only with ``Policy.allow_unbound_tokens``).
            scope: ``Scope.READ_ONLY`` (default) or ``Scope.READ_WRITE``.
            expires_in: lifetime from now.
            expires_at: expiry as an aware datetime (not with ``expires_in``).
            restrictions: restriction rules, one per item (see docs/rules.md).
            allowed_ips: CIDRs or addresses (v4, v6) it may be used from.
            secure: secure mode (default): never shown or edited again.
            rate_limit: at most so many requests per window: ``"100/min"``
                (``N/s``, ``N/min``, ``N/h``, ``N/day``); over it, 429.
            credits: uses in all; spent, 429.
            refill: credits given back per period (``"1000/day"``), never above
                ``credits``.

        Raises:
            PermissionDenied: the actor may not create this token.
            PolicyViolation: the token breaks a limit of the policy.
            RuleSyntaxError: a restriction rule does not parse.
            ValueError: a bad argument (empty name, bad CIDR, past expiry, a
                malformed limit, a refill without credits, limits on a store that
                keeps no usage counts).
        """
        return self._manager.create(
            actor=actor,
            name=name,
            user=user,
            unbound=unbound,
            scope=scope,
            expires_in=expires_in,
            expires_at=expires_at,
            restrictions=restrictions,
            allowed_ips=allowed_ips,
            secure=secure,
            rate_limit=rate_limit,
            credits=credits,
            refill=refill,
        )

    def get(self, token_id: str) -> Token | None:
        """Return the token with this id (status as of now, usage up to date), or ``None``."""
        self._writer.flush()
        return self._manager.token(token_id)

    def list(
        self,
        *,
        actor: str,
        user: str | None = None,
        status: str | None = None,
        unused_since: datetime | None = None,
        name: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> builtins.list[Token]:
        """List tokens, newest first. Non-admins see only their own.

        Args:
            actor: who is asking.
            user: only this owner's tokens.
            status: ``"active"``, ``"expired"`` or ``"revoked"``.
            unused_since: only tokens not used since then (never used included).
            name: only tokens whose name contains this (case-insensitive).
            limit: at most this many.
            offset: skip this many.

        Raises:
            PermissionDenied: a non-admin asked for another user's tokens.
        """
        self._writer.flush()  # usage columns include every use so far
        return self._manager.list(
            actor=actor,
            user=user,
            status=status,
            unused_since=unused_since,
            name=name,
            limit=limit,
            offset=offset,
        )

    def edit(
        self,
        *,
        actor: str,
        token_id: str,
        name: str | Unset = UNSET,
        restrictions: Iterable[str] | Unset = UNSET,
        allowed_ips: Iterable[str] | Unset = UNSET,
        expires_at: datetime | Unset | None = UNSET,
        rate_limit: str | Unset | None = UNSET,
        credits: int | Unset | None = UNSET,
        refill: str | Unset | None = UNSET,
    ) -> Token:
        """Change a standard-mode token; the next request sees the change.

        Only the fields passed change; ``expires_at=None`` removes the expiry
        (if the policy allows tokens without one), ``rate_limit=None``,
        ``credits=None`` and ``refill=None`` remove a limit. New ``credits`` start
        a new allotment (even the same number: a top-up): the credits left become
        that many; so does a ``refill`` added or given a new period (``"100/h"`` to
        ``"100/day"``). The audit event names the fields that changed.

        Raises:
            TokenNotFound: no such token.
            PermissionDenied: not the actor's token and the actor is no admin.
            TokenImmutable: the token is in secure mode, or revoked.
            PolicyViolation: the new expiry breaks ``max_lifetime``/``require_expiry``.
            RuleSyntaxError: a restriction rule does not parse.
            ValueError: a bad name, address, expiry or limit.
        """
        return self._manager.edit(
            actor=actor,
            token_id=token_id,
            name=name,
            restrictions=restrictions,
            allowed_ips=allowed_ips,
            expires_at=expires_at,
            rate_limit=rate_limit,
            credits=credits,
            refill=refill,
        )

    def reveal(self, *, actor: str, token_id: str) -> str:
        """Return a standard-mode token's string again (audited).

        Raises:
            TokenNotFound, PermissionDenied: as for :meth:`edit`.
            TokenImmutable: the token is in secure mode, or revoked.
        """
        return self._manager.reveal(actor=actor, token_id=token_id)

    def snippet(self, *, actor: str, token_id: str, url: str, lang: str = "curl") -> str:
        """Return code calling ``url`` with a standard-mode token (audited as a reveal).

        Args:
            actor: who is asking.
            token_id: the token.
            url: the API URL to call.
            lang: ``"curl"``, ``"python"`` (httpx) or ``"javascript"`` (fetch).

        Raises:
            TokenImmutable: the token is in secure mode (use the snippet of
                the :class:`IssuedToken` returned at creation).
            ValueError: unknown language or not an http(s) URL.
        """
        return self._manager.snippet(actor=actor, token_id=token_id, url=url, lang=lang)

    def rotate(self, *, actor: str, token_id: str, grace: timedelta = timedelta(0)) -> IssuedToken:
        """Give a token a new secret, keeping its id, settings and history.

        Args:
            actor: who is rotating it.
            token_id: the token.
            grace: how long the old secret keeps working (default: not at all).

        Returns:
            The new secret, shown once, and the record.

        Raises:
            TokenNotFound, PermissionDenied: as for :meth:`edit`.
            TokenImmutable: the token is revoked.
        """
        return self._manager.rotate(actor=actor, token_id=token_id, grace=grace)

    def revoke_unused(self, *, actor: str, since: datetime) -> builtins.list[Token]:
        """Revoke active tokens not used since ``since`` (never-used ones created before it).

        Admins sweep every token; other users only their own. Each revocation
        is audited.

        Returns:
            The tokens revoked.
        """
        self._writer.flush()  # a use still in the buffer must count
        return self._manager.revoke_unused(actor=actor, since=since)

    def revoke(self, *, actor: str, token_id: str) -> Token:
        """Revoke a token: at once in this process, within ``cache_ttl`` in others.

        Raises:
            TokenNotFound: no such token.
            PermissionDenied: not the actor's token and the actor is no admin.
        """
        return self._manager.revoke(actor=actor, token_id=token_id)

    def credits_left(self, token_id: str) -> int | None:
        """The token's credits left now (refills included), or ``None`` if it has no credits.

        As this process's decisions see them: every use it admitted, and other
        processes' uses as they were at most about a second ago (DESIGN §11).

        Raises:
            TokenNotFound: no such token.
            StorageError: the store failed.
        """
        token = self._manager.token(token_id)
        if token is None:
            raise TokenNotFound(token_id)
        meter = self._authenticator.meter
        try:
            limits = Limits.of(token)
        except ValueError:
            return None
        if limits is None or limits.credits is None or meter is None:
            return None
        return meter.credits_left(limits, self._clock().timestamp())

    def expiring(self, *, within: timedelta) -> builtins.list[Token]:
        """Active tokens that expire within ``within`` from now (not yet expired), soonest first.

        Raises:
            ValueError: ``within`` is not a positive timedelta.
        """
        self._writer.flush()  # usage columns include every use so far
        return expiring(self._store, self._clock(), within)

    def notify_expiring(
        self,
        *,
        notify: Callable[[Token, timedelta], object],
        thresholds: Iterable[timedelta] = DEFAULT_THRESHOLDS,
    ) -> builtins.list[tuple[Token, timedelta]]:
        """Call ``notify(token, threshold)`` once per token and threshold, ever.

        For a cron job, on one host or several: each notice is claimed in the store
        (a :class:`~apitokens.storage.NoticeLedger`) before it is sent, so two runs,
        here or elsewhere, never send the same one. When several thresholds are
        crossed at once only the tightest is sent; a new expiry (``edit``) resets a
        token's notices. A notice whose ``notify`` raised is not recorded as sent
        (a later run tries again); the others are still sent, then the first error
        is raised. ``notify`` never sees a secret: a :class:`Token` has none.

        Returns:
            The ``(token, threshold)`` notices this call sent.

        Raises:
            ValueError: no threshold, or one that is not a positive timedelta.
            StorageError: the store records no notices, or failed.
        """
        self._writer.flush()  # the tokens given to ``notify`` show every use so far
        return notify_expiring(self._store, self._clock(), notify, thresholds)

    def audit(
        self,
        *,
        token_id: str | None = None,
        user: str | None = None,
        action: str | None = None,
        outcome: Outcome | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[AuditEvent]:
        """Return audit events, newest first, including every one recorded before this call."""
        self._writer.flush()
        return self._store.events(
            token_id=token_id,
            user=user,
            action=action,
            outcome=outcome,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
        )

    def prune_audit(self, *, before: datetime) -> int:
        """Delete audit events older than ``before`` (retention); return how many."""
        self._writer.flush()
        pruned = self._store.prune_events(before=before)
        # Deleting audit history is itself worth a trace outside the store.
        audit_log.warning("pruned %d audit events before %s", pruned, before.isoformat())
        return pruned

    # -- lifecycle ----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Write buffered audit events and usage; ``False`` if ``timeout`` ran out.

        Failed attempts not yet in a store's failure ledger, and uses of limited
        tokens not yet in its usage ledger, are sent too.
        """
        shared = self._authenticator.shared_failures
        if shared is not None:
            shared.flush()
        meter = self._authenticator.meter
        if meter is not None:
            meter.flush()
        return self._writer.flush(timeout)

    def close(self) -> None:
        """Flush and stop the writer. The store stays open (it is yours)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._authenticator.close()
        self._writer.close()


def _journal_directory(
    store: TokenStore, journal: str | os.PathLike[str] | bool | None
) -> Path | None:
    """The directory of the audit journals for ``store``, or ``None`` for none."""
    if journal is False or (journal is None and not SUPPORTED):
        return None
    if not SUPPORTED:
        raise ValueError("the audit journal needs fcntl.flock (not on this platform)")
    if isinstance(store, MemoryStore):
        if journal is None:
            return None  # nothing outlives the process, so nothing to recover
        raise ValueError("a MemoryStore keeps nothing after the process: no journal for it")
    if journal is None or journal is True:
        # A store that has a place for journals says so (SQLiteStore: beside its file).
        directory: Path | None = getattr(store, "journal_directory", None)
        if directory is None and journal is True:
            raise ValueError("journal=True needs a directory for this store: pass journal=path")
        return directory
    return Path(journal)


def _positions(store: TokenStore, directory: Path) -> Positions:
    """Where the journals' positions live: in the store's own transactions when it can.

    Not when a subclass overrides ``write()`` below ``write_journaled()`` (``offers``):
    its events go through its ``write()``, and the positions in files beside them.
    """
    if isinstance(store, Positions) and offers(store, "write_journaled"):
        return store
    return FilePositions(store, directory)
