"""apitokens.drf through DRF's APIClient, with and without TokenMiddleware (DESIGN §4, §9).

Every test sends from an address of its own, so the audit events of one request
can be counted: with the middleware the decision is made once and reused (one
event), never made again by the authentication or the permission class.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.middleware.csrf import _get_new_csrf_string  # type: ignore[attr-defined]
from django.test import AsyncClient, modify_settings, override_settings
from rest_framework.test import APIClient

from apitokens import ApiTokens, AuditEvent, MemoryStore, Outcome, Policy, Scope
from tests.django_project.tokens import tokens
from tests.support import CHEAP_HASHER
from tests.support.django import make_user

_addresses = itertools.count(1)
JSON_RULE = "[post].*/api/echo[JsonData::project==ABC]"


def fresh_ip() -> str:
    """An address no other test sends from (TEST-NET-2 and TEST-NET-3)."""
    n = next(_addresses)
    return f"198.51.{100 + n // 250}.{n % 250 + 1}"


def guess() -> str:
    """A well-formed token nobody issued (its check costs a hash, as a guesser's does)."""
    return tokens.policy.token_format.issue().value


def bearer(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def events(ip: str, source: ApiTokens = tokens) -> list[AuditEvent]:
    """The authentication events of requests from ``ip``, oldest first."""
    found = source.audit(action="authenticate", limit=100_000)
    return [event for event in reversed(found) if event.client_ip == ip]


def outcomes(ip: str) -> list[Outcome]:
    return [event.outcome for event in events(ip)]


def refusal_body(answer: Any, status: int, error: str) -> None:
    """``answer`` is the DESIGN §4 refusal: status, JSON body, nothing more."""
    assert answer.status_code == status, answer.content
    assert answer["Content-Type"] == "application/json"
    body = json.loads(answer.content)
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error


WITHOUT_MIDDLEWARE = [m for m in settings.MIDDLEWARE if not m.endswith(".TokenMiddleware")]


@pytest.fixture(params=["middleware", "no-middleware"])
def middleware(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Each test twice: behind TokenMiddleware, and with DRF's classes alone."""
    if request.param == "middleware":
        yield True
    else:
        with override_settings(MIDDLEWARE=WITHOUT_MIDDLEWARE):
            yield False


@pytest.fixture
def ip() -> str:
    return fresh_ip()


@pytest.fixture
def client(ip: str) -> APIClient:
    """A client from an address of its own that sends CSRF checks as a browser's would."""
    return APIClient(REMOTE_ADDR=ip, enforce_csrf_checks=True)


# -- authentication: the project's default classes and per view -------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/whoami",  # DEFAULT_AUTHENTICATION_CLASSES, IsAuthenticated
        "/api/drf/token-only",  # authentication_classes = (TokenAuthentication,)
        "/api/needs-token",  # HasToken
        "/drf/token-only",  # outside the policy's protected paths: the view asks for tokens
        "/drf/needs-token",
    ],
)
def test_a_token_authenticates_with_one_audit_event(
    middleware: bool, client: APIClient, ip: str, path: str
) -> None:
    user = make_user("drf")
    issued = tokens.create(actor=user.username, name="ci")
    answer = client.get(path, **bearer(issued.secret))
    assert answer.status_code == 200, answer.content
    seen = answer.json()
    assert (seen["user"], seen["user_class"]) == (user.username, "User")
    assert (seen["token"], seen["scope"]) == (issued.token.id, str(Scope.READ_ONLY))
    # Decided once, whatever asked (the middleware, the authentication, the permission).
    assert outcomes(ip) == [Outcome.SUCCESS]


def test_no_credentials_is_401_with_the_challenge(middleware: bool, client: APIClient) -> None:
    for path in ("/api/whoami", "/api/drf/token-only", "/drf/token-only"):
        answer = client.get(path)
        assert answer.status_code == 401, (path, answer.content)
        assert (
            answer["WWW-Authenticate"] == 'Bearer realm="api", Basic realm="api", charset="UTF-8"'
        )


def test_a_password_passes_through_to_the_next_class(middleware: bool, ip: str) -> None:
    # Basic credentials that are not a token: TokenAuthentication leaves them to the next
    # class (here SessionAuthentication, which finds no session: 401 from DRF).
    client = APIClient(REMOTE_ADDR=ip)
    answer = client.get("/api/whoami", HTTP_AUTHORIZATION="Basic dXNlcjpwYXNzd29yZA==")
    assert answer.status_code == 401
    assert "error" not in answer.json()
    assert outcomes(ip) == []


# -- refusals: apitokens' status, body and headers, one audit event ------------------------


def test_an_unknown_token_is_401_with_apitokens_body(
    middleware: bool, client: APIClient, ip: str
) -> None:
    wrong = guess()
    for path in ("/api/whoami", "/drf/token-only"):
        answer = client.get(path, **bearer(wrong))
        refusal_body(answer, 401, "invalid_token")
        assert answer["WWW-Authenticate"].startswith('Bearer realm="api", error="invalid_token"')
    assert outcomes(ip) == [Outcome.FAILED, Outcome.FAILED]


def test_a_refusal_is_json_whatever_the_client_accepts(middleware: bool, client: APIClient) -> None:
    wrong = guess()
    answer = client.get("/drf/token-only", HTTP_ACCEPT="text/html", **bearer(wrong))
    refusal_body(answer, 401, "invalid_token")


def test_rule_ip_and_scope_refusals_are_403(middleware: bool, client: APIClient, ip: str) -> None:
    user = make_user("drf")
    ruled = tokens.create(actor=user.username, name="r", restrictions=["[get].*/api/elsewhere"])
    refusal_body(client.get("/api/whoami", **bearer(ruled.secret)), 403, "insufficient_scope")
    fenced = tokens.create(actor=user.username, name="ip", allowed_ips=["203.0.113.0/24"])
    refusal_body(client.get("/api/whoami", **bearer(fenced.secret)), 403, "insufficient_scope")
    read_only = tokens.create(actor=user.username, name="ro")
    answer = client.post("/api/whoami", {"a": 1}, format="json", **bearer(read_only.secret))
    refusal_body(answer, 403, "insufficient_scope")
    assert outcomes(ip) == [Outcome.FORBIDDEN] * 3


def test_too_many_failures_is_429_with_retry_after(
    middleware: bool, client: APIClient, ip: str
) -> None:
    user = make_user("drf")
    issued = tokens.create(actor=user.username, name="ci")
    limit = tokens.policy.max_failed_attempts
    for _ in range(limit):
        refusal_body(client.get("/drf/token-only", **bearer(guess())), 401, "invalid_token")
    answer = client.get("/drf/token-only", **bearer(issued.secret))  # unverified yet: waits
    refusal_body(answer, 429, "too_many_requests")
    assert int(answer["Retry-After"]) > 0
    assert len(events(ip)) == limit + 1


class BrokenStore(MemoryStore):
    """Creates tokens, then cannot read them: a database gone away."""

    def get(self, token_id: str) -> Any:
        raise OSError("database is gone")


broken: ApiTokens | None = None  # settings.APITOKENS in the 503 test


def test_a_store_that_fails_is_503(middleware: bool, client: APIClient) -> None:
    global broken
    broken = ApiTokens(BrokenStore(), policy=Policy(protected_paths=["/api/"]), hasher=CHEAP_HASHER)
    try:
        user = make_user("drf")
        issued = broken.create(actor=user.username, name="ci")
        with override_settings(APITOKENS=f"{__name__}.broken"):
            for path in ("/api/whoami", "/drf/token-only"):
                refusal_body(
                    client.get(path, **bearer(issued.secret)), 503, "temporarily_unavailable"
                )
    finally:
        broken.close()
        broken = None


def test_the_middlewares_401_sends_both_challenges(client: APIClient) -> None:
    # A plain Django view: the refusal is the middleware's own response.
    answer = client.get("/plain/whoami", HTTP_AUTHORIZATION="Bearer apt_nope")
    refusal_body(answer, 401, "invalid_token")
    challenge = answer["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="api", error="invalid_token"'), challenge
    assert challenge.endswith(', Basic realm="api", charset="UTF-8"'), challenge


# -- HasToken, HasReadWriteToken ----------------------------------------------------------


def test_has_token_refuses_a_session_user_401_audited(middleware: bool, ip: str) -> None:
    user = make_user("drf")
    client = APIClient(REMOTE_ADDR=ip)
    client.force_login(user)
    assert client.get("/api/whoami").json()["user"] == user.username  # the session works
    for path in ("/api/needs-token", "/drf/needs-token"):
        answer = client.get(path)
        refusal_body(answer, 401, "invalid_token")
        assert (
            answer["WWW-Authenticate"] == 'Bearer realm="api", Basic realm="api", charset="UTF-8"'
        )
    assert [(e.outcome, e.reason) for e in events(ip)] == [
        (Outcome.FAILED, "route requires a token")
    ] * 2


def test_has_token_refuses_no_credentials_and_a_password(middleware: bool, ip: str) -> None:
    client = APIClient(REMOTE_ADDR=ip)
    refusal_body(client.get("/drf/needs-token"), 401, "invalid_token")
    password = client.get("/drf/needs-token", HTTP_AUTHORIZATION="Basic dXNlcjpwYXNzd29yZA==")
    refusal_body(password, 401, "invalid_token")
    assert outcomes(ip) == [Outcome.FAILED] * 2


def test_has_read_write_token(middleware: bool, client: APIClient, ip: str) -> None:
    user = make_user("drf")
    read_only = tokens.create(actor=user.username, name="ro")
    read_write = tokens.create(actor=user.username, name="rw", scope=Scope.READ_WRITE)
    answer = client.get("/api/needs-write", **bearer(read_write.secret))
    assert (answer.status_code, answer.json()["token"]) == (200, read_write.token.id)
    assert outcomes(ip) == [Outcome.SUCCESS]
    refused = client.get("/api/needs-write", **bearer(read_only.secret))
    refusal_body(refused, 403, "insufficient_scope")
    # The token authenticated (its event), then the view's requirement refused it (its own).
    assert [(e.outcome, e.token_id, e.reason) for e in events(ip)[1:]] == [
        (Outcome.SUCCESS, read_only.token.id, "authenticated"),
        (Outcome.FORBIDDEN, read_only.token.id, "route requires a READ_WRITE token"),
    ]


# -- JSON rules see the body DRF parses ---------------------------------------------------


def test_a_json_rule_sees_the_body_drf_parses(middleware: bool, client: APIClient, ip: str) -> None:
    user = make_user("drf")
    issued = tokens.create(
        actor=user.username, name="j", scope=Scope.READ_WRITE, restrictions=[JSON_RULE]
    )
    sent = {"project": "ABC", "items": [1, 2.5, None], "nested": {"ü": "✓"}}
    answer = client.post("/api/echo", sent, format="json", **bearer(issued.secret))
    assert answer.status_code == 200, answer.content
    # request.data is what was sent, and request.body is intact after the rule read it.
    assert answer.json() == {"data": sent, "raw": sent}
    refused = client.post("/api/echo", {"project": "XYZ"}, format="json", **bearer(issued.secret))
    refusal_body(refused, 403, "insufficient_scope")
    big = {"project": "ABC", "pad": "x" * tokens.policy.max_body_bytes}
    refusal_body(
        client.post("/api/echo", big, format="json", **bearer(issued.secret)),
        413,
        "request_too_large",
    )
    assert outcomes(ip) == [Outcome.SUCCESS, Outcome.FORBIDDEN, Outcome.FORBIDDEN]


def test_a_json_rule_refuses_a_body_that_is_not_json(middleware: bool, client: APIClient) -> None:
    user = make_user("drf")
    issued = tokens.create(
        actor=user.username, name="j", scope=Scope.READ_WRITE, restrictions=[JSON_RULE]
    )
    answer = client.post("/api/echo", {"project": "ABC"}, **bearer(issued.secret))  # multipart
    refusal_body(answer, 403, "insufficient_scope")


@pytest.mark.parametrize("path", ["/api/drf/upload", "/drf/upload"])
def test_form_and_multipart_bodies_reach_drf(
    middleware: bool, client: APIClient, ip: str, path: str
) -> None:
    user = make_user("drf")
    issued = tokens.create(actor=user.username, name="rw", scope=Scope.READ_WRITE)
    form = client.post(
        path,
        "a=1&b=two+words",
        content_type="application/x-www-form-urlencoded",
        **bearer(issued.secret),
    )
    assert form.status_code == 200, form.content
    assert (form.json()["fields"], form.json()["user"]) == (
        {"a": "1", "b": "two words"},
        user.username,
    )
    upload = io.BytesIO(b"file contents\n")
    upload.name = "notes.txt"
    multipart = client.post(
        path, {"a": "1", "doc": upload}, format="multipart", **bearer(issued.secret)
    )
    assert multipart.status_code == 200, multipart.content
    assert multipart.json()["fields"] == {"a": "1"}
    assert multipart.json()["files"] == {"doc": "file contents\n"}
    assert outcomes(ip) == [Outcome.SUCCESS] * 2


# -- the browsable API ---------------------------------------------------------------------


def test_the_browsable_api_works_for_token_and_session_users(middleware: bool, ip: str) -> None:
    user = make_user("drf")
    issued = tokens.create(actor=user.username, name="ci")
    client = APIClient(REMOTE_ADDR=ip)
    for path in ("/api/whoami", "/api/needs-token", "/drf/token-only"):
        page = client.get(path, HTTP_ACCEPT="text/html", **bearer(issued.secret))
        assert page.status_code == 200, (path, page.content[:300])
        assert page["Content-Type"].startswith("text/html")
        assert user.username.encode() in page.content and b"<form" in page.content
    assert outcomes(ip) == [Outcome.SUCCESS] * 3
    client.force_login(user)
    page = client.get("/api/whoami", HTTP_ACCEPT="text/html")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    assert user.username.encode() in page.content, page.content.decode()
    assert b'"csrfToken": "' in page.content  # for its forms


# -- CSRF ----------------------------------------------------------------------------------


def test_a_token_request_needs_no_csrf_token_a_session_one_does(
    middleware: bool, client: APIClient
) -> None:
    user = make_user("drf")
    issued = tokens.create(actor=user.username, name="rw", scope=Scope.READ_WRITE)
    for path in ("/api/whoami", "/api/drf/token-only", "/drf/token-only"):
        answer = client.post(path, {"a": 1}, format="json", **bearer(issued.secret))
        assert answer.status_code == 200, (path, answer.content)
        assert (answer.json()["user"], answer.json()["data"]) == (user.username, {"a": 1})
    client.force_login(user)
    for path in ("/api/whoami", "/api/drf/session-only", "/drf/session-only"):
        refused = client.post(path, {"a": 1}, format="json")
        assert refused.status_code == 403, (path, refused.content)
        assert refused.json()["detail"].startswith("CSRF Failed"), path
        secret = _get_new_csrf_string()
        client.cookies[settings.CSRF_COOKIE_NAME] = secret
        allowed = client.post(path, {"a": 1}, format="json", HTTP_X_CSRFTOKEN=secret)
        assert (allowed.status_code, allowed.json()["user"]) == (200, user.username), path
        del client.cookies[settings.CSRF_COOKIE_NAME]


# -- coming from the peers: django-rest-knox and djangorestframework-api-key beside us ------

PEER_APPS = ["knox", "rest_framework_api_key"]
IS_AUTHENTICATED = ["rest_framework.permissions.IsAuthenticated"]


@pytest.fixture
def peers() -> Iterator[None]:
    """The test project with the peers installed, its URLconf ``tests/django_project/peers.py``."""
    with (
        modify_settings(INSTALLED_APPS={"append": PEER_APPS}),
        override_settings(ROOT_URLCONF="tests.django_project.peers"),
    ):
        call_command("migrate", verbosity=0)  # their tables, once per process
        yield


def knox_token(user: Any) -> str:
    from knox.models import AuthToken  # only while knox is installed (the peers fixture)

    return str(AuthToken.objects.create(user=user)[1])


@pytest.mark.parametrize("first", ["apitokens", "knox"])
def test_knox_tokens_pass_through_to_knox(
    peers: None, middleware: bool, client: APIClient, ip: str, first: str
) -> None:
    classes = ["apitokens.drf.TokenAuthentication", "knox.auth.TokenAuthentication"]
    if first == "knox":
        classes.reverse()
    rest = {
        "DEFAULT_AUTHENTICATION_CLASSES": classes,
        "DEFAULT_PERMISSION_CLASSES": IS_AUTHENTICATED,
    }
    user = make_user("knox")
    old = knox_token(user)
    new = tokens.create(actor=user.username, name="new")
    with override_settings(REST_FRAMEWORK=rest):
        by_knox = client.get("/api/switching", HTTP_AUTHORIZATION=f"Token {old}")
        assert by_knox.status_code == 200, by_knox.content
        assert (by_knox.json()["user"], by_knox.json()["by"]) == (user.username, "knox.auth")
        by_us = client.get("/api/switching", **bearer(new.secret))
        assert by_us.status_code == 200, by_us.content
        seen = by_us.json()
        assert (seen["user"], seen["token"], seen["by"]) == (
            user.username,
            new.token.id,
            "apitokens.drf",
        )
        # A bad knox token is knox's to refuse; the challenge is the first class's.
        bad = client.get("/api/switching", HTTP_AUTHORIZATION=f"Token {'0' * 64}")
        assert (bad.status_code, bad.json()) == (401, {"detail": "Invalid token."})
        challenge = (
            "Token" if first == "knox" else 'Bearer realm="api", Basic realm="api", charset="UTF-8"'
        )
        assert bad["WWW-Authenticate"] == challenge
        assert client.get("/api/switching")["WWW-Authenticate"] == challenge
        # Our token under knox's scheme is ours to refuse (never a pass), when we see it
        # first: behind the middleware, or first in the list.
        misfiled = client.get("/api/switching", HTTP_AUTHORIZATION=f"Token {new.secret}")
        if middleware or first == "apitokens":
            refusal_body(misfiled, 400, "invalid_request")
        else:
            assert (misfiled.status_code, misfiled.json()) == (401, {"detail": "Invalid token."})
    # Only our own token's requests are in our audit log: a foreign credential is not ours.
    ours = (
        [Outcome.SUCCESS, Outcome.FAILED]
        if middleware or first == "apitokens"
        else [Outcome.SUCCESS]
    )
    assert outcomes(ip) == ours


def test_knox_per_view(peers: None, middleware: bool, client: APIClient, ip: str) -> None:
    user = make_user("knox")
    old = knox_token(user)
    new = tokens.create(actor=user.username, name="new")
    by_knox = client.get("/api/knox-or-token", HTTP_AUTHORIZATION=f"Token {old}")
    assert (by_knox.status_code, by_knox.json()["by"]) == (200, "knox.auth")
    by_us = client.get("/api/knox-or-token", **bearer(new.secret))
    assert (by_us.status_code, by_us.json()["by"]) == (200, "apitokens.drf")
    assert outcomes(ip) == [Outcome.SUCCESS]


def test_api_keys_pass_through_to_has_api_key(
    peers: None, middleware: bool, client: APIClient, ip: str
) -> None:
    from rest_framework_api_key.models import APIKey  # only while the app is installed

    _, key = APIKey.objects.create_key(name="old")
    user = make_user("apikey")
    new = tokens.create(actor=user.username, name="new")
    path = "/api/api-key-or-token"
    by_key = client.get(path, HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert (by_key.status_code, by_key.json()["user"]) == (200, None)  # a key has no user
    by_us = client.get(path, **bearer(new.secret))
    assert (by_us.status_code, by_us.json()["user"]) == (200, user.username)
    # Neither: HasToken's refusal (it is last in HasAPIKey | HasToken), audited.
    refusal_body(client.get(path, HTTP_AUTHORIZATION="Api-Key not.a-key"), 401, "invalid_token")
    refusal_body(client.get(path), 401, "invalid_token")
    assert outcomes(ip) == [Outcome.SUCCESS, Outcome.FAILED, Outcome.FAILED]


@pytest.mark.parametrize(
    "path", ["/api/drf/needs-token-session-auth", "/drf/needs-token-session-auth"]
)
def test_has_token_makes_the_token_owner_the_views_user(
    middleware: bool, client: APIClient, ip: str, path: str
) -> None:
    # HasToken without TokenAuthentication on the view: the token decides who the view acts
    # for, also when the browser sending it has a session of another user's.
    owner, other = make_user("drf"), make_user("drf")
    issued = tokens.create(actor=owner.username, name="rw", scope=Scope.READ_WRITE)
    answer = client.get(path, **bearer(issued.secret))
    assert answer.status_code == 200, answer.content
    assert (answer.json()["user"], answer.json()["token"]) == (owner.username, issued.token.id)
    client.force_login(other)
    answer = client.get(path, **bearer(issued.secret))
    assert (answer.json()["user"], answer.json()["token"]) == (owner.username, issued.token.id)
    assert outcomes(ip) == [Outcome.SUCCESS] * 2


def test_under_asgi(middleware: bool, ip: str) -> None:
    # Django's ASGI handler: the request is read from the server's scope (DESIGN §9), and
    # the DRF view runs in Django's thread for synchronous code. Django's AsyncClient
    # sends the query string as a str (Django's ASGIRequest takes either).
    user = make_user("drf")
    issued = tokens.create(actor=user.username, name="rw", scope=Scope.READ_WRITE)
    token = {"Authorization": f"Bearer {issued.secret}"}
    rule = "[get].*/drf/token-only[QueryParam::a==1]"
    queried = tokens.create(actor=user.username, name="q", restrictions=[rule])
    ruled = {"Authorization": f"Bearer {queried.secret}"}

    class FromAddress(AsyncClient):
        def _base_scope(self, **request: Any) -> dict[str, Any]:
            return {**super()._base_scope(**request), "client": [ip, 0]}

    async def send() -> list[Any]:
        client = FromAddress()
        return [
            await client.get("/drf/token-only?a=1", headers=token),
            await client.post(
                "/api/whoami", {"a": 1}, content_type="application/json", headers=token
            ),
            await client.get("/drf/needs-token"),
            await client.get("/drf/token-only?a=1", headers=ruled),
            await client.get("/drf/token-only?a=2", headers=ruled),
        ]

    read, written, refused, query_ok, query_refused = asyncio.run(send())
    assert (read.status_code, read.json()["user"]) == (200, user.username)
    assert (written.status_code, written.json()["data"]) == (200, {"a": 1})
    refusal_body(refused, 401, "invalid_token")
    assert query_ok.status_code == 200
    refusal_body(query_refused, 403, "insufficient_scope")
    assert outcomes(ip) == [Outcome.SUCCESS] * 2 + [
        Outcome.FAILED,
        Outcome.SUCCESS,
        Outcome.FORBIDDEN,
    ]
