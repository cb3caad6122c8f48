"""RequestFlow: the one exchange every adapter drives (decide, body, decide, record, answer)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from apitokens import (
    ApiTokens,
    AuthRequest,
    IssuedToken,
    Outcome,
    Requirement,
    Scope,
    StorageError,
)
from tests.support import Clock, bearer, get, make_tokens

JSON_RULE = "[POST].*/rest/.*[JsonData::kind==issue]"


@pytest.fixture
def tokens(clock: Clock) -> Iterator[ApiTokens]:
    with make_tokens(clock=clock, protected_paths=["/rest/"]) as tokens:
        yield tokens


@pytest.fixture
def clock() -> Clock:
    return Clock()


def post(path: str, issued: IssuedToken, body: bytes) -> AuthRequest:
    headers = [*bearer(issued.secret), ("Content-Type", "application/json")]
    return AuthRequest("POST", path, headers=headers, client_ip="192.0.2.1", body=body)


def events(tokens: ApiTokens) -> list[tuple[Outcome, str | None, str]]:
    return [(e.outcome, e.token_id, e.reason) for e in tokens.audit(action="authenticate")]


def test_the_body_is_read_only_when_a_json_rule_needs_it_and_decided_with(
    tokens: ApiTokens,
) -> None:
    plain = tokens.create(actor="alice", name="plain")
    ruled = tokens.create(
        actor="alice", name="ruled", scope=Scope.READ_WRITE, restrictions=[JSON_RULE]
    )
    reads: list[int] = []

    def read_body(limit: int) -> bytes:
        reads.append(limit)
        return json.dumps({"kind": "issue"}).encode()

    assert tokens.flow.run(get("/rest/x", bearer(plain.secret)), read_body).authenticated
    assert reads == []  # no JSON rule: the body stays unread, for the app
    result = tokens.flow.run(post("/rest/x", ruled, b""), read_body)
    assert result.authenticated and reads == [tokens.policy.max_body_bytes]

    def wrong_body(limit: int) -> bytes:
        return b'{"kind": "bug"}'

    refused = tokens.flow.run(post("/rest/x", ruled, b""), wrong_body)
    assert refused.status_code == 403
    assert [outcome for outcome, _, _ in events(tokens)] == [
        Outcome.FORBIDDEN,
        Outcome.SUCCESS,
        Outcome.SUCCESS,
    ]


def test_an_adapter_that_cannot_read_the_body_refuses_a_json_rule_audited(
    tokens: ApiTokens,
) -> None:
    ruled = tokens.create(
        actor="alice", name="ruled", scope=Scope.READ_WRITE, restrictions=[JSON_RULE]
    )
    result = asyncio.run(tokens.flow.run_async(post("/rest/x", ruled, b""), None))
    assert result.status_code == 403 and result.token is not None
    assert result.token.id == ruled.token.id
    [(outcome, token_id, reason)] = events(tokens)
    assert outcome is Outcome.FORBIDDEN and token_id == ruled.token.id
    assert "JSON-body rules" in reason


@pytest.mark.parametrize("run", ["sync", "async"])
def test_a_route_that_requires_a_token_refuses_a_pass_through_audited(
    tokens: ApiTokens, run: str
) -> None:
    public = get("/public/page")  # not even a protected path: the route asks for a token
    if run == "sync":
        result = tokens.flow.run(public, require=Requirement.TOKEN)
    else:
        result = asyncio.run(tokens.flow.run_async(public, require=Requirement.TOKEN))
    assert result.status_code == 401 and result.outcome is Outcome.FAILED
    # No credentials were sent: the Bearer challenge names no error (RFC 6750 §3.1).
    challenges = [v for k, v in result.headers if k == "WWW-Authenticate"]
    assert challenges and not any("error=" in value for value in challenges)
    [(outcome, token_id, reason)] = events(tokens)
    assert (outcome, token_id, reason) == (Outcome.FAILED, None, "route requires a token")
    # Without the requirement the same request passes, unaudited.
    assert tokens.flow.run(public).outcome is Outcome.PASS_THROUGH
    assert len(events(tokens)) == 1


def test_a_read_write_route_refuses_a_read_only_token_with_one_audit_row(
    tokens: ApiTokens,
) -> None:
    reader = tokens.create(actor="alice", name="reader")
    writer = tokens.create(actor="alice", name="writer", scope=Scope.READ_WRITE)
    refused = tokens.flow.run(get("/rest/x", bearer(reader.secret)), require=Requirement.READ_WRITE)
    assert refused.status_code == 403 and refused.error == "insufficient_scope"
    allowed = tokens.flow.run(get("/rest/x", bearer(writer.secret)), require=Requirement.READ_WRITE)
    assert allowed.authenticated
    assert events(tokens) == [
        (Outcome.SUCCESS, writer.token.id, "authenticated"),
        (Outcome.FORBIDDEN, reader.token.id, "route requires a READ_WRITE token"),
    ]
    # The refused request is no use of the token.
    assert tokens.get(reader.token.id).use_count == 0  # type: ignore[union-attr]
    assert tokens.get(writer.token.id).use_count == 1  # type: ignore[union-attr]


def test_a_requirement_on_an_earlier_result_is_a_decision_of_its_own(tokens: ApiTokens) -> None:
    reader = tokens.create(actor="alice", name="reader")
    request = get("/rest/x", bearer(reader.secret))
    earlier = tokens.flow.run(request)
    assert earlier.authenticated
    held = asyncio.run(tokens.flow.require_async(request, earlier, Requirement.TOKEN))
    assert held is earlier  # met: nothing more recorded
    refused = asyncio.run(tokens.flow.require_async(request, earlier, Requirement.READ_WRITE))
    assert refused.status_code == 403
    assert [outcome for outcome, _, _ in events(tokens)] == [Outcome.FORBIDDEN, Outcome.SUCCESS]


def test_records_that_cannot_be_queued_make_a_503_never_a_success(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="ci")
    request = get("/rest/x", bearer(issued.secret))
    assert tokens.flow.run(request).authenticated
    tokens.close()  # the writer is gone: nothing more can be audited
    result = tokens.flow.run(request)
    assert result.status_code == 503 and not result.authenticated
    assert asyncio.run(tokens.flow.run_async(request)).status_code == 503


def test_a_store_that_fails_is_a_503_audited(clock: Clock) -> None:
    from apitokens import MemoryStore

    class Broken(MemoryStore):
        def get(self, token_id: str) -> None:
            raise StorageError("disk on fire")

    store = Broken()
    with make_tokens(store, clock=clock, protected_paths=["/rest/"]) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        result = tokens.flow.run(get("/rest/x", bearer(issued.secret)))
        assert result.status_code == 503
        [(outcome, token_id, reason)] = events(tokens)
        assert outcome is Outcome.FAILED and token_id == issued.token.id
        assert reason == "token store unavailable: disk on fire"


def test_the_middleware_take_a_requirement_for_the_whole_app(tokens: ApiTokens) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
        return Response(str(environ.get("REMOTE_USER")))(environ, start_response)

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.user.display_name)

    asgi_app = tokens.asgi(
        Starlette(routes=[Route("/{path:path}", endpoint)]), require=Requirement.READ_WRITE
    )
    reader = tokens.create(actor="alice", name="reader")
    writer = tokens.create(actor="alice", name="writer", scope=Scope.READ_WRITE)
    wsgi = Client(tokens.wsgi(wsgi_app, require=Requirement.READ_WRITE))

    async def asgi_get(path: str, **kw: Any) -> httpx.Response:
        transport = httpx.ASGITransport(app=asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, **kw)

    def asgi(path: str, **kw: Any) -> httpx.Response:
        return asyncio.run(asgi_get(path, **kw))

    for send in (wsgi.get, asgi):
        assert send("/public").status_code == 401  # an unprotected path, but the app requires
        read = send("/rest/x", headers={"Authorization": f"Bearer {reader.secret}"})
        assert read.status_code == 403
        assert json.loads(read.text)["error"] == "insufficient_scope"
        ok = send("/public", headers={"Authorization": f"Bearer {writer.secret}"})
        assert ok.status_code == 200 and ok.text == "alice"
    assert [outcome for outcome, _, _ in events(tokens)] == [
        Outcome.SUCCESS,
        Outcome.FORBIDDEN,
        Outcome.FAILED,
    ] * 2


def test_refuses_says_which_requirement_refuses_which_result() -> None:
    from apitokens import Outcome, Requirement, Scope

    with make_tokens() as tokens:
        flow = tokens.flow
        read = tokens.create(actor="alice", name="r")
        write = tokens.create(actor="alice", name="w", scope=Scope.READ_WRITE)
        results = {
            "none": tokens.authenticate(get("/x")),
            "read": tokens.authenticate(get("/x", bearer(read.secret))),
            "write": tokens.authenticate(get("/x", bearer(write.secret))),
            "refused": tokens.authenticate(get("/x", bearer(_altered(read.secret)))),
        }
        assert results["none"].outcome is Outcome.PASS_THROUGH
        assert results["refused"].status_code == 401
        table = {
            (name, require): flow.refuses(result, require)
            for name, result in results.items()
            for require in Requirement
        }
        assert [key for key, refused in table.items() if refused] == [
            ("none", Requirement.TOKEN),
            ("none", Requirement.READ_WRITE),
            ("read", Requirement.READ_WRITE),
        ]
        # And require() refuses exactly those, recording a refusal of its own.
        for (name, require), refused in table.items():
            checked = flow.require(get("/x"), results[name], require)
            assert (checked is not results[name]) is refused


def _altered(secret: str) -> str:
    """``secret`` with its last character changed (never to itself)."""
    return secret[:-1] + ("x" if secret[-1] != "x" else "y")
