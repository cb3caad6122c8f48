"""JSON rules against real apps: the form/JSON polyglot, large bodies (issue 13, items 2 and 7).

- A body that is valid JSON and a valid form passes a JsonData clause only when its
  Content-Type says JSON; sent as a form it is refused before the app (Flask's
  ``request.form``, a FastAPI ``Form()`` endpoint) can act on the form's fields.
- A legitimate large JSON body is allowed: parsing it is not charged to the regex budget.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures at runtime.

from collections.abc import Callable, Iterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Form, Request
from flask import Flask, Response, jsonify, request

from apitokens import ApiTokens, IssuedToken, MemoryStore, Outcome, Scope
from apitokens.starlette import RequireToken
from tests.support import make_tokens

# Valid JSON whose string value is also a form: x-www-form-urlencoded reads the fields
# '{"fields":{"project":{"key":"JRA"}},"x":"', 'project=EVIL' and 'z="}'.
POLYGLOT = b'{"fields":{"project":{"key":"JRA"}},"x":"&project=EVIL&z="}'
RULE = "[POST].*/rest/issue[JsonData::fields.project.key==JRA]"
FORM = "application/x-www-form-urlencoded"
BIG_RULE = "[POST].*/rest/samples[JsonData::project==ABC]"
FORBIDDEN = {
    "error": "insufficient_scope",
    "error_description": "The access token does not allow this request.",
}

Client = Callable[..., httpx.AsyncClient]


def big_body(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes: ``project`` and a long run of samples.

    Numbers are what a JSON parser spends most on per byte: this one takes the rule
    checker about 100 ms to read (0.79 MB), twice the default regex budget of 50 ms.
    """
    head = b'{"project":"ABC","samples":['
    count = (size - len(head) - 2) // 2
    body = head + b",".join(b"%d" % (i % 10) for i in range(count)) + b"]}"
    return body + b" " * (size - len(body))


@pytest.fixture
def tokens() -> Iterator[ApiTokens]:
    """Default policy (1 MiB body limit, 50 ms regex budget), protecting ``/rest/``."""
    store = MemoryStore()
    try:
        with make_tokens(store, protected_paths=["/rest/"]) as tokens:
            yield tokens
    finally:
        store.close()


@pytest.fixture
def jira(tokens: ApiTokens) -> IssuedToken:
    return tokens.create(
        actor="alice", name="jira", scope=Scope.READ_WRITE, restrictions=[RULE, BIG_RULE]
    )


def headers(issued: IssuedToken, content_type: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issued.secret}", "Content-Type": content_type}


def forbidden_reasons(tokens: ApiTokens) -> list[str]:
    return [
        event.reason
        for event in tokens.audit(action="authenticate", limit=100)
        if event.outcome is Outcome.FORBIDDEN
    ]


# -- Flask: app.wsgi_app = tokens.wsgi(app.wsgi_app) -----------------------------------------


def flask_app(tokens: ApiTokens, acted: list[Any]) -> Flask:
    app = Flask(__name__)

    @app.post("/rest/issue")
    def issue() -> Response:
        # What a form-and-JSON endpoint does: a form if it is one, else the JSON.
        project = request.form.get("project") or request.get_json()["fields"]["project"]["key"]
        acted.append(project)
        return jsonify(project=project)

    @app.post("/rest/samples")
    def samples() -> Response:
        acted.append(len(request.get_data()))
        return jsonify(size=len(request.get_data()))

    app.wsgi_app = tokens.wsgi(app.wsgi_app)  # type: ignore[method-assign]
    return app


def test_flask_form_polyglot_is_refused_before_the_app(
    tokens: ApiTokens, jira: IssuedToken
) -> None:
    acted: list[Any] = []
    client = flask_app(tokens, acted).test_client()
    refused = client.post("/rest/issue", headers=headers(jira, FORM), data=POLYGLOT)
    assert (refused.status_code, refused.get_json()) == (403, FORBIDDEN)
    assert acted == []  # the endpoint never ran: it would have acted on project=EVIL
    allowed = client.post("/rest/issue", headers=headers(jira, "application/json"), data=POLYGLOT)
    assert (allowed.status_code, allowed.get_json()) == (200, {"project": "JRA"})
    assert acted == ["JRA"]
    assert any(f"body is not JSON (Content-Type {FORM})" in r for r in forbidden_reasons(tokens))


@pytest.mark.parametrize(
    "content_type", ["text/plain", "multipart/form-data; boundary=x", "application/jsonx"]
)
def test_flask_other_media_types_are_refused(
    tokens: ApiTokens, jira: IssuedToken, content_type: str
) -> None:
    acted: list[Any] = []
    client = flask_app(tokens, acted).test_client()
    refused = client.post("/rest/issue", headers=headers(jira, content_type), data=POLYGLOT)
    assert refused.status_code == 403
    assert acted == []


def test_flask_large_json_body_is_allowed(tokens: ApiTokens, jira: IssuedToken) -> None:
    acted: list[Any] = []
    client = flask_app(tokens, acted).test_client()
    body = big_body(790_000)
    response = client.post("/rest/samples", headers=headers(jira, "application/json"), data=body)
    assert (response.status_code, response.get_json()) == (200, {"size": 790_000})
    assert acted == [790_000]


# -- FastAPI: app = tokens.asgi(app), and RequireToken alone ------------------------------------


def fastapi_app(tokens: ApiTokens, acted: list[Any], *, dependency: bool = False) -> Any:
    app = FastAPI()
    guard = [Depends(RequireToken(tokens))] if dependency else []

    @app.post("/rest/issue", dependencies=guard)
    async def issue(project: Annotated[str, Form()]) -> dict[str, str]:
        acted.append(project)
        return {"project": project}

    @app.post("/rest/samples", dependencies=guard)
    async def samples(request: Request) -> dict[str, int]:
        size = len(await request.body())
        acted.append(size)
        return {"size": size}

    return app if dependency else tokens.asgi(app)


MIDDLEWARE = pytest.param(False, id="middleware")
DEPENDENCY = pytest.param(True, id="dependency-alone")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "dependency",
    [MIDDLEWARE, DEPENDENCY],
)
async def test_fastapi_form_polyglot_is_refused_before_the_app(
    tokens: ApiTokens, jira: IssuedToken, asgi_client: Client, dependency: bool
) -> None:
    acted: list[Any] = []
    async with asgi_client(fastapi_app(tokens, acted, dependency=dependency)) as client:
        refused = await client.post("/rest/issue", headers=headers(jira, FORM), content=POLYGLOT)
        # As JSON the rule allows it, and the Form() endpoint finds no form field.
        as_json = await client.post(
            "/rest/issue", headers=headers(jira, "application/json"), content=POLYGLOT
        )
    assert refused.status_code == 403
    if not dependency:
        assert refused.json() == FORBIDDEN
    assert acted == []  # never project=EVIL
    assert as_json.status_code == 422
    assert any(f"body is not JSON (Content-Type {FORM})" in r for r in forbidden_reasons(tokens))


@pytest.mark.anyio
async def test_fastapi_two_content_types_are_refused(
    tokens: ApiTokens, jira: IssuedToken, asgi_client: Client
) -> None:
    acted: list[Any] = []
    two = [
        ("Authorization", f"Bearer {jira.secret}"),
        ("Content-Type", "application/json"),
        ("Content-Type", FORM),
    ]
    async with asgi_client(fastapi_app(tokens, acted)) as client:
        refused = await client.post("/rest/issue", headers=two, content=POLYGLOT)
    assert refused.status_code == 403
    assert acted == []
    assert any("more than one Content-Type header" in r for r in forbidden_reasons(tokens))


@pytest.mark.anyio
@pytest.mark.parametrize("dependency", [MIDDLEWARE, DEPENDENCY])
async def test_fastapi_large_json_body_is_allowed(
    tokens: ApiTokens, jira: IssuedToken, asgi_client: Client, dependency: bool
) -> None:
    acted: list[Any] = []
    body = big_body(790_000)
    async with asgi_client(fastapi_app(tokens, acted, dependency=dependency)) as client:
        response = await client.post(
            "/rest/samples", headers=headers(jira, "application/json"), content=body
        )
    assert (response.status_code, response.json()) == (200, {"size": 790_000})
    assert acted == [790_000]
    events = tokens.audit(action="authenticate", limit=10)
    assert [e.outcome for e in events] == [Outcome.SUCCESS]
