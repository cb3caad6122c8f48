"""Token management: create, get, list, revoke — each checked against the policy and audited."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from ._audit import Record
from ._errors import PermissionDenied, PolicyViolation, TokenNotFound
from ._hashing import SecretVerifier
from ._model import Action, AuditEvent, IssuedToken, Outcome, Scope, StoredToken, Token
from ._policy import Policy, parse_networks
from ._rules import RuleSet
from .storage import TokenStore

__all__ = ["TokenManager"]

MAX_NAME_LENGTH = 200


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value


class TokenManager:
    """The management calls of :class:`ApiTokens`.

    Args:
        store: where tokens live.
        policy: who may do what.
        verifier: hashes new secrets.
        clock: the current aware UTC datetime.
        groups: a user's groups.
        submit: hands audit records to the buffered writer.
        changed: called with a token id after this process changed it, so
            caches drop it at once.
    """

    def __init__(
        self,
        store: TokenStore,
        policy: Policy,
        verifier: SecretVerifier,
        clock: Callable[[], datetime],
        groups: Callable[[str], Iterable[str]] | None,
        submit: Callable[[Sequence[Record]], object],
        changed: Callable[[str], None],
    ) -> None:
        self.store = store
        self.policy = policy
        self.verifier = verifier
        self.clock = clock
        self._groups_of = groups
        self._submit = submit
        self._changed = changed

    def groups(self, user: str) -> frozenset[str]:
        """Return ``user``'s groups (empty without a ``groups`` callable)."""
        return frozenset(self._groups_of(user)) if self._groups_of is not None else frozenset()

    def _audit(
        self,
        action: Action,
        outcome: Outcome,
        actor: str,
        reason: str,
        token_id: str | None = None,
        user: str | None = None,
    ) -> None:
        event = AuditEvent(
            at=self.clock(),
            action=action,
            outcome=outcome,
            token_id=token_id,
            user=user,
            actor=actor,
            reason=reason,
        )
        self._submit([event])

    def _deny(
        self,
        action: Action,
        actor: str,
        error: Exception,
        token_id: str | None = None,
        user: str | None = None,
    ) -> Exception:
        self._audit(action, Outcome.FORBIDDEN, actor, str(error), token_id, user)
        return error

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
        """Create a token; see :meth:`ApiTokens.create`."""
        policy = self.policy
        now = self.clock()
        if not isinstance(name, str) or not name.strip():
            raise ValueError("name must be a non-empty string")
        if len(name) > MAX_NAME_LENGTH:
            raise ValueError(f"name must be at most {MAX_NAME_LENGTH} characters")
        scope = Scope(scope)
        if unbound and user is not None:
            raise ValueError("an unbound token has no user: pass user or unbound=True, not both")
        owner = None if unbound else (actor if user is None else user)
        if isinstance(restrictions, str) or isinstance(allowed_ips, str):
            raise TypeError("restrictions and allowed_ips are collections of strings")
        rules = RuleSet.parse(list(restrictions))
        networks = parse_networks(allowed_ips)
        expiry = self._expiry(now, expires_in, expires_at)

        actor_groups = self.groups(actor)
        admin = policy.is_admin(actor_groups)
        refusal: Exception | None = None
        if not policy.may_create_tokens(actor_groups):
            refusal = PermissionDenied(f"{actor!r} is not in token_creators")
        elif owner != actor and not admin:
            what = "unbound tokens" if owner is None else "tokens for other users"
            refusal = PermissionDenied(f"only token_admins may create {what}")
        elif scope is Scope.READ_WRITE and policy.read_only_for_users and not admin:
            refusal = PermissionDenied(
                "read_only_for_users: only token_admins may create READ_WRITE"
            )
        elif owner is None and not policy.allow_unbound_tokens:
            refusal = PolicyViolation("unbound tokens are turned off (allow_unbound_tokens)")
        elif owner is not None and not policy.may_use_tokens(self.groups(owner)):
            refusal = PolicyViolation(f"{owner!r} is not in token_users")
        else:
            refusal = self._lifetime_refusal(now, expiry)
        if refusal is not None:
            raise self._deny(Action.CREATE, actor, refusal, user=owner)

        issued = policy.token_format.issue()
        token = Token(
            id=issued.id,
            name=name.strip(),
            user=owner,
            created_by=actor,
            created_at=now,
            expires_at=expiry,
            scope=scope,
            restrictions=tuple(str(rule) for rule in rules.rules),
            allowed_ips=tuple(str(network) for network in networks),
            secure=secure,
        )
        stored = StoredToken(
            token=token,
            secret_hash=self.verifier.hash(issued.value),
            revealable=None if secure else issued.value,
        )
        self.store.add(stored)
        self._audit(Action.CREATE, Outcome.SUCCESS, actor, f"created {name!r}", token.id, owner)
        return IssuedToken(secret=issued.value, token=token)

    def _expiry(
        self, now: datetime, expires_in: timedelta | None, expires_at: datetime | None
    ) -> datetime | None:
        if expires_in is not None and expires_at is not None:
            raise ValueError("pass expires_in or expires_at, not both")
        if expires_in is not None:
            if expires_in <= timedelta(0):
                raise ValueError("expires_in must be positive")
            return now + expires_in
        if expires_at is not None:
            if _aware(expires_at, "expires_at") <= now:
                raise ValueError("expires_at is in the past")
            return expires_at
        return None

    def _lifetime_refusal(self, now: datetime, expiry: datetime | None) -> PolicyViolation | None:
        policy = self.policy
        if expiry is None:
            if policy.require_expiry or policy.max_lifetime is not None:
                return PolicyViolation("tokens must have an expiry (require_expiry/max_lifetime)")
            return None
        if policy.max_lifetime is not None and expiry - now > policy.max_lifetime:
            days = math.floor(policy.max_lifetime / timedelta(days=1))
            return PolicyViolation(f"expiry beyond max_lifetime ({days} days)")
        return None

    def token(self, token_id: str) -> Token | None:
        """Return the token ``token_id`` as of now, or ``None``."""
        stored = self.store.get(token_id)
        return None if stored is None else stored.token.as_of(self.clock())

    def _owned(self, action: Action, actor: str, token_id: str) -> Token:
        """Return the token if ``actor`` owns it or is an admin; else raise (audited)."""
        token = self.token(token_id)
        if token is None:
            raise self._deny(action, actor, TokenNotFound(f"no token {token_id!r}"), token_id)
        if token.user != actor and not self.policy.is_admin(self.groups(actor)):
            error = PermissionDenied("only token_admins may manage other users' tokens")
            raise self._deny(action, actor, error, token_id, token.user)
        return token

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
    ) -> list[Token]:
        """List tokens; non-admins see only their own."""
        if not self.policy.is_admin(self.groups(actor)):
            if user is not None and user != actor:
                raise PermissionDenied("only token_admins may list other users' tokens")
            user = actor
        return self.store.list(
            now=self.clock(),
            user=user,
            status=status,
            unused_since=unused_since,
            name=name,
            limit=limit,
            offset=offset,
        )

    def revoke(self, *, actor: str, token_id: str) -> Token:
        """Revoke a token at once; see :meth:`ApiTokens.revoke`."""
        token = self._owned(Action.REVOKE, actor, token_id)
        now = self.clock()
        changed = self.store.revoke(token_id, now)
        self._changed(token_id)
        reason = "revoked" if changed else "already revoked"
        self._audit(Action.REVOKE, Outcome.SUCCESS, actor, reason, token_id, token.user)
        return self.token(token_id) or token
