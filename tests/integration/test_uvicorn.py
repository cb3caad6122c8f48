"""End to end: a real uvicorn server on 127.0.0.1, a real socket, a SQLite file (DESIGN §4)."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from apitokens import ApiTokens, Outcome, Scope, SQLiteStore
from tests.support import make_tokens

INVALID_TOKEN = {
    "error": "invalid_token",
    "error_description": "The access token is missing, invalid, expired or revoked.",
}
INSUFFICIENT_SCOPE = {
    "error": "insufficient_scope",
    "error_description": "The access token does not allow this request.",
}


def make_app(state: dict[str, str]) -> Starlette:
    async def whoami(request: Request) -> Response:
        user = request.scope.get("user")
        return JSONResponse(
            {
                "user": user.display_name if user.is_authenticated else None,
                "authorization": request.headers.get("authorization"),
            }
        )

    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["lifespan"] = "started"
        yield
        state["lifespan"] = "stopped"

    return Starlette(
        routes=[
            Route("/rest/echo", echo, methods=["POST"]),
            Route("/rest/{rest:path}", whoami, methods=["GET", "POST"]),
            Route("/public/{rest:path}", whoami),
        ],
        lifespan=lifespan,
    )


@pytest.fixture
def tokens(tmp_path: Path) -> Iterator[ApiTokens]:
    store = SQLiteStore(tmp_path / "tokens.db")
    try:
        with make_tokens(store, protected_paths=["/rest/"], max_body_bytes=256) as tokens:
            yield tokens
    finally:
        store.close()


@pytest.fixture
def serve(tokens: ApiTokens) -> Iterator[tuple[str, dict[str, str]]]:
    """Run ``tokens.asgi(app)`` under uvicorn in a thread; yield its base URL and app state."""
    state: dict[str, str] = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # a request waits in the backlog until uvicorn serves
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        tokens.asgi(make_app(state)),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        try:  # served once the lifespan has started; unprotected: no audit row
            httpx.get(f"http://127.0.0.1:{port}/public/started", timeout=10)
        except httpx.HTTPError as exc:
            pytest.fail(f"uvicorn did not start (thread alive: {thread.is_alive()}): {exc!r}")
        assert server.started
        assert state == {"lifespan": "started"}
        yield f"http://127.0.0.1:{port}", state
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop within 10 s"
    assert state == {"lifespan": "stopped"}


def test_real_server(serve: tuple[str, dict[str, str]], tokens: ApiTokens) -> None:
    base_url, _ = serve
    read = tokens.create(actor="alice", name="read")
    write = tokens.create(actor="bob", name="write", scope=Scope.READ_WRITE)
    rules = tokens.create(actor="carol", name="rules", restrictions=[".*/rest/api/.*"])
    elsewhere = tokens.create(actor="dave", name="ip", allowed_ips=["203.0.113.0/24"])
    local = tokens.create(actor="dave", name="local", allowed_ips=["127.0.0.1/32"])
    json_rule = tokens.create(
        actor="erin",
        name="json",
        scope=Scope.READ_WRITE,
        restrictions=["[post].*/rest/echo[JsonData::project==ABC]"],
    )
    unknown = tokens.policy.token_format.issue().value
    password = "Basic " + base64.b64encode(b"alice:hunter2").decode()

    def auth(secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    def chunks() -> Iterator[bytes]:
        yield b'{"project": '
        yield b'"ABC", "n": '
        yield b"[1, 2, 3]}"

    with httpx.Client(base_url=base_url, timeout=10) as client:
        ok = client.get("/rest/api/x", headers=auth(read.secret))
        assert (ok.status_code, ok.json()["user"]) == (200, "alice")

        bad = client.get("/rest/api/x", headers=auth(unknown))
        assert (bad.status_code, bad.json()) == (401, INVALID_TOKEN)
        assert bad.headers["content-type"] == "application/json"
        assert len(bad.headers.get_list("www-authenticate")) == 2

        scope = client.post("/rest/api/x", headers=auth(read.secret))
        assert (scope.status_code, scope.json()) == (403, INSUFFICIENT_SCOPE)

        rule_ok = client.get("/rest/api/2/issue", headers=auth(rules.secret))
        rule_denied = client.get("/rest/other/x", headers=auth(rules.secret))
        encoded_slash = client.get("/rest/api/a%2Fb", headers=auth(rules.secret))
        dot_dot = client.get("/rest/api/%2e%2e/other", headers=auth(rules.secret))
        assert (rule_ok.status_code, rule_ok.json()["user"]) == (200, "carol")
        assert [r.status_code for r in (rule_denied, encoded_slash, dot_dot)] == [403] * 3

        ip_denied = client.get("/rest/x", headers=auth(elsewhere.secret))
        ip_ok = client.get("/rest/x", headers=auth(local.secret))
        assert (ip_denied.status_code, ip_denied.json()) == (403, INSUFFICIENT_SCOPE)
        assert (ip_ok.status_code, ip_ok.json()["user"]) == (200, "dave")

        as_json = {**auth(json_rule.secret), "Content-Type": "application/json"}
        echoed = client.post("/rest/echo", headers=as_json, content=chunks())
        assert (echoed.status_code, echoed.content) == (
            200,
            b'{"project": "ABC", "n": [1, 2, 3]}',
        )
        too_big = client.post(
            "/rest/echo", headers=as_json, content=b'{"project":"ABC"}' + b" " * 300
        )
        assert too_big.status_code == 413
        streamed = client.post("/rest/echo", headers=auth(write.secret), content=b"z" * 5000)
        assert (streamed.status_code, streamed.content) == (200, b"z" * 5000)

        foreign = client.get("/rest/x", headers={"Authorization": password})
        assert foreign.json() == {"user": None, "authorization": password}
        public = client.get("/public/x", headers=auth(unknown))
        assert (public.status_code, public.json()["user"]) == (200, None)

    assert tokens.flush(timeout=10)
    events = tokens.audit(action="authenticate", limit=1000)
    counts = {o: sum(e.outcome is o for e in events) for o in Outcome}
    # ok, rule_ok, ip_ok, echoed, streamed succeed; scope, 3 rule refusals, ip_denied and
    # too_big are forbidden; bad failed; foreign and public were never audited.
    assert counts == {
        Outcome.SUCCESS: 5,
        Outcome.FORBIDDEN: 6,
        Outcome.FAILED: 1,
        Outcome.PASS_THROUGH: 0,
    }
    assert {e.client_ip for e in events} == {"127.0.0.1"}
    used = tokens.get(read.token.id)
    assert used is not None
    assert (used.use_count, used.last_used_ip) == (1, "127.0.0.1")
