"""ApiTokens: the one object an application creates."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from ._audit import AuditWriter
from ._auth import Authenticator
from ._hashing import Hasher, SecretVerifier
from ._manager import TokenManager
from ._model import AuditEvent, IssuedToken, Outcome, Scope, Token
from ._policy import Policy
from ._request import AuthRequest
from ._result import AuthResult
from .storage import TokenStore

if TYPE_CHECKING:
    from .asgi import ASGIApp, ASGIMiddleware
    from .wsgi import WSGIApplication, WSGIMiddleware

__all__ = ["ApiTokens"]


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
        clock: ``clock() -> datetime`` (aware, UTC); for tests.
        cache_ttl: seconds a token record read from the store is reused in
            this process; a change made by another process shows within it.
        max_concurrent_verifications: uncached hash verifications at once
            (default: the number of CPUs).

    The object owns a background writer thread: call :meth:`close` (or use it
    as a context manager) when done; interpreter exit also flushes it.
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
    ) -> None:
        self.store = store
        self.policy = policy if policy is not None else Policy()
        self.clock = clock if clock is not None else _utcnow
        self.verifier = SecretVerifier(hasher)
        self.writer = AuditWriter(store)
        self.authenticator = Authenticator(
            store,
            self.policy,
            self.verifier,
            self.clock,
            groups,
            cache_ttl=cache_ttl,
            max_concurrent_verifications=max_concurrent_verifications or os.cpu_count() or 2,
        )
        self._manager = TokenManager(
            store,
            self.policy,
            self.verifier,
            self.clock,
            groups,
            self.writer.submit,
            self.authenticator.forget,
        )

    def __repr__(self) -> str:
        return f"ApiTokens(store={self.store!r}, policy={self.policy!r})"

    def __enter__(self) -> ApiTokens:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- deciding requests ------------------------------------------------

    def authenticate(self, request: AuthRequest) -> AuthResult:
        """Decide one request (its body, if any, given whole).

        Returns:
            The :class:`AuthResult`. Its audit event and usage are queued
            for the writer; this call never writes on the caller's thread.
        """
        decision = self.authenticator.safe_decide(request)
        self.writer.submit(decision.records)
        return decision.result

    def wsgi(self, app: WSGIApplication) -> WSGIMiddleware:
        """Wrap a WSGI application (Flask, Django): ``app.wsgi_app = tokens.wsgi(app.wsgi_app)``."""
        from .wsgi import WSGIMiddleware

        return WSGIMiddleware(app, self)

    def asgi(self, app: ASGIApp) -> ASGIMiddleware:
        """Wrap an ASGI application (FastAPI, Starlette, Django): ``app = tokens.asgi(app)``."""
        from .asgi import ASGIMiddleware

        return ASGIMiddleware(app, self)

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

        Raises:
            PermissionDenied: the actor may not create this token.
            PolicyViolation: the token breaks a limit of the policy.
            RuleSyntaxError: a restriction rule does not parse.
            ValueError: a bad argument (empty name, bad CIDR, past expiry).
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
        )

    def get(self, token_id: str) -> Token | None:
        """Return the token with this id (status as of now), or ``None``."""
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
        return self._manager.list(
            actor=actor,
            user=user,
            status=status,
            unused_since=unused_since,
            name=name,
            limit=limit,
            offset=offset,
        )

    def revoke(self, *, actor: str, token_id: str) -> Token:
        """Revoke a token: at once in this process, within ``cache_ttl`` in others.

        Raises:
            TokenNotFound: no such token.
            PermissionDenied: not the actor's token and the actor is no admin.
        """
        return self._manager.revoke(actor=actor, token_id=token_id)

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
        self.writer.flush()
        return self.store.events(
            token_id=token_id,
            user=user,
            action=action,
            outcome=outcome,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
        )

    # -- lifecycle ----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Write buffered audit events and usage; ``False`` if ``timeout`` ran out."""
        return self.writer.flush(timeout)

    def close(self) -> None:
        """Flush and stop the writer. The store stays open (it is yours)."""
        self.writer.close()
