"""The adapter contract for the ``starlette`` extra, without ``tokens.asgi()``.

Starlette's own ``AuthenticationMiddleware`` with ``backend=TokenBackend(tokens)`` and
``on_error=TokenBackend.on_error``, on a FastAPI app whose :data:`NEEDS_TOKEN` and
:data:`NEEDS_WRITE` routes depend on ``RequireToken(tokens)`` and
``RequireToken(tokens, write=True)`` (a FastAPI dependency, as docs/middleware.md shows),
its refusals answered by ``render_refusal`` as the middleware answers.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures at runtime.

import pytest
from fastapi import Depends, FastAPI, Request, Response
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware

from apitokens import ApiTokens
from apitokens.starlette import RequireToken, RouteRefused, TokenBackend, render_refusal
from tests.adapters.asgi_apps import METHODS, lifespan, record
from tests.adapters.contract import NEEDS_TOKEN, NEEDS_WRITE, AdapterContract, Build
from tests.adapters.harness import ASGIContractClient, Recorder
from tests.adapters.test_fastapi import add_routes


def extra_app(tokens: ApiTokens, recorder: Recorder) -> FastAPI:
    backend = Middleware(
        AuthenticationMiddleware, backend=TokenBackend(tokens), on_error=TokenBackend.on_error
    )
    app = FastAPI(
        middleware=[backend],
        lifespan=lifespan(recorder),
        exception_handlers={RouteRefused: render_refusal},
    )

    @app.api_route(NEEDS_TOKEN, methods=METHODS, dependencies=[Depends(RequireToken(tokens))])
    async def needs_token(request: Request) -> Response:
        return await record(request, recorder)

    write = [Depends(RequireToken(tokens, write=True))]

    @app.api_route(NEEDS_WRITE, methods=METHODS, dependencies=write)
    async def needs_write(request: Request) -> Response:
        return await record(request, recorder)

    return add_routes(app, recorder)


class TestStarletteExtra(AdapterContract):
    interface = "asgi"
    lifespan = True
    websocket = True
    websocket_refusal_code = 1000
    """Starlette's AuthenticationMiddleware closes a refused handshake with 1000, its own choice."""
    checks_json_bodies = False
    """TokenBackend never sees the body: a token whose JSON rule needs it gets 403 by name."""
    route_requirements = True
    """RequireToken: "route requires a token" (401), "requires a READ_WRITE token" (403)."""
    requirement_after_decision = True
    """The backend decided (and recorded) the token before RequireToken holds it to the route."""

    @pytest.fixture
    def build(self) -> Build:
        def build(tokens: ApiTokens, *, mount: str = "") -> ASGIContractClient:
            recorder = Recorder()
            return ASGIContractClient(extra_app(tokens, recorder), recorder, mount=mount)

        return build
