"""Issue #6 (hardening): each case was reproduced against the released code; each is fixed here.

Bypasses (request targets, method overrides, mounts, token-looking values), the
secret never written down, ``request.user`` always readable, an unknown id as
slow as a wrong secret, and the address edge cases. Real servers where the case
needs one (werkzeug's for request targets a test client cannot send).
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from flask import Flask, jsonify
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from apitokens import ApiTokens, AuthRequest, IssuedToken, Outcome, Policy, Scope, SQLiteStore
from tests.support import CHEAP_HASHER, Clock, GatedHasher, bearer, make_tokens, serve_wsgi

Environ = dict[str, Any]
pytestmark = pytest.mark.anyio


async def no_content(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that answers 204: what reaches it was let through."""
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def strict(clock: Clock) -> Iterator[ApiTokens]:
    """Passwords off for the API: only tokens authenticate on /rest/."""
    with make_tokens(
        clock=clock, protected_paths=["/rest/"], allow_other_auth=False, max_failed_attempts=1000
    ) as tokens:
        yield tokens


# -- 1. request targets that are not origin-form, through werkzeug's own server ----------------


def password_app() -> Flask:
    """An app with its own (password) auth: what apitokens must not let a request reach."""
    app = Flask(__name__)

    @app.route("/rest/admin", methods=["GET", "DELETE"])
    def admin() -> Any:
        return jsonify(reached=True, path=flask_request.path)

    return app


def raw_request(
    port: int, target: str, headers: dict[str, str], *, timeout: float = 5
) -> tuple[int, bytes]:
    """Send ``GET <target> HTTP/1.1`` exactly as written; return status and body."""
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.fixture
def werkzeug_port(strict: ApiTokens) -> Iterator[int]:
    yield from serve_wsgi(strict.wsgi(password_app().wsgi_app))


@pytest.mark.parametrize("target", ["rest/admin", "http:rest/admin", "rest/%61dmin"])
def test_a_target_without_a_leading_slash_is_refused(
    werkzeug_port: int, strict: ApiTokens, target: str
) -> None:
    status, body = raw_request(werkzeug_port, target, {"Authorization": "Basic " + b64("a:pw")})
    assert status == 400, body
    assert b"reached" not in body
    event = strict.audit(action="authenticate")[0]
    assert (event.outcome, event.reason) == (
        Outcome.FAILED,
        "request target is not an absolute path",
    )


def test_absolute_form_is_checked_as_its_path(werkzeug_port: int, strict: ApiTokens) -> None:
    issued = strict.create(actor="alice", name="ci")
    url = f"http://127.0.0.1:{werkzeug_port}/rest/admin"
    assert raw_request(werkzeug_port, url, {"Authorization": "Basic " + b64("a:pw")})[0] == 401
    status, body = raw_request(werkzeug_port, url, {"Authorization": f"Bearer {issued.secret}"})
    assert (status, b"reached" in body) == (200, True)


def test_the_core_refuses_a_relative_path_only_where_something_is_protected() -> None:
    with make_tokens(protected_paths=["/rest/"]) as tokens:
        assert tokens.authenticate(AuthRequest("GET", "rest/x")).status_code == 400
        assert tokens.authenticate(AuthRequest("GET", "*")).status_code == 400
    with make_tokens(protected_paths=[]) as nothing:
        assert nothing.authenticate(AuthRequest("GET", "rest/x")).outcome is Outcome.PASS_THROUGH


# -- 3. method-override headers ------------------------------------------------------------------


class HTTPMethodOverrideMiddleware:
    """The middleware from Flask's own docs ("Adding HTTP Method Overrides")."""

    allowed_methods = frozenset(["GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"])
    bodyless_methods = frozenset(["GET", "HEAD", "OPTIONS", "DELETE"])

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: Callable[..., Any]) -> Any:
        method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").upper()
        if method in self.allowed_methods:
            environ["REQUEST_METHOD"] = method
        if method in self.bodyless_methods:
            environ["CONTENT_LENGTH"] = "0"
        return self.app(environ, start_response)


def override_app(tokens: ApiTokens, deleted: list[str]) -> Flask:
    app = Flask(__name__)

    @app.route("/rest/issue/<key>", methods=["GET", "DELETE"])
    def issue(key: str) -> Any:
        if flask_request.method == "DELETE":
            deleted.append(key)
        return jsonify(method=flask_request.method)

    # As docs/security.md says: the override middleware goes inside tokens.wsgi.
    app.wsgi_app = tokens.wsgi(HTTPMethodOverrideMiddleware(app.wsgi_app))  # type: ignore[method-assign]
    return app


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"])
def test_a_read_only_token_cannot_delete_through_an_override(
    tokens: ApiTokens, header: str
) -> None:
    deleted: list[str] = []
    client = override_app(tokens, deleted).test_client()
    read_only = tokens.create(actor="alice", name="ro")
    get_rule = tokens.create(
        actor="bob", name="get", scope=Scope.READ_WRITE, restrictions=["[GET].*/rest/issue/.*"]
    )
    for issued in (read_only, get_rule):
        auth = {"Authorization": f"Bearer {issued.secret}"}
        assert client.get("/rest/issue/A-1", headers=auth).json == {"method": "GET"}
        refused = client.get("/rest/issue/A-1", headers={**auth, header: "DELETE"})
        assert refused.status_code == 403
        assert refused.json["error"] == "insufficient_scope"
    assert deleted == []
    reasons = [e.reason for e in tokens.audit(outcome=Outcome.FORBIDDEN)]
    assert any("DELETE" in reason for reason in reasons), reasons


def test_an_override_both_methods_allow_passes(tokens: ApiTokens) -> None:
    deleted: list[str] = []
    client = override_app(tokens, deleted).test_client()
    issued = tokens.create(actor="bob", name="rw", scope=Scope.READ_WRITE)
    auth = {"Authorization": f"Bearer {issued.secret}", "X-HTTP-Method-Override": "DELETE"}
    assert client.get("/rest/issue/A-2", headers=auth).json == {"method": "DELETE"}
    assert deleted == ["A-2"]


async def test_overrides_are_checked_by_the_asgi_adapter_too(
    tokens: ApiTokens, asgi_client: Callable[..., httpx.AsyncClient]
) -> None:
    async def anything(request: Any) -> Response:
        return JSONResponse({"method": request.headers.get("x-http-method-override")})

    app = tokens.asgi(Starlette(routes=[Route("/rest/{p:path}", anything)]))
    issued = tokens.create(actor="alice", name="ro")
    async with asgi_client(app) as client:
        headers = {"Authorization": f"Bearer {issued.secret}", "X-HTTP-Method-Override": "PUT"}
        response = await client.get("/rest/x", headers=headers)
    assert response.status_code == 403


# -- 4. mounted apps ------------------------------------------------------------------------------


def echo_user_wsgi(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"reached {environ.get('REMOTE_USER')}".encode()]


def test_a_wsgi_app_mounted_under_a_prefix_is_protected(strict: ApiTokens) -> None:
    app = DispatcherMiddleware(echo_user_wsgi, {"/api": strict.wsgi(echo_user_wsgi)})
    issued = strict.create(actor="alice", name="ci")
    for port in serve_wsgi(app):
        base = f"http://127.0.0.1:{port}"
        password = httpx.get(f"{base}/api/rest/admin", auth=("alice", "pw"))
        assert password.status_code == 401
        nothing = httpx.get(f"{base}/api/rest/admin")
        assert nothing.status_code == 401
        token = httpx.get(f"{base}/api/rest/admin", headers=bearer(issued.secret))
        assert (token.status_code, token.text) == (200, "reached alice")
        # Outside the mount and outside the protected prefix: untouched.
        assert httpx.get(f"{base}/api/public").text == "reached None"


async def test_an_asgi_app_mounted_under_a_prefix_is_protected(
    strict: ApiTokens, asgi_client: Callable[..., httpx.AsyncClient]
) -> None:
    async def inner(request: Any) -> Response:
        return JSONResponse({"reached": True, "user": request.user.display_name})

    inner_app = Starlette(routes=[Route("/{p:path}", inner)])
    app = Starlette(routes=[Mount("/api", app=strict.asgi(inner_app))])
    issued = strict.create(actor="alice", name="ci")
    async with asgi_client(app) as client:
        nothing = await client.get("/api/rest/admin")
        password = await client.get("/api/rest/admin", auth=("alice", "pw"))
        token = await client.get("/api/rest/admin", headers=bearer(issued.secret))
        public = await client.get("/api/public")
    assert (nothing.status_code, password.status_code) == (401, 401)
    assert token.json() == {"reached": True, "user": "alice"}
    assert public.json() == {"reached": True, "user": ""}


# -- 5 and 12. token-looking values are checked or refused, and never written down -------------


def test_a_token_in_an_unknown_scheme_is_refused(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="ci")
    for value in (f"Token {issued.secret}", f"token={issued.secret}"):
        refused = tokens.authenticate(
            AuthRequest("GET", "/rest/x", headers=[("Authorization", value)])
        )
        assert refused.status_code == 400, value
    embedded = f"Bearer x{issued.secret}"
    assert (
        tokens.authenticate(
            AuthRequest("GET", "/rest/x", headers=[("Authorization", embedded)])
        ).status_code
        == 401
    )


def test_a_token_sent_as_the_basic_username_is_never_stored_or_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(tmp_path / "tokens.db")
    caplog.set_level(logging.INFO, logger="apitokens")
    with make_tokens(store, protected_paths=["/rest/"]) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        secret = issued.secret
        forged = secret[:-6] + ("000000" if not secret.endswith("000000") else "111111")
        for user, password in ((secret, secret), (forged, secret), (secret, "pw"), (forged, "x")):
            header = [("Authorization", "Basic " + b64(f"{user}:{password}"))]
            result = tokens.authenticate(AuthRequest("GET", f"/rest/{secret}", headers=header))
            assert result.status_code in (400, 401)
        events = tokens.audit(action="authenticate")
        tokens.flush()
    store.close()
    assert len(events) == 4
    for event in events:
        assert secret not in repr(event) and forged not in repr(event)
        assert event.user is None or "apt_" not in event.user
        assert event.path == f"/rest/apt_{issued.token.id}\u2026"
    for record in caplog.records:
        assert secret not in record.getMessage() and forged not in record.getMessage()
    for path in tmp_path.iterdir():  # the database, its WAL and anything beside it
        data = path.read_bytes()
        assert secret.encode() not in data and forged.encode() not in data, path.name


# -- 13. request.user on every request --------------------------------------------------------


async def test_a_fastapi_route_reading_request_user_works_for_everyone(
    tokens: ApiTokens, asgi_client: Callable[..., httpx.AsyncClient]
) -> None:
    api = FastAPI()

    @api.get("/{p:path}")
    async def who(request: Request) -> dict[str, Any]:
        return {"user": request.user.display_name, "in": request.user.is_authenticated}

    issued = tokens.create(actor="alice", name="ci")
    async with asgi_client(tokens.asgi(api)) as client:
        public = await client.get("/public")
        anonymous = await client.get("/rest/x")
        password = await client.get("/rest/x", auth=("alice", "pw"))
        token = await client.get("/rest/x", headers=bearer(issued.secret))
    assert public.json() == anonymous.json() == password.json() == {"user": "", "in": False}
    assert token.json() == {"user": "alice", "in": True}


# -- 14. an unknown id costs what a wrong secret costs ------------------------------------------


class CountingHasher(type(CHEAP_HASHER)):  # type: ignore[misc]
    """The cheap argon2 hasher, counting verifications."""

    calls = 0

    def verify(self, hashed: str, token: str) -> bool:
        type(self).calls += 1
        return bool(super().verify(hashed, token))


def test_an_unknown_id_takes_a_verification_like_a_wrong_secret() -> None:
    hasher = CountingHasher.from_parameters(CHEAP_HASHER._hasher._parameters)  # type: ignore[attr-defined]
    with ApiTokens(SQLiteStore(":memory:"), hasher=hasher, policy=Policy()) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        fmt = tokens.policy.token_format
        before = CountingHasher.calls
        assert (
            tokens.authenticate(
                AuthRequest("GET", "/x", headers=bearer(fmt.issue().value))
            ).status_code
            == 401
        )
        unknown = CountingHasher.calls - before
        wrong = fmt.issue(issued.token.id).value
        assert (
            tokens.authenticate(AuthRequest("GET", "/x", headers=bearer(wrong))).status_code == 401
        )
        assert CountingHasher.calls - before - unknown == unknown == 1
        reasons = [e.reason for e in tokens.audit(action="authenticate")]
    assert reasons == ["wrong secret", "unknown token id"]


# -- 15. addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "client", "ok"),
    [
        ("::ffff:203.0.113.0/120", "203.0.113.5", True),
        ("::ffff:203.0.113.0/120", "::ffff:203.0.113.5", True),
        ("203.0.113.0/24", "::ffff:203.0.113.5", True),
        ("::ffff:203.0.113.0/120", "203.0.114.5", False),
        ("2001:db8::/32", "203.0.113.5", False),
    ],
)
def test_ipv4_mapped_networks_match_both_ways(allowed: str, client: str, ok: bool) -> None:
    with make_tokens() as tokens:
        issued = tokens.create(actor="alice", name="ci", allowed_ips=[allowed])
        request = AuthRequest("GET", "/x", headers=bearer(issued.secret), client_ip=client)
        assert tokens.authenticate(request).authenticated is ok


@pytest.mark.parametrize(
    "hop", ["203.0.113.5:4711", "[2001:db8::1]:4711", "203.0.113.5", "2001:db8::1"]
)
def test_forwarded_hops_with_a_port(hop: str) -> None:
    with make_tokens(trusted_proxies=["10.0.0.0/8"]) as tokens:
        issued = tokens.create(
            actor="alice", name="ci", allowed_ips=["203.0.113.0/24", "2001:db8::/32"]
        )
        headers = [*bearer(issued.secret), ("X-Forwarded-For", f"{hop}, 10.0.0.2")]
        result = tokens.authenticate(
            AuthRequest("GET", "/x", headers=headers, client_ip="10.0.0.1")
        )
        assert result.authenticated
        assert (
            tokens.audit(limit=1)[0].client_ip
            == hop.split("]")[0].lstrip("[").rsplit(":4711", 1)[0]
        )


# -- 7. a large body is decided off the event loop ------------------------------------------------


def test_a_large_json_body_is_decided_off_the_event_loop(
    raw_asgi: Callable[..., list[dict[str, Any]]], make_scope: Any
) -> None:
    with make_tokens(protected_paths=["/rest/"]) as tokens:
        _decide_json_bodies(tokens, raw_asgi, make_scope)


def _decide_json_bodies(
    tokens: ApiTokens, raw_asgi: Callable[..., list[dict[str, Any]]], make_scope: Any
) -> None:
    issued = tokens.create(
        actor="alice", name="j", scope=Scope.READ_WRITE, restrictions=[".*[JsonData::a==1]"]
    )
    core = tokens._authenticator
    decided = core.safe_decide
    seen: list[tuple[int, bool]] = []

    def recording(request: AuthRequest, **kw: Any) -> Any:  # calls through: a spy, no stub
        seen.append((len(request.body), threading.current_thread() is threading.main_thread()))
        return decided(request, **kw)

    core.safe_decide = recording  # type: ignore[method-assign]
    headers = [
        (b"authorization", f"Bearer {issued.secret}".encode()),
        (b"content-type", b"application/json"),
    ]
    app = tokens.asgi(no_content)
    for size in (10, 100_000):
        body = b'{"a": 1, "pad": "' + b"x" * size + b'"}'
        scope = make_scope("/rest/x", method="POST", headers=headers)
        sent = raw_asgi(app, scope, [{"type": "http.request", "body": body}])
        assert sent[0]["status"] == 204
    with_body = [(size, on_loop) for size, on_loop in seen if size]
    assert [on_loop for _, on_loop in with_body] == [True, False], with_body


def test_a_missing_client_address_is_named_as_missing() -> None:
    with make_tokens() as tokens:
        issued = tokens.create(actor="alice", name="ci", allowed_ips=["203.0.113.0/24"])
        refused = tokens.authenticate(AuthRequest("GET", "/x", headers=bearer(issued.secret)))
        assert refused.status_code == 403
        assert refused.reason == "no client address given, and the token has allowed IPs"


# -- found by the attack through real servers (second round) -------------------------------------

GUNICORN_APP = """
from flask import Flask, jsonify, request
from apitokens import ApiTokens, Policy, SQLiteStore
from tests.support import CHEAP_HASHER

tokens = ApiTokens(
    SQLiteStore({db!r}),
    hasher=CHEAP_HASHER,
    policy=Policy(protected_paths=["/rest/"], allow_other_auth=False),
)
flask = Flask(__name__)


@flask.route("/rest/admin", methods=["GET", "DELETE"])
def admin():
    return jsonify(reached=True, path_info=request.environ.get("PATH_INFO"))


app = tokens.wsgi(flask.wsgi_app)
"""


@pytest.mark.parametrize(
    ("script_name", "target", "headers", "refused"),
    [
        # stripped without a "/" boundary: PATH_INFO "rest/admin"
        ("/api", "/apirest/admin", {}, 401),
        ("/api/", "/api/rest/admin", {}, 401),  # a trailing "/": every request's PATH_INFO so
        # gunicorn believes this from 127.0.0.1: a mount point a request chose (400)
        ("", "/xrest/admin", {"SCRIPT_NAME": "/x"}, 400),
    ],
)
def test_gunicorn_script_name_never_unprotects_a_route(
    tmp_path: Path, script_name: str, target: str, headers: dict[str, str], refused: int
) -> None:
    """gunicorn cuts SCRIPT_NAME off with a plain startswith; the app routes /rest/admin."""
    import subprocess
    import sys

    from tests.integration.test_durability import ROOT, listening

    db = tmp_path / "tokens.db"
    SQLiteStore(db).close()
    (tmp_path / "gunicorn_app.py").write_text(GUNICORN_APP.format(db=str(db)))
    sock = listening()
    port = sock.getsockname()[1]
    inherited = os.environ.get("PYTHONPATH", "")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(tmp_path), str(ROOT / "src"), str(ROOT), inherited])
        ),
    }
    env.pop("SCRIPT_NAME", None)
    if script_name:
        env["SCRIPT_NAME"] = script_name
    command = [sys.executable, "-m", "gunicorn", "-b", f"fd://{sock.fileno()}", "gunicorn_app:app"]
    server = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=[sock.fileno()],
    )
    sock.close()  # only gunicorn holds it now: the request waits in its backlog
    try:
        status, body = raw_request(port, target, headers, timeout=30)  # gunicorn starting
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert status == refused, body
    assert b"reached" not in body


def test_a_fragment_in_the_target_is_refused_not_matched(
    werkzeug_port: int, strict: ApiTokens
) -> None:
    """The rules would see "/rest/admin#/rest/issue/JRA-1"; the server routes "/rest/admin"."""
    issued = strict.create(
        actor="alice", name="jra", scope=Scope.READ_WRITE, restrictions=[".*/rest/issue/JRA.*"]
    )
    auth = {"Authorization": f"Bearer {issued.secret}"}
    status, body = raw_request(werkzeug_port, "/rest/admin#/rest/issue/JRA-1", auth)
    assert (status, b"reached" in body) == (400, False)
    assert strict.audit(limit=1)[0].reason == "request target has a fragment"
    assert raw_request(werkzeug_port, "/public#x", {})[0] == 404  # unprotected: untouched


async def test_an_override_header_spelled_with_underscores_is_checked(
    tokens: ApiTokens, asgi_client: Callable[..., httpx.AsyncClient]
) -> None:
    """An ASGI-to-WSGI bridge (a2wsgi, Starlette's old WSGIMiddleware) names headers as
    WSGI does, "-" and "_" alike: X_HTTP_Method_Override reaches Flask as the override."""
    acted: list[str] = []

    async def bridge_like(scope: Any, receive: Any, send: Any) -> None:
        environ = {
            "HTTP_" + name.decode().upper().replace("-", "_"): value.decode()
            for name, value in scope["headers"]
        }
        acted.append(environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", scope["method"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    issued = tokens.create(actor="alice", name="ro")
    async with asgi_client(tokens.asgi(bridge_like)) as client:
        for header in ("X_HTTP_Method_Override", "x-http_method-override", "X_Method_Override"):
            headers = {"Authorization": f"Bearer {issued.secret}", header: "DELETE"}
            response = await client.get("/rest/issue/A-1", headers=headers)
            assert response.status_code == 403, header
        plain = await client.get("/rest/issue/A-1", headers=bearer(issued.secret))
    assert plain.status_code == 200
    assert acted == ["GET"]


def test_a_token_is_never_written_down_however_it_is_hidden(tmp_path: Path) -> None:
    """Percent-encoded, across the audit path's bound, as an address, as an override."""
    store = SQLiteStore(tmp_path / "tokens.db")
    with make_tokens(store, protected_paths=["/rest/"], trusted_proxies=["127.0.0.1"]) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        leaked = tokens.create(actor="bob", name="leaked").secret
        auth = bearer(issued.secret)
        encoded = "%61" + leaked[1:]
        requests = [
            AuthRequest("GET", f"/rest/ok/{encoded}", headers=auth),
            AuthRequest("GET", f"/rest/ok/{'%2561' + leaked[1:]}", headers=auth),
            AuthRequest("GET", "/rest/" + "a" * 2030 + leaked, headers=auth),
            AuthRequest(
                "GET",
                "/rest/x",
                headers=[*auth, ("X-Forwarded-For", leaked)],
                client_ip="127.0.0.1",
            ),
            AuthRequest("GET", "/rest/x", headers=[*auth, ("X-HTTP-Method-Override", leaked)]),
        ]
        for request in requests:
            tokens.authenticate(request)
        events = tokens.audit(action="authenticate")
        tokens.flush()
    store.close()
    assert len(events) == len(requests)
    for event in events:
        for text in (event.path, event.reason, event.client_ip, event.user, repr(event)):
            assert leaked not in (text or "") and leaked.upper() not in (text or ""), event
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert leaked.encode() not in data and leaked.upper().encode() not in data, path


def test_a_503_for_an_unwritable_audit_log_is_logged_once_per_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with make_tokens() as tokens:
        issued = tokens.create(actor="alice", name="ci")
        tokens._writer.close()  # as when the process is shutting down: nothing can be queued
        caplog.set_level(logging.ERROR, logger="apitokens")
        for _ in range(5):
            refused = tokens.authenticate(AuthRequest("GET", "/x", headers=bearer(issued.secret)))
            assert refused.status_code == 503
    errors = [r for r in caplog.records if "answering 503" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]


# -- found by the second attack round -------------------------------------------------------------


def test_a_tab_waitress_drops_from_the_target_never_unprotects_a_route(strict: ApiTokens) -> None:
    """waitress parses "/re<TAB>st/admin" with urlsplit, which drops the tab: it routes
    "/rest/admin" while REQUEST_URI keeps the tab."""
    import waitress.server

    server = waitress.server.create_server(
        strict.wsgi(password_app().wsgi_app), host="127.0.0.1", port=0, threads=2
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        port = server.effective_port  # type: ignore[union-attr]
        for target in ("/re\tst/admin", "/rest/ad\tmin"):
            status, body = raw_request(port, target, {})
            assert b"reached" not in body, target
            assert status in (400, 401), (target, status)
        issued = strict.create(actor="alice", name="ci")
        ok = raw_request(port, "/rest/admin", {"Authorization": f"Bearer {issued.secret}"})
        assert ok[0] == 200
    finally:
        server.close()
        thread.join(5)


def test_the_path_as_routed_is_checked_whatever_the_raw_uri_says() -> None:
    from apitokens.wsgi import request_from_environ

    with make_tokens(protected_paths=["/rest/"], allow_other_auth=False) as tokens:
        environ = {"REQUEST_URI": "/re\tst/admin", "PATH_INFO": "/rest/admin"}
        request = request_from_environ(environ)
        assert request.app_path == "/rest/admin"
        assert tokens.authenticate(request).status_code == 400  # a tab in a target
        environ = {"RAW_URI": "/api/rest/admin", "SCRIPT_NAME": "/api", "PATH_INFO": "/rest/admin"}
        assert tokens.authenticate(request_from_environ(environ)).status_code == 401


def test_parallel_first_requests_with_one_credential_wait_for_one_verification() -> None:
    """A client's parallel first requests after a deploy: one verification; those that
    find no place in line get 503 with Retry-After: 1, and their retry passes."""
    gate = threading.Event()
    hasher = GatedHasher(gate)
    with ApiTokens(
        SQLiteStore(":memory:"), hasher=hasher, max_concurrent_verifications=1
    ) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        request = AuthRequest("GET", "/x", headers=bearer(issued.secret), client_ip="192.0.2.1")
        statuses: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: statuses.append(tokens.authenticate(request).status_code)
            )
            for _ in range(12)
        ]
        for thread in threads:
            thread.start()
        assert hasher.started.acquire(timeout=10)  # the one verification has started
        gate.set()
        for thread in threads:
            thread.join(10)
        assert set(statuses) <= {200, 503} and statuses.count(200) >= 3  # 1 + 2 in line
        assert hasher.calls == 1
        retried = tokens.authenticate(request)  # verified now: no place in line needed
        assert retried.status_code == 200
    assert hasher.calls == 1


def test_every_hidden_token_is_cut_from_the_audit_log(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "tokens.db")
    with make_tokens(store, protected_paths=["/rest/"]) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        leaked = tokens.create(actor="bob", name="leaked").secret
        other = tokens.create(actor="carol", name="other").secret
        auth = bearer(issued.secret)

        def encoded(text: str, times: int) -> str:
            for _ in range(times):
                text = "".join(f"%{ord(c):02X}" if c in "a%" else c for c in text)
            return text

        paths = [
            f"/rest/ok/{other}/{encoded(leaked, 2)}",  # one plain, one encoded twice
            f"/rest/ok/{encoded(leaked, 4)}",
            f"/rest/ok/APT_{leaked[4:]}",  # the head upper-cased
        ]
        for path in paths:
            tokens.authenticate(AuthRequest("GET", path, headers=auth))
        username = "APT_" + leaked[4:]
        basic = [("Authorization", "Basic " + b64(f"{username}:{other[:-1]}x"))]
        tokens.authenticate(AuthRequest("GET", "/rest/x", headers=basic))
        events = tokens.audit(action="authenticate")
        tokens.flush()
    store.close()
    assert len(events) == 4
    secrets_ = [leaked[16:], other[16:]]  # the secret parts: after the prefix and id
    for event in events:
        for text in (event.path, event.reason, event.user, repr(event)):
            for secret in secrets_:
                assert secret not in (text or ""), event
    for path in tmp_path.rglob("*"):
        if path.is_file():
            for secret in secrets_:
                assert secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("64:ff9b::1.2.3.4", "64:ff9b::5.6.7.8", False),  # NAT64: each IPv4 client its own
        ("::1.2.3.4", "::5.6.7.8", False),
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", True),  # one /64: one client
        ("::ffff:1.2.3.4", "1.2.3.4", True),
        ("x" * 4000, "x" * 4000, True),  # any text a proxy passed: one client, bounded
        ("x" * 4000, "x" * 3999 + "y", False),
    ],
)
def test_throttle_keys(one: str, other: str, same: bool) -> None:
    from apitokens._addresses import throttle_key

    assert (throttle_key(one) == throttle_key(other)) is same
    assert len(throttle_key(one)) <= 64


def test_the_client_text_in_an_audit_event_is_bounded() -> None:
    with make_tokens(clock=Clock(), trusted_proxies=["192.0.2.0/24"]) as tokens:
        unknown = tokens.policy.token_format.issue().value  # an id no token has
        raw = base64.b64encode(f"{'u' * 4000}:{unknown}".encode()).decode()
        request = AuthRequest(
            "GET",
            "/x",
            headers=[("Authorization", f"Basic {raw}"), ("X-Forwarded-For", "h" * 4000)],
            client_ip="192.0.2.1",
        )
        assert tokens.authenticate(request).status_code == 401
        (event,) = tokens.audit(limit=1)
        assert event.user == "u" * 256
        assert event.client_ip == "h" * 256


# -- found by the second reader -------------------------------------------------------------------


def test_a_client_sent_x_forwarded_for_with_underscores_is_never_believed(
    raw_asgi: Callable[..., list[dict[str, Any]]], make_scope: Any
) -> None:
    """A proxy appends to its X-Forwarded-For, never to a client's X_Forwarded_For."""

    with make_tokens(protected_paths=["/rest/"], trusted_proxies=["10.0.0.0/8"]) as tokens:
        issued = tokens.create(actor="alice", name="ci", allowed_ips=["192.0.2.0/24"])
        headers = [
            (b"authorization", f"Bearer {issued.secret}".encode()),
            (b"x-forwarded-for", b"203.0.113.9"),  # what the proxy saw
            (b"x_forwarded_for", b"192.0.2.5"),  # what the client sent
        ]
        scope = make_scope("/rest/x", headers=headers, client=("10.0.0.1", 5000))
        assert raw_asgi(tokens.asgi(no_content), scope)[0]["status"] == 403


def test_a_burst_of_good_first_requests_from_one_address_is_never_called_failures() -> None:
    """Attempts in flight are not failures: a NAT's burst of new tokens gets no 429."""
    gate = threading.Event()
    hasher = GatedHasher(gate)
    started = hasher.started
    with ApiTokens(
        SQLiteStore(":memory:"),
        hasher=hasher,
        policy=Policy(max_failed_attempts=3),
        max_concurrent_verifications=8,
    ) as tokens:
        secrets_ = [tokens.create(actor=f"user{n}", name="ci").secret for n in range(3)]
        more = [tokens.create(actor=f"late{n}", name="ci").secret for n in range(3)]
        statuses: list[int] = []

        def call(secret: str) -> None:
            request = AuthRequest("GET", "/x", headers=bearer(secret), client_ip="192.0.2.1")
            statuses.append(tokens.authenticate(request).status_code)

        first = [threading.Thread(target=call, args=(s,)) for s in secrets_]
        for thread in first:
            thread.start()
        for _ in first:
            assert started.acquire(timeout=10)  # three in flight: the address's limit
        for secret in more:
            busy = tokens.authenticate(
                AuthRequest("GET", "/x", headers=bearer(secret), client_ip="192.0.2.1")
            )
            assert busy.status_code == 503  # wait a moment: not "too many failed attempts"
            assert ("Retry-After", "1") in busy.headers
        gate.set()
        for thread in first:
            thread.join(10)
        for secret in more:  # all three good: nothing was counted against the address
            call(secret)
    assert statuses == [200] * 6


@pytest.mark.parametrize("patient", [True, False], ids=["wsgi-thread", "asgi-pool"])
def test_waiting_for_a_verification_in_flight(patient: bool) -> None:
    """Identical wrong secrets: one hash, the answer shared. From the ASGI adapter's shared
    pool the waiting ones hold places in line (503 beyond it); a WSGI request thread waits."""
    gate = threading.Event()
    hasher = GatedHasher(gate)
    with ApiTokens(
        SQLiteStore(":memory:"), hasher=hasher, max_concurrent_verifications=1
    ) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        wrong = tokens.policy.token_format.issue(issued.token.id).value
        core = tokens._authenticator
        looked_up = _CountingLock()  # each caller looks the flight up once under this lock
        core._admission._flights_lock = looked_up  # type: ignore[assignment]
        statuses: list[int] = []
        answered = threading.Semaphore(0)

        def call(n: int) -> None:
            request = AuthRequest("GET", "/x", headers=bearer(wrong), client_ip=f"192.0.2.{n}")
            statuses.append(core.decide(request, patient=patient).result.status_code)
            answered.release()

        threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        assert hasher.started.acquire(timeout=10)  # the one hash has started
        for _ in range(0 if patient else 5):  # from the pool, everyone beyond the line: 503
            assert answered.acquire(timeout=10)
        for _ in threads:  # and every caller has found that one in flight
            assert looked_up.released.acquire(timeout=10)
        gate.set()
        for thread in threads:
            thread.join(10)
    expected = [401] * 8 if patient else [401] * 3 + [503] * 5
    assert sorted(statuses) == expected
    assert hasher.calls == 1


class _CountingLock:
    """A lock that signals ``released`` each time it is let go: a test waits for threads to
    pass a point instead of polling."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.released = threading.Semaphore(0)

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        self.released.release()


# -- a body read past the limit is never handed on cut -------------------------------------------


def _json_token_losing_its_rule(tokens: ApiTokens) -> IssuedToken:
    """A token whose JSON rule is gone after the first decision asks for the body (an edit
    in this process, or the record cache refreshed from another's): the second allows."""
    issued = tokens.create(
        actor="alice",
        name="j",
        scope=Scope.READ_WRITE,
        restrictions=[".*[JsonData::a==1]"],
        secure=False,
    )
    token_id = issued.token.id
    core = tokens._authenticator
    decided = core.safe_decide

    def spy(request: AuthRequest, **kw: Any) -> Any:  # calls through, then edits once
        decision = decided(request, **kw)
        if decision.need_body:
            tokens.edit(actor="alice", token_id=token_id, restrictions=[])
        return decision

    core.safe_decide = spy  # type: ignore[method-assign]
    return issued


def test_wsgi_never_hands_the_app_a_body_cut_at_the_limit(tokens: ApiTokens) -> None:
    issued = _json_token_losing_its_rule(tokens)
    flask = Flask(__name__)

    @flask.post("/rest/x")
    def size() -> Any:
        return jsonify(size=len(flask_request.get_data()))

    flask.wsgi_app = tokens.wsgi(flask.wsgi_app)  # type: ignore[method-assign]
    body = b'{"a": 1, "pad": "' + b"x" * 500 + b'"}'  # past the fixture's 64-byte limit
    headers = {"Authorization": f"Bearer {issued.secret}", "Content-Type": "application/json"}
    response = flask.test_client().post("/rest/x", headers=headers, data=body)
    assert response.json == {"size": len(body)}


def test_asgi_never_hands_the_app_a_body_cut_at_the_limit(
    tokens: ApiTokens, raw_asgi: Callable[..., list[dict[str, Any]]], make_scope: Any
) -> None:
    received: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            received.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    issued = _json_token_losing_its_rule(tokens)
    chunks = [b'{"a": 1, "pad": "', b"x" * 100, b"y" * 100, b'"}']
    inbox = [
        {"type": "http.request", "body": chunk, "more_body": n < len(chunks) - 1}
        for n, chunk in enumerate(chunks)
    ]
    headers = [
        (b"authorization", f"Bearer {issued.secret}".encode()),
        (b"content-type", b"application/json"),
    ]
    sent = raw_asgi(tokens.asgi(app), make_scope("/rest/x", method="POST", headers=headers), inbox)
    assert sent[0]["status"] == 204
    assert b"".join(received) == b"".join(chunks)
