"""Attacks on the issue-14 refactor (one request flow, thin adapters), through real servers.

Each test names what it attacks. A test that fails is a finding the lead fixes in
``src``; one that passes pins a property the attack could not break.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from apitokens import AuthRequest, Outcome, Scope
from tests.support import Clock, make_tokens, serve_wsgi

# -- helpers -------------------------------------------------------------------------------


def serve_uvicorn(app: Callable[..., Any]) -> Iterator[int]:
    """Run ``app`` under a real uvicorn (h11) in a thread; yield its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # requests wait in the backlog until uvicorn serves
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, http="h11", log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop within 10 s"


def send(port: int, head: str, body: bytes = b"", *, timeout: float = 10) -> socket.socket:
    """Open a connection and send ``head`` (request line and headers, CRLF-joined) and ``body``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
    return sock


def answer(sock: socket.socket) -> tuple[int, bytes]:
    """Read a ``Connection: close`` response to its end; return status and body."""
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def request_head(method: str, target: str, headers: list[tuple[str, str]]) -> str:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    return "\r\n".join(lines + [f"{name}: {value}" for name, value in headers])


JSON_RULE = "[post].*/rest/echo[JsonData::project==ABC]"


# -- 1. a catastrophic rule holds the ASGI event loop for the whole regex budget ------------

CATASTROPHIC = "/rest/(?:a|a)*b"  # exponential in the number of "a"s, in the regex module too


async def _public(request: Request) -> Response:
    return JSONResponse({"public": True})


async def _rest(request: Request) -> Response:
    return JSONResponse({"reached": request.url.path})


def test_a_catastrophic_rule_never_holds_the_event_loop() -> None:
    """DESIGN §7: "nothing that blocks the event loop in the ASGI adapter".

    A token whose record and secret are cached is decided on the event loop
    (``RequestFlow.run_async`` -> ``_decide_async``, ``block=False``), rules and all.
    The regex module's ``concurrent=True`` retry gives up the GIL, not the loop: for
    the whole ``rule_timeout`` no other client of the server is served. Any user who
    may create a token writes its rules, so any user can stall the server for
    ``rule_timeout`` per request (50 ms by default: 20 requests a second hold it).
    Here the budget is 1 s to make the window plain: a public request sent while the
    slow one is being decided must be answered before it.
    """
    with make_tokens(protected_paths=["/rest/"], rule_timeout=1.0) as tokens:
        secret = tokens.create(actor="mallory", name="slow", restrictions=[CATASTROPHIC]).secret
        auth = [("Authorization", f"Bearer {secret}")]
        app = tokens.asgi(
            Starlette(routes=[Route("/public", _public), Route("/rest/{p:path}", _rest)])
        )
        for port in serve_uvicorn(app):
            # Warm: the record, the verification and the hot credential are cached.
            assert answer(send(port, request_head("GET", "/rest/ab", auth)))[0] == 200
            slow = send(port, request_head("GET", "/rest/" + "a" * 40, auth))
            status, _ = answer(send(port, request_head("GET", "/public", [])))
            assert status == 200
            # The slow request is still within its 1-s budget: it must not have been
            # answered yet. If the loop was held, it was answered before /public.
            readable, _, _ = select.select([slow], [], [], 0)
            finished_first = bool(readable)
            status, _ = answer(slow)
            assert status == 403
            assert not finished_first, "the public request waited for the rule's regex budget"
        event = tokens.audit(limit=1)[0]
        assert (event.outcome, event.reason) == (Outcome.FORBIDDEN, "regex time budget exceeded")


# -- 2. method-override headers multiply the JSON parse the budget does not charge ----------


def test_override_headers_do_not_multiply_the_json_parse() -> None:
    """A request is checked once per method-override header (DESIGN §4), each with its own
    ``RequestView``, which parses the body again; parsing is not charged to the regex
    budget (``RequestView.json`` moves the shared deadline on by the time it took).

    So one request of ``max_body_bytes`` (1 MiB) with N copies of
    ``X-HTTP-Method-Override: POST`` costs N + 1 full JSON parses: ~10 ms each here,
    0.58 s of CPU (holding the GIL) for N = 100, and waitress accepts ~12,000 such headers
    (262 KiB of header), uvicorn's h11 ~700. Under ``tokens.asgi()`` a body up to 64 KiB
    is decided on the event loop: 500 overrides and a 59 KB body held uvicorn's loop
    0.39 s per request (a public GET behind three of them waited 1.1 s). The legitimate
    request itself may then be refused: the freeing of each view's parsed body is charged
    ("regex time budget exceeded", seen at N = 100).

    Measured as this thread's CPU time, against the same request without overrides.
    """
    body = json.dumps({"project": "ABC", "pad": list(range(100_000))}).encode()

    def cpu_for(overrides: int) -> float:
        with make_tokens(protected_paths=["/rest/"]) as tokens:
            secret = tokens.create(
                actor="erin", name="json", scope=Scope.READ_WRITE, restrictions=[JSON_RULE]
            ).secret
            headers = [("Authorization", f"Bearer {secret}"), ("Content-Type", "application/json")]
            headers += [("X-HTTP-Method-Override", "POST")] * overrides
            request = AuthRequest("POST", "/rest/echo", headers=headers, body=body)
            tokens.authenticate(request)  # warm: verified, cached
            spent = []
            for _ in range(3):  # the least of three: a shared machine's noise only adds
                started = time.thread_time()
                result = tokens.authenticate(request)
                spent.append(time.thread_time() - started)
                # More override values than the three header names: refused, unread (400).
                assert result.status_code == (200 if overrides <= 3 else 400)
            return min(spent)

    one = cpu_for(0)
    three = cpu_for(3)  # one parse shared by the method and its three overrides, not four
    many = cpu_for(40)
    assert three <= 2 * one + 0.01, f"no override: {one:.4f} s of CPU; 3 overrides: {three:.4f} s"
    assert many <= one + 0.01, f"no override: {one:.4f} s of CPU; 40 overrides: {many:.4f} s"


def test_many_json_rules_never_spend_more_than_the_budget_formatting_one_value() -> None:
    """``RequestView.texts`` formats an object or array value (compact JSON, sorted keys)
    for every JsonData clause of every rule, again each time, and the time is not charged
    to the budget. A token may have 1000 rules (``MAX_RULES``), all written by the user who
    creates it: one request with a 1 MB object under the clauses' path then costs one
    formatting per rule, ~50 ms each here (2.6 s of CPU, holding the GIL, for 50 rules;
    the budget is 0.05 s), times the method-override headers (each a new RequestView).

    Measured as this thread's CPU time, against the same request under one rule.
    """
    body = json.dumps({"data": {f"k{i}": [i, i + 1] for i in range(8000)}}).encode()

    def cpu_for(rules: int) -> float:
        with make_tokens(protected_paths=["/rest/"], max_body_bytes=1_048_576) as tokens:
            restrictions = [f"[post]/rest/echo[JsonData::data==no{i}]" for i in range(rules)]
            secret = tokens.create(
                actor="mallory", name="many", scope=Scope.READ_WRITE, restrictions=restrictions
            ).secret
            headers = [("Authorization", f"Bearer {secret}"), ("Content-Type", "application/json")]
            request = AuthRequest("POST", "/rest/echo", headers=headers, body=body)
            assert tokens.authenticate(request).status_code == 403  # warm: verified, cached
            spent = []
            for _ in range(3):  # the least of three: a shared machine's noise only adds
                started = time.thread_time()
                result = tokens.authenticate(request)
                spent.append(time.thread_time() - started)
                assert result.status_code == 403
            return min(spent)

    one = cpu_for(1)
    many = cpu_for(100)
    # Formatting the value once per rule would be about 100 times one rule's cost.
    assert many <= 10 * one + 0.1, f"1 rule: {one:.3f} s of CPU; 100 rules: {many:.3f} s"


# -- 3. secrets in reprs and results ---------------------------------------------------------


def test_the_repr_never_shows_a_percent_encoded_token() -> None:
    """An ``AuthRequest`` repr cuts a token in the path or query to its id (it is often
    logged), but only a token written plainly: ``apt%5F...`` (or any one character of it
    percent-encoded, as any client or proxy may send it) shows the whole secret. The
    audit path decodes before cutting (``_audit_path``); the repr does not.
    """
    secret = make_tokens().policy.token_format.issue().value
    encoded = secret.replace("_", "%5F")
    request = AuthRequest("GET", f"/rest/{encoded}", query=f"t={quote(secret)}%2A&u={encoded}")
    shown = repr(request)
    assert secret[16:] not in shown, shown


def test_a_refusal_never_carries_a_token_sent_as_the_forwarded_address() -> None:
    """The audit event of an allowed-IPs refusal has the client address cut to its id;
    the ``AuthResult`` the flow returns keeps it whole in ``reason`` (and so in its repr,
    in ``RouteRefused.result`` and whatever an app logs of it). Behind a trusted proxy the
    address is ``X-Forwarded-For`` text, which a client chooses.
    """
    with make_tokens(
        clock=Clock(), protected_paths=["/rest/"], trusted_proxies=["127.0.0.1/32"]
    ) as tokens:
        issued = tokens.create(actor="dave", name="ip", allowed_ips=["203.0.113.0/24"])
        hidden = tokens.create(actor="victim", name="other").secret
        headers = [("Authorization", f"Bearer {issued.secret}"), ("X-Forwarded-For", hidden)]
        result = tokens.authenticate(
            AuthRequest("GET", "/rest/x", headers=headers, client_ip="127.0.0.1")
        )
        assert result.status_code == 403
        assert hidden[16:] not in tokens.audit(limit=1)[0].client_ip  # the audit row is cut
        assert hidden[16:] not in result.reason
        assert hidden[16:] not in repr(result)


# -- 4. a rule reads "//admin/users" while the app routes "/admin/users" ----------------------


def test_a_rule_matches_the_path_the_app_routes_not_its_leading_slashes() -> None:
    """``Policy.protects`` collapses repeated slashes; the rule matcher does not (both use
    ``decode_path``, but only ``protects`` collapses). waitress gives ``REQUEST_URI`` as
    sent (``//admin/users``), which ``wsgi._raw_path`` prefers, and ``PATH_INFO`` with
    the leading slashes collapsed (``/admin/users``); werkzeug's ``Request.path`` (Flask's
    routing) is ``"/" + PATH_INFO.lstrip("/")`` anyway, so under gunicorn too (RAW_URI and
    PATH_INFO both ``//admin/users``) Flask serves ``/admin/users``. A rule written as
    "everything but the admin API", ``[get]/(?!admin/).*``, fullmatches ``//admin/users``:
    the token reaches the admin API it was refused on ``/admin/users`` (403).

    Reproduced on waitress and gunicorn (sync) with Flask, and on werkzeug's server with
    an absolute-form target ``http://h//admin/users``. uvicorn + Starlette routes
    ``//admin/users`` as written (404), so the ASGI side does not show it.
    """
    import waitress.server
    from flask import Flask
    from flask import request as flask_request

    flask = Flask(__name__)
    flask.add_url_rule("/admin/users", "admin", lambda: "ADMIN " + flask_request.path)
    with make_tokens() as tokens:  # protected_paths=("/",), the default
        secret = tokens.create(actor="carol", name="no-admin", restrictions=["[get]/(?!admin/).*"])
        auth = [("Authorization", f"Bearer {secret.secret}")]
        server = waitress.server.create_server(
            tokens.wsgi(flask.wsgi_app), host="127.0.0.1", port=0, threads=2
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            port = server.effective_port  # type: ignore[union-attr]
            assert answer(send(port, request_head("GET", "/admin/users", auth)))[0] == 403
            status, body = answer(send(port, request_head("GET", "//admin/users", auth)))
        finally:
            server.close()
            thread.join(5)
        assert b"ADMIN" not in body, "the rule saw //admin/users, the app served /admin/users"
        assert status == 403


# -- 5. a request its route refuses is audited as a success too --------------------------


def test_a_request_its_route_refuses_is_the_routes_refusal_after_the_middlewares_success() -> None:
    """``tokens.asgi()`` records SUCCESS (and counts a use) before the app runs: it must, to
    fail closed (503) when the audit log cannot be written before the app acts. A
    ``RequireToken(tokens, write=True)`` route then refuses the READ_ONLY token: a decision
    of its own, recorded as FORBIDDEN. The attack review asked for one row; two decisions
    are two rows, newest the route's refusal, as docs/middleware.md says. Through real
    uvicorn + FastAPI.
    """
    from fastapi import Depends, FastAPI

    from apitokens.starlette import RequireToken, RouteRefused, render_refusal

    with make_tokens(protected_paths=["/rest/"]) as tokens:
        issued = tokens.create(actor="alice", name="read-only")
        app = FastAPI(exception_handlers={RouteRefused: render_refusal})

        @app.get("/rest/export", dependencies=[Depends(RequireToken(tokens, write=True))])
        def export() -> dict[str, bool]:
            return {"exported": True}

        auth = [("Authorization", f"Bearer {issued.secret}")]
        for port in serve_uvicorn(tokens.asgi(app)):
            status, body = answer(send(port, request_head("GET", "/rest/export", auth)))
            assert status == 403 and b"exported" not in body
        rows = tokens.audit(token_id=issued.token.id, action="authenticate")
        assert [(row.outcome, row.reason, row.path) for row in rows] == [
            (Outcome.FORBIDDEN, "route requires a READ_WRITE token", "/rest/export"),
            (Outcome.SUCCESS, "authenticated", "/rest/export"),
        ]


# -- 6. RequireToken reuses any AuthResult in the scope, whichever ApiTokens made it ------


def test_require_token_never_takes_another_instances_decision() -> None:
    """``RequireToken`` (and ``TokenBackend``) reuse ``scope["apitokens.auth"]`` whenever it
    is an ``AuthResult``, without asking which ``ApiTokens`` decided it. An app with two
    token systems, staff tokens (``stf_``) checked by ``staff.asgi(app)`` and customer
    tokens (``cus_``) required on a route by ``RequireToken(customers)``: a staff token
    authenticates in the staff middleware (its default ``protected_paths=("/",)``), and the
    customer route takes that decision as its own. A customer token is foreign to the
    staff middleware (another prefix), passes through, and is decided by ``customers``.
    Through real uvicorn + FastAPI.
    """
    from fastapi import Depends, FastAPI

    from apitokens.starlette import RequireToken, RouteRefused, render_refusal

    with make_tokens(token_prefix="stf") as staff, make_tokens(token_prefix="cus") as customers:
        staff_token = staff.create(actor="sam", name="staff").secret
        customer_token = customers.create(actor="carl", name="orders").secret
        app = FastAPI(exception_handlers={RouteRefused: render_refusal})

        @app.get("/orders", dependencies=[Depends(RequireToken(customers))])
        def orders() -> dict[str, bool]:
            return {"orders": True}

        for port in serve_uvicorn(staff.asgi(app)):
            own = [("Authorization", f"Bearer {customer_token}")]
            assert answer(send(port, request_head("GET", "/orders", own))) == (
                200,
                b'{"orders":true}',
            )
            other = [("Authorization", f"Bearer {staff_token}")]
            status, body = answer(send(port, request_head("GET", "/orders", other)))
            assert status == 401 and b"orders" not in body, (status, body)


# -- 7. docs/security.md puts a mount inside the middleware, where nothing protects it ------


def test_a_mounted_app_is_protected_on_either_side_of_the_mount_as_the_docs_say() -> None:
    """docs/security.md, "Mounted apps": prefixes are written for the side of the mount the
    middleware is on. Wrapping the app that mounts, the middleware sees the path as sent
    (``/api/rest/admin``), so ``["/rest/"]`` leaves it unprotected (the attack review found
    the page said otherwise) and ``["/api/rest/"]`` protects it; wrapping the mounted app,
    ``["/rest/"]`` protects it. With ``allow_other_auth=False`` a request without
    credentials must then be refused under uvicorn and werkzeug, whatever the spelling.
    """
    from starlette.routing import Mount
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    async def admin(request: Request) -> Response:
        return JSONResponse({"reached": True})

    def site(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"site"]

    def wsgi_admin(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"reached " + environ.get("PATH_INFO", "").encode()]

    api = Starlette(routes=[Route("/rest/admin", admin)])
    with (
        make_tokens(protected_paths=["/api/rest/"], allow_other_auth=False) as outer,
        make_tokens(protected_paths=["/rest/"], allow_other_auth=False) as inner,
    ):
        apps = [
            (serve_uvicorn, outer.asgi(Starlette(routes=[Mount("/api", app=api)]))),
            (serve_wsgi, outer.wsgi(DispatcherMiddleware(site, {"/api": wsgi_admin}))),
            (serve_uvicorn, Starlette(routes=[Mount("/api", app=inner.asgi(api))])),
            (serve_wsgi, DispatcherMiddleware(site, {"/api": inner.wsgi(wsgi_admin)})),
        ]
        reached = []
        for serve, app in apps:
            for port in serve(app):
                for target in ("/api/rest/admin", "/api//rest/admin", "/api/%72est/admin"):
                    status, body = answer(send(port, request_head("GET", target, [])))
                    if b"reached" in body:
                        reached.append((target, status, body))
        assert not reached, reached


# -- 8. what held (these pass: they pin properties the attacks could not break) -------------


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


GOOD = b'{"project":"ABC"}'


async def _echo(request: Request) -> Response:
    return Response(await request.body())


def test_bodies_the_rule_did_not_see_never_reach_the_app() -> None:
    """Chunked bodies, a chunked body past ``max_body_bytes`` whose first bytes satisfy the
    rule, Content-Length with Transfer-Encoding, a body shorter than its Content-Length:
    under werkzeug (WSGI, Flask) and uvicorn (ASGI, Starlette) the app echoes exactly the
    bytes the rule saw, or never runs.
    """
    from flask import Flask
    from flask import request as flask_request

    with make_tokens(protected_paths=["/rest/"], max_body_bytes=64) as tokens:
        secret = tokens.create(
            actor="erin", name="json", scope=Scope.READ_WRITE, restrictions=[JSON_RULE]
        ).secret
        flask = Flask(__name__)
        flask.add_url_rule("/rest/echo", "echo", lambda: flask_request.get_data(), methods=["POST"])
        starlette = Starlette(routes=[Route("/rest/echo", _echo, methods=["POST"])])
        auth = [("Authorization", f"Bearer {secret}"), ("Content-Type", "application/json")]
        cases = [
            ([("Transfer-Encoding", "chunked")], chunked(GOOD[:5], GOOD[5:]), 200),
            ([("Transfer-Encoding", "chunked")], chunked(GOOD, b" " * 47, b'"EVIL"'), 413),
            ([("Content-Length", "17"), ("Transfer-Encoding", "chunked")], chunked(GOOD), None),
        ]
        servers = (
            serve_wsgi(tokens.wsgi(flask.wsgi_app)),
            serve_uvicorn(tokens.asgi(starlette)),
        )
        for server in servers:
            for port in server:
                for headers, body, expected in cases:
                    status, echoed = answer(
                        send(port, request_head("POST", "/rest/echo", auth + headers), body)
                    )
                    if status == 200:
                        assert echoed == GOOD
                    if expected is not None:
                        assert status == expected, (headers, body, status, echoed)


def test_a_required_token_holds_on_a_mounted_app_whatever_the_path() -> None:
    """``tokens.wsgi(app, require=Requirement.TOKEN)`` mounted with ``DispatcherMiddleware``
    under a real werkzeug server, with nothing protected by the policy: every spelling of a
    path into the mount needs a token, and a password never reaches the app.
    """
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from apitokens import Requirement

    def inner(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"reached " + str(environ.get("REMOTE_USER")).encode()]

    def outer(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"outer"]

    with make_tokens(protected_paths=[]) as tokens:
        secret = tokens.create(actor="alice", name="ci").secret
        mounted = DispatcherMiddleware(
            outer, {"/api": tokens.wsgi(inner, require=Requirement.TOKEN)}
        )
        password = [("Authorization", "Basic YWxpY2U6cHc=")]
        for port in serve_wsgi(mounted):
            for target in ["/api/x", "//api/x", "/api//x", "/%61pi/x", "/api/%2e%2e/api/x"]:
                status, body = answer(send(port, request_head("GET", target, password)))
                assert status == 401 and b"reached" not in body, target
            token = [("Authorization", f"Bearer {secret}")]
            status, body = answer(send(port, request_head("GET", "/api/x", token)))
            assert status == 200 and b"reached alice" in body
