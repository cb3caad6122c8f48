"""A real FastAPI app: ``app = tokens.asgi(app)``, and ``Depends(RequireToken(tokens))``.

Driven through ``httpx.ASGITransport``; the lifespan by hand (``raw_asgi``).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route
# signatures at runtime, and ``Annotated[..., Depends(...)]`` aliases made
# inside ``make_app`` cannot be resolved from strings.

import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, Response

from apitokens import ApiTokens, AuthResult, IssuedToken, MemoryStore, Outcome
from apitokens.starlette import RequireToken
from tests.support import make_tokens

INSIDE_IP = "203.0.113.7"  # in the "ip" token's allowed network
OUTSIDE_IP = "198.51.100.9"
BEARER_401 = (
    'Bearer realm="api", error="invalid_token", '
    'error_description="The access token is missing, invalid, expired or revoked."'
)
BASIC_401 = 'Basic realm="api", charset="UTF-8"'
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


def make_app(tokens: ApiTokens, state: dict[str, str] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state is not None:
            state["lifespan"] = "started"
        yield
        if state is not None:
            state["lifespan"] = "stopped"

    app = FastAPI(lifespan=lifespan)
    any_token = Annotated[AuthResult, Depends(RequireToken(tokens))]
    write_token = Annotated[AuthResult, Depends(RequireToken(tokens, write=True))]

    @app.get("/rest/me")
    async def me(auth: any_token) -> dict[str, Any]:
        assert auth.token is not None
        return {"user": auth.user, "token_id": auth.token.id, "scopes": auth.scopes}

    @app.api_route("/rest/admin", methods=["GET", "POST"])
    async def admin(auth: write_token) -> dict[str, Any]:
        return {"user": auth.user}

    @app.post("/rest/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    @app.api_route("/rest/open/{rest:path}", methods=["GET", "POST"])
    async def open_(request: Request) -> dict[str, Any]:
        # request.user and request.auth work on every request (DESIGN §4), anonymous too.
        return {
            "user": request.user.display_name,
            "scopes": request.auth.scopes,
            "authorization": request.headers.get("authorization"),
        }

    @app.get("/public/{rest:path}")
    async def public(request: Request) -> dict[str, Any]:
        return {"authorization": request.headers.get("authorization")}

    return app


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture
def wrapped(tokens: ApiTokens) -> Any:
    return tokens.asgi(make_app(tokens))


# -- middleware + dependency -----------------------------------------------------------------


async def test_dependency_returns_the_middleware_result(
    wrapped: Any, asgi_client: Client, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    token = issued["read"]
    async with asgi_client(wrapped) as client:
        response = await client.get("/rest/me", headers=bearer(token.secret))
    assert response.status_code == 200
    assert response.json() == {
        "user": "alice",
        "token_id": token.token.id,
        "scopes": ["authenticated", "read"],
    }
    assert len(tokens.audit(action="authenticate")) == 1  # one decision, one event


@pytest.mark.parametrize("wrap", [True, False], ids=["middleware", "dependency-alone"])
async def test_write_dependency_refuses_a_read_only_token(
    tokens: ApiTokens, asgi_client: Client, issued: dict[str, IssuedToken], wrap: bool
) -> None:
    app = tokens.asgi(make_app(tokens)) if wrap else make_app(tokens)
    async with asgi_client(app) as client:
        read = await client.get("/rest/admin", headers=bearer(issued["read"].secret))
        write = await client.get("/rest/admin", headers=bearer(issued["write"].secret))
        write_post = await client.post("/rest/admin", headers=bearer(issued["write"].secret))
    assert read.status_code == 403
    assert read.json() == {"detail": INSUFFICIENT_SCOPE["error_description"]}
    assert read.headers.get_list("www-authenticate") == [
        'Bearer realm="api", error="insufficient_scope"'
    ]
    assert (write.status_code, write.json()) == (200, {"user": "bob"})
    assert (write_post.status_code, write_post.json()) == (200, {"user": "bob"})
    # DESIGN §4/§5: every refusal's reason goes to the audit log, this one included.
    forbidden = [
        (e.user, e.token_id, e.reason)
        for e in tokens.audit(action="authenticate")
        if e.outcome is Outcome.FORBIDDEN
    ]
    assert forbidden == [("alice", issued["read"].token.id, "route requires a READ_WRITE token")]


async def test_dependency_without_a_token_is_401(
    wrapped: Any, asgi_client: Client, tokens: ApiTokens
) -> None:
    async with asgi_client(wrapped) as client:
        anonymous = await client.get("/rest/me")
        password = await client.get("/rest/me", headers=basic("alice", "hunter2"))
    for response in (anonymous, password):
        assert response.status_code == 401
        assert response.json() == {"detail": INVALID_TOKEN["error_description"]}
    # No error code in the challenge when no credentials were sent (RFC 6750 §3.1);
    # a password was invalid here, as under allow_other_auth=False.
    assert ", ".join(anonymous.headers.get_list("www-authenticate")) == (
        f'Bearer realm="api", {BASIC_401}'
    )
    assert 'error="invalid_token"' in password.headers["www-authenticate"]
    # Like allow_other_auth=False on the whole path, a 401 here is a failed
    # authentication and is audited (DESIGN §5: only pass-through is not).
    events = tokens.audit(action="authenticate")
    assert [(e.outcome, e.method, e.path) for e in events] == [
        (Outcome.FAILED, "GET", "/rest/me"),
        (Outcome.FAILED, "GET", "/rest/me"),
    ]


async def test_dependency_alone_decides_without_the_middleware(
    tokens: ApiTokens, issued: dict[str, IssuedToken], asgi_client: Client
) -> None:
    app = make_app(tokens)  # not wrapped: RequireToken decides itself
    unknown = tokens.policy.token_format.issue().value
    async with asgi_client(app) as client:
        ok = await client.get("/rest/me", headers=bearer(issued["read"].secret))
        bad = await client.get("/rest/me", headers=bearer(unknown))
        outside = await client.get("/rest/me", headers=bearer(issued["ip"].secret))
    assert (ok.status_code, ok.json()["user"]) == (200, "alice")
    assert bad.status_code == 401
    assert ", ".join(bad.headers.get_list("www-authenticate")) == f"{BEARER_401}, {BASIC_401}"
    assert outside.status_code == 403
    events = [(e.outcome, e.user) for e in tokens.audit(action="authenticate")]
    assert events == [
        (Outcome.FORBIDDEN, "dave"),
        (Outcome.FAILED, None),
        (Outcome.SUCCESS, "alice"),
    ]


async def test_dependency_alone_checks_json_rules_on_the_body(
    tokens: ApiTokens, issued: dict[str, IssuedToken], asgi_client: Client
) -> None:
    app = FastAPI()  # not wrapped: RequireToken reads the body itself

    @app.post("/rest/echo")
    async def echo(
        request: Request, auth: Annotated[AuthResult, Depends(RequireToken(tokens))]
    ) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    headers = {**bearer(issued["json"].secret), "Content-Type": "application/json"}
    body = b'{"x": [1, 2], "project": "ABC"}'
    async with asgi_client(app) as client:
        ok = await client.post("/rest/echo", headers=headers, content=body)
        wrong = await client.post("/rest/echo", headers=headers, content=b'{"project": "X"}')
    assert (ok.status_code, ok.content) == (200, body)
    assert wrong.status_code == 403
    assert wrong.json() == {"detail": INSUFFICIENT_SCOPE["error_description"]}
    outcomes = [e.outcome for e in tokens.audit(action="authenticate")]
    assert outcomes == [Outcome.FORBIDDEN, Outcome.SUCCESS]


@pytest.mark.parametrize("wrap", [True, False], ids=["middleware", "dependency-alone"])
async def test_json_rule_reads_no_more_body_than_the_limit(
    tokens: ApiTokens, issued: dict[str, IssuedToken], asgi_client: Client, wrap: bool
) -> None:
    """DESIGN §4 / issue 3: the body is read up to ``max_body_bytes`` and no further (413)."""
    app = FastAPI()

    @app.post("/rest/echo")
    async def echo(
        request: Request, auth: Annotated[AuthResult, Depends(RequireToken(tokens))]
    ) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    limit = tokens.policy.max_body_bytes
    received: list[int] = []

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        async def counted() -> Any:
            message = await receive()
            received.append(len(message.get("body", b"")))
            return message

        await (tokens.asgi(app) if wrap else app)(scope, counted, send)

    async def huge() -> AsyncIterator[bytes]:
        yield b'{"project": "ABC", "pad": "'
        for _ in range(200):
            yield b"x" * limit
        yield b'"}'

    async with asgi_client(counting) as client:
        response = await client.post(
            "/rest/echo",
            headers={**bearer(issued["json"].secret), "Content-Type": "application/json"},
            content=huge(),
        )
    assert response.status_code == 413
    assert sum(received) <= 2 * limit  # stopped one message past the limit, not 200 later


# -- the middleware on a FastAPI app -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "method", "path", "ip", "status", "user"),
    [
        ("read", "GET", "/rest/open/x", "127.0.0.1", 200, "alice"),
        ("read", "POST", "/rest/open/x", "127.0.0.1", 403, None),
        ("rules", "GET", "/rest/open/api/x", "127.0.0.1", 403, None),
        ("ip", "GET", "/rest/open/x", INSIDE_IP, 200, "dave"),
        ("ip", "GET", "/rest/open/x", OUTSIDE_IP, 403, None),
        ("write", "POST", "/rest/open/x", OUTSIDE_IP, 200, "bob"),
    ],
)
async def test_scope_rules_and_ips(
    wrapped: Any,
    asgi_client: Client,
    tokens: ApiTokens,
    issued: dict[str, IssuedToken],
    kind: str,
    method: str,
    path: str,
    ip: str,
    status: int,
    user: str | None,
) -> None:
    async with asgi_client(wrapped, client=(ip, 1234)) as client:
        response = await client.request(method, path, headers=bearer(issued[kind].secret))
    assert response.status_code == status
    [event] = tokens.audit(action="authenticate")
    if status == 200:
        assert response.json()["user"] == user
        assert (event.outcome, event.user, event.client_ip) == (Outcome.SUCCESS, user, ip)
    else:
        assert response.json() == INSUFFICIENT_SCOPE
        assert (event.outcome, event.token_id) == (Outcome.FORBIDDEN, issued[kind].token.id)


async def test_unknown_token_is_401_from_the_middleware(
    wrapped: Any, asgi_client: Client, tokens: ApiTokens
) -> None:
    async with asgi_client(wrapped) as client:
        response = await client.get(
            "/rest/open/x", headers=bearer(tokens.policy.token_format.issue().value)
        )
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)
    assert response.headers.get_list("www-authenticate") == [BEARER_401, BASIC_401]
    assert response.headers["content-type"] == "application/json"


async def test_json_post_is_echoed_and_413_over_the_limit(
    wrapped: Any, asgi_client: Client, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    headers = {**bearer(issued["json"].secret), "Content-Type": "application/json"}
    parts = [b'{"project":', b' "ABC",', b' "n": null}']

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    too_large = b'{"project": "ABC", "pad": "' + b"y" * tokens.policy.max_body_bytes + b'"}'
    async with asgi_client(wrapped) as client:
        ok = await client.post("/rest/echo", headers=headers, content=body())
        big = await client.post("/rest/echo", headers=headers, content=too_large)
        other = await client.post("/rest/echo", headers=headers, content=b'{"project": "ABCD"}')
    assert (ok.status_code, ok.content) == (200, b"".join(parts))
    assert big.status_code == 413
    assert big.json()["error"] == "request_too_large"
    assert (other.status_code, other.json()) == (403, INSUFFICIENT_SCOPE)


@pytest.mark.parametrize(
    "authorization",
    ["Basic " + base64.b64encode(b"alice:hunter2").decode(), "Bearer not-ours-at-all"],
)
async def test_foreign_credentials_pass_through(
    wrapped: Any, asgi_client: Client, tokens: ApiTokens, authorization: str
) -> None:
    async with asgi_client(wrapped) as client:
        response = await client.post("/rest/open/x", headers={"Authorization": authorization})
    assert response.status_code == 200
    assert response.json() == {"user": "", "scopes": [], "authorization": authorization}
    assert tokens.audit(action="authenticate") == []


async def test_unprotected_path_untouched(
    wrapped: Any, asgi_client: Client, tokens: ApiTokens
) -> None:
    async with asgi_client(wrapped) as client:
        response = await client.get("/public/x", headers={"Authorization": "Bearer apt_x"})
    assert (response.status_code, response.json()) == (200, {"authorization": "Bearer apt_x"})
    assert tokens.audit(action="authenticate") == []


async def test_other_auth_off_refuses_passwords(
    strict_tokens: ApiTokens, asgi_client: Client
) -> None:
    app = strict_tokens.asgi(make_app(strict_tokens))
    async with asgi_client(app) as client:
        response = await client.get("/rest/open/x", headers=basic("alice", "hunter2"))
    assert (response.status_code, response.json()) == (401, INVALID_TOKEN)
    assert response.headers.get_list("www-authenticate") == [BEARER_401, BASIC_401]


def test_lifespan_passes_through(raw_asgi: Any) -> None:
    # Every path protected, only tokens accepted: only a passed-through lifespan starts.
    state: dict[str, str] = {}
    store = MemoryStore()
    try:
        with make_tokens(store, allow_other_auth=False) as tokens:
            sent = raw_asgi(
                tokens.asgi(make_app(tokens, state)),
                {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}],
            )
    finally:
        store.close()
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert state == {"lifespan": "stopped"}
