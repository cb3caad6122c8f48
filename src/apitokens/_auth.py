"""The Authenticator: AuthRequest in, AuthResult out (DESIGN §4, §7).

It does no I/O of its own beyond reading the store on a cache miss (and revoking
a token whose rotated-out secret is presented again, DESIGN §11); the
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
verification cache has not been cleared, and the owner's groups are cached and allow
tokens (a secret this process has verified is never throttled). When any of
that fails the request takes the full path, which decides it exactly as before; only
the checks about the request itself (scope, IPs, rules, body) run on the hot path too.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from ._addresses import client_address, in_networks
from ._admission import Admission, Refusal, Ticket
from ._audit import Record, Rehash
from ._cache import CompiledToken, HotCredential, HotCredentials, TokenCache, TTLCache
from ._credentials import (
    MAX_AUTHORIZATION_LENGTH,
    Credentials,
    MalformedCredentials,
    read_credentials,
)
from ._errors import StorageError, TokenNotFound
from ._hashing import SecretVerifier
from ._ledger import SharedFailures
from ._limits import Limits
from ._meter import Meter, WouldBlockMeter
from ._model import (
    RETIRED_HASHES_KEPT,
    Action,
    AuditEvent,
    AuthEntry,
    Outcome,
    StoredToken,
    Token,
    TokenStatus,
    Usage,
)
from ._policy import AuthScheme, Policy
from ._request import METHOD_OVERRIDES, RUN_AS, AuthRequest, shown_method, unquoted_fully
from ._result import AuthResult, limit_refusal, refusal
from .rules import Deadline, NeedsThreadError
from .storage import FailureLedger, TokenStore, UsageLedger

__all__ = ["Authenticator", "Decision", "WouldBlock"]

log = logging.getLogger("apitokens")
PASS_THROUGH = AuthResult(Outcome.PASS_THROUGH)
_MAX_AUDIT_PATH = 2048
# A user (a Basic username), an address (X-Forwarded-For) and a reason are the client's
# text too: bounded, so no store's index refuses the row (and no log line is flooded).
_MAX_AUDIT_TEXT = 256
_MAX_AUDIT_REASON = 1024
_AUTHENTICATED = "authenticated"
# The actor of a revocation for reuse: apitokens itself, not the owner (who did not ask
# for it) nor the client (who may be a thief).
REUSE_ACTOR = "apitokens"
_REUSE = "reuse_detected: a secret rotated out of the token was presented"
_SUCCESS = Outcome.SUCCESS
_ACTIVE = TokenStatus.ACTIVE
_METHOD_OVERRIDES = frozenset(METHOD_OVERRIDES)
# More method-override values than there are such headers is no request a client means.
_MAX_OVERRIDES = len(METHOD_OVERRIDES)
# Control characters and spaces, which RFC 9112 allows nowhere in a request target.
_NOT_IN_A_TARGET = re.compile(r"[\x00-\x20\x7f]")


def _header_text(value: str) -> str:
    """A header value's bytes (latin-1 text, as servers hand them) read as UTF-8, as a
    Basic username is (RFC 7617); the value as it is when they are no UTF-8 (a latin-1
    client, or text given to an AuthRequest by hand)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


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


@dataclass(slots=True)
class _Attempt:
    """What is known so far about one request, for refusals and the audit event."""

    request: AuthRequest
    now: datetime
    client_ip: str
    token_id: str | None = None
    user: str | None = None
    patient: bool = True  # may wait for a place to verify (see Authenticator.decide)
    actor: str | None = None  # the token's owner, when the request runs as ``user``


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
            at once; two more wait (up to ``verification_wait`` seconds,
            then 503), and more get 503 at once.
        monotonic: seconds for the caches' TTL and the failure throttle.
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
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.policy = policy
        self.verifier = verifier
        self.clock = clock
        self.monotonic = monotonic
        self._groups_of = groups
        self.tokens = TokenCache(cache_ttl, monotonic=monotonic)
        self._groups: TTLCache[str, frozenset[str]] = TTLCache(
            cache_ttl, 10_000, monotonic=monotonic
        )
        # check_users(): every check must say the owner is an active user (DESIGN §9).
        self._user_checks: tuple[Callable[[str], bool], ...] = ()
        self._active: TTLCache[str, bool] = TTLCache(cache_ttl, 10_000, monotonic=monotonic)
        window = policy.failure_window.total_seconds()
        # A store shared by many processes may count their failures together (DESIGN §8).
        self.shared_failures = (
            SharedFailures(store, window, clock, monotonic)
            if isinstance(store, FailureLedger)
            else None
        )
        self._admission = Admission(
            policy.max_failed_attempts,
            window,
            max_concurrent_verifications,
            verification_wait,
            monotonic,
            self.shared_failures,
        )
        # Rate limits and credits are counted with the store, when it can (DESIGN §11).
        self.meter = (
            Meter(store, lambda: clock().timestamp(), monotonic)
            if isinstance(store, UsageLedger)
            else None
        )
        self.hot = HotCredentials(verifier.cache.maxsize)
        self._dummy_hash: str | None = None  # for unknown ids: made at the first one

    # -- public entry --------------------------------------------------

    def safe_decide(
        self,
        request: AuthRequest,
        *,
        body_read: bool = True,
        block: bool = True,
        patient: bool = True,
        protected: bool = False,
    ) -> Decision:
        """:meth:`decide`, but an unexpected error becomes a 503 (fail closed), never a pass."""
        try:
            return self.decide(
                request, body_read=body_read, block=block, patient=patient, protected=protected
            )
        except WouldBlock:
            raise
        except Exception as exc:
            log.exception("apitokens: unexpected error while authenticating; answering 503")
            attempt = _Attempt(request, self.clock(), request.client_ip)
            reason = f"internal error: {type(exc).__name__}"
            return self._refuse(attempt, refusal(self.policy, 503, reason))

    def decide(
        self,
        request: AuthRequest,
        *,
        body_read: bool = True,
        block: bool = True,
        patient: bool = True,
        protected: bool = False,
    ) -> Decision:
        """Decide ``request``.

        Args:
            request: the request; its body counts only when ``body_read``.
            body_read: the body is complete; when ``False`` and a JSON rule
                needs it, the decision is ``need_body`` (read, then retry).
            block: when ``False``, raise :class:`WouldBlock` instead of
                reading the store or hashing.
            patient: wait (up to ``verification_wait``) for a place to verify a
                secret, as a WSGI server's own request thread may; ``False`` (a
                thread of a pool the event loop shares, as in the ASGI adapter):
                beyond the few places in line, 503 at once.
            protected: check the request's token whatever its path (a route that
                requires a token), not only on ``Policy.protected_paths``.
        """
        policy = self.policy
        path = request.path
        if (protected or policy.protected_paths) and (
            path[:1] != "/" or _NOT_IN_A_TARGET.search(path)
        ):
            # Not origin-form ("rest/admin", "http:rest/admin", "*"), or holding what no
            # target may (a tab, which waitress's urlsplit drops before it routes): a server
            # may route it to a protected path all the same, so it is refused, never let by.
            return self._bad_target(request, "request target is not an absolute path")
        app_path = request.app_path
        by_policy = policy.protects(path) or (app_path != "" and policy.protects(app_path))
        protected = protected or by_policy
        if not protected and "#" in path:
            # Most servers drop a fragment and route what is before it.
            protected = policy.protects(path.partition("#")[0])
        if not protected:
            return _PASS
        if "#" in path:
            # A fragment is never part of a request target (RFC 9110 §7.1): the rules would
            # match "/rest/admin#/rest/issue/JRA-1" while the app routes "/rest/admin".
            return self._bad_target(request, "request target has a fragment")
        if request.app_path and not self._mount_trusted(request):
            # gunicorn cuts a SCRIPT_NAME request header off PATH_INFO: the client would
            # pick the path the app routes, and the rules match the path as sent.
            return self._bad_target(request, "mount point sent as a request header")
        now = self.clock()
        # Without trusted proxies the peer is the client, as client_ip() would say: skip the
        # call (every request). trusted_proxies, not proxy_networks (a property): each
        # entry is parsed into exactly one network, so one is empty when the other is.
        client_ip = self.client_ip(request) if policy.trusted_proxies else request.client_ip
        # request.header_values("authorization"), without its two calls (every request):
        # the names in AuthRequest.headers are lower-cased, which header_values relies on too.
        # X-Run-As is noted in the same scan: a request without it pays nothing more.
        values = []
        run_as = False
        for name, value in request.headers:
            if name == "authorization":
                values.append(value)
            elif name == RUN_AS:
                run_as = True
        fingerprint = None
        if len(values) == 1 and len(values[0]) <= MAX_AUTHORIZATION_LENGTH:
            fingerprint = self.verifier.cache.header_fingerprint(values[0])
            hot = self.hot.get(fingerprint)
            # Running as another user takes the token path (its checks are there); the
            # verification cache still spares it the hash.
            if hot is not None and not run_as and self._stands(hot, now):
                return self._granted(
                    request,
                    now,
                    client_ip,
                    hot.compiled,
                    hot.user,
                    hot.result,
                    body_read,
                    block,
                    None,
                )
        attempt = _Attempt(request, now, client_ip, patient=patient)
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
            if policy.allow_other_auth or not by_policy:
                if run_as:
                    # Never ignored: an app of its own reading it would act on it unchecked.
                    reason = "X-Run-As sent without a token"
                    return self._refuse(attempt, refusal(policy, 403, reason))
                # allow_other_auth=False holds on the policy's paths; elsewhere a route that
                # requires a token refuses the rest itself (the flow's Requirement).
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
        return self._decide_token(
            attempt, creds, fingerprint, body_read=body_read, block=block, run_as=run_as
        )

    def _mount_trusted(self, request: AuthRequest) -> bool:
        """False when a SCRIPT_NAME or PATH_INFO request header came from no trusted proxy."""
        for name, _ in request.headers:
            if name in ("script-name", "path-info"):
                return in_networks(request.client_ip, self.policy.proxy_networks)
        return True

    def _bad_target(self, request: AuthRequest, reason: str) -> Decision:
        attempt = _Attempt(request, self.clock(), request.client_ip)
        return self._refuse(attempt, refusal(self.policy, 400, reason))

    def client_ip(self, request: AuthRequest) -> str:
        """Return the client's address: the peer, or from ``X-Forwarded-For``.

        ``X-Forwarded-For`` is believed only when the peer is a trusted proxy;
        then the right-most address that is not a trusted proxy is the client.
        """
        return client_address(request, self.policy.proxy_networks)

    # -- the hot path ------------------------------------------------------

    def _stands(self, hot: HotCredential, now: datetime) -> bool:
        """Whether a credential verified before still stands, so only the request is checked.

        Everything the token path checks before the request itself is either known
        to pass here, or the answer is ``False`` and the request takes the token
        path, which answers exactly as it always does (throttled, revoked, expired).
        """
        compiled = hot.compiled
        token = compiled.stored.token
        if (
            self.tokens.get(token.id) is not compiled
            or hot.epoch != self.verifier.cache.epoch
            or token.status is not _ACTIVE
            or token.revoked_at is not None
            or (token.expires_at is not None and token.expires_at <= now)
            or (hot.until is not None and not now < hot.until)
        ):
            return False
        policy = self.policy
        if policy.token_users is not None:
            groups = self._groups.get(hot.user)
            if groups is None or not policy.may_use_tokens(groups):
                return False
        return not self._user_checks or self._active.get(hot.user) is True

    # -- the token path --------------------------------------------------

    def _decide_token(
        self,
        attempt: _Attempt,
        creds: Credentials,
        fingerprint: bytes | None,
        *,
        body_read: bool,
        block: bool,
        run_as: bool = False,
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
        verified = self._verify(parsed.value, compiled, attempt, block, fingerprint)
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
        if self._user_checks:
            try:
                active = self._active_for(user, block)
            except WouldBlock:
                raise
            except Exception as exc:  # the app's user directory failed: fail closed
                return self._refuse(attempt, refusal(policy, 503, f"user check failed: {exc}"))
            if not active:
                return self._fail(attempt, 401, f"user {user!r} is unknown or inactive")
        if run_as:
            target = self._run_as(attempt, token, user, block)
            if isinstance(target, Decision):
                return target
            result = AuthResult(
                _SUCCESS, 200, target, token, _AUTHENTICATED, scheme=creds.scheme, real_user=user
            )
            user = target
        return self._granted(
            attempt.request,
            attempt.now,
            attempt.client_ip,
            compiled,
            user,
            result,
            body_read,
            block,
            verified.rehash,
            token,
            attempt.actor,
        )

    def _run_as(self, attempt: _Attempt, token: Token, owner: str, block: bool) -> str | Decision:
        """The user named in ``X-Run-As``, when the owner may act as them; else a refusal.

        Refused with 403 (never ignored): no group may run as others, the owner is in
        none of them, the token is unbound, or the user named may not use tokens; 400
        for two such headers (or one holding a comma, as servers fold two) or a value
        that is no user name (read as UTF-8, it must be printable). Once a name is read
        the audit event names both: ``user`` the one acted as, ``actor`` the owner.
        """
        policy = self.policy
        values = attempt.request.header_values(RUN_AS)
        # A comma is two headers folded into one (RFC 9110 §5.3), as WSGI servers and
        # proxies fold them: refused like two, never run as the user "alice,bob".
        if len(values) != 1 or "," in values[0]:
            return self._refuse(attempt, refusal(policy, 400, "more than one X-Run-As header"))
        target = _header_text(values[0]).strip()
        if (
            not target
            or len(target) > _MAX_AUDIT_TEXT
            # As a Basic username: no control character (C1's NEL breaks log lines
            # too), no invisible one (a zero-width space in "ali\u200bce").
            or not target.isprintable()
            or policy.token_format.contains(target)
        ):
            return self._refuse(attempt, refusal(policy, 400, "X-Run-As is not a user name"))
        attempt.actor, attempt.user = owner, target

        def forbid(reason: str) -> Decision:
            return self._refuse(attempt, refusal(policy, 403, reason, token=token))

        if token.user is None:
            return forbid("an unbound token cannot run as another user")
        if not policy.run_as_groups:
            return forbid("X-Run-As sent, but no group may run as another user")
        try:
            if not policy.may_run_as(self._groups_for(owner, block)):
                return forbid(f"user {owner!r} may not run as another user")
            if policy.token_users is not None and not policy.may_use_tokens(
                self._groups_for(target, block)
            ):
                return forbid(f"run-as user {target!r} may not use tokens")
        except WouldBlock:
            raise
        except Exception as exc:  # the app's directory failed: fail closed
            return self._refuse(attempt, refusal(policy, 503, f"groups lookup failed: {exc}"))
        if self._user_checks:
            try:
                active = self._active_for(target, block)
            except WouldBlock:
                raise
            except Exception as exc:  # the app's user directory failed: fail closed
                return self._refuse(attempt, refusal(policy, 503, f"user check failed: {exc}"))
            if not active:
                return forbid(f"run-as user {target!r} is unknown or inactive")
        return target

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

    def _granted(
        self,
        request: AuthRequest,
        now: datetime,
        client_ip: str,
        compiled: CompiledToken,
        user: str,
        result: AuthResult,
        body_read: bool,
        block: bool,
        rehash: Rehash | None,
        token: Token | None = None,
        actor: str | None = None,
    ) -> Decision:
        """The one gate both paths end in: the checks about the request itself, then success.

        ``token`` is the record as of ``now`` (the cached one when not given); ``actor``
        the owner when the request runs as ``user`` (X-Run-As).

        Raises:
            WouldBlock: not ``block``, and a rule's match needs more than a slice of
                time (it runs on a worker thread then, never on an event loop).
        """
        if token is None:
            token = compiled.stored.token
        problem = self._problem(request, client_ip, compiled, token, body_read, block)
        if problem is not None:
            if isinstance(problem, Decision):
                return problem
            attempt = _Attempt(request, now, client_ip, token.id, user, actor=actor)
            return self._refuse(attempt, refusal(self.policy, *problem, token=token))
        if compiled.limits is not None:
            # Last: a request refused for anything else spends nothing.
            over = self._metered(compiled.limits, token, now, block)
            if over is not None:
                attempt = _Attempt(request, now, client_ip, token.id, user, actor=actor)
                return self._refuse(attempt, over)
        entry = self._entry(request, now, _SUCCESS, token.id, user, client_ip, _AUTHENTICATED, True)
        records: tuple[Record, ...] = (entry,) if actor is None else self._acting(entry, actor)
        return Decision(result, records if rehash is None else (*records, rehash))

    def _problem(
        self,
        request: AuthRequest,
        client_ip: str,
        compiled: CompiledToken,
        token: Token,
        body_read: bool,
        block: bool,
    ) -> tuple[int, str] | Decision | None:
        """What the token does not allow about this request: (status, reason), or ``None``.

        A decision asking for the body when a JSON rule needs it and it is not read yet.
        """
        if compiled.problem:
            return 403, compiled.problem
        if compiled.networks and not in_networks(client_ip, compiled.networks):
            if not client_ip:  # AuthRequest(client_ip=...) not given: say so, not ''
                return 403, "no client address given, and the token has allowed IPs"
            # The address may be text from X-Forwarded-For: a token in it is cut to its id.
            shown = self.policy.token_format.redact(client_ip)
            return 403, f"client address {shown!r} not in the token's allowed IPs"
        # A method-override header makes many apps act as another method: the request
        # must be allowed as sent and as overridden (a plain loop: every request).
        overrides = [value.strip() for name, value in request.headers if name in _METHOD_OVERRIDES]
        if len(overrides) > _MAX_OVERRIDES:
            return 400, "too many method-override headers"
        for method in (request.method, *overrides):
            if not token.scope.allows(method):
                return 403, f"method {shown_method(method)} outside the token's {token.scope} scope"
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
        # One budget for every method checked. On the event loop (not block) a match
        # needing more than a slice moves the decision to a worker thread.
        deadline = Deadline(policy.rule_timeout, on_loop=not block)
        try:
            match = rules.match(request, timeout=deadline, overrides=overrides)
        except NeedsThreadError:
            raise WouldBlock from None
        return None if match.matched else (403, match.reason)

    def _metered(
        self, limits: Limits, token: Token, now: datetime, block: bool
    ) -> AuthResult | None:
        """Count one use against the token's limits: ``None`` if admitted, else the refusal.

        Raises:
            WouldBlock: not ``block``, and the count must be read from the store first.
        """
        meter = self.meter
        if meter is None:  # a store without a usage ledger cannot hold a limit: fail closed
            return refusal(self.policy, 503, "the store keeps no usage counts for limits")
        try:
            over = meter.take(limits, now.timestamp(), block)
        except WouldBlockMeter:
            raise WouldBlock from None
        except StorageError as exc:
            return refusal(self.policy, 503, f"token store unavailable: {exc}")
        if over is None:
            return None
        return limit_refusal(
            token,
            over.reason,
            credits=over.kind == "credits",
            retry_after=over.retry_after,
            headers=over.headers,
        )

    # -- steps that may block ----------------------------------------------

    def _compiled(self, token_id: str, block: bool) -> CompiledToken | None:
        compiled = self.tokens.get(token_id)
        if compiled is not None:
            return compiled
        if not block:
            raise WouldBlock
        generation = self.tokens.generation
        since = self.monotonic()  # the TTL runs from the read's start (a revoke may land in it)
        try:
            stored = self.store.get(token_id)
        except StorageError:
            raise
        except Exception as exc:  # a third-party store's own error: still fail closed
            raise StorageError(f"{type(exc).__name__}") from exc
        return None if stored is None else self.tokens.put(stored, generation, since=since)

    def _verify(
        self,
        value: str,
        compiled: CompiledToken,
        attempt: _Attempt,
        block: bool,
        fingerprint: bytes | None,
    ) -> _Verified | Decision:
        """Return which hash the secret matched (and a re-hash to write), or a refusal.

        Concurrent requests with the same ``Authorization`` value (a client's parallel
        first requests after a deploy) wait for one verification instead of each
        taking a place in line.
        """
        stored = compiled.stored
        hashes: list[tuple[str, datetime | None]] = [(stored.secret_hash, None)]
        grace = stored.previous_valid_until
        if stored.previous_hash is not None and grace is not None and attempt.now < grace:
            hashes.append((stored.previous_hash, grace))
        verified = self._cached(value, hashes)
        if verified is not None:
            # Verified by this process before: never refused for others' failures,
            # so knowing a token's (public) id cannot lock its owner out.
            return verified
        if not block:
            raise WouldBlock
        if fingerprint is None:
            return self._hash(value, stored, hashes, attempt)
        flight, leading = self._admission.board(fingerprint)
        if leading:
            wrong = False
            try:
                outcome = self._hash(value, stored, hashes, attempt)
                wrong = isinstance(outcome, Decision) and outcome.result.status_code == 401
                return outcome
            finally:
                self._admission.land(fingerprint, flight, wrong=wrong)
        # The same value is being verified: wait for its outcome.
        if not self._admission.follow(flight, patient=attempt.patient):
            reason = "too many hash verifications waiting"
            return self._refuse(attempt, refusal(self.policy, 503, reason, retry_after=1))
        verified = self._cached(value, hashes)
        if verified is not None:
            return verified
        if flight.wrong:  # known wrong: no second hash (and none to count)
            return self._refuse(attempt, refusal(self.policy, 401, "wrong secret"))
        return self._hash(value, stored, hashes, attempt)  # it was never tried: as any

    def _cached(self, value: str, hashes: list[tuple[str, datetime | None]]) -> _Verified | None:
        for hashed, until in hashes:
            if self.verifier.cached(value, hashed):
                return _Verified(None, until)
        return None

    def _hash(
        self,
        value: str,
        stored: StoredToken,
        hashes: list[tuple[str, datetime | None]],
        attempt: _Attempt,
    ) -> _Verified | Decision:
        """Verify ``value`` against ``hashes`` (admitted first: throttle, line)."""
        admitted = self._admit(attempt)
        if isinstance(admitted, Decision):
            return admitted
        failed = True
        try:
            for i, (hashed, until) in enumerate(hashes):
                result = self.verifier.verify(value, hashed)
                if result.ok:
                    failed = False  # a good secret is no failure
                    if result.rehash is not None and i == 0:
                        return _Verified(Rehash(stored.token.id, hashed, result.rehash), until)
                    return _Verified(None, until)
            # Only a secret that matches nothing current costs these (one verification
            # each, a bounded few), in the same place in line and counted as one failure.
            reused = any(
                self.verifier.verify(value, hashed).ok
                for hashed in self._earlier(stored, attempt.now)
            )
        finally:
            self._admission.done(admitted, failed=failed)
        if reused:
            return self._reused(stored, attempt)
        return self._refuse(attempt, refusal(self.policy, 401, "wrong secret"))

    def _earlier(self, stored: StoredToken, now: datetime) -> list[str]:
        """The hashes of secrets rotated out of the token and no longer accepted.

        Empty when ``Policy.revoke_on_reuse`` is off: such a secret is then just wrong.
        """
        if not self.policy.revoke_on_reuse:
            return []
        earlier = []
        until = stored.previous_valid_until
        if stored.previous_hash is not None and (until is None or now >= until):
            earlier.append(stored.previous_hash)
        # Bounded here too: a store edited by hand must not make a guess cost more.
        earlier.extend(stored.retired_hashes[:RETIRED_HASHES_KEPT])
        return earlier

    def _reused(self, stored: StoredToken, attempt: _Attempt) -> Decision:
        """Revoke the token whose rotated-out secret was presented; refuse (401).

        The revocation is written at once, not queued: the token must stop working
        now, here and (through the store) in every other process. If it cannot be
        written the request gets 503 and the next reuse tries again.
        """
        token = stored.token
        try:
            revoked = self.store.revoke(token.id, attempt.now)
        except TokenNotFound:  # deleted meanwhile: nothing left to revoke
            self.forget(token.id)
            return self._fail(attempt, 401, f"{_REUSE}; the token is gone")
        except Exception as exc:  # a store's failure: refuse, fail closed
            # Its name only: a third-party store's message may hold anything.
            name = type(exc).__name__
            log.warning("apitokens: revoking token %s for reuse failed: %s", token.id, name)
            reason = f"{_REUSE}; revoking the token failed: {name}"
            return self._refuse(attempt, refusal(self.policy, 503, reason))
        self.forget(token.id)
        if not revoked:  # revoked already: nothing more to record
            return self._fail(attempt, 401, f"{_REUSE}; the token is revoked")
        result = refusal(self.policy, 401, f"{_REUSE}; token revoked")
        entry = self._entry(
            attempt.request,
            attempt.now,
            result.outcome,
            attempt.token_id,
            attempt.user,
            attempt.client_ip,
            result.reason,
            False,
        )
        event = AuditEvent(
            at=attempt.now,
            action=Action.REVOKE,
            outcome=Outcome.SUCCESS,
            token_id=token.id,
            user=token.user,
            actor=REUSE_ACTOR,
            client_ip=entry.client_ip,
            method=entry.method,
            path=entry.path,
            reason=f"{_REUSE}; revoked",
        )
        return Decision(result, (entry, event))

    def _unknown(self, value: str, attempt: _Attempt, block: bool) -> Decision:
        """Refuse a token whose id is unknown, after a verification's worth of work."""
        if not block:
            raise WouldBlock
        admitted = self._admit(attempt)
        if isinstance(admitted, Decision):
            return admitted
        try:
            if self._dummy_hash is None:
                self._dummy_hash = self.verifier.hash(secrets.token_urlsafe(32))
            self.verifier.verify(value, self._dummy_hash)
        finally:
            self._admission.done(admitted, failed=True)
        return self._refuse(attempt, refusal(self.policy, 401, "unknown token id"))

    def _admit(self, attempt: _Attempt) -> Ticket | Decision:
        """Let one uncached verification start (see ``_admission.py``), or refuse it."""
        admitted = self._admission.admit(attempt.client_ip, patient=attempt.patient)
        if isinstance(admitted, Refusal):
            status, reason, retry_after = admitted
            return self._refuse(
                attempt, refusal(self.policy, status, reason, retry_after=retry_after)
            )
        return admitted

    def _groups_for(self, user: str, block: bool) -> frozenset[str]:
        groups = self._groups.get(user)
        if groups is not None:
            return groups
        if not block:
            raise WouldBlock
        groups = frozenset(self._groups_of(user)) if self._groups_of is not None else frozenset()
        self._groups.put(user, groups)
        return groups

    def check_users(self, check: Callable[[str], bool]) -> None:
        """Add ``check(user)``: a token authenticates only while every check is true."""
        if check not in self._user_checks:
            self._user_checks = (*self._user_checks, check)
            self._active.clear()

    def _active_for(self, user: str, block: bool) -> bool:
        active = self._active.get(user)
        if active is not None:
            return active
        if not block:
            raise WouldBlock
        active = all(check(user) for check in self._user_checks)
        self._active.put(user, active)
        return active

    # -- refusals and records ----------------------------------------------------

    def _fail(self, attempt: _Attempt, status: int, reason: str) -> Decision:
        """A refused attempt (counted by the throttle only if it was hashed: see _admit)."""
        return self._refuse(attempt, refusal(self.policy, status, reason))

    def _refuse(self, attempt: _Attempt, result: AuthResult) -> Decision:
        entry = self._entry(
            attempt.request,
            attempt.now,
            result.outcome,
            attempt.token_id,
            attempt.user,
            attempt.client_ip,
            result.reason,
            False,
        )
        if attempt.actor is not None:
            return Decision(result, self._acting(entry, attempt.actor))
        return Decision(result, (entry,))

    def _acting(self, entry: AuthEntry, actor: str) -> tuple[Record, ...]:
        """``entry`` as its event (and use) with ``actor`` named: a request run as ``user``.

        An AuthEntry has no actor (most requests have none); these few are written whole.
        """
        at, outcome, token_id, user, ip, method, path, reason, used = entry
        actor = self.policy.token_format.redact(actor)[:_MAX_AUDIT_TEXT]
        event = AuditEvent(
            at, Action.AUTHENTICATE, outcome, token_id, user, actor, ip, method, path, reason
        )
        if used and token_id is not None:
            return (event, Usage(token_id, at, ip))
        return (event,)

    def refuse(
        self,
        request: AuthRequest,
        result: AuthResult,
        *,
        user: str | None = None,
        actor: str | None = None,
    ) -> Decision:
        """``result``, a refusal decided beside the decision proper, audited like any other.

        For the request flow's own refusals: a route's requirement not met, or a
        body that a JSON rule needs and the adapter cannot read. ``actor``: the
        owner, when ``user`` is the user a request runs as.
        """
        token = result.token
        if user is None and token is not None:
            user = token.user
        attempt = _Attempt(
            request,
            self.clock(),
            self.client_ip(request),
            token.id if token else None,
            user,
            actor=actor,
        )
        return self._refuse(attempt, result)

    def _entry(
        self,
        request: AuthRequest,
        now: datetime,
        outcome: Outcome,
        token_id: str | None,
        user: str | None,
        client_ip: str,
        reason: str,
        used: bool,
    ) -> AuthEntry:
        """The audit event (and, if ``used``, the token's use), for the writer to expand.

        Every text that came from the request has a token in it cut to its id
        (DESIGN §4): the user (a Basic username), the address (X-Forwarded-For is
        text), the path and the reason; each is then bounded (a method to 16 characters).
        """
        redact = self.policy.token_format.redact
        # Cut after redacting: a token across the bound would keep its secret.
        return AuthEntry(
            now,
            outcome,
            token_id,
            redact(user)[:_MAX_AUDIT_TEXT] if user is not None else None,
            redact(client_ip)[:_MAX_AUDIT_TEXT] or None,
            request.method.upper()[:16],
            self._audit_path(request),
            redact(reason)[:_MAX_AUDIT_REASON],
            used,
        )

    def _audit_path(self, request: AuthRequest) -> str:
        """The path for the audit log: a token in it cut to its id, then bounded.

        Cut before bounding (a token across the bound would keep its secret), and
        found percent-encoded too: then the decoded path is written, token cut.
        """
        fmt = self.policy.token_format
        path = request.path
        if "%" in path:
            # Every encoding of a token, at every depth, shows in the fully decoded
            # form, and that form is written, cut.
            decoded = unquoted_fully(path)
            if decoded is None:
                return "(a path percent-encoded more than 16 times)"
            if fmt.contains(decoded):
                path = decoded
        return fmt.redact(path)[:_MAX_AUDIT_PATH]

    def refund(self, token: Token, at: datetime) -> None:
        """Give back the use a success of ``token`` decided ``at`` counted against its limits.

        For a request the flow refuses after the decision, before recording it (a
        route's requirement). Called once per decision.
        """
        if self.meter is None or (token.rate_limit is None and token.credits is None):
            return
        compiled = self.tokens.get(token.id)
        try:
            limits = compiled.limits if compiled is not None else Limits.of(token)
        except ValueError:
            return
        if limits is not None:
            self.meter.refund(limits, at.timestamp())

    def forget(self, token_id: str) -> None:
        """Drop a token from the record cache (after a change in this process)."""
        self.tokens.discard(token_id)
        if self.meter is not None:
            self.meter.forget(token_id)

    def close(self) -> None:
        """Send the failures and uses not yet in the store's ledgers, and stop sending them."""
        if self.shared_failures is not None:
            self.shared_failures.close()
        if self.meter is not None:
            self.meter.close()

    def changed(self, token_id: str | None) -> None:
        """A store's change feed: drop ``token_id``, or every record if ``None``."""
        if token_id is None:
            self.tokens.clear()
        else:
            self.tokens.discard(token_id)
            if self.meter is not None:  # its limits may have changed: read its counts again
                self.meter.forget(token_id)
