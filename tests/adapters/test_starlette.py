"""The adapter contract for a Starlette app behind ``tokens.asgi(app)``."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from apitokens import ApiTokens
from tests.adapters.asgi_apps import METHODS, lifespan, record, record_websocket
from tests.adapters.contract import AdapterContract, Build
from tests.adapters.harness import ASGIContractClient, Recorder


def starlette_app(recorder: Recorder) -> Starlette:
    async def endpoint(request: Request) -> Response:
        return await record(request, recorder)

    async def ws(websocket: WebSocket) -> None:
        await record_websocket(websocket, recorder)

    return Starlette(
        routes=[
            WebSocketRoute("/rest/ws", ws),
            WebSocketRoute("/public/ws", ws),
            Route("/rest/{rest:path}", endpoint, methods=METHODS),
            Route("/public/{rest:path}", endpoint, methods=METHODS),
        ],
        lifespan=lifespan(recorder),
    )


class TestStarlette(AdapterContract):
    interface = "asgi"
    lifespan = True
    websocket = True

    @pytest.fixture
    def build(self) -> Build:
        def build(tokens: ApiTokens, *, mount: str = "") -> ASGIContractClient:
            recorder = Recorder()
            return ASGIContractClient(tokens.asgi(starlette_app(recorder)), recorder, mount=mount)

        return build
