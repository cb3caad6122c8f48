"""The ASGI adapter: request_from_scope, and the warm path on the loop and its fallbacks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apitokens import ApiTokens, AuthRequest, AuthResult, IssuedToken, Outcome
from apitokens.asgi import ANONYMOUS, TokenAuth, TokenUser, request_from_scope
from tests.support import Clock, make_tokens

Message = dict[str, Any]
CANONICAL = {
    "authorization",
    "x-forwarded-for",
    "content-type",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
}


def _wanted(name: bytes) -> str | None:
    """The core's name for a header as an ASGI server passes it.

    Only the method overrides are also read with ``_`` for ``-``: a client's
    ``X_Forwarded_For`` must never be believed as the proxy chain.
    """
    exact = name.decode("latin-1")
    if exact in CANONICAL:
        return exact
    folded = exact.replace("_", "-")
    return folded if folded in CANONICAL and "method" in folded else None


def _reference_app_path(scope: dict[str, Any]) -> str:
    """What a mounted app routes: Starlette's get_route_path, quoted."""
    root = scope.get("root_path", "")
    if not root:
        return ""
    path = scope.get("path", "/")
    if path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root) :]
    return quote(path.encode("utf-8", "surrogateescape"), safe="/!$&'()*+,;=:@-._~") or "/"


def _reference_path(scope: dict[str, Any]) -> str:
    raw = scope.get("raw_path")
    path = scope.get("path", "/")
    # Quoted as the app path is: one quoting for both (RFC 3986 pchar left as it is).
    path = raw.decode("latin-1") if raw else quote(path.encode("utf-8"), safe="/!$&'()*+,;=:@-._~")
    root = scope.get("root_path", "")
    if root and not (path == root or path.startswith(root.rstrip("/") + "/")):
        path = root.rstrip("/") + path
    return path.split("?", 1)[0]


def reference(scope: dict[str, Any], body: bytes = b"") -> AuthRequest:
    """A second, plain writing of the adapter's translation, to hold it to."""
    headers = [
        (wanted, value.decode("latin-1"))
        for name, value in scope.get("headers", ())
        if (wanted := _wanted(name)) is not None
    ]
    client = scope.get("client")
    query = scope.get("query_string", b"")
    return AuthRequest(
        method=scope.get("method", "GET") if scope["type"] == "http" else "GET",
        path=_reference_path(scope),
        query=query.decode("latin-1"),
        headers=headers,
        client_ip=client[0] if client else "",
        body=body,
        app_path=_reference_app_path(scope),
    )


HEADER_NAMES = st.sampled_from(
    [
        b"authorization",
        b"x-forwarded-for",
        b"host",
        b"Authorization",
        b"authorization ",
        b"x",
        b"content-type",
        b"x-http-method-override",
        b"x-method-override",
        b"x_http_method_override",
        b"x-http_method",
        b"content_type",
        b"x_forwarded_for",
    ]
)
TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
REQUIRED: dict[str, st.SearchStrategy[Any]] = {
    "type": st.sampled_from(["http", "websocket"]),
    "headers": st.lists(st.tuples(HEADER_NAMES, st.binary(max_size=12)), max_size=6),
}
OPTIONAL: dict[str, st.SearchStrategy[Any]] = {
    "method": st.sampled_from(["GET", "POST", "delete"]),
    "path": st.one_of(TEXT, st.sampled_from(["/app", "/app/rest/x", "/apprest", "/app/"])),
    "raw_path": st.sampled_from([b"", b"/rest/a%2Fb", b"/app/x?y=1", b"/r\xe9st?", b"?"]),
    "root_path": st.sampled_from(["", "/app", "/app/"]),
    "query_string": st.binary(max_size=12),
    "client": st.sampled_from([None, ("192.0.2.1", 5000), ("::1", 1)]),
}
SCOPES = st.fixed_dictionaries(REQUIRED, optional=OPTIONAL)


@given(scope=SCOPES, body=st.binary(max_size=10))
def test_request_from_scope_is_what_the_public_constructor_builds(
    scope: dict[str, Any], body: bytes
) -> None:
    assert request_from_scope(scope, body) == reference(scope, body)


def test_every_authorization_header_reaches_the_core_in_order() -> None:
    scope = {
        "type": "http",
        "method": "GET",
        "raw_path": b"/rest/x?ignored",
        "query_string": b"a=1",
        "client": ("10.0.0.1", 1),
        "headers": [
            (b"authorization", b"Bearer one"),
            (b"host", b"h"),
            (b"x-forwarded-for", b"203.0.113.9"),
            (b"authorization", b"Basic \xe9"),  # latin-1, as sent
        ],
    }
    request = request_from_scope(scope)
    assert request.path == "/rest/x"
    assert request.headers == (
        ("authorization", "Bearer one"),
        ("x-forwarded-for", "203.0.113.9"),
        ("authorization", "Basic \xe9"),
    )
    assert request.header_values("authorization") == ["Bearer one", "Basic \xe9"]


# -- the middleware --------------------------------------------------------------


@pytest.fixture
def tokens(clock: Clock) -> Iterator[ApiTokens]:
    t = make_tokens(clock=clock, protected_paths=["/rest/"])
    yield t
    t.close()


@pytest.fixture
def issued(tokens: ApiTokens) -> IssuedToken:
    return tokens.create(actor="alice", name="ci")


@pytest.fixture
def to_thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[Callable[..., Any]]:
    """What the adapter sends to a worker thread (it must not on the warm path)."""
    calls: list[Callable[..., Any]] = []
    real = asyncio.to_thread

    async def counting(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        calls.append(func)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    return calls


def scope_for(secret: str, path: str = "/rest/x") -> Message:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"h"), (b"authorization", f"Bearer {secret}".encode())],
        "client": ("192.0.2.1", 5000),
    }


def call(tokens: ApiTokens, scope: Message) -> tuple[Message | None, list[Message]]:
    """Run ``tokens.asgi(app)`` once; return the scope the app got (or None) and what was sent."""
    seen: list[Message] = []
    sent: list[Message] = []

    async def app(scope: Message, receive: Any, send: Any) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    middleware: Any = tokens.asgi(app)  # type: ignore[arg-type]  # test doubles, plain dicts
    asyncio.run(middleware(scope, receive, send))
    return (seen[0] if seen else None), sent


def assert_authenticated(scope: Message | None, issued: IssuedToken) -> None:
    assert scope is not None
    result = scope["apitokens.auth"]
    assert isinstance(result, AuthResult) and result.outcome is Outcome.SUCCESS
    assert isinstance(scope["user"], TokenUser) and scope["user"].result is result
    assert scope["user"].display_name == "alice"
    assert scope["user"].token_id == issued.token.id
    assert isinstance(scope["auth"], TokenAuth)
    assert scope["auth"].scopes == ["authenticated", "read"]


def test_warm_requests_are_decided_on_the_loop_and_the_server_scope_is_copied(
    tokens: ApiTokens, issued: IssuedToken, to_thread_calls: list[Callable[..., Any]]
) -> None:
    cold, _ = call(tokens, scope_for(issued.secret))
    # The first request hashes the secret: off the event loop.
    assert to_thread_calls == [tokens._authenticator.safe_decide]
    assert_authenticated(cold, issued)
    to_thread_calls.clear()

    server_scope = scope_for(issued.secret)
    original = dict(server_scope)
    warm, sent = call(tokens, server_scope)
    assert to_thread_calls == []
    assert_authenticated(warm, issued)
    assert warm is not None
    assert warm is not server_scope and server_scope == original  # never changed in place
    added = ("apitokens.auth", "apitokens.flow", "user", "auth")
    assert {k: v for k, v in warm.items() if k not in added} == (original)
    assert sent[0]["status"] == 200
    # A fresh user and scopes list per request: an app changing one cannot reach another.
    again, _ = call(tokens, scope_for(issued.secret))
    assert again is not None
    assert again["user"] is not warm["user"] and again["auth"] is not warm["auth"]
    assert again["auth"].scopes is not warm["auth"].scopes
    assert tokens.get(issued.token.id).use_count == 3  # type: ignore[union-attr]


def test_a_full_audit_buffer_waits_off_the_loop(
    tokens: ApiTokens,
    issued: IssuedToken,
    to_thread_calls: list[Callable[..., Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call(tokens, scope_for(issued.secret))  # warm it
    to_thread_calls.clear()
    writer = tokens._writer
    real_submit = writer.submit
    blocking: list[bool] = []

    def full(records: Any, *, block: bool = True) -> bool:
        blocking.append(block)
        return real_submit(records, block=True) if block else False

    monkeypatch.setattr(writer, "submit", full)
    scope, _ = call(tokens, scope_for(issued.secret))
    assert blocking == [False, True]
    assert to_thread_calls == [tokens.flow._record]
    assert_authenticated(scope, issued)
    tokens.flush()
    assert tokens.get(issued.token.id).use_count == 2  # type: ignore[union-attr]


def test_a_closed_writer_is_503_without_reaching_the_app(
    tokens: ApiTokens, issued: IssuedToken
) -> None:
    call(tokens, scope_for(issued.secret))  # warm it
    tokens.close()
    scope, sent = call(tokens, scope_for(issued.secret))
    assert scope is None
    assert sent[0]["status"] == 503


def test_refusals_and_pass_through_are_unchanged(tokens: ApiTokens, issued: IssuedToken) -> None:
    call(tokens, scope_for(issued.secret))
    wrong = issued.secret[:-1] + ("y" if issued.secret.endswith("x") else "x")
    scope, sent = call(tokens, scope_for(wrong))
    assert scope is None and sent[0]["status"] == 401
    server_scope = scope_for(issued.secret, path="/public")
    scope, sent = call(tokens, server_scope)
    # A copy (the server's scope is untouched) with an anonymous user for request.user.
    assert scope is not None and scope is not server_scope and "user" not in server_scope
    assert scope["user"] is ANONYMOUS and not scope["user"].is_authenticated
    assert scope["auth"].scopes == []
    assert "apitokens.auth" not in scope
    two = scope_for(issued.secret)
    two["headers"].append((b"authorization", f"Bearer {issued.secret}".encode()))
    scope, sent = call(tokens, two)
    assert scope is None and sent[0]["status"] == 400
