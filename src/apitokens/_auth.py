"""The Authenticator: AuthRequest in, AuthResult out (DESIGN §4, §7).

It does no I/O of its own beyond reading the store on a cache miss; the
records it produces (audit event, usage, re-hash) are returned for the caller
to hand to the buffered writer. Every step that could block (a store read,
an uncached hash verification, a groups lookup) can be refused with
:class:`WouldBlock`, so the ASGI adapter decides on the event loop when all
is cached and moves to a worker thread only when something is not.

The hot path: once an ``Authorization`` value has been verified against a token
record, it is remembered (:class:`~apitokens._cache.HotCredential`, keyed by a keyed
BLAKE2b of the value, never the value itself) with that record. A later request with
the same value skips reading the header, the checksum and the verification cache for
as long as the record cache still holds that very record (so a TTL refresh, and a
revocation or rotation in this process, void it), the token is active by the clock,
the rotation grace (when it matched the replaced secret) has not ended, the
verification cache has not been cleared, the owner's groups are cached and allow
tokens, and neither the client address nor the token id is throttled. When any of
that fails the request takes the full path, which decides it exactly as before; only
the checks about the request itself (scope, IPs, rules, body) run on the hot path too.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import NamedTuple

from ._audit import AuthEntry, Record, Rehash
from ._cache import CompiledToken, HotCredential, HotCredentials, TokenCache, TTLCache
from ._credentials import (
    MAX_AUTHORIZATION_LENGTH,
    Credentials,
    MalformedCredentials,
    read_credentials,
)
from ._errors import StorageError
from ._hashing import SecretVerifier
from ._model import Outcome, Token, TokenStatus
from ._policy import AuthScheme, IPNetwork, Policy
from ._request import AuthRequest
from ._result import AuthResult, refusal
from ._throttle import FailureThrottle
from .storage import TokenStore

__all__ = ["Authenticator", "Decision", "WouldBlock"]

log = logging.getLogger("apitokens")
PASS_THROUGH = AuthResult(Outcome.PASS_THROUGH)
_MAX_AUDIT_PATH = 2048
_AUTHENTICATED = "authenticated"
_SUCCESS = Outcome.SUCCESS
_ACTIVE = TokenStatus.ACTIVE
# Headers through which common middleware (Flask's docs, Rails-style, Google's) lets a
# request act as another method. The adapters pass them to the core (AuthRequest.headers).
_METHOD_OVERRIDES = frozenset(("x-http-method-override", "x-http-method", "x-method-override"))


class WouldBlock(Exception):
    """Raised in non-blocking mode when the decision needs I/O or hashing."""


class Decision(NamedTuple):
    """A result plus the records to write; ``need_body`` asks for the body first.

    A named tuple: one is made per request, and that costs half a frozen dataclass.
    """

    result: AuthResult
    records: tuple[Record, ...] = ()
    need_body: bool = False


_PASS = Decision(PASS_THROUGH)
_new_decision = tuple.__new__


@dataclass(slots=True)
class _Attempt:
    """What is known so far about one request, for refusals and the audit event."""

    request: AuthRequest
    now: datetime
    client_ip: str
    token_id: str | None = None
    user: str | None = None


@dataclass(frozen=True, slots=True)
class _Verified:
    """The secret matched a hash of the record: which one, and what to write."""

    rehash: Rehash | None
    until: datetime | None  # end of the rotation grace when it matched the old secret


class Authenticator:
    """Decides requests for one policy and store. Thread-safe.

    Args:
        store: where token records are read.
        policy: what is enforced.
        verifier: hashes and the verification cache.
        clock: returns the current aware UTC datetime.
        groups: ``groups(user)`` for ``Policy.token_users``.
        cache_ttl: seconds a token record (and a user's groups) is reused.
        max_concurrent_verifications: uncached hash verifications running
            at once; more wait (up to ``verification_wait`` seconds, then 503).
    """

    def __init__(
        self,
        store: TokenStore,
        policy: Policy,
        verifier: SecretVerifier,
        clock: Callable[[], datetime],
        groups: Callable[[str], Iterable[str]] | None = None,
        *,
        cache_ttl: float = 1.0,
        max_concurrent_verifications: int = 2,
        verification_wait: float = 10.0,
    ) -> None:
        self.store = store
        self.policy = policy
        self.verifier = verifier
        self.clock = clock
        self._groups_of = groups
        self.tokens = TokenCache(cache_ttl)
        self._groups: TTLCache[str, frozenset[str]] = TTLCache(cache_ttl, 10_000)
        window = policy.failure_window.total_seconds()
        self.ip_throttle = FailureThrottle(policy.max_failed_attempts, window)
        self.id_throttle = FailureThrottle(policy.max_failed_attempts, window)
        self._hashing = threading.BoundedSemaphore(max_concurrent_verifications)
        self._verification_wait = verification_wait
        self.hot = HotCredentials(verifier.cache.maxsize)
        self._dummy_hash: str | None = None  # for unknown ids: made at the first one

    # -- public entry --------------------------------------------------

    def safe_decide(
        self, request: AuthRequest, *, body_read: bool = True, block: bool = True
    ) -> Decision:
        """:meth:`decide`, but an unexpected error becomes a 503 (fail closed), never a pass."""
        try:
            return self.decide(request, body_read=body_read, block=block)
        except WouldBlock:
            raise
        except Exception as exc:
            log.exception("apitokens: unexpected error while authenticating; answering 503")
            attempt = _Attempt(request, self.clock(), request.client_ip)
            reason = f"internal error: {type(exc).__name__}"
            return self._refuse(attempt, refusal(self.policy, 503, reason))

    def decide(
        self, request: AuthRequest, *, body_read: bool = True, block: bool = True
    ) -> Decision:
        """Decide ``request``.

        Args:
            request: the request; its body counts only when ``body_read``.
            body_read: the body is complete; when ``False`` and a JSON rule
                needs it, the decision is ``need_body`` (read, then retry).
            block: when ``False``, raise :class:`WouldBlock` instead of
                reading the store or hashing.
        """
        policy = self.policy
        path = request.path
        if not policy.protects(path) and not (
            request.app_path and policy.protects(request.app_path)
        ):
            if path[:1] == "/" or not policy.protected_paths:
                return _PASS
            # Not origin-form ("rest/admin", "http:rest/admin", "*"): a server may route
            # it to a protected path all the same, so it is refused, never let through.
            attempt = _Attempt(request, self.clock(), request.client_ip)
            return self._refuse(
                attempt, refusal(policy, 400, "request target is not an absolute path")
            )
        now = self.clock()
        # Without trusted proxies the peer is the client, as client_ip() would say: skip the
        # call (every request). trusted_proxies, not proxy_networks (a property): each
        # entry is parsed into exactly one network, so one is empty when the other is.
        client_ip = self.client_ip(request) if policy.trusted_proxies else request.client_ip
        # request.header_values("authorization"), without its two calls (every request):
        # the names in AuthRequest.headers are lower-cased, which header_values relies on too.
        values = []
        for name, value in request.headers:
            if name == "authorization":
                values.append(value)
        fingerprint = None
        if len(values) == 1 and len(values[0]) <= MAX_AUTHORIZATION_LENGTH:
            fingerprint = self.verifier.cache.header_fingerprint(values[0])
            hot = self.hot.get(fingerprint)
            if hot is not None:
                decision = self._decide_hot(hot, request, now, client_ip, body_read)
                if decision is not None:
                    return decision
        attempt = _Attempt(request, now, client_ip)
        try:
            creds = read_credentials(values)
        except MalformedCredentials as exc:
            return self._refuse(attempt, refusal(policy, 400, str(exc)))
        token_format = policy.token_format
        if creds is None or not token_format.is_ours(creds.secret):
            # A token anywhere else in the header is checked or refused, never passed
            # through to the app (and never written down: see _entry).
            if creds is None:
                if values and token_format.contains(values[0]):
                    reason = "token sent with an unsupported authorization scheme"
                    return self._refuse(attempt, refusal(policy, 400, reason))
            elif token_format.contains(creds.secret):
                return self._refuse(attempt, refusal(policy, 401, "malformed token"))
            elif creds.username and token_format.contains(creds.username):
                reason = "token sent as the Basic username"
                return self._refuse(attempt, refusal(policy, 401, reason))
            if policy.allow_other_auth:
                return _PASS
            what = "no credentials" if creds is None else "credentials that are not a token"
            return self._refuse(
                attempt,
                refusal(
                    policy,
                    401,
                    f"{what}; only tokens are accepted here",
                    challenge_error=creds is not None,
                ),
            )
        username = creds.username
        if username is not None and token_format.contains(username):
            username = None  # a token as the username: never stored or logged
        attempt.user = username
        return self._decide_token(attempt, creds, fingerprint, body_read=body_read, block=block)

    def client_ip(self, request: AuthRequest) -> str:
        """Return the client's address: the peer, or from ``X-Forwarded-For``.

        ``X-Forwarded-For`` is believed only when the peer is a trusted proxy;
        then the right-most address that is not a trusted proxy is the client.
        """
        networks = self.policy.proxy_networks
        peer = request.client_ip
        if not networks or not _in_networks(peer, networks):
            return peer
        hops = [
            hop.strip()
            for value in request.header_values("x-forwarded-for")
            for hop in value.split(",")
        ]
        client = peer
        for hop in reversed(hops):
            client = _without_port(hop)
            if not _in_networks(client, networks):
                break
        return client

    # -- the hot path ------------------------------------------------------

    def _decide_hot(
        self,
        hot: HotCredential,
        request: AuthRequest,
        now: datetime,
        client_ip: str,
        body_read: bool,
    ) -> Decision | None:
        """Decide a request whose credential was verified before; ``None``: take the full path.

        Every check the full path makes before the request-specific ones is either
        known to pass here or sends the request down the full path, which then
        answers exactly as it always does (throttled, revoked, expired, ...).
        """
        compiled = hot.compiled
        token = compiled.stored.token
        token_id = token.id
        if (
            self.tokens.get(token_id) is not compiled
            or hot.epoch != self.verifier.cache.epoch
            or token.status is not _ACTIVE
            or token.revoked_at is not None
            or (token.expires_at is not None and token.expires_at <= now)
            or (hot.until is not None and not now < hot.until)
        ):
            return None
        user = hot.user
        policy = self.policy
        if policy.token_users is not None:
            groups = self._groups.get(user)
            if groups is None or not policy.may_use_tokens(groups):
                return None
        problem = self._problem(request, client_ip, compiled, token, body_read)
        if problem is not None:
            if isinstance(problem, Decision):
                return problem
            attempt = _Attempt(request, now, client_ip, token_id, user)
            return self._refuse(attempt, refusal(policy, *problem, token=token))
        entry = (
            now,
            _SUCCESS,
            token_id,
            user,
            client_ip or None,
            request.method.upper()[:16],
            self._audit_path(request),
            _AUTHENTICATED,
            True,
        )
        # tuple.__new__ skips the named tuple's Python-level __new__ (a third of a µs).
        return _new_decision(Decision, (hot.result, (entry,), False))

    # -- the token path --------------------------------------------------

    def _decide_token(
        self,
        attempt: _Attempt,
        creds: Credentials,
        fingerprint: bytes | None,
        *,
        body_read: bool,
        block: bool,
    ) -> Decision:
        policy = self.policy
        if creds.scheme is AuthScheme.BASIC and not policy.auth_schemes.basic:
            return self._fail(attempt, 401, "token sent with Basic, which is turned off")
        if creds.scheme is AuthScheme.BEARER and not policy.auth_schemes.bearer:
            return self._fail(attempt, 401, "token sent with Bearer, which is turned off")
        parsed = policy.token_format.parse(creds.secret)
        if parsed is None:
            return self._fail(attempt, 401, "malformed token or wrong checksum")
        attempt.token_id = parsed.id
        try:
            compiled = self._compiled(parsed.id, block)
        except StorageError as exc:
            return self._refuse(attempt, refusal(policy, 503, f"token store unavailable: {exc}"))
        if compiled is None:
            # As slow as a wrong secret (one verification, throttled like one), so the
            # time taken does not tell whether the id exists.
            return self._unknown(parsed.value, attempt, block)
        stored = compiled.stored
        token = stored.token.as_of(attempt.now)
        attempt.user = token.user if token.user is not None else attempt.user
        epoch = self.verifier.cache.epoch
        verified = self._verify(parsed.value, compiled, attempt, block)
        if isinstance(verified, Decision):
            return verified
        if token.status is TokenStatus.REVOKED:
            return self._fail(attempt, 401, "token revoked")
        if token.status is TokenStatus.EXPIRED:
            return self._fail(attempt, 401, "token expired")
        user = self._user(attempt, token, creds)
        if isinstance(user, Decision):
            return user
        attempt.user = user
        result = AuthResult(_SUCCESS, 200, user, token, _AUTHENTICATED, scheme=creds.scheme)
        if token is stored.token and fingerprint is not None:
            hot = HotCredential(compiled, user, verified.until, epoch, result)
            self.hot.put(fingerprint, hot)
        if policy.token_users is not None:
            try:
                groups = self._groups_for(user, block)
            except WouldBlock:
                raise
            except Exception as exc:  # the app's directory failed: fail closed
                return self._refuse(attempt, refusal(policy, 503, f"groups lookup failed: {exc}"))
            if not policy.may_use_tokens(groups):
                return self._fail(attempt, 401, f"user {user!r} may not use tokens")
        forbidden = self._forbidden(attempt, compiled, token, body_read)
        if forbidden is not None:
            return forbidden
        entry = self._entry(attempt, _SUCCESS, _AUTHENTICATED, True)
        if verified.rehash is not None:
            return Decision(result, (entry, verified.rehash))
        return Decision(result, (entry,))

    def _user(self, attempt: _Attempt, token: Token, creds: Credentials) -> str | Decision:
        if token.user is None:
            if not self.policy.allow_unbound_tokens:
                return self._fail(attempt, 401, "unbound tokens are turned off")
            if creds.scheme is not AuthScheme.BASIC:
                return self._fail(attempt, 401, "unbound token sent with Bearer")
            if not creds.username or self.policy.token_format.contains(creds.username):
                return self._fail(attempt, 401, "unbound token needs a Basic username")
            return creds.username
        if creds.scheme is AuthScheme.BASIC and creds.username != token.user:
            return self._fail(attempt, 401, "Basic username is not the token's owner")
        return token.user

    def _forbidden(
        self, attempt: _Attempt, compiled: CompiledToken, token: Token, body_read: bool
    ) -> Decision | None:
        problem = self._problem(attempt.request, attempt.client_ip, compiled, token, body_read)
        if problem is None or isinstance(problem, Decision):
            return problem
        return self._refuse(attempt, refusal(self.policy, *problem, token=token))

    def _problem(
        self,
        request: AuthRequest,
        client_ip: str,
        compiled: CompiledToken,
        token: Token,
        body_read: bool,
    ) -> tuple[int, str] | Decision | None:
        """What the token does not allow about this request: (status, reason), or ``None``.

        A decision asking for the body when a JSON rule needs it and it is not read yet.
        """
        if compiled.problem:
            return 403, compiled.problem
        if compiled.networks and not _in_networks(client_ip, compiled.networks):
            if not client_ip:  # AuthRequest(client_ip=...) not given: say so, not ''
                return 403, "no client address given, and the token has allowed IPs"
            return 403, f"client address {client_ip!r} not in the token's allowed IPs"
        # A method-override header makes many apps act as another method: the request
        # must be allowed as sent and as overridden (a plain loop: every request).
        requests = None
        for name, value in request.headers:
            if name in _METHOD_OVERRIDES:
                if requests is None:
                    requests = [request]
                requests.append(replace(request, method=value.strip()))
        for checked in requests or (request,):
            method = checked.method
            if not token.scope.allows(method):
                return 403, f"method {method.upper()} outside the token's {token.scope} scope"
        rules = compiled.rules
        if rules is None:
            return None
        policy = self.policy
        # A body that is not declared JSON fails every JsonData clause unread: it is
        # neither read (a form stays for the app's own parser) nor held to the limit.
        if rules.needs_body and rules.reads_body(request):
            if not body_read:
                # Not a decision yet: the token rides along so a caller that
                # cannot read the body can still refuse it by name.
                return Decision(AuthResult(Outcome.PASS_THROUGH, token=token), need_body=True)
            if len(request.body) > policy.max_body_bytes:
                return 413, f"body larger than {policy.max_body_bytes} bytes for a JSON rule"
        for checked in requests or (request,):
            match = rules.match(checked, timeout=policy.rule_timeout)
            if not match.matched:
                if checked is not request:
                    return 403, f"{match.reason} (as method override {checked.method!r})"
                return 403, match.reason
        return None

    # -- steps that may block ----------------------------------------------

    def _compiled(self, token_id: str, block: bool) -> CompiledToken | None:
        compiled = self.tokens.get(token_id)
        if compiled is not None:
            return compiled
        if not block:
            raise WouldBlock
        generation = self.tokens.generation
        try:
            stored = self.store.get(token_id)
        except StorageError:
            raise
        except Exception as exc:  # a third-party store's own error: still fail closed
            raise StorageError(f"{type(exc).__name__}") from exc
        return None if stored is None else self.tokens.put(stored, generation)

    def _verify(
        self, value: str, compiled: CompiledToken, attempt: _Attempt, block: bool
    ) -> _Verified | Decision:
        """Return which hash the secret matched (and a re-hash to write), or a refusal."""
        stored = compiled.stored
        hashes: list[tuple[str, datetime | None]] = [(stored.secret_hash, None)]
        grace = stored.previous_valid_until
        if stored.previous_hash is not None and grace is not None and attempt.now < grace:
            hashes.append((stored.previous_hash, grace))
        for hashed, until in hashes:
            if self.verifier.cached(value, hashed):
                # Verified by this process before: never refused for others' failures,
                # so knowing a token's (public) id cannot lock its owner out.
                return _Verified(None, until)
        throttled = self._throttle_check(attempt)
        if throttled is not None:
            return throttled
        if not block:
            raise WouldBlock
        if not self._hashing.acquire(timeout=self._verification_wait):
            return self._refuse(
                attempt, refusal(self.policy, 503, "too many hash verifications in progress")
            )
        try:
            for i, (hashed, until) in enumerate(hashes):
                result = self.verifier.verify(value, hashed)
                if result.ok:
                    if result.rehash is not None and i == 0:
                        return _Verified(Rehash(stored.token.id, hashed, result.rehash), until)
                    return _Verified(None, until)
        finally:
            self._hashing.release()
        return self._fail(attempt, 401, "wrong secret", count=True)

    def _unknown(self, value: str, attempt: _Attempt, block: bool) -> Decision:
        """Refuse a token whose id is unknown, after a verification's worth of work."""
        throttled = self._throttle_check(attempt)
        if throttled is not None:
            return throttled
        if not block:
            raise WouldBlock
        if self._hashing.acquire(timeout=self._verification_wait):
            try:
                if self._dummy_hash is None:
                    self._dummy_hash = self.verifier.hash(secrets.token_urlsafe(32))
                self.verifier.verify(value, self._dummy_hash)
            finally:
                self._hashing.release()
        # The address counts; the id does not (it names no token, and counting random
        # ids would only push real ones out of the throttle's bounded memory).
        self.ip_throttle.fail(attempt.client_ip, attempt.now.timestamp())
        return self._refuse(attempt, refusal(self.policy, 401, "unknown token id"))

    def _throttle_check(self, attempt: _Attempt) -> Decision | None:
        """429 when the client address or the token id has too many recent failures.

        Asked only before hashing: throttling bounds the work of guesses.
        """
        now_ts = attempt.now.timestamp()
        if self.ip_throttle.suspect(attempt.client_ip):
            wait = self.ip_throttle.retry_after(attempt.client_ip, now_ts)
            if wait:
                return self._throttled(attempt, wait, "client address")
        token_id = attempt.token_id
        if token_id is not None and self.id_throttle.suspect(token_id):
            wait = self.id_throttle.retry_after(token_id, now_ts)
            if wait:
                return self._throttled(attempt, wait, "token id")
        return None

    def _groups_for(self, user: str, block: bool) -> frozenset[str]:
        groups = self._groups.get(user)
        if groups is not None:
            return groups
        if not block:
            raise WouldBlock
        groups = frozenset(self._groups_of(user)) if self._groups_of is not None else frozenset()
        self._groups.put(user, groups)
        return groups

    # -- refusals and records ----------------------------------------------------

    def _fail(
        self, attempt: _Attempt, status: int, reason: str, *, count: bool = False
    ) -> Decision:
        """A failed attempt; with ``count``, one that cost a hash verification.

        Only those count against the client address and token id: the throttle bounds
        hashing, and malformed or unhashed failures cost next to nothing, so counting
        them would only let junk lock out the honest users behind a shared address.
        """
        if count:
            now_ts = attempt.now.timestamp()
            self.ip_throttle.fail(attempt.client_ip, now_ts)
            if attempt.token_id is not None:
                self.id_throttle.fail(attempt.token_id, now_ts)
        return self._refuse(attempt, refusal(self.policy, status, reason))

    def _throttled(self, attempt: _Attempt, wait: int, what: str) -> Decision:
        reason = f"too many failed attempts for this {what}"
        return self._refuse(attempt, refusal(self.policy, 429, reason, retry_after=wait))

    def _refuse(self, attempt: _Attempt, result: AuthResult) -> Decision:
        return Decision(result, (self._entry(attempt, result.outcome, result.reason, False),))

    def _entry(self, attempt: _Attempt, outcome: Outcome, reason: str, used: bool) -> AuthEntry:
        """The audit event (and, if ``used``, the token's use), for the writer to expand."""
        request = attempt.request
        return (
            attempt.now,
            outcome,
            attempt.token_id,
            attempt.user,
            attempt.client_ip or None,
            request.method.upper()[:16],
            self._audit_path(request),
            reason,
            used,
        )

    def _audit_path(self, request: AuthRequest) -> str:
        """The path for the audit log: bounded, and a token in it cut to its id."""
        return self.policy.token_format.redact(request.path[:_MAX_AUDIT_PATH])

    def forget(self, token_id: str) -> None:
        """Drop a token from the record cache (after a change in this process)."""
        self.tokens.discard(token_id)


def _in_networks(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if any(ip in network for network in networks):
        return True
    # An IPv4-mapped address (::ffff:203.0.113.5) also matches as its IPv4 address, and
    # an IPv4 address as its mapped form ("::ffff:203.0.113.0/120" is a way to write it).
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        return mapped is not None and any(mapped in network for network in networks)
    alias = ipaddress.IPv6Address(f"::ffff:{ip}")
    return any(alias in network for network in networks)


def _without_port(hop: str) -> str:
    """An ``X-Forwarded-For`` hop without a port: ``203.0.113.5:4711``, ``[2001:db8::1]:4711``."""
    if hop.startswith("["):
        end = hop.find("]")
        return hop[1:end] if end > 0 else hop
    if hop.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has two or more
        return hop.split(":", 1)[0]
    return hop
