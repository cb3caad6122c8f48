"""The one request flow: decide, read the body when a JSON rule needs it, decide again,
record, answer (DESIGN §4, §6).

Every adapter (WSGI, ASGI, the Starlette extra, and those to come) drives this
flow and only translates: its framework's request into an :class:`AuthRequest`,
and the :class:`AuthResult` into its framework's response. No adapter decides,
refuses or builds an audit event of its own: the route-level requirements
("this route needs a token", "... a read-write token") are options of the flow,
and their refusals are audited like every other.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from ._audit import AuditWriter
from ._auth import Authenticator, Decision, WouldBlock
from ._errors import StorageError
from ._model import AuditEvent, AuthEntry, Outcome, Scope
from ._policy import Policy
from ._request import AuthRequest
from ._result import AuthResult, refusal

__all__ = ["AsyncBodyReader", "BodyReader", "RequestFlow", "Requirement"]

log = logging.getLogger("apitokens")

BodyReader = Callable[[int], bytes]
"""``read(limit)``: the request's body, at most ``limit + 1`` bytes (more means too large).

The adapter that gives one also makes sure the app still gets the whole body
(replayed byte for byte, and the rest of a body past the limit after it).
"""
AsyncBodyReader = Callable[[int], Awaitable[bytes]]
"""The :data:`BodyReader` of an ASGI adapter."""

# Bodies larger than this are decided in a worker thread (JSON parsing off the event loop).
LARGE_BODY = 64 * 1024
_PASS = Outcome.PASS_THROUGH
_UNREADABLE = "token has JSON-body rules, which this adapter cannot check (it never sees the body)"


class Requirement(enum.Enum):
    """What a route asks of a request beyond the policy: nothing, a token, a read-write token."""

    NONE = "none"
    TOKEN = "token"  # noqa: S105 (a name, not a secret)
    READ_WRITE = "read-write"


class RequestFlow:
    """A request's whole exchange with apitokens, for adapters to drive.

    Get it from :attr:`ApiTokens.flow`. Thread-safe; one per ``ApiTokens``.
    A result is final: its audit event and the token's use are queued for the
    writer, and when they cannot be (the store or the writer is down) the
    result is a 503, never an unaudited success.
    """

    def __init__(self, authenticator: Authenticator, writer: AuditWriter, policy: Policy) -> None:
        self._auth = authenticator
        self._writer = writer
        self.policy = policy
        self._unavailable: str | None = None  # why records could not be queued, once logged

    def run(
        self,
        request: AuthRequest,
        read_body: BodyReader | None = None,
        *,
        require: Requirement = Requirement.NONE,
        protected: bool = False,
    ) -> AuthResult:
        """Decide ``request`` on this thread (which may block: a WSGI request thread).

        Args:
            request: the request, without its body.
            read_body: reads the body when a JSON rule needs it; ``None`` when the
                adapter cannot (a token with JSON-body rules is then refused, 403).
            require: the route's requirement.
            protected: check a token whatever the path, not only on the policy's
                protected paths (a route that accepts tokens: DRF's authentication
                class); implied by a ``require``.
        """
        auth = self._auth
        # A route asking for a token, or accepting one, checks it.
        protected = protected or require is not Requirement.NONE
        decision = auth.safe_decide(request, body_read=False, protected=protected)
        if decision.need_body:
            if read_body is None:
                decision = self._unreadable(request, decision)
            else:
                body = read_body(self.policy.max_body_bytes)
                decision = auth.safe_decide(replace(request, body=body), protected=protected)
        if require is not Requirement.NONE:
            decision = self._required(request, decision, require)
        return self._record(decision)

    def run_whole(self, request: AuthRequest) -> AuthResult:
        """Decide ``request`` whose body, if any, is given whole (``ApiTokens.authenticate``)."""
        return self._record(self._auth.safe_decide(request))

    async def run_async(
        self,
        request: AuthRequest,
        read_body: AsyncBodyReader | None = None,
        *,
        require: Requirement = Requirement.NONE,
    ) -> AuthResult:
        """Decide ``request`` without blocking the event loop (an ASGI adapter).

        Decided on the loop while everything it needs is cached; a store read, a
        hash verification, a groups lookup or a large JSON body moves the decision
        to a worker thread (where, beyond the few places in line to verify, a
        request gets 503 at once rather than holding the loop's thread pool).
        """
        protected = require is not Requirement.NONE  # a route asking for a token checks it
        decision = await self._decide_async(request, False, protected)
        if decision.need_body:
            if read_body is None:
                decision = self._unreadable(request, decision)
            else:
                body = await read_body(self.policy.max_body_bytes)
                with_body = replace(request, body=body)
                if len(body) > LARGE_BODY:
                    # Parsing a large JSON body takes milliseconds: never on the loop.
                    decision = await asyncio.to_thread(
                        self._auth.safe_decide, with_body, patient=False, protected=protected
                    )
                else:
                    decision = await self._decide_async(with_body, True, protected)
        if require is not Requirement.NONE:
            decision = self._required(request, decision, require)
        result = self._queue(decision, block=False)
        if result is None:  # the writer's buffer is full: wait for room off the loop
            result = await asyncio.to_thread(self._record, decision)
        return result

    def require(self, request: AuthRequest, result: AuthResult, require: Requirement) -> AuthResult:
        """Hold an earlier result (already recorded) to a route's requirement, on this thread.

        For a route behind the middleware, whose decision it reuses (a Django REST
        framework permission): an unmet requirement is a refusal of its own, audited.
        """
        decision = self._required(request, Decision(result), require)
        if decision.result is result:
            return result
        return self._record(decision)

    async def require_async(
        self, request: AuthRequest, result: AuthResult, require: Requirement
    ) -> AuthResult:
        """Hold an earlier result (already recorded) to a route's requirement.

        For a route behind the middleware, whose decision it reuses: an unmet
        requirement is a refusal of its own, audited.
        """
        decision = self._required(request, Decision(result), require)
        if decision.result is result:
            return result
        recorded = self._queue(decision, block=False)
        if recorded is None:
            recorded = await asyncio.to_thread(self._record, decision)
        return recorded

    def flush(self, timeout: float | None = None) -> bool:
        """Write buffered audit events and usage; ``False`` if ``timeout`` ran out.

        Limited tokens' uses not yet in the store's ledger are sent too (the ASGI
        lifespan's shutdown flushes here: nothing later runs under uvicorn).
        """
        meter = self._auth.meter
        if meter is not None:
            meter.flush()
        return self._writer.flush(timeout)

    # -- steps ------------------------------------------------------------------

    async def _decide_async(
        self, request: AuthRequest, body_read: bool, protected: bool
    ) -> Decision:
        auth = self._auth
        try:
            return auth.safe_decide(request, body_read=body_read, block=False, protected=protected)
        except WouldBlock:
            return await asyncio.to_thread(
                auth.safe_decide, request, body_read=body_read, patient=False, protected=protected
            )

    def _unreadable(self, request: AuthRequest, decision: Decision) -> Decision:
        token = decision.result.token
        return self._auth.refuse(request, refusal(self.policy, 403, _UNREADABLE, token=token))

    def refuses(self, result: AuthResult, require: Requirement) -> bool:
        """Whether a route's ``require`` refuses a request decided as ``result``.

        No token (a pass-through) for ``TOKEN`` or ``READ_WRITE``; a read-only
        token for ``READ_WRITE``. A refusal already is one: nothing to add. For a
        driver that builds the request for :meth:`require` only when it refuses.
        """
        if require is Requirement.NONE:
            return False
        if result.outcome is _PASS:
            return True
        token = result.token
        return (
            require is Requirement.READ_WRITE
            and result.authenticated
            and token is not None
            and token.scope is not Scope.READ_WRITE
        )

    def _required(self, request: AuthRequest, decision: Decision, require: Requirement) -> Decision:
        """``decision``, or the refusal the route's requirement makes of it."""
        result = decision.result
        if not self.refuses(result, require):
            return decision
        if result.outcome is _PASS:
            # Credentials that are not a token (a password) were invalid here: the Bearer
            # challenge names the error; without any, it names none (RFC 6750 §3.1).
            sent = request.header("authorization") is not None
            reason = "route requires a token"
            return self._auth.refuse(
                request, refusal(self.policy, 401, reason, challenge_error=sent)
            )
        reason = "route requires a READ_WRITE token"
        first = decision.records[0] if decision.records else None
        if isinstance(first, AuthEntry | AuditEvent) and result.authenticated and result.token:
            # Refused before the decision's success was recorded: the use it counted is
            # given back, once, in the window of the decision (its event's time). A result
            # recorded already (require(): a route behind the middleware) stays a use.
            self._auth.refund(result.token, first.at)
        return self._auth.refuse(
            request,
            refusal(self.policy, 403, reason, token=result.token),
            user=result.user,
            actor=result.real_user,
        )

    def _record(self, decision: Decision) -> AuthResult:
        """Queue a decision's records for the writer (and its journal); return its result.

        Waits for room in the writer's buffer (at most its ``max_wait``). Fails
        closed: see :meth:`_queue`.
        """
        result = self._queue(decision, block=True)
        assert result is not None  # a blocking submit has room in the end, or raises
        return result

    def _queue(self, decision: Decision, *, block: bool) -> AuthResult | None:
        """Queue a decision's records; its result, or ``None`` when not ``block`` and full.

        Fails closed: when the records cannot be queued (the writer is closed,
        the application is shutting down, the buffer stayed full for the
        writer's ``max_wait`` seconds because the store cannot be written, the
        journal cannot be written), a 503, never an unaudited success.
        ``None`` only when ``block`` is false and the buffer is full.
        """
        try:
            if not self._writer.submit(decision.records, block=block):
                return None
        except StorageError as exc:
            message = str(exc)
            if message != self._unavailable:  # once per cause, not once per request
                log.error("apitokens: %s; answering 503 until it can be written", message)
                self._unavailable = message
            return refusal(self.policy, 503, "audit log unavailable")
        if self._unavailable is not None:
            log.warning("apitokens: the audit log can be written again")
            self._unavailable = None
        return decision.result
