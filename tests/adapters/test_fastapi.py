"""The adapter contract for a FastAPI app behind ``app = tokens.asgi(app)``."""

# No ``from __future__ import annotations``: FastAPI reads the route signatures at runtime.

import pytest
from fastapi import FastAPI, Request, Response, WebSocket

from apitokens import ApiTokens
from tests.adapters.asgi_apps import METHODS, lifespan, record, record_websocket
from tests.adapters.contract import AdapterContract, Build
from tests.adapters.harness import ASGIContractClient, Recorder


def add_routes(app: FastAPI, recorder: Recorder) -> FastAPI:
    """The contract's routes, FastAPI's way (``api_route``, ``websocket``)."""

    @app.websocket("/rest/ws")
    @app.websocket("/public/ws")
    async def ws(websocket: WebSocket) -> None:
        await record_websocket(websocket, recorder)

    @app.api_route("/rest/{rest:path}", methods=METHODS)
    @app.api_route("/public/{rest:path}", methods=METHODS)
    async def endpoint(request: Request) -> Response:
        return await record(request, recorder)

    return app


class TestFastAPI(AdapterContract):
    interface = "asgi"
    lifespan = True
    websocket = True

    @pytest.fixture
    def build(self) -> Build:
        def build(tokens: ApiTokens, *, mount: str = "") -> ASGIContractClient:
            recorder = Recorder()
            app = add_routes(FastAPI(lifespan=lifespan(recorder)), recorder)
            return ASGIContractClient(tokens.asgi(app), recorder, mount=mount)

        return build
