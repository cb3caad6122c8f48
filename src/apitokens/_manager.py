"""Token management: every call checked against the policy and audited, refusals included."""

from __future__ import annotations

import builtins
import dataclasses
import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from ._audit import Record
from ._errors import (
    PermissionDenied,
    PolicyViolation,
    StorageError,
    TokenImmutable,
    TokenNotFound,
)
from ._hashing import SecretVerifier
from ._limits import check_credits, new_allotment, normalize_rate
from ._model import (
    RETIRED_HASHES_KEPT,
    Action,
    AuditEvent,
    IssuedToken,
    Outcome,
    Scope,
    StoredToken,
    Token,
    TokenStatus,
)
from ._policy import Policy
from ._snippets import render_snippet
from ._tokens import BASE62, ID_LENGTH
from ._validate import (
    UNSET,
    Unset,
    check_name,
    expiry_from,
    lifetime_violation,
    normalize_ips,
    normalize_rules,
)
from .storage import TokenStore, UsageLedger

__all__ = ["CHANGE_TRIES", "TokenManager"]

_log = logging.getLogger("apitokens")

CHANGE_TRIES = 5
"""How often ``edit`` and ``rotate`` read and write a token whose secret keeps changing
under them (another process rotating it) before they give up with ``StorageError``."""


def _looks_like_id(value: str) -> bool:
    return len(value) == ID_LENGTH and all(ch in BASE62 for ch in value)


def _takes_expected_hash(store: TokenStore) -> bool:
    """Whether ``store.update`` accepts the ``expected_hash`` guard (a store written
    against the protocol before it had one does not)."""
    try:
        parameters = inspect.signature(store.update).parameters
    except (TypeError, ValueError):  # no signature to read (a C callable): assume current
        return True
    given = parameters.get("expected_hash")
    if given is not None:
        return given.kind in (given.KEYWORD_ONLY, given.POSITIONAL_OR_KEYWORD)
    return any(p.kind is p.VAR_KEYWORD for p in parameters.values())


class TokenManager:
    """The management calls of :class:`ApiTokens` (documented there).

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
        reset_credits: Callable[[Token], None] | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.verifier = verifier
        self.clock = clock
        self._groups_of = groups
        self._submit = submit
        self._changed = changed
        self._reset_credits = reset_credits
        self._guarded = _takes_expected_hash(store)
        if not self._guarded:
            _log.warning(
                "%s.update takes no expected_hash: edit and rotate check the token's"
                " secret just before writing, not atomically, so one racing a rotation in"
                " another process may undo it (docs/storage.md)",
                type(store).__name__,
            )

    # -- helpers ---------------------------------------------------------------

    def groups(self, user: str) -> frozenset[str]:
        """Return ``user``'s groups (empty without a ``groups`` callable)."""
        return frozenset(self._groups_of(user)) if self._groups_of is not None else frozenset()

    def is_admin(self, actor: str) -> bool:
        """Return whether ``actor`` is a token admin."""
        return self.policy.is_admin(self.groups(actor))

    def _audit(
        self,
        action: Action,
        outcome: Outcome,
        actor: str,
        reason: str,
        token: Token | None,
        token_id: str | None = None,
    ) -> None:
        event = AuditEvent(
            at=self.clock(),
            action=action,
            outcome=outcome,
            token_id=token.id if token else token_id,
            user=token.user if token else None,
            actor=actor,
            reason=reason,
        )
        self._submit([event])

    def _refuse(
        self, action: Action, actor: str, error: Exception, token: Token | None = None
    ) -> Exception:
        """Audit a refusal as FORBIDDEN and return the error to raise."""
        self._audit(action, Outcome.FORBIDDEN, actor, str(error), token)
        return error

    def _basic_user(self, token: Token) -> str | None:
        if token.user is None:
            return "USERNAME"  # an unbound token acts as whichever user is sent
        return None if self.policy.auth_schemes.bearer else token.user

    def token(self, token_id: str) -> Token | None:
        """Return the token ``token_id`` as of now, or ``None``."""
        stored = self.store.get(token_id)
        return None if stored is None else stored.token.as_of(self.clock())

    def _owned(self, action: Action, actor: str, token_id: str) -> StoredToken:
        """Return the stored token if ``actor`` owns it or is an admin; else raise (audited).

        A whole token string is accepted for its id (a leaked token is revoked
        as found); anything else that is not an id is never echoed back, since
        it may be a secret pasted in the wrong place.
        """
        parsed = self.policy.token_format.parse(token_id)
        if parsed is not None:
            token_id = parsed.id
        stored = self.store.get(token_id)
        if stored is None:
            shown = token_id if _looks_like_id(token_id) else None
            what = (
                f"no token {shown!r}"
                if shown
                else "no token with that id (an id is 12 base62 characters)"
            )
            error = TokenNotFound(what)
            # A well-formed id is kept, so probes for ids show up in audit(token_id=...).
            self._audit(action, Outcome.FORBIDDEN, actor, what, None, shown)
            raise error
        token = stored.token.as_of(self.clock())
        if token.user != actor and not self.is_admin(actor):
            denied = PermissionDenied("only token_admins may manage other users' tokens")
            raise self._refuse(action, actor, denied, token)
        return dataclasses.replace(stored, token=token)

    def _mutable(self, action: Action, actor: str, token_id: str) -> StoredToken:
        """Like :meth:`_owned`, for calls that need a standard-mode, unrevoked token."""
        stored = self._owned(action, actor, token_id)
        token = stored.token
        if token.secure:
            error = TokenImmutable(f"token {token.id} is in secure mode: only rotate or revoke")
            raise self._refuse(action, actor, error, token)
        if token.status is TokenStatus.REVOKED:
            raise self._refuse(action, actor, TokenImmutable("token is revoked"), token)
        return stored

    def _write_if_unchanged(self, stored: StoredToken, expected_hash: str) -> bool:
        """``store.update(stored)`` if the token's ``secret_hash`` is still ``expected_hash``.

        Atomic on a store whose ``update`` takes ``expected_hash`` (every built-in
        one). On an older store, the hash is read again just before the write: the
        window left is small but not closed (documented in ``docs/storage.md``).
        """
        if not self._guarded:
            current = self.store.get(stored.token.id)
            if current is not None and current.secret_hash != expected_hash:
                return False
            self.store.update(stored)
            return True
        changed = self.store.update(stored, expected_hash=expected_hash)
        if not isinstance(changed, bool):
            # Fail closed: a store that takes the guard but does not say whether it held.
            raise StorageError(
                f"{type(self.store).__name__}.update(expected_hash=...) returned"
                f" {type(changed).__name__}, not a bool"
            )
        return changed

    @staticmethod
    def _gave_up(action: Action, token: Token) -> StorageError:
        """The error when the token kept being rotated under ``action``: it changed nothing."""
        return StorageError(
            f"{action.value} of token {token.id} gave up: another caller rotated it each of"
            f" the {CHANGE_TRIES} times it tried to write; nothing was changed, try again"
        )

    def _limits(
        self, rate_limit: str | None, credits: int | None, refill: str | None
    ) -> tuple[str | None, int | None, str | None]:
        """The limits' canonical values (DESIGN §11), or ``ValueError``."""
        limits = (
            normalize_rate(rate_limit),
            check_credits(credits),
            normalize_rate(refill, "refill"),
        )
        if refill is not None and credits is None:
            raise ValueError("refill needs credits: it gives back spent credits")
        if (rate_limit is not None or credits is not None) and not isinstance(
            self.store, UsageLedger
        ):
            raise ValueError(
                "this store keeps no usage counts (storage.UsageLedger),"
                " so its tokens cannot have a rate limit or credits"
            )
        return limits

    # -- calls -----------------------------------------------------------------------

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
        """Create a token."""
        policy = self.policy
        now = self.clock()
        name = check_name(name)
        scope = Scope(scope)
        rate_limit, credits, refill = self._limits(rate_limit, credits, refill)
        if unbound and user is not None:
            raise ValueError("an unbound token has no user: pass user or unbound=True, not both")
        owner = None if unbound else (actor if user is None else user)
        rules = normalize_rules(restrictions)
        networks = normalize_ips(allowed_ips)
        expiry = expiry_from(now, expires_in, expires_at)

        actor_groups = self.groups(actor)
        admin = policy.is_admin(actor_groups)
        refusal: Exception | None
        if not policy.may_create_tokens(actor_groups):
            refusal = PermissionDenied(f"{actor!r} is not in token_creators")
        elif owner != actor and not admin:
            what = "unbound tokens" if owner is None else "tokens for other users"
            refusal = PermissionDenied(f"only token_admins may create {what}")
        elif scope is Scope.READ_WRITE and policy.read_only_for_users and not admin:
            refusal = PermissionDenied("read_only_for_users: only token_admins create READ_WRITE")
        elif owner is None and not policy.allow_unbound_tokens:
            refusal = PolicyViolation("unbound tokens are turned off (allow_unbound_tokens)")
        elif owner is not None and not policy.may_use_tokens(self.groups(owner)):
            refusal = PolicyViolation(f"{owner!r} is not in token_users")
        else:
            refusal = lifetime_violation(policy, now, expiry)
        if refusal is not None:
            self._audit(Action.CREATE, Outcome.FORBIDDEN, actor, str(refusal), None)
            raise refusal

        issued = policy.token_format.issue()
        token = Token(
            id=issued.id,
            name=name,
            user=owner,
            created_by=actor,
            created_at=now,
            expires_at=expiry,
            scope=scope,
            restrictions=rules,
            allowed_ips=networks,
            secure=secure,
            rate_limit=rate_limit,
            credits=credits,
            refill=refill,
        )
        stored = StoredToken(
            token=token,
            secret_hash=self.verifier.hash(issued.value),
            revealable=None if secure else issued.value,
        )
        self.store.add(stored)
        self._audit(Action.CREATE, Outcome.SUCCESS, actor, f"created {name!r}", token)
        return IssuedToken(issued.value, token, self._basic_user(token))

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
        """Change a standard-mode token's name, rules, addresses, expiry or limits.

        The change is written only over the secret it was read with: if another caller
        rotates the token in between, the record is read again (and checked again) and
        the change applied to it, so an edit never brings a replaced secret back.
        """
        stored = self._mutable(Action.EDIT, actor, token_id)
        # Checked once, before any write: the same arguments give the same values.
        if not isinstance(name, Unset):
            name = check_name(name)
        if not isinstance(restrictions, Unset):
            restrictions = normalize_rules(restrictions)
        if not isinstance(allowed_ips, Unset):
            allowed_ips = normalize_ips(allowed_ips)
        expiry: datetime | Unset | None = UNSET
        if not isinstance(expires_at, Unset):
            expiry = expiry_from(self.clock(), None, expires_at)
        for _ in range(CHANGE_TRIES):
            token = stored.token
            changes: dict[str, object] = {}
            if not (
                isinstance(rate_limit, Unset)
                and isinstance(credits, Unset)
                and isinstance(refill, Unset)
            ):
                limits = self._limits(
                    token.rate_limit if isinstance(rate_limit, Unset) else rate_limit,
                    token.credits if isinstance(credits, Unset) else credits,
                    token.refill if isinstance(refill, Unset) else refill,
                )
                for field, value in zip(("rate_limit", "credits", "refill"), limits, strict=True):
                    if getattr(token, field) != value:
                        changes[field] = value
                if not isinstance(credits, Unset) and credits is not None:
                    # Credits given, even the same number: a new allotment (a top-up).
                    changes["credits"] = limits[1]
            # Only what differs is a change (and audited as one): a form sends every field.
            if not isinstance(name, Unset) and name != token.name:
                changes["name"] = name
            if not isinstance(restrictions, Unset) and restrictions != token.restrictions:
                changes["restrictions"] = restrictions
            if not isinstance(allowed_ips, Unset) and allowed_ips != token.allowed_ips:
                changes["allowed_ips"] = allowed_ips
            if not isinstance(expiry, Unset) and expiry != token.expires_at:
                refusal = lifetime_violation(self.policy, token.created_at, expiry)
                if refusal is not None:
                    raise self._refuse(Action.EDIT, actor, refusal, token)
                changes["expires_at"] = expiry
            edited = dataclasses.replace(token, **changes)  # type: ignore[arg-type]
            if self._write_if_unchanged(
                dataclasses.replace(stored, token=edited), stored.secret_hash
            ):
                break
            # Rotated meanwhile: apply the change to the record as it is now.
            stored = self._mutable(Action.EDIT, actor, token.id)
        else:
            raise self._gave_up(Action.EDIT, stored.token)
        # This process's caches first: a request after the reset counts on the new limits.
        self._changed(token.id)
        if self._reset_credits is not None and (
            "credits" in changes or new_allotment(token, edited)
        ):
            # New credits (or a refill period) are a new allotment: the balance starts again.
            self._reset_credits(edited)
        reason = "changed " + (", ".join(sorted(changes)) or "nothing")
        self._audit(Action.EDIT, Outcome.SUCCESS, actor, reason, edited)
        return self.token(token.id) or edited

    def _revealed(self, actor: str, token_id: str) -> tuple[str, Token]:
        """The token string of a standard-mode token, and its record (audited as a reveal)."""
        stored = self._mutable(Action.REVEAL, actor, token_id)
        if stored.revealable is None:
            error = TokenImmutable("the token string was not kept")
            raise self._refuse(Action.REVEAL, actor, error, stored.token)
        self._audit(Action.REVEAL, Outcome.SUCCESS, actor, "revealed", stored.token)
        return stored.revealable, stored.token

    def reveal(self, *, actor: str, token_id: str) -> str:
        """Return a standard-mode token's string again."""
        return self._revealed(actor, token_id)[0]

    def snippet(self, *, actor: str, token_id: str, url: str, lang: str = "curl") -> str:
        """Return a code snippet for a standard-mode token."""
        render_snippet("", url, lang)  # refuse a bad url or language before revealing
        value, token = self._revealed(actor, token_id)
        return render_snippet(value, url, lang, user=self._basic_user(token))

    def rotate(self, *, actor: str, token_id: str, grace: timedelta = timedelta(0)) -> IssuedToken:
        """Give a token a new secret; the old one works for ``grace``, then never again."""
        if not isinstance(grace, timedelta) or grace < timedelta(0):
            raise ValueError("grace must be a timedelta >= 0")
        stored = self._owned(Action.ROTATE, actor, token_id)
        token = stored.token
        issued = self.policy.token_format.issue(token.id)
        secret_hash = self.verifier.hash(issued.value)  # once, whatever the tries
        for _ in range(CHANGE_TRIES):
            if token.status is TokenStatus.REVOKED:
                raise self._refuse(Action.ROTATE, actor, TokenImmutable("token is revoked"), token)
            # Every replaced secret keeps its hash, grace or not: accepted until the grace
            # ends, then recognised if presented again (reuse, DESIGN §11).
            retired = stored.retired_hashes
            if stored.previous_hash is not None:
                retired = (stored.previous_hash, *retired)[:RETIRED_HASHES_KEPT]
            rotated = dataclasses.replace(
                stored,
                secret_hash=secret_hash,
                previous_hash=stored.secret_hash,
                previous_valid_until=self.clock() + grace,
                revealable=None if token.secure else issued.value,
                retired_hashes=retired,
            )
            # Written only over the secret read: a rotation made in between is kept, and
            # this one goes on top of it (its secret retired with the others).
            if self._write_if_unchanged(rotated, stored.secret_hash):
                break
            stored = self._owned(Action.ROTATE, actor, token.id)
            token = stored.token
        else:
            raise self._gave_up(Action.ROTATE, token)
        keep_old = grace > timedelta(0)
        self._changed(token.id)
        reason = f"rotated, old secret valid for {grace}" if keep_old else "rotated"
        self._audit(Action.ROTATE, Outcome.SUCCESS, actor, reason, token)
        return IssuedToken(issued.value, token, self._basic_user(token))

    def revoke(self, *, actor: str, token_id: str) -> Token:
        """Revoke a token at once."""
        token = self._owned(Action.REVOKE, actor, token_id).token
        changed = self.store.revoke(token.id, self.clock())
        self._changed(token.id)
        reason = "revoked" if changed else "already revoked"
        self._audit(Action.REVOKE, Outcome.SUCCESS, actor, reason, token)
        return self.token(token.id) or token

    def revoke_unused(self, *, actor: str, since: datetime) -> builtins.list[Token]:
        """Revoke every active token (the actor's own, or all for admins) unused since ``since``."""
        stale = self.list(actor=actor, status="active", unused_since=since)
        revoked = []
        for token in stale:
            if self.store.revoke(token.id, self.clock()):
                self._changed(token.id)
                reason = f"revoked: unused since {since.isoformat()}"
                self._audit(Action.REVOKE, Outcome.SUCCESS, actor, reason, token)
                revoked.append(self.token(token.id) or token)
        return revoked

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
        """List tokens; non-admins see only their own."""
        if not self.is_admin(actor):
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
