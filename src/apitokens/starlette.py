"""Starlette and FastAPI integration (the ``starlette`` extra).

- :class:`TokenBackend`: an ``AuthenticationBackend`` for Starlette's
  ``AuthenticationMiddleware``; pass ``on_error=TokenBackend.on_error`` to
  answer refusals exactly as the middleware does (status, JSON, challenge).
- :class:`RequireToken`: a FastAPI dependency (any callable taking a
  ``Request``) that requires a token on a route, optionally read-write.

Both reuse the decision of ``tokens.asgi()`` when it already ran, and decide
themselves otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
)
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from . import asgi
from ._audit import Record
from ._auth import PASS_THROUGH, Decision, WouldBlock
from ._model import Action, AuditEvent, Outcome, Scope
from ._result import AuthResult, refusal
from .asgi import _recorded, request_from_scope

if TYPE_CHECKING:
    from ._api import ApiTokens

__all__ = ["RequireToken", "TokenBackend", "TokenRefused", "TokenUser"]


class TokenUser(asgi.TokenUser, BaseUser):
    """The authenticated user, as ``request.user``: the middleware's user, a ``BaseUser``."""


class TokenRefused(AuthenticationError):
    """A refusal, carrying the result to render."""

    def __init__(self, result: AuthResult) -> None:
        super().__init__(result.description)
        self.result = result


def _headers(result: AuthResult) -> dict[str, str]:
    # Several challenges fit one WWW-Authenticate header (RFC 9110 §11.6.1).
    merged: dict[str, str] = {}
    for name, value in result.headers:
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged


def _response(result: AuthResult) -> Response:
    return Response(result.body, status_code=result.status_code, headers=_headers(result))


async def _submit(tokens: ApiTokens, records: Sequence[Record]) -> None:
    await _recorded(tokens, Decision(PASS_THROUGH, tuple(records)))


async def _decide(tokens: ApiTokens, request: HTTPConnection, body: bytes | None) -> Decision:
    core = tokens.authenticator
    auth_request = request_from_scope(request.scope, body or b"")
    body_read = body is not None
    try:
        decision = core.safe_decide(auth_request, body_read=body_read, block=False)
    except WouldBlock:
        decision = await asyncio.to_thread(
            core.safe_decide, auth_request, body_read=body_read, patient=False
        )
    result = await _recorded(tokens, decision)
    return decision if result is decision.result else Decision(result)


async def _refuse(
    tokens: ApiTokens, request: HTTPConnection, status: int, reason: str, **kw: Any
) -> AuthResult:
    """A refusal made here rather than by the core, audited like the core's."""
    result = refusal(tokens.policy, status, reason, **kw)
    auth_request = request_from_scope(request.scope)
    fmt = tokens.policy.token_format
    token = result.token
    event = AuditEvent(
        at=tokens.clock(),
        action=Action.AUTHENTICATE,
        outcome=result.outcome,
        token_id=token.id if token else None,
        user=token.user if token else None,
        # As the core writes them: a token in the path or the address cut to its id.
        client_ip=fmt.redact(tokens.authenticator.client_ip(auth_request)) or None,
        method=auth_request.method.upper(),
        path=tokens.authenticator._audit_path(auth_request),
        reason=reason,
    )
    await _submit(tokens, [event])
    return result


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The body, read at most to ``limit + 1`` bytes (more means "too large").

    A body that fits is kept on the request (as Starlette's own ``body()``
    does), so the endpoint can still read it.
    """
    cached: bytes | None = getattr(request, "_body", None)
    if cached is not None:
        return cached
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)  # the core answers 413; the endpoint never runs
    body = b"".join(chunks)
    request._body = body
    return body


class TokenBackend(AuthenticationBackend):
    """Authenticates requests carrying a token for Starlette's ``AuthenticationMiddleware``.

    Requests without a token (or with foreign credentials) are left
    unauthenticated. A token with JSON-body rules cannot be checked here
    (the backend never sees the body): wrap the app with ``tokens.asgi()``.
    """

    def __init__(self, tokens: ApiTokens) -> None:
        self.tokens = tokens

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        """Return credentials and user, ``None`` to pass, or raise :class:`TokenRefused`."""
        result = conn.scope.get("apitokens.auth")
        if not isinstance(result, AuthResult):
            decision = await _decide(self.tokens, conn, None)
            if decision.need_body:
                reason = "token has JSON-body rules; wrap the app with tokens.asgi() to check them"
                token = decision.result.token
                result = await _refuse(self.tokens, conn, 403, reason, token=token)
            else:
                result = decision.result
        if result.outcome is Outcome.PASS_THROUGH:
            return None
        if not result.authenticated:
            raise TokenRefused(result)
        return AuthCredentials(result.scopes), TokenUser(result)

    @staticmethod
    def on_error(conn: HTTPConnection, exc: Exception) -> Response:
        """Render a refusal like the middleware does (use as ``on_error``)."""
        if isinstance(exc, TokenRefused):
            return _response(exc.result)
        return Response(str(exc), status_code=400)


class RequireToken:
    """A FastAPI dependency: the route needs a token (read-write with ``write=True``).

    ``Depends(RequireToken(tokens))`` returns the :class:`AuthResult`.
    Refusals raise ``HTTPException`` with the status and ``WWW-Authenticate``.
    """

    def __init__(self, tokens: ApiTokens, *, write: bool = False) -> None:
        self.tokens = tokens
        self.write = write

    async def __call__(self, request: Request) -> AuthResult:
        """Return the result for ``request`` or raise ``HTTPException``."""
        policy = self.tokens.policy
        result = request.scope.get("apitokens.auth")
        if not isinstance(result, AuthResult):
            decision = await _decide(self.tokens, request, None)
            if decision.need_body:
                body = await _bounded_body(request, policy.max_body_bytes)
                decision = await _decide(self.tokens, request, body)
            result = decision.result
        if result.outcome is Outcome.PASS_THROUGH:
            reason = "route requires a token"
            result = await _refuse(self.tokens, request, 401, reason, challenge_error=False)
        elif self.write and result.token is not None and result.token.scope is not Scope.READ_WRITE:
            reason = "route requires a READ_WRITE token"
            result = await _refuse(self.tokens, request, 403, reason, token=result.token)
        if not result.authenticated:
            raise HTTPException(result.status_code, result.description, headers=_headers(result))
        return result
