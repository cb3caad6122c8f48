"""End to end: the test Django project (``tests/django_project``) behind real servers (DESIGN §9).

Django's WSGI application under werkzeug's threaded server, and its ASGI
application under uvicorn, each on 127.0.0.1 on a free port, spoken to over HTTP:
``TokenMiddleware`` makes the token's owner ``request.user`` (plain views and DRF),
refuses what DESIGN §4 refuses, and what a client writes in a header never says
who the request is or where it comes from.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application
from django.test import Client

from apitokens import AuditEvent, Outcome, Scope
from tests.django_project.tokens import tokens
from tests.support import serve_wsgi
from tests.support.django import make_user, setup

INSUFFICIENT_SCOPE = {
    "error": "insufficient_scope",
    "error_description": "The access token does not allow this request.",
}
INVALID_TOKEN = {
    "error": "invalid_token",
    "error_description": "The access token is missing, invalid, expired or revoked.",
}


def serve_asgi(app: Any) -> Iterator[int]:
    """Serve an ASGI ``app`` with uvicorn on 127.0.0.1 (no lifespan: Django has none)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # a request waits in the backlog until uvicorn serves
    # No proxy in front, so --no-proxy-headers (docs/security.md): uvicorn's default
    # believes X-Forwarded-For from 127.0.0.1, where the tests' client is.
    config = uvicorn.Config(
        app, host="127.0.0.1", log_level="warning", lifespan="off", proxy_headers=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop within 10 s"


@pytest.fixture(params=["wsgi", "asgi"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, httpx.Client]]:
    """The test project under werkzeug (WSGI) or uvicorn (ASGI); its kind and a client."""
    setup()
    kind = request.param
    ports = (
        serve_wsgi(get_wsgi_application()) if kind == "wsgi" else serve_asgi(get_asgi_application())
    )
    for port in ports:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            # Outside the protected paths: no audit row. Served once it answers.
            assert client.get("/session/whoami").status_code == 200
            yield kind, client


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def events(token_id: str) -> list[AuditEvent]:
    """The token's authentication events, newest first."""
    return tokens.audit(token_id=token_id, action="authenticate")


def test_a_token_is_its_owner_django_user(served: tuple[str, httpx.Client]) -> None:
    _, client = served
    user = make_user("alice")
    read = tokens.create(actor=user.username, name="read")
    for path in ("/plain/whoami", "/api/whoami"):  # a plain Django view, a DRF one
        seen = client.get(path, headers=bearer(read.secret))
        assert seen.status_code == 200, seen.content
        assert seen.json()["user"] == user.username
        assert (seen.json()["user_class"], seen.json()["token"]) == ("User", read.token.id)
    assert [(e.outcome, e.user, e.client_ip) for e in events(read.token.id)] == [
        (Outcome.SUCCESS, user.username, "127.0.0.1")
    ] * 2


def test_a_read_only_token_cannot_write(served: tuple[str, httpx.Client]) -> None:
    _, client = served
    user = make_user("bob")
    read = tokens.create(actor=user.username, name="read")
    for path in ("/plain/whoami", "/api/whoami"):
        refused = client.post(path, headers=bearer(read.secret), json={"a": 1})
        assert (refused.status_code, refused.json()) == (403, INSUFFICIENT_SCOPE)
        assert refused.headers["content-type"] == "application/json"
    assert [e.outcome for e in events(read.token.id)] == [Outcome.FORBIDDEN] * 2


def test_an_unknown_django_user_is_401(served: tuple[str, httpx.Client]) -> None:
    _, client = served
    ghost = tokens.create(actor=f"ghost-{id(client)}", name="ghost")
    refused = client.get("/plain/whoami", headers=bearer(ghost.secret))
    assert (refused.status_code, refused.json()) == (401, INVALID_TOKEN)
    challenges = refused.headers["www-authenticate"]
    assert challenges.startswith('Bearer realm="api", error="invalid_token"')
    assert challenges.endswith('Basic realm="api", charset="UTF-8"')
    [event] = events(ghost.token.id)
    assert (event.outcome, event.reason) == (
        Outcome.FAILED,
        f"user 'ghost-{id(client)}' is unknown or inactive",
    )


def test_headers_never_say_who_the_request_is(served: tuple[str, httpx.Client]) -> None:
    """DESIGN §9: no client header becomes the user (Django's ASGI handler gives
    ``Remote-User`` and ``Remote_User`` one META key), nor the client address."""
    _, client = served
    user = make_user("carol")
    admin = make_user("admin")
    admin.is_staff = admin.is_superuser = True
    admin.save()
    read = tokens.create(actor=user.username, name="read")
    fenced = tokens.create(actor=user.username, name="ip", allowed_ips=["203.0.113.0/24"])
    spoofed = [
        ("Remote-User", admin.username),
        ("Remote_User", admin.username),
        ("X-Remote-User", admin.username),
        ("X-Forwarded-User", admin.username),
        ("X-Forwarded-For", "203.0.113.5"),
        ("X_Forwarded_For", "203.0.113.5"),
        ("X-Real-IP", "203.0.113.5"),
    ]
    for path in ("/plain/whoami", "/api/whoami"):
        seen = client.get(path, headers=[*bearer(read.secret).items(), *spoofed])
        assert (seen.status_code, seen.json()["user"]) == (200, user.username), path
        write = client.post(path, headers=[*bearer(read.secret).items(), *spoofed])
        assert (write.status_code, write.json()) == (403, INSUFFICIENT_SCOPE), path
        outside = client.get(path, headers=[*bearer(fenced.secret).items(), *spoofed])
        assert (outside.status_code, outside.json()) == (403, INSUFFICIENT_SCOPE), path
    for path in ("/plain/whoami", "/session/whoami"):  # no token: still nobody
        nobody = client.get(path, headers=spoofed)
        assert (nobody.status_code, nobody.json()["user"]) == (200, None), path
    assert {e.client_ip for e in events(fenced.token.id)} == {"127.0.0.1"}
    assert {e.user for e in events(read.token.id)} == {user.username}


def test_a_json_rule_and_the_view_read_the_same_body(served: tuple[str, httpx.Client]) -> None:
    kind, client = served
    user = make_user("erin")
    ruled = tokens.create(
        actor=user.username,
        name="json",
        scope=Scope.READ_WRITE,
        restrictions=[
            "[post].*/api/echo[JsonData::project==ABC]",
            "[post].*/plain/whoami[JsonData::project==ABC]",
        ],
    )
    headers = {**bearer(ruled.secret), "Content-Type": "application/json"}
    body = b'{"project": "ABC",\n "n": [1, 2.50], "s": "\\u00e9"}'
    drf = client.post("/api/echo", headers=headers, content=body)
    assert drf.status_code == 200, drf.content
    assert drf.json() == {"data": json.loads(body), "raw": json.loads(body)}  # request.data
    plain = client.post("/plain/whoami", headers=headers, content=body)
    assert (plain.status_code, plain.json()["body"]) == (200, body.decode())
    other = client.post("/api/echo", headers=headers, content=b'{"project": "XYZ"}')
    assert (other.status_code, other.json()) == (403, INSUFFICIENT_SCOPE)

    def chunked() -> Iterator[bytes]:
        yield body[:9]
        yield body[9:]

    streamed = client.post("/api/echo", headers=headers, content=chunked())
    if kind == "asgi":
        assert (streamed.status_code, streamed.json()["data"]) == (200, json.loads(body))
    else:
        # Django under WSGI reads CONTENT_LENGTH bytes: a chunked body is empty to the
        # rule (which refuses it) as it would be to the view.
        assert (streamed.status_code, streamed.json()) == (403, INSUFFICIENT_SCOPE)
    assert [e.outcome for e in events(ruled.token.id)][1:] == [
        Outcome.FORBIDDEN,
        Outcome.SUCCESS,
        Outcome.SUCCESS,
    ]


def test_the_session_login_and_its_csrf_check_are_untouched(
    served: tuple[str, httpx.Client],
) -> None:
    """A browser's session works on protected paths without a token, CSRF check included;
    a token request needs no CSRF token (DESIGN §9)."""
    _, client = served
    user = make_user("frank")
    browser = Client()
    browser.force_login(user)  # a session in the project's database, which the server reads
    cookie = {"Cookie": f"sessionid={browser.cookies['sessionid'].value}"}
    for path in ("/session/whoami", "/plain/whoami", "/api/whoami"):
        seen = client.get(path, headers=cookie)
        assert (seen.status_code, seen.json()["user"], seen.json()["token"]) == (
            200,
            user.username,
            None,
        ), path
    refused = client.post("/plain/whoami", headers=cookie, json={})
    assert refused.status_code == 403
    assert b"CSRF" in refused.content
    write = tokens.create(actor=user.username, name="rw", scope=Scope.READ_WRITE)
    # With the session cookie too: the token says who it is, and no CSRF token is needed.
    token_post = client.post(
        "/plain/whoami", headers={**cookie, **bearer(write.secret)}, json={"a": 1}
    )
    assert (token_post.status_code, token_post.json()["token"]) == (200, write.token.id)
