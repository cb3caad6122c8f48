"""The records apitokens stores and returns: tokens, issued tokens, audit events."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from ._snippets import render_snippet

__all__ = [
    "Action",
    "AuditEvent",
    "AuthEntry",
    "IssuedToken",
    "Outcome",
    "Scope",
    "StoredToken",
    "Token",
    "TokenStatus",
    "Usage",
]

# How many secrets rotated out before the previous one keep their hash (to recognise their
# reuse, DESIGN §11): with the previous one, the last three. Bounded because a wrong secret
# is checked against each of them (one hash verification each).
RETIRED_HASHES_KEPT = 2

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Scope(StrEnum):
    """What a token may do, before its restriction rules narrow it further."""

    READ_ONLY = "read_only"
    """GET, HEAD and OPTIONS only."""
    READ_WRITE = "read_write"
    """Every method."""

    def allows(self, method: str) -> bool:
        """Return whether a request with this HTTP method is within the scope."""
        # _READ_WRITE, not Scope.READ_WRITE: reading a member off the enum class costs
        # a tenth of a microsecond, and this runs on every request.
        return self is _READ_WRITE or method.upper() in _READ_METHODS


_READ_WRITE = Scope.READ_WRITE


class TokenStatus(StrEnum):
    """A token's status at a given moment; compares equal to its string value."""

    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


class Outcome(StrEnum):
    """How an authentication or a management call ended."""

    SUCCESS = "success"
    FAILED = "failed"
    """Bad or unknown credentials (HTTP 401, 400, 429)."""
    FORBIDDEN = "forbidden"
    """Known caller, not allowed (HTTP 403, 413; a refused management call)."""
    PASS_THROUGH = "pass_through"  # noqa: S105 - not a password
    """Not ours to decide: the request went to the app untouched."""


class Action(StrEnum):
    """What an audit event records."""

    AUTHENTICATE = "authenticate"
    CREATE = "create"
    EDIT = "edit"
    REVEAL = "reveal"
    ROTATE = "rotate"
    REVOKE = "revoke"


@dataclass(frozen=True, slots=True)
class Token:
    """A stored token, without its secret.

    ``status`` is the token's status as of the moment the record was read (the
    ``ApiTokens`` clock's now); use :meth:`as_of` for another moment.

    ``rate_limit`` (``"100/min"``: at most so many requests per window), ``credits``
    (uses in all) and ``refill`` (``"1000/day"``: credits given back per period, never
    above ``credits``) are its limits, in canonical text (DESIGN §11); the credits
    left are not part of the record (``ApiTokens.credits_left``).
    """

    id: str
    name: str
    user: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime | None = None
    scope: Scope = Scope.READ_ONLY
    restrictions: tuple[str, ...] = ()
    allowed_ips: tuple[str, ...] = ()
    secure: bool = True
    last_used_at: datetime | None = None
    last_used_ip: str | None = None
    use_count: int = 0
    revoked_at: datetime | None = None
    status: TokenStatus = TokenStatus.ACTIVE
    rate_limit: str | None = None
    credits: int | None = None
    refill: str | None = None

    def status_at(self, now: datetime) -> TokenStatus:
        """Return the token's status at ``now`` (revocation wins over expiry).

        A revocation counts whatever its timestamp: clocks of processes that
        share a store may disagree, and a revoked token must never look active.
        """
        if self.revoked_at is not None:
            return TokenStatus.REVOKED
        if self.expires_at is not None and self.expires_at <= now:
            return TokenStatus.EXPIRED
        return TokenStatus.ACTIVE

    def as_of(self, now: datetime) -> Token:
        """Return this record with ``status`` computed for ``now``."""
        status = self.status_at(now)
        return self if status is self.status else dataclasses.replace(self, status=status)

    @property
    def unbound(self) -> bool:
        """True when any username may use the token (Basic auth only)."""
        return self.user is None


@dataclass(frozen=True, slots=True)
class StoredToken:
    """What a store keeps for one token: its record plus its secret's hashes.

    A :class:`~apitokens.TokenStore` receives it in ``add()`` and ``update()`` and
    gives it back from ``get()``. A backend stores every field exactly (datetimes
    to the microsecond, in UTC) and never derives or hashes anything itself: the
    hashes are made and checked by apitokens. Hashes and the revealable token
    string are kept out of ``repr``; keep them out of your logs and error
    messages too.

    Attributes:
        token: the public record (:class:`Token`). Every field of it is stored;
            ``token.status`` is not (it is derived: ``REVOKED`` when
            ``revoked_at`` is set, else ``ACTIVE``, for ``get()``; as of ``now``
            for ``list()``).
        secret_hash: the self-describing hash of the current secret (for
            example ``$argon2id$...``): opaque text, stored unchanged. ``update()``
            replaces it; ``replace_hash()`` swaps it only if it is still the
            expected one.
        previous_hash: the hash of the secret the last rotation replaced
            (``None`` before any rotation); opaque, like ``secret_hash``. It is
            accepted until ``previous_valid_until``; after that it is kept so that
            presenting it again is recognised as reuse (DESIGN §11).
        previous_valid_until: when ``previous_hash`` stops being accepted (the
            end of the rotation's grace period; the rotation's own time when it
            had none), aware, or ``None``.
        revealable: the token string itself, kept only for standard-mode
            (``secure=False``) tokens so that it can be revealed again; always
            ``None`` for a secure-mode token, and a store refuses (``ValueError``)
            a secure-mode token that carries one. Protect it like a password.
        retired_hashes: the hashes of the secrets rotated out before
            ``previous_hash``, newest first, never accepted again: kept (at most
            two; with ``previous_hash``, the last three secrets) only to recognise
            their reuse. Opaque, like ``secret_hash``; a store keeps their order.
    """

    token: Token
    secret_hash: str = field(repr=False)
    previous_hash: str | None = field(default=None, repr=False)
    previous_valid_until: datetime | None = None
    revealable: str | None = field(default=None, repr=False)
    retired_hashes: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A newly created or rotated token: the secret, shown once, and its record.

    Attributes:
        secret: the token string; hand it to the user, it is not shown again
            (unless the token is in standard mode).
        token: the stored record.
        basic_user: the username clients send with Basic auth, when they
            must (an unbound token, or a policy with Bearer turned off);
            ``None`` means clients send ``Bearer``.
    """

    secret: str = field(repr=False)
    token: Token
    basic_user: str | None = None

    def __str__(self) -> str:
        return f"IssuedToken(id={self.token.id!r})"

    def snippet(self, url: str, lang: str = "curl") -> str:
        """Return code that calls ``url`` with this token.

        Args:
            url: the API URL, e.g. ``"https://example.com/rest/api/2/myself"``.
            lang: ``"curl"``, ``"python"`` (httpx) or ``"javascript"`` (fetch).

        Raises:
            ValueError: unknown language, or not an http(s) URL.
        """
        return render_snippet(self.secret, url, lang, user=self.basic_user)


@dataclass(frozen=True, slots=True)
class Usage:
    """One or more uses of a token, to be folded into the token's usage fields.

    A store receives usages in ``write(usage=...)`` and folds them into the
    token's :attr:`Token.use_count`, :attr:`Token.last_used_at` and
    :attr:`Token.last_used_ip`; it does not keep the ``Usage`` objects.

    Attributes:
        token_id: the token used. A store ignores usage of an id it does not
            have (the token may have been deleted since the request).
        at: when (aware). ``last_used_at`` becomes the newest ``at`` seen,
            never an older one.
        ip: the client address of that use, or ``None``. ``last_used_ip``
            becomes the ``ip`` of the newest use; a use as new as the stored
            one counts as newer, and among equal times in one batch the later
            item wins.
        count: how many uses this stands for (non-negative; a negative count
            is refused with ``ValueError``); ``use_count`` grows by it.
    """

    token_id: str
    at: datetime
    ip: str | None = None
    count: int = 1


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audited authentication or management action. Never holds a secret."""

    at: datetime
    action: Action
    outcome: Outcome
    token_id: str | None = None
    user: str | None = None
    actor: str | None = None
    client_ip: str | None = None
    method: str | None = None
    path: str | None = None
    reason: str = ""


class AuthEntry(NamedTuple):
    """One authentication, compact: an ``authenticate`` :class:`AuditEvent` and maybe a use.

    It stands for ``AuditEvent(at, Action.AUTHENTICATE, outcome, token_id, user,
    None, client_ip, method, path, reason)`` and, when ``used`` is true and
    ``token_id`` is set, ``Usage(token_id, at, client_ip)``. apitokens' audit
    writer hands these to a store's optional ``write_entries()``
    (:class:`~apitokens.storage.EntryWriter`), which writes the event's row
    straight from them; a store without that method gets the expanded events
    through ``write()``.

    A named tuple because the request thread makes one per request: a tenth of
    what a frozen dataclass costs; the event's own cost is paid on the writer
    thread, or not at all when the store writes entries as they are.

    Attributes:
        at: when the request was decided (aware, UTC).
        outcome: the decision's :class:`Outcome` (never ``PASS_THROUGH``).
        token_id: the token's id, if the request named one.
        user: the user the request was for, if known.
        client_ip: the client address, if known.
        method: the request's method, upper case (at most 16 characters).
        path: the request's path, as audited (bounded, any token in it cut to its id).
        reason: why, for a refusal; ``"authenticated"`` for a success.
        used: whether this authentication counts as a use of the token.
    """

    at: datetime
    outcome: Outcome
    token_id: str | None
    user: str | None
    client_ip: str | None
    method: str
    path: str
    reason: str
    used: bool
