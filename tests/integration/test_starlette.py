"""A real Starlette app behind ``tokens.asgi(app)``, and behind ``TokenBackend`` (DESIGN §4).

HTTP goes through ``httpx.ASGITransport``; websocket handshakes and lifespan
messages are driven by hand (``raw_asgi``), which also lets a body arrive in
several ``http.request`` messages exactly as written.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from apitokens import ApiTokens, AuthResult, IssuedToken, MemoryStore, Outcome
from apitokens.starlette import TokenBackend
from tests.support import Clock, make_tokens

INSIDE_IP = "203.0.113.7"  # in the "ip" token's allowed network
OUTSIDE_IP = "198.51.100.9"
CHALLENGES_401 = [
    'Bearer realm="api", error="invalid_token", '
    'error_description="The access token is missing, invalid, expired or revoked."',
    'Basic realm="api", charset="UTF-8"',
]
INVALID_TOKEN = {
    "error": "invalid_token",
    "error_description": "The access token is missing, invalid, expired or revoked.",
}
INSUFFICIENT_SCOPE = {
    "error": "insufficient_scope",
    "error_description": "The access token does not allow this request.",
}

Client = Callable[..., httpx.AsyncClient]
pytestmark = pytest.mark.anyio


def seen(request: Request) -> dict[str, Any]:
    """What the app knows about the caller."""
    scope = request.scope
    result = scope.get("apitokens.auth")
    data: dict[str, Any] = {
        "path": request.url.path,
        "authorization": request.headers.get("authorization"),
        "token_id": result.token.id if isinstance(result, AuthResult) and result.token else None,
    }
    if "user" in scope:
        data["user"] = request.user.display_name
        data["authenticated"] = request.user.is_authenticated
        data["scopes"] = request.auth.scopes
    return data


def make_app(state: dict[str, str] | None = None) -> Starlette:
    async def whoami(request: Request) -> Response:
        return JSONResponse(seen(request))

    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        user = websocket.scope.get("user")
        await websocket.send_text(user.display_name if user is not None else "-")
        await websocket.close()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if state is not None:
            state["lifespan"] = "started"
        yield
        if state is not None:
            state["lifespan"] = "stopped"

    methods = ["GET", "POST", "PUT", "DELETE"]
    return Starlette(
        routes=[
            Route("/rest/echo", echo, methods=["POST"]),
            WebSocketRoute("/rest/ws", ws),
            Route("/rest/{rest:path}", whoami, methods=methods),
            Route("/public/{rest:path}", whoami, methods=methods),
        ],
        lifespan=lifespan,
    )


@pytest.fixture
def app(tokens: ApiTokens) -> Any:
    return tokens.asgi(make_app())


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


# -- tokens.asgi(): success, 401, 403 ------------------------------------------------------


async def test_the_app_sees_the_token_user(
    app: Any, asgi_client: Client, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    token = issued["write"]
    async with asgi_client(app) as client:
        response = await client.put("/rest/api/1", headers=bearer(token.secret))
    assert response.status_code == 200
    assert response.json() == {
        "path": "/rest/api/1",
        "authorization": f"Bearer {token.secret}",
        "token_id": token.token.id,
        "user": "bob",
        "authenticated": True,
        "scopes": ["authenticated", "read", "write"],
    }
    [event] = tokens.audit(action="authenticate")
    assert (event.outcome, event.user, event.method, event.client_ip) == (
        Outcome.SUCCESS,
        "bob",
        "PUT",
        "127.0.0.1",
    )
    record = tokens.get(token.token.id)
    assert record is not None
    assert record.use_count == 1


@pytest.mark.parametrize(
    ("kind", "method", "path", "ip", "status", "user"),
    [
        ("read", "GET", "/rest/api/x", "127.0.0.1", 200, "alice"),
        ("read", "POST", "/rest/api/x", "127.0.0.1", 403, None),
        ("read", "DELETE", "/rest/api/x", "127.0.0.1", 403, None),
        ("rules", "GET", "/rest/api/2/issue", "127.0.0.1", 200, "carol"),
        ("rules", "GET", "/rest/other/2/issue", "127.0.0.1", 403, None),
        ("ip", "GET", "/rest/x", INSIDE_IP, 200, "dave"),
        ("ip", "GET", "/rest/x", "2001:db8::1", 200, "dave"),
        ("ip", "GET", "/rest/x", OUTSIDE_IP, 403, None),
        ("ip", "GET", "/rest/x", "2001:db9::1", 403, None),
    ],
)
async def test_scope_rules_and_ips(
    tokens: ApiTokens,
    issued: dict[str, IssuedToken],
    asgi_client: Client,
    kind: str,
    method: str,
    path: str,
    ip: str,
    status: int,
    user: str | None,
) -> None:
    app = tokens.asgi(make_app())
    async with asgi_client(app, client=(ip, 4711)) as client:
        response = await client.request(method, path, headers=bearer(issued[kind].secret))
    assert response.status_code == status
    [event] = tokens.audit(action="authenticate")
    assert event.client_ip == ip
    if status == 200:
        assert (response.json()["user"], response.json()["scopes"][0]) == (user, "authenticated")
        assert event.outcome is Outcome.SUCCESS
    else:
        assert response.json() == INSUFFICIENT_SCOPE
        assert response.headers["content-type"] == "application/json"
        assert response.headers.get_list("www-authenticate") == [
            'Bearer realm="api", error="insufficient_scope"'
        ]
        assert (event.outcome, event.token_id) == (Outcome.FORBIDDEN, issued[kind].token.id)


async def test_unknown_and_malformed_tokens_are_401(
    app: Any, asgi_client: Client, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    real = issued["read"].secret
    wrong_checksum = real[:-1] + ("A" if real[-1] != "A" else "B")
    unknown = tokens.policy.token_format.issue().value
    async with asgi_client(app) as client:
        for secret in (unknown, wrong_checksum, "apt_short"):
            response = await client.get("/rest/x", headers=bearer(secret))
            assert response.status_code == 401, secret
            assert response.json() == INVALID_TOKEN
            assert response.headers.get_list("www-authenticate") == CHALLENGES_401
        basic_wrong_user = await client.get("/rest/x", headers=basic("bob", real))
        assert (basic_wrong_user.status_code, basic_wrong_user.json()) == (401, INVALID_TOKEN)
    reasons = [e.reason for e in tokens.audit(action="authenticate")]
    assert reasons == [
        "Basic username is not the token's owner",
        "malformed token or wrong checksum",
        "malformed token or wrong checksum",
        "unknown token id",
    ]


async def test_forwarded_for_is_believed_only_from_a_trusted_proxy(
    clock: Clock, asgi_client: Client
) -> None:
    store = MemoryStore()
    try:
        with make_tokens(
            store, clock=clock, protected_paths=["/rest/"], trusted_proxies=["10.0.0.0/8"]
        ) as tokens:
            issued = tokens.create(actor="dave", name="ip", allowed_ips=["203.0.113.0/24"])
            app = tokens.asgi(make_app())
            cases = [
                ("10.1.2.3", "203.0.113.7", 200),
                ("10.1.2.3", "203.0.113.7, 198.51.100.9", 403),
                ("198.51.100.9", "203.0.113.7", 403),
            ]
            for peer, forwarded, status in cases:
                async with asgi_client(app, client=(peer, 5555)) as client:
                    response = await client.get(
                        "/rest/x",
                        headers={**bearer(issued.secret), "X-Forwarded-For": forwarded},
                    )
                assert response.status_code == status, (peer, forwarded)
            ips = [e.client_ip for e in tokens.audit(action="authenticate")]
            assert ips == ["198.51.100.9", "198.51.100.9", "203.0.113.7"]
    finally:
        store.close()


# -- the body --------------------------------------------------------------------------------


def count_body_messages(app: Any, counter: list[int]) -> Any:
    """Wrap ``app`` to count the ``http.request`` messages the transport sends."""

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        async def counted() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                counter.append(len(message.get("body", b"")))
            return message

        await app(scope, counted, send)

    return counting


async def test_multi_chunk_json_body_reaches_the_app_intact(
    app: Any, asgi_client: Client, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    parts = [b'{"project"', b': "ABC", "list": [1, ', b'2], "e": "\\u00e9"}']

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    counter: list[int] = []
    async with asgi_client(count_body_messages(app, counter)) as client:
        response = await client.post(
            "/rest/echo",
            headers={**bearer(issued["json"].secret), "Content-Type": "application/json"},
            content=body(),
        )
    assert len(counter) >= 3  # the body really came in several messages
    assert response.status_code == 200
    assert response.content == b"".join(parts)
    [event] = tokens.audit(action="authenticate")
    assert (event.outcome, event.user) == (Outcome.SUCCESS, "erin")


async def test_json_rule_refusals_and_413(
    app: Any, asgi_client: Client, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    limit = tokens.policy.max_body_bytes
    headers = {**bearer(issued["json"].secret), "Content-Type": "application/json"}
    too_large = json.dumps({"project": "ABC", "pad": "x" * limit}).encode()

    async def in_pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(too_large), 10):
            yield too_large[i : i + 10]

    async with asgi_client(app) as client:
        wrong = await client.post("/rest/echo", headers=headers, content=b'{"project": "X"}')
        assert (wrong.status_code, wrong.json()) == (403, INSUFFICIENT_SCOPE)
        whole = await client.post("/rest/echo", headers=headers, content=too_large)
        chunked = await client.post("/rest/echo", headers=headers, content=in_pieces())
    for response in (whole, chunked):
        assert response.status_code == 413
        assert response.json() == {
            "error": "request_too_large",
            "error_description": "The request body is larger than this token's rules may inspect.",
        }
    outcomes = [e.outcome for e in tokens.audit(action="authenticate")]
    assert outcomes == [Outcome.FORBIDDEN] * 3


async def test_body_without_json_rule_streams_through(
    app: Any, asgi_client: Client, issued: dict[str, IssuedToken]
) -> None:
    big = b"0123456789" * 100  # far over max_body_bytes: not read, no 413

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    async with asgi_client(app) as client:
        response = await client.post(
            "/rest/echo", headers=bearer(issued["write"].secret), content=body()
        )
    assert (response.status_code, response.content) == (200, big)


# -- pass-through and allow_other_auth ------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    ["Basic " + base64.b64encode(b"alice:hunter2").decode(), "Bearer some.jwt.value", None],
)
async def test_foreign_credentials_pass_through(
    app: Any, asgi_client: Client, tokens: ApiTokens, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with asgi_client(app) as client:
        response = await client.get("/rest/api/x", headers=headers)
    assert response.status_code == 200
    assert response.json() == {
        "path": "/rest/api/x",
        "authorization": authorization,
        "token_id": None,
        # request.user works for every request: anonymous when no token authenticated it
        "user": "",
        "authenticated": False,
        "scopes": [],
    }
    assert tokens.audit(action="authenticate") == []


async def test_unprotected_paths_are_untouched(
    app: Any, asgi_client: Client, tokens: ApiTokens
) -> None:
    async with asgi_client(app) as client:
        response = await client.get("/public/x", headers={"Authorization": "Bearer apt_bad"})
    assert response.status_code == 200
    assert response.json()["authorization"] == "Bearer apt_bad"
    assert tokens.audit(action="authenticate") == []


async def test_passwords_are_refused_when_other_auth_is_off(
    strict_tokens: ApiTokens, asgi_client: Client
) -> None:
    app = strict_tokens.asgi(make_app())
    issued = strict_tokens.create(actor="alice", name="ci")
    async with asgi_client(app) as client:
        password = await client.get("/rest/x", headers=basic("alice", "hunter2"))
        token = await client.get("/rest/x", headers=bearer(issued.secret))
        public = await client.get("/public/x", headers=basic("alice", "hunter2"))
    assert (password.status_code, password.json()) == (401, INVALID_TOKEN)
    assert password.headers.get_list("www-authenticate") == CHALLENGES_401
    assert (token.status_code, token.json()["user"]) == (200, "alice")
    assert (public.status_code, public.json().get("user")) == (200, "")  # anonymous


# -- websocket and lifespan (driven by hand) --------------------------------------------------


def test_websocket_with_a_valid_token_is_accepted(
    app: Any, raw_asgi: Any, make_scope: Any, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    auth = f"Bearer {issued['read'].secret}".encode()
    scope = make_scope("/rest/ws", kind="websocket", headers=[(b"authorization", auth)])
    sent = raw_asgi(app, scope, [{"type": "websocket.connect"}])
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "alice"
    [event] = tokens.audit(action="authenticate")
    assert (event.outcome, event.method, event.path) == (Outcome.SUCCESS, "GET", "/rest/ws")


@pytest.mark.parametrize("kind", ["unknown", "outside-allowed-ips"])
def test_websocket_with_a_bad_token_is_closed_1008(
    app: Any,
    raw_asgi: Any,
    make_scope: Any,
    tokens: ApiTokens,
    issued: dict[str, IssuedToken],
    kind: str,
) -> None:
    if kind == "unknown":
        secret, error = tokens.policy.token_format.issue().value, "invalid_token"
    else:
        secret, error = issued["ip"].secret, "insufficient_scope"
    scope = make_scope(
        "/rest/ws", kind="websocket", headers=[(b"authorization", f"Bearer {secret}".encode())]
    )
    sent = raw_asgi(app, scope, [{"type": "websocket.connect"}])
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": error}]


def test_lifespan_passes_through(raw_asgi: Any) -> None:
    # Every path protected and nothing but tokens accepted: a lifespan scope taken
    # for a request would be refused, so an app that starts and stops proves it was not.
    state: dict[str, str] = {}
    store = MemoryStore()
    try:
        with make_tokens(store, allow_other_auth=False) as tokens:
            app = tokens.asgi(make_app(state))
            scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
            inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
            sent = raw_asgi(app, scope, inbox)
            assert tokens.audit(action="authenticate") == []
    finally:
        store.close()
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert state == {"lifespan": "stopped"}


# -- TokenBackend with AuthenticationMiddleware -------------------------------------------------


def backend_app(tokens: ApiTokens) -> Starlette:
    @requires("authenticated")
    async def me(request: Request) -> Response:
        return JSONResponse(seen(request))

    @requires("write")
    async def write(request: Request) -> Response:
        return JSONResponse(seen(request))

    async def anyone(request: Request) -> Response:
        return JSONResponse(seen(request))

    return Starlette(
        routes=[
            Route("/rest/me", me),
            Route("/rest/write", write, methods=["GET", "POST"]),
            Route("/rest/anyone", anyone),
        ],
        middleware=[
            Middleware(
                AuthenticationMiddleware,
                backend=TokenBackend(tokens),
                on_error=TokenBackend.on_error,
            )
        ],
    )


async def test_backend_authenticates_and_refuses(
    tokens: ApiTokens, issued: dict[str, IssuedToken], asgi_client: Client
) -> None:
    app = backend_app(tokens)
    read = bearer(issued["read"].secret)
    async with asgi_client(app) as client:
        ok = await client.get("/rest/me", headers=read)
        unknown = await client.get(
            "/rest/me", headers=bearer(tokens.policy.token_format.issue().value)
        )
        malformed = await client.get("/rest/me", headers={"Authorization": "Basic !!"})
        scope = await client.post("/rest/write", headers=read)
        no_write = await client.get("/rest/write", headers=read)
        anonymous = await client.get("/rest/me")
        password = await client.get("/rest/anyone", headers=basic("alice", "pw"))
    assert ok.status_code == 200
    assert ok.json() == {
        "path": "/rest/me",
        "authorization": read["Authorization"],
        "token_id": issued["read"].token.id,  # the backend sets scope["apitokens.auth"] too
        "user": "alice",
        "authenticated": True,
        "scopes": ["authenticated", "read"],
    }
    assert (unknown.status_code, unknown.json()) == (401, INVALID_TOKEN)
    # Both challenges, folded into one header value (RFC 9110 §11.6.1).
    assert ", ".join(unknown.headers.get_list("www-authenticate")) == ", ".join(CHALLENGES_401)
    assert malformed.status_code == 400
    assert malformed.json() == {
        "error": "invalid_request",
        "error_description": "The request is malformed (its Authorization header or its target).",
    }
    assert (scope.status_code, scope.json()) == (403, INSUFFICIENT_SCOPE)
    assert no_write.status_code == 403  # starlette's @requires("write"): a read-only token
    assert anonymous.status_code == 403  # no token: unauthenticated, @requires refuses
    assert password.status_code == 200
    assert password.json()["authenticated"] is False  # left to the app
    outcomes = [e.outcome for e in tokens.audit(action="authenticate")]
    assert outcomes == [
        Outcome.SUCCESS,
        Outcome.FORBIDDEN,
        Outcome.FAILED,
        Outcome.FAILED,
        Outcome.SUCCESS,
    ]


async def test_backend_cannot_check_json_rules_and_refuses(
    tokens: ApiTokens, issued: dict[str, IssuedToken], asgi_client: Client
) -> None:
    async with asgi_client(backend_app(tokens)) as client:
        response = await client.post(
            "/rest/write", headers=bearer(issued["json"].secret), content=b'{"project": "ABC"}'
        )
    assert (response.status_code, response.json()) == (403, INSUFFICIENT_SCOPE)
    # DESIGN §5: every authentication but a pass-through is audited, this refusal too.
    events = [(e.outcome, e.token_id, e.user) for e in tokens.audit(action="authenticate")]
    assert events == [(Outcome.FORBIDDEN, issued["json"].token.id, "erin")]


async def test_backend_reuses_the_middleware_decision(
    tokens: ApiTokens, issued: dict[str, IssuedToken], asgi_client: Client
) -> None:
    app = tokens.asgi(backend_app(tokens))
    async with asgi_client(app) as client:
        response = await client.get("/rest/me", headers=bearer(issued["read"].secret))
    assert response.status_code == 200
    body = response.json()
    assert (body["user"], body["token_id"]) == ("alice", issued["read"].token.id)
    assert len(tokens.audit(action="authenticate")) == 1  # decided once, audited once
