"""Policy: where tokens are accepted, who may use and create them, and the limits."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from ._tokens import TokenFormat
from .rules import decode_path

__all__ = ["AuthScheme", "IPNetwork", "Policy", "parse_networks"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AuthScheme(StrEnum):
    """Which HTTP authentication schemes carry tokens."""

    BASIC = "basic"
    """``Authorization: Basic base64(user:token)`` (RFC 7617)."""
    BEARER = "bearer"
    """``Authorization: Bearer token`` (RFC 6750)."""
    BOTH = "both"

    @property
    def basic(self) -> bool:
        """Whether Basic carries tokens."""
        return self is not AuthScheme.BEARER

    @property
    def bearer(self) -> bool:
        """Whether Bearer carries tokens."""
        return self is not AuthScheme.BASIC


def parse_networks(cidrs: Iterable[str], *, what: str = "allowed_ips") -> tuple[IPNetwork, ...]:
    """Parse CIDRs (or bare addresses) into networks, v4 and v6.

    Raises:
        ValueError: an entry is not an address or network, naming the entry.
    """
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(str(cidr).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{what}: {cidr!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def _collapse_slashes(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


def _groups(value: Iterable[str] | None, name: str) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(f"{name} must be a collection of group names, not a single string")
    return frozenset(value)


@dataclass(frozen=True, kw_only=True)
class Policy:
    """What apitokens enforces. Every field is keyword-only; defaults are safe.

    Attributes:
        protected_paths: path prefixes where tokens are accepted; everything
            else passes through untouched. Matched against the path decoded as the
            rules decode it, repeated slashes collapsed (in the prefixes too).
        auth_schemes: which schemes carry tokens (Basic, Bearer or both).
        allow_other_auth: when ``False``, protected paths accept nothing but
            tokens (passwords are off for the API): other credentials get 401.
        token_users: groups whose members may use tokens (``None`` = everyone).
        token_creators: groups whose members may create tokens for themselves
            (``None`` = everyone).
        token_admins: groups whose members may create tokens for others, see
            and revoke every token, and create read-write tokens when
            ``read_only_for_users`` is on.
        run_as_groups: groups whose members' tokens may send ``X-Run-As: <user>``
            to act as that user (who must be allowed to use tokens). Empty (the
            default): nobody may, and the header is refused (403) on protected paths.
        read_only_for_users: only admins may create READ_WRITE tokens.
        allow_unbound_tokens: allow tokens without an owner (Basic only).
        max_lifetime: longest time from creation to expiry a token may have.
        require_expiry: every token must have an expiry.
        trusted_proxies: CIDRs of proxies whose ``X-Forwarded-For`` is believed.
        max_body_bytes: largest body read for a JSON rule (413 beyond).
        rule_timeout: seconds of regex time one request may spend on rules.
        token_prefix: the token string's prefix (2-10 of ``[a-z0-9]``).
        max_failed_attempts: failed guesses (attempts that cost a hash
            verification) allowed per client address (an IPv6 one by its /64)
            within ``failure_window`` before 429. Never per token id: ids are
            public, and a secret this process has verified is never refused.
        failure_window: the window those failures are counted in.
        realm: the realm named in ``WWW-Authenticate``.
        revoke_on_reuse: a secret that was rotated out, presented after its
            grace period (one of the last three secrets), revokes the token at
            once (audited as ``reuse_detected``), as GitLab does: either the
            client or a thief kept the old secret, and the new one may be the
            thief's. ``False``: it is only refused (401), as any wrong secret.
    """

    protected_paths: Sequence[str] = ("/",)
    auth_schemes: AuthScheme = AuthScheme.BOTH
    allow_other_auth: bool = True
    token_users: AbstractSet[str] | None = None
    token_creators: AbstractSet[str] | None = None
    token_admins: AbstractSet[str] = frozenset()
    run_as_groups: AbstractSet[str] = frozenset()
    read_only_for_users: bool = False
    allow_unbound_tokens: bool = False
    max_lifetime: timedelta | None = None
    require_expiry: bool = False
    trusted_proxies: Sequence[str] = ()
    max_body_bytes: int = 1_048_576
    rule_timeout: float = 0.05
    token_prefix: str = "apt"  # noqa: S105 - not a password
    max_failed_attempts: int = 10
    failure_window: timedelta = timedelta(minutes=1)
    realm: str = "api"
    revoke_on_reuse: bool = True
    _proxy_networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)
    # protected_paths typed as the tuple str.startswith takes, for protects().
    _prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _format: TokenFormat = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Accept any iterable of strings for the collection fields, store
        # immutable normalized values, and refuse bad values here, once.
        set_ = object.__setattr__
        if isinstance(self.protected_paths, str):
            raise TypeError("protected_paths must be a collection of path prefixes")
        paths = tuple(self.protected_paths)
        for path in paths:
            if not path.startswith("/"):
                raise ValueError(f"protected path {path!r} must start with '/'")
        set_(self, "protected_paths", paths)
        set_(self, "_prefixes", tuple(_collapse_slashes(path) for path in paths))
        set_(self, "auth_schemes", AuthScheme(self.auth_schemes))
        set_(self, "token_users", _groups(self.token_users, "token_users"))
        set_(self, "token_creators", _groups(self.token_creators, "token_creators"))
        set_(self, "token_admins", _groups(self.token_admins, "token_admins") or frozenset())
        set_(self, "run_as_groups", _groups(self.run_as_groups, "run_as_groups") or frozenset())
        if isinstance(self.trusted_proxies, str):
            raise TypeError("trusted_proxies must be a collection of CIDRs")
        set_(self, "trusted_proxies", tuple(self.trusted_proxies))
        set_(self, "_proxy_networks", parse_networks(self.trusted_proxies, what="trusted_proxies"))
        set_(self, "_format", TokenFormat(self.token_prefix))
        if self.max_lifetime is not None and self.max_lifetime <= timedelta(0):
            raise ValueError("max_lifetime must be positive")
        if self.max_body_bytes < 0:
            raise ValueError("max_body_bytes must be >= 0")
        if not (math.isfinite(self.rule_timeout) and self.rule_timeout > 0):
            raise ValueError("rule_timeout must be a positive number of seconds")
        if self.max_failed_attempts < 1:
            raise ValueError("max_failed_attempts must be >= 1")
        if self.failure_window <= timedelta(0):
            raise ValueError("failure_window must be positive")
        if '"' in self.realm or "\\" in self.realm:
            raise ValueError("realm must not contain quotes or backslashes")

    @property
    def token_format(self) -> TokenFormat:
        """The :class:`TokenFormat` for ``token_prefix``."""
        return self._format

    @property
    def proxy_networks(self) -> tuple[IPNetwork, ...]:
        """``trusted_proxies`` parsed."""
        return self._proxy_networks

    def protects(self, path: str) -> bool:
        """Return whether tokens are checked on ``path`` (raw, percent-encoded).

        The path is decoded as the rules decode it (``decode_path``, repeated
        slashes collapsed), so ``/%72est/`` or ``//rest/`` cannot dodge a ``/rest/``
        prefix, and a path the rules see under a protected prefix is protected. A
        path the rules refuse to read (``.`` or ``..`` segments, an encoded slash, a
        backslash, a control character, a malformed escape) is protected whenever
        any path is (fail closed): the app may resolve it to a protected one.
        """
        prefixes = self._prefixes
        if "%" not in path:
            # Without an escape the path is its own decoding, if it has one: under a
            # prefix it is protected whether decode_path reads it or refuses it. That
            # settles every protected request without the full reading (every request).
            plain = _collapse_slashes(path) if "//" in path else path
            if plain.startswith(prefixes):
                return True
        decoded, problem = decode_path(path)  # repeated slashes collapsed, as the rules see it
        if problem:
            return bool(prefixes)
        return decoded.startswith(prefixes)

    # Permission checks: `groups` is the acting or owning user's groups.

    def may_use_tokens(self, groups: frozenset[str]) -> bool:
        """Return whether a user in ``groups`` may authenticate with tokens."""
        return self.token_users is None or not self.token_users.isdisjoint(groups)

    def may_create_tokens(self, groups: frozenset[str]) -> bool:
        """Return whether a user in ``groups`` may create tokens for themselves."""
        return (
            self.token_creators is None
            or not self.token_creators.isdisjoint(groups)
            or self.is_admin(groups)
        )

    def may_run_as(self, groups: frozenset[str]) -> bool:
        """Return whether a token of a user in ``groups`` may act as another user."""
        return not self.run_as_groups.isdisjoint(groups)

    def is_admin(self, groups: frozenset[str]) -> bool:
        """Return whether a user in ``groups`` is a token admin."""
        return not self.token_admins.isdisjoint(groups)
