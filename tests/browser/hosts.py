"""Host apps for the browser tests: a Starlette app and a Flask app with their own login.

Each host signs its users in with its own session (a signed cookie) through a demo login
form: a field labelled ``User name`` and a button ``Sign in``, no password. Other apps
are mounted under prefixes beside it; ``starlette_user`` and ``flask_user`` read the
host's session for a mounted app (what ``TokenPages(current_user=...)`` is given).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

from flask import Flask, redirect, request, session
from itsdangerous import BadSignature
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from werkzeug.middleware.dispatcher import DispatcherMiddleware

SECRET = "browser-tests-host-secret"
"""The hosts' session key (test data)."""

LOGIN_FORM = """<!doctype html><title>Sign in</title>
<form method="post" action="/login">
<label for="user">User name</label> <input id="user" name="user" autocomplete="username">
<input type="hidden" name="next" value="{next}">
<button type="submit">Sign in</button>
</form>"""


def _safe_next(target: str) -> str:
    """Only a path on this host (never ``//elsewhere``): the login is no open redirect."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


# -- Starlette ------------------------------------------------------------------------


async def _starlette_login(request: Request) -> Response:
    if request.method == "GET":
        target = html.escape(request.query_params.get("next", "/"))
        return HTMLResponse(LOGIN_FORM.format(next=target))
    form = await request.form()
    user = str(form.get("user", "")).strip()
    if not user:
        return HTMLResponse(LOGIN_FORM.format(next="/"), status_code=400)
    request.session["user"] = user
    return RedirectResponse(_safe_next(str(form.get("next", "/"))), status_code=303)


async def _starlette_logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


def starlette_host(
    routes: Sequence[BaseRoute] = (), mounts: Mapping[str, Callable[..., Any]] | None = None
) -> Starlette:
    """A Starlette app with a demo login, ``routes`` and ASGI apps mounted at ``mounts``."""
    return Starlette(
        routes=[
            Route("/login", _starlette_login, methods=["GET", "POST"]),
            Route("/logout", _starlette_logout, methods=["POST"]),
            *routes,
            *(Mount(prefix, app=app) for prefix, app in (mounts or {}).items()),
        ],
        middleware=[Middleware(SessionMiddleware, secret_key=SECRET)],
    )


def starlette_user(scope: MutableMapping[str, Any]) -> str | None:
    """The user signed in to a ``starlette_host`` (the session its middleware put in scope)."""
    user = scope.get("session", {}).get("user")
    return user if isinstance(user, str) else None


def starlette_signed_in(request: Request) -> str | None:
    """The signed-in user of a Starlette route, or ``None``."""
    return starlette_user(request.scope)


# -- Flask ----------------------------------------------------------------------------


def flask_host(configure: Callable[[Flask], None] | None = None) -> Flask:
    """A Flask app with a demo login; ``configure(app)`` adds the test's own routes."""
    app = Flask("browser_host")
    app.secret_key = SECRET

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if request.method == "GET":
            return LOGIN_FORM.format(next=html.escape(request.args.get("next", "/")))
        user = request.form.get("user", "").strip()
        if not user:
            return LOGIN_FORM.format(next="/"), 400
        session["user"] = user
        return redirect(_safe_next(request.form.get("next", "/")), code=303)

    @app.route("/logout", methods=["POST"])
    def logout() -> Any:
        session.clear()
        return redirect("/login", code=303)

    if configure is not None:
        configure(app)
    return app


def with_mounts(app: Flask, mounts: Mapping[str, Callable[..., Any]]) -> Callable[..., Any]:
    """The WSGI app serving ``app`` with other WSGI apps mounted at the ``mounts`` prefixes."""
    return DispatcherMiddleware(app.wsgi_app, dict(mounts))


def flask_user(app: Flask) -> Callable[[dict[str, Any]], str | None]:
    """Read the user signed in to ``app`` from a WSGI environ (its signed session cookie).

    A mounted WSGI app runs outside Flask's request context, so it reads the cookie the
    way Flask's own session interface does: the same key, the same serializer.
    """
    from werkzeug.wrappers import Request as WsgiRequest

    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    cookie_name = app.config["SESSION_COOKIE_NAME"]

    def current_user(environ: dict[str, Any]) -> str | None:
        cookie = WsgiRequest(environ).cookies.get(cookie_name)
        if cookie is None or serializer is None:
            return None
        lifetime = int(app.permanent_session_lifetime.total_seconds())
        try:
            data = serializer.loads(cookie, max_age=lifetime)
        except BadSignature:  # a forged or expired cookie: nobody is signed in
            return None
        user = data.get("user") if isinstance(data, dict) else None
        return user if isinstance(user, str) else None

    return current_user


def flask_signed_in() -> str | None:
    """The signed-in user of a Flask view, or ``None``."""
    user = session.get("user")
    return user if isinstance(user, str) else None
