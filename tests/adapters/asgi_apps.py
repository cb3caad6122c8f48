"""The endpoints the ASGI contract apps share: each records what it saw."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from tests.adapters.harness import Recorder, seen_from_scope

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def record(request: Request, recorder: Recorder) -> Response:
    """Read the whole body and note what the app saw."""
    read_before_app = recorder.pulled
    body = await request.body()
    recorder.seen.append(seen_from_scope(request.scope, body, read_before_app))
    return JSONResponse({"ok": True})


async def record_websocket(websocket: WebSocket, recorder: Recorder) -> None:
    await websocket.accept()
    seen = seen_from_scope(websocket.scope, b"", 0)
    recorder.seen.append(seen)
    await websocket.send_text(json.dumps({"user": seen.user}))
    await websocket.close()


def lifespan(recorder: Recorder) -> Any:
    @asynccontextmanager
    async def span(app: Any) -> AsyncIterator[None]:
        recorder.lifespan.append("startup")
        yield
        recorder.lifespan.append("shutdown")

    return span
