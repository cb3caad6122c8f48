"""A real Flask app wrapped with ``app.wsgi_app = tokens.wsgi(app.wsgi_app)`` (DESIGN §4).

Driven through Flask's test client, which gives the environ a ``RAW_URI``
like gunicorn does; ``environ_base`` sets the client address.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from flask import Flask, Response, jsonify, request
from flask.testing import FlaskClient

from apitokens import ApiTokens, AuthResult, IssuedToken, MemoryStore, Outcome
from tests.support import Clock, make_tokens

MAX_BODY = 64  # the tokens fixture's Policy.max_body_bytes
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


def make_app(tokens: ApiTokens) -> Flask:
    app = Flask(__name__)

    @app.route("/rest/<path:rest>", methods=["GET", "POST", "PUT", "DELETE"])
    def whoami(rest: str) -> Response:
        result = request.environ.get("apitokens.auth")
        assert result is None or isinstance(result, AuthResult)
        return jsonify(
            path=request.path,
            user=request.environ.get("REMOTE_USER"),
            token_id=result.token.id if result is not None and result.token else None,
            scopes=result.scopes if result is not None else None,
            authorization=request.headers.get("Authorization"),
        )

    @app.post("/rest/echo")
    def echo() -> Response:
        return Response(request.get_data(), mimetype="application/octet-stream")

    @app.get("/public/<path:rest>")
    def public(rest: str) -> Response:
        return jsonify(
            user=request.environ.get("REMOTE_USER"),
            authorization=request.headers.get("Authorization"),
            seen="apitokens.auth" in request.environ,
        )

    app.wsgi_app = tokens.wsgi(app.wsgi_app)  # type: ignore[method-assign]
    return app


@pytest.fixture
def client(tokens: ApiTokens) -> FlaskClient:
    return make_app(tokens).test_client()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def authentications(tokens: ApiTokens) -> list[tuple[Outcome, str | None, str | None]]:
    return [(e.outcome, e.token_id, e.user) for e in tokens.audit(action="authenticate")]


# -- success ---------------------------------------------------------------------------


def test_bearer_token_reaches_the_app_as_its_user(
    client: FlaskClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    token = issued["read"]
    response = client.get("/rest/api/issue/1", headers=bearer(token.secret))
    assert response.status_code == 200
    assert response.json == {
        "path": "/rest/api/issue/1",
        "user": "alice",
        "token_id": token.token.id,
        "scopes": ["authenticated", "read"],
        "authorization": f"Bearer {token.secret}",
    }
    [event] = tokens.audit(action="authenticate")
    assert (event.outcome, event.token_id, event.user) == (Outcome.SUCCESS, token.token.id, "alice")
    assert (event.method, event.path, event.client_ip) == ("GET", "/rest/api/issue/1", "127.0.0.1")
    record = tokens.get(token.token.id)
    assert record is not None
    assert (record.use_count, record.last_used_ip) == (1, "127.0.0.1")


def test_basic_owner_and_token_reaches_the_app(
    client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    response = client.post("/rest/api/x", headers=basic("bob", issued["write"].secret))
    assert response.status_code == 200
    assert response.json is not None
    assert (response.json["user"], response.json["scopes"]) == (
        "bob",
        ["authenticated", "read", "write"],
    )


# -- 401 --------------------------------------------------------------------------------


def test_unknown_token_is_401_with_both_challenges(
    client: FlaskClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    secret = tokens.policy.token_format.issue().value  # well formed, never stored
    response = client.get("/rest/api/x", headers=bearer(secret))
    assert response.status_code == 401
    assert response.mimetype == "application/json"
    assert response.json == INVALID_TOKEN
    assert response.headers.getlist("WWW-Authenticate") == [BEARER_401, BASIC_401]
    assert authentications(tokens) == [(Outcome.FAILED, secret[4:16], None)]
    assert tokens.audit(action="authenticate")[0].reason == "unknown token id"


def test_wrong_secret_and_unknown_id_look_the_same(
    client: FlaskClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    known_id = tokens.policy.token_format.issue(issued["read"].token.id).value
    unknown = tokens.policy.token_format.issue().value
    first = client.get("/rest/x", headers=bearer(known_id))
    second = client.get("/rest/x", headers=bearer(unknown))
    assert (first.status_code, first.data) == (second.status_code, second.data)
    assert first.headers.getlist("WWW-Authenticate") == second.headers.getlist("WWW-Authenticate")
    reasons = {e.reason for e in tokens.audit(action="authenticate")}
    assert reasons == {"wrong secret", "unknown token id"}


def test_basic_with_another_username_is_401(
    client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    response = client.get("/rest/x", headers=basic("mallory", issued["read"].secret))
    assert (response.status_code, response.json) == (401, INVALID_TOKEN)


def test_revoked_token_is_401_at_once(
    client: FlaskClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    token = issued["read"]
    assert client.get("/rest/x", headers=bearer(token.secret)).status_code == 200
    tokens.revoke(actor="alice", token_id=token.token.id)
    response = client.get("/rest/x", headers=bearer(token.secret))
    assert (response.status_code, response.json) == (401, INVALID_TOKEN)


# -- 403 -------------------------------------------------------------------------------


def test_read_only_token_cannot_post(
    client: FlaskClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    response = client.post("/rest/api/x", headers=bearer(issued["read"].secret), data=b"{}")
    assert response.status_code == 403
    assert response.json == INSUFFICIENT_SCOPE
    assert response.headers.getlist("WWW-Authenticate") == [
        'Bearer realm="api", error="insufficient_scope"'
    ]
    [event] = tokens.audit(action="authenticate")
    assert (event.outcome, event.user) == (Outcome.FORBIDDEN, "alice")
    assert event.reason == "method POST outside the token's read_only scope"


def test_rules_allow_only_matching_paths(
    client: FlaskClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    headers = bearer(issued["rules"].secret)
    allowed = client.get("/rest/api/2/issue", headers=headers)
    assert (allowed.status_code, allowed.json and allowed.json["user"]) == (200, "carol")
    denied = client.get("/rest/other/2/issue", headers=headers)
    assert (denied.status_code, denied.json) == (403, INSUFFICIENT_SCOPE)
    outcomes = [e.outcome for e in tokens.audit(action="authenticate")]
    assert outcomes == [Outcome.FORBIDDEN, Outcome.SUCCESS]  # newest first


def test_allowed_ips_use_the_client_address(
    client: FlaskClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    headers = bearer(issued["ip"].secret)
    inside = client.get("/rest/x", headers=headers, environ_base={"REMOTE_ADDR": INSIDE_IP})
    assert (inside.status_code, inside.json and inside.json["user"]) == (200, "dave")
    v6 = client.get("/rest/x", headers=headers, environ_base={"REMOTE_ADDR": "2001:db8::5"})
    assert v6.status_code == 200
    outside = client.get("/rest/x", headers=headers, environ_base={"REMOTE_ADDR": OUTSIDE_IP})
    assert (outside.status_code, outside.json) == (403, INSUFFICIENT_SCOPE)
    spoofed = client.get(
        "/rest/x",
        headers={**headers, "X-Forwarded-For": INSIDE_IP},
        environ_base={"REMOTE_ADDR": OUTSIDE_IP},
    )
    assert spoofed.status_code == 403  # no trusted proxies: the header is not believed
    assert tokens.audit(action="authenticate")[0].client_ip == OUTSIDE_IP


# -- JSON rules and the body -----------------------------------------------------------


def test_json_rule_post_body_reaches_the_app_intact(
    client: FlaskClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    body = b'{"project": "ABC",\n "n": [1, 2.50], "s": "\\u00e9"}'
    response = client.post(
        "/rest/echo",
        headers=bearer(issued["json"].secret),
        data=body,
        content_type="application/json",
    )
    assert response.status_code == 200
    assert response.data == body
    [event] = tokens.audit(action="authenticate")
    assert (event.outcome, event.user, event.path) == (Outcome.SUCCESS, "erin", "/rest/echo")


def test_json_rule_refuses_a_non_matching_body(
    client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    headers = {**bearer(issued["json"].secret), "Content-Type": "application/json"}
    for body in (b'{"project": "XYZ"}', b"not json", b'{"project": "ABC", "project": "ABC"}'):
        response = client.post("/rest/echo", headers=headers, data=body)
        assert (response.status_code, response.json) == (403, INSUFFICIENT_SCOPE), body


def test_json_rule_body_over_the_limit_is_413(
    client: FlaskClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    body = json.dumps({"project": "ABC", "pad": "x" * MAX_BODY}).encode()
    headers = {**bearer(issued["json"].secret), "Content-Type": "application/json"}
    response = client.post("/rest/echo", headers=headers, data=body)
    assert response.status_code == 413
    assert response.json == {
        "error": "request_too_large",
        "error_description": "The request body is larger than this token's rules may inspect.",
    }
    [event] = tokens.audit(action="authenticate")
    assert (event.outcome, event.user) == (Outcome.FORBIDDEN, "erin")
    # Exactly at the limit is still read and matched.
    exact = b'{"project": "ABC", "pad": "' + b"x" * (MAX_BODY - 29) + b'"}'
    assert len(exact) == MAX_BODY
    headers = {**bearer(issued["json"].secret), "Content-Type": "application/json"}
    ok = client.post("/rest/echo", headers=headers, data=exact)
    assert (ok.status_code, ok.data) == (200, exact)


def test_a_token_without_json_rules_leaves_the_body_alone(
    client: FlaskClient, issued: dict[str, IssuedToken]
) -> None:
    body = b"x" * (MAX_BODY * 4)  # larger than the limit: never read, so no 413
    response = client.post("/rest/echo", headers=bearer(issued["write"].secret), data=body)
    assert (response.status_code, response.data) == (200, body)


# -- pass-through ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic " + base64.b64encode(b"alice:hunter2").decode(),
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
        "Digest username=alice",
    ],
)
def test_foreign_credentials_pass_through_untouched(
    client: FlaskClient, tokens: ApiTokens, authorization: str
) -> None:
    response = client.get("/rest/api/x", headers={"Authorization": authorization})
    assert response.status_code == 200
    assert response.json == {
        "path": "/rest/api/x",
        "user": None,
        "token_id": None,
        "scopes": None,
        "authorization": authorization,
    }
    assert tokens.audit(action="authenticate") == []


def test_no_credentials_pass_through(client: FlaskClient, tokens: ApiTokens) -> None:
    response = client.get("/rest/api/x")
    assert response.status_code == 200
    assert response.json is not None
    assert (response.json["user"], response.json["authorization"]) == (None, None)
    assert tokens.audit(action="authenticate") == []


def test_unprotected_paths_are_untouched_even_with_a_bad_token(
    client: FlaskClient, tokens: ApiTokens, issued: dict[str, IssuedToken]
) -> None:
    for authorization in ("Bearer apt_garbage", f"Bearer {issued['read'].secret}", "Basic !!"):
        response = client.get("/public/x", headers={"Authorization": authorization})
        assert response.status_code == 200
        assert response.json == {"user": None, "authorization": authorization, "seen": False}
    assert tokens.audit(action="authenticate") == []


def test_remote_user_is_not_forged_on_pass_through(client: FlaskClient) -> None:
    response = client.get(
        "/rest/x", headers={"Remote-User": "admin", "Authorization": "Basic YTpi"}
    )
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["user"] is None


# -- allow_other_auth=False ---------------------------------------------------------------


def test_only_tokens_when_other_auth_is_off(strict_tokens: ApiTokens) -> None:
    client = make_app(strict_tokens).test_client()
    issued = strict_tokens.create(actor="alice", name="ci")
    password = client.get("/rest/x", headers=basic("alice", "hunter2"))
    assert (password.status_code, password.json) == (401, INVALID_TOKEN)
    assert password.headers.getlist("WWW-Authenticate") == [BEARER_401, BASIC_401]
    nothing = client.get("/rest/x")
    assert (nothing.status_code, nothing.json) == (401, INVALID_TOKEN)
    # RFC 6750 §3.1: no error code in the challenge when no credentials were sent.
    assert nothing.headers.getlist("WWW-Authenticate") == ['Bearer realm="api"', BASIC_401]
    ok = client.get("/rest/x", headers=bearer(issued.secret))
    assert (ok.status_code, ok.json and ok.json["user"]) == (200, "alice")
    public = client.get("/public/x", headers=basic("alice", "hunter2"))
    assert public.status_code == 200
    assert [e.outcome for e in strict_tokens.audit(action="authenticate")] == [
        Outcome.SUCCESS,
        Outcome.FAILED,
        Outcome.FAILED,
    ]


# -- expiry and proxies ---------------------------------------------------------------------


def test_expired_token_is_401(client: FlaskClient, tokens: ApiTokens, clock: Clock) -> None:
    issued = tokens.create(actor="alice", name="short", expires_in=timedelta(hours=1))
    assert client.get("/rest/x", headers=bearer(issued.secret)).status_code == 200
    clock.advance(hours=2)
    response = client.get("/rest/x", headers=bearer(issued.secret))
    assert (response.status_code, response.json) == (401, INVALID_TOKEN)
    assert tokens.audit(action="authenticate")[0].reason == "token expired"


def test_forwarded_for_is_believed_only_from_a_trusted_proxy(clock: Clock) -> None:
    store = MemoryStore()
    try:
        with make_tokens(
            store, clock=clock, protected_paths=["/rest/"], trusted_proxies=["10.0.0.0/8"]
        ) as tokens:
            issued = tokens.create(actor="dave", name="ip", allowed_ips=["203.0.113.0/24"])
            client = make_app(tokens).test_client()
            cases = [
                ("10.1.2.3", "203.0.113.7", 200),
                ("10.1.2.3", "198.51.100.9, 203.0.113.7, 10.0.0.5", 200),
                ("10.1.2.3", "203.0.113.7, 198.51.100.9", 403),  # right-most untrusted wins
                ("198.51.100.9", "203.0.113.7", 403),  # not from a proxy: not believed
            ]
            for peer, forwarded, status in cases:
                response = client.get(
                    "/rest/x",
                    headers={**bearer(issued.secret), "X-Forwarded-For": forwarded},
                    environ_base={"REMOTE_ADDR": peer},
                )
                assert response.status_code == status, (peer, forwarded)
            ips = [e.client_ip for e in tokens.audit(action="authenticate")]
            assert ips == ["198.51.100.9", "198.51.100.9", "203.0.113.7", "203.0.113.7"]
    finally:
        store.close()
