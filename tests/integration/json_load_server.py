"""A uvicorn server for the large-JSON latency test: ``python json_load_server.py DB FD``.

Serves ``tokens.asgi(app)`` on the listening socket inherited as file descriptor ``FD``,
with the tokens in the SQLite file ``DB`` (made by the test). Run in a process of its
own so that the test's clients do not share the server's GIL. Stops on SIGTERM.
"""

from __future__ import annotations

import socket
import sys
from collections import Counter

import argon2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from apitokens import ApiTokens, Argon2Hasher, Policy, SQLiteStore


async def samples(request: Request) -> Response:
    return JSONResponse({"size": len(await request.body())})


async def ping(request: Request) -> Response:
    return PlainTextResponse("pong")


def main(db: str, fd: int) -> None:
    store = SQLiteStore(db)
    hasher = Argon2Hasher.from_parameters(argon2.profiles.CHEAPEST)
    tokens = ApiTokens(store, policy=Policy(protected_paths=["/rest/"]), hasher=hasher)
    app = Starlette(
        routes=[
            Route("/rest/samples", samples, methods=["POST"]),
            Route("/rest/ping", ping),
        ]
    )
    config = uvicorn.Config(tokens.asgi(app), log_level="warning", lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])
        tokens.flush(timeout=10)
        # Why any request was refused, for the test's failure output (never a secret).
        refused = Counter(
            event.reason
            for event in tokens.audit(action="authenticate", limit=10_000)
            if event.reason
        )
        for reason, count in refused.items():
            print(f"refused {count}x: {reason}", file=sys.stderr)
    finally:
        tokens.close()
        store.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
