"""Starlette and FastAPI integration (the ``starlette`` extra).

- :class:`TokenBackend`: an ``AuthenticationBackend`` for Starlette's
  ``AuthenticationMiddleware``; pass ``on_error=TokenBackend.on_error`` to
  answer refusals exactly as the middleware does (status, JSON, challenge).
- :class:`RequireToken`: a FastAPI dependency (any callable taking a
  ``Request``) that requires a token on a route, optionally read-write. Its
  refusals are :class:`RouteRefused`; ``exception_handlers={RouteRefused:
  render_refusal}`` answers them exactly as the middleware does.

Both reuse the decision of ``tokens.asgi()`` (or of the backend, for the
dependency) when it already ran, and run the request flow (``tokens.flow``)
otherwise; neither decides on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from ._flow import Requirement
from ._model import Outcome
from ._result import AuthResult
from .asgi import DECIDED_BY, decided_here, request_from_scope

if TYPE_CHECKING:
    from ._api import ApiTokens

__all__ = [
    "RequireToken",
    "RouteRefused",
    "TokenBackend",
    "TokenRefused",
    "TokenUser",
    "render_refusal",
]


class TokenUser(asgi.TokenUser, BaseUser):
    """The authenticated user, as ``request.user``: the middleware's user, a ``BaseUser``."""


class TokenRefused(AuthenticationError):
    """The backend's refusal, carrying the result to render."""

    def __init__(self, result: AuthResult) -> None:
        super().__init__(result.description)
        self.result = result


class RouteRefused(HTTPException):
    """:class:`RequireToken`'s refusal: an ``HTTPException`` carrying the result.

    FastAPI's default handler answers it with the status, the challenges and
    ``{"detail": <description>}``; register :func:`render_refusal` for it to get
    the middleware's body, ``{"error": ..., "error_description": ...}``.
    """

    def __init__(self, result: AuthResult) -> None:
        super().__init__(result.status_code, result.description, headers=_headers(result))
        self.result = result


def render_refusal(conn: HTTPConnection, exc: Exception) -> Response:
    """Answer a :class:`TokenRefused` or :class:`RouteRefused` as the middleware does.

    Use it as ``on_error`` of ``AuthenticationMiddleware`` and in
    ``FastAPI(exception_handlers={RouteRefused: render_refusal})``.
    """
    if isinstance(exc, TokenRefused | RouteRefused):
        return _response(exc.result)
    return Response(str(exc), status_code=400)


def _headers(result: AuthResult) -> dict[str, str]:
    # Several challenges fit one WWW-Authenticate header (RFC 9110 §11.6.1).
    merged: dict[str, str] = {}
    for name, value in result.headers:
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged


def _response(result: AuthResult) -> Response:
    return Response(result.body, status_code=result.status_code, headers=_headers(result))


class _Body:
    """Reads the body for the flow through Starlette's request, which keeps it for the route."""

    __slots__ = ("_request",)

    def __init__(self, request: Request) -> None:
        self._request = request

    async def __call__(self, limit: int) -> bytes:
        """The body, read at most to ``limit + 1`` bytes (more means "too large").

        A body that fits is kept on the request (as Starlette's own ``body()``
        does), so the endpoint can still read it.
        """
        request = self._request
        cached: bytes | None = getattr(request, "_body", None)
        if cached is not None:
            return cached
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks)  # the flow answers 413; the endpoint never runs
        body = b"".join(chunks)
        request._body = body
        return body


class TokenBackend(AuthenticationBackend):
    """Authenticates requests carrying a token for Starlette's ``AuthenticationMiddleware``.

    Requests without a token (or with foreign credentials) are left
    unauthenticated. A token with JSON-body rules cannot be checked here
    (the backend never sees the body), so it is refused (403): wrap the app
    with ``tokens.asgi()`` to check it.
    """

    def __init__(self, tokens: ApiTokens) -> None:
        self.flow = tokens.flow

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        """Return credentials and user, ``None`` to pass, or raise :class:`TokenRefused`."""
        result = decided_here(conn.scope, self.flow)
        if result is None:
            result = await self.flow.run_async(request_from_scope(conn.scope), None)
        if result.outcome is Outcome.PASS_THROUGH:
            return None
        if not result.authenticated:
            raise TokenRefused(result)
        # As the middleware gives it, and so a RequireToken route reuses this decision.
        conn.scope["apitokens.auth"] = result
        conn.scope[DECIDED_BY] = self.flow
        return AuthCredentials(result.scopes), TokenUser(result)

    @staticmethod
    def on_error(conn: HTTPConnection, exc: Exception) -> Response:
        """Render a refusal like the middleware does (use as ``on_error``)."""
        return render_refusal(conn, exc)


class RequireToken:
    """A FastAPI dependency: the route needs a token (read-write with ``write=True``).

    ``Depends(RequireToken(tokens))`` returns the :class:`AuthResult`.
    Refusals raise :class:`RouteRefused` (an ``HTTPException``: the status, the
    challenges and the description as ``detail``; see :func:`render_refusal`).
    """

    def __init__(self, tokens: ApiTokens, *, write: bool = False) -> None:
        self.flow = tokens.flow
        self.require = Requirement.READ_WRITE if write else Requirement.TOKEN

    async def __call__(self, request: Request) -> AuthResult:
        """Return the result for ``request`` or raise :class:`RouteRefused`."""
        flow = self.flow
        auth_request = request_from_scope(request.scope)
        result = decided_here(request.scope, flow)
        if result is not None:  # decided before (middleware, backend): held to the route
            result = await flow.require_async(auth_request, result, self.require)
        else:
            result = await flow.run_async(auth_request, _Body(request), require=self.require)
        if not result.authenticated:
            raise RouteRefused(result)
        return result
