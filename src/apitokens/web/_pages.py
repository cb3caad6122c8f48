"""TokenPages: the token pages as one framework-neutral handler, and its two drivers."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from apitokens._api import ApiTokens
from apitokens._credentials import MalformedCredentials, read_credentials
from apitokens._errors import StorageError
from apitokens._result import AuthResult
from apitokens._tokens import TOKEN_PATTERN
from apitokens.asgi import ASGIApp
from apitokens.wsgi import WSGIApplication

from . import _admin, _user
from ._csrf import CsrfTokens
from ._drivers import asgi_app, wsgi_app
from ._http import Request, Response, TooManyFields
from ._render import Templates
from ._tester import run_tester
from ._visit import PageError, Visit, message_of

__all__ = ["TokenPages"]

log = logging.getLogger("apitokens.web")

_STATIC = {
    "pages.css": "text/css; charset=utf-8",
    "pages.js": "text/javascript; charset=utf-8",
}
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_ONE = r"/tokens/(?P<token_id>[^/]+)"  # one token


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    view: Callable[..., Response]
    admin: bool = False


def _routes() -> list[_Route]:
    def route(method: str, path: str, view: Callable[..., Response], admin: bool = False) -> _Route:
        return _Route(method, re.compile(path + r"\Z"), view, admin)

    return [
        route("GET", "/", _user.index),
        route("POST", "/create", _create),
        route("GET", _ONE + "/revoke", _user.confirm_revoke),
        route("POST", _ONE + "/revoke", _user.revoke),
        route("GET", _ONE + "/rotate", _user.confirm_rotate),
        route("POST", _ONE + "/rotate", _user.rotate),
        route("POST", _ONE + "/reveal", _user.reveal),
        route("GET", _ONE + "/edit", _user.edit_form),
        route("POST", _ONE + "/edit", _user.edit),
        route("POST", "/rules/check", _rule_check),
        route("GET", "/admin", _admin.tokens, admin=True),
        route("GET", "/admin/audit", _admin.audit, admin=True),
        route("GET", "/admin/policy", _admin.policy, admin=True),
        route("GET", "/admin/revoke-unused", _admin.confirm_unused, admin=True),
        route("POST", "/admin/revoke-unused", _admin.revoke_unused, admin=True),
    ]


def _create(visit: Visit) -> Response:
    again = _admin.tokens if visit.request.form.get("back") == "admin" and visit.admin else None
    return _user.create(visit, again)


def _rule_check(visit: Visit) -> Response:
    """The rule tester's JSON endpoint (the page's script calls it as the user types)."""
    try:
        data = visit.request.json() if visit.request.content_type == "application/json" else None
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        data = None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return Response.json(400, {"error": "send a JSON object of strings"})
    result = run_tester(
        data.get("rules", ""),
        data.get("method", "GET"),
        data.get("path", "/"),
        body=data.get("body", ""),
        scope=data.get("scope", ""),
        timeout=visit.tokens.policy.rule_timeout,
    )
    return Response.json(200, result.as_json())


class TokenPages:
    """The token pages: a user's own tokens, and the admin's view of all (DESIGN §10).

    Mount ``pages.asgi()`` or ``pages.wsgi()`` under any prefix of the host app
    (``/settings/tokens``); links and redirects follow the mount point
    (``root_path``, ``SCRIPT_NAME``). A page works with JavaScript off.

    Args:
        tokens: the application's :class:`~apitokens.ApiTokens`; every action is
            one of its management calls with the signed-in user as the actor.
        current_user: ``current_user(scope_or_environ)`` returns the name of the
            user signed in to the host app, or ``None``. A token is never a login
            for the pages.
        secret_key: signs the forms' CSRF tokens; at least 16 bytes, the same in
            every worker, kept secret.
        login_url: where to send a visitor who is not signed in (with
            ``?next=`` the page asked for); without it, 401.
        api_url: the URL the code snippets call (default: this host and the
            policy's first protected path).
        title: the pages' heading.
        page_size: rows per page of the admin's lists.
        csrf_max_age: how long a form stays valid.

    Raises:
        ValueError: a ``secret_key`` shorter than 16 bytes.
    """

    def __init__(
        self,
        tokens: ApiTokens,
        *,
        current_user: Callable[[Any], str | None],
        secret_key: str | bytes,
        login_url: str | None = None,
        api_url: str | None = None,
        title: str = "API tokens",
        page_size: int = 50,
        csrf_max_age: timedelta = timedelta(hours=12),
    ) -> None:
        key = secret_key.encode("utf-8") if isinstance(secret_key, str) else bytes(secret_key)
        if len(key) < 16:
            raise ValueError("secret_key must be at least 16 bytes (it signs the CSRF tokens)")
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self._tokens = tokens
        self._current_user = current_user
        self._login_url = login_url
        self._api_url = api_url
        self._title = title
        self._page_size = page_size
        self._clock = tokens._clock
        self._csrf = CsrfTokens(key, clock=self._clock, max_age=csrf_max_age)
        self._templates = Templates()
        self._routes = _routes()
        files = resources.files("apitokens.web") / "static"
        self._static = {
            name: Response(200, (files / name).read_bytes(), kind, cacheable=True)
            for name, kind in _STATIC.items()
        }

    def __repr__(self) -> str:
        return f"TokenPages({self._tokens!r})"

    def asgi(self) -> ASGIApp:
        """The pages as an ASGI app (Starlette ``Mount``, FastAPI ``app.mount``)."""
        return asgi_app(self.handle)

    def wsgi(self) -> WSGIApplication:
        """The pages as a WSGI app (``DispatcherMiddleware`` in Flask, a WSGI server)."""
        return wsgi_app(self.handle)

    def handle(self, request: Request) -> Response:
        """Answer one request (no I/O of its own but the API's calls): the drivers call it."""
        try:
            return self._answer(request)
        except PageError as exc:
            response = self._error(request, exc.status, exc.message)
            response.headers.extend(exc.headers)
            return response
        except TooManyFields:
            return self._error(request, 400, "This request has too many fields.")
        except StorageError:
            log.warning("token pages: the token store is unavailable", exc_info=True)
            return self._error(request, 503, message_of(StorageError()))
        except Exception:
            # The traceback, not the request: a form's fields or a page may hold a secret,
            # and a token pasted where an id goes is logged as a placeholder.
            path = TOKEN_PATTERN.sub("<token>", request.path[:200])
            log.exception("token pages: %s %s failed", request.method[:16], path)
            return self._error(request, 500, "Something went wrong on our side.")

    def _api(self, request: Request) -> str:
        if self._api_url is not None:
            return self._api_url
        host = request.headers.get("host", "")
        if not _HOST.fullmatch(host):
            host = "localhost"  # the snippets must still be valid code
        scheme = "https" if request.scheme == "https" else "http"
        path = (
            self._tokens.policy.protected_paths[0] if self._tokens.policy.protected_paths else "/"
        )
        return f"{scheme}://{host}{path}"

    def _answer(self, request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        if method == "GET" and request.path.startswith("/static/"):
            found = self._static.get(request.path[len("/static/") :])
            if found is None:
                raise PageError(404, "No such page.")
            return found
        route, params, allowed = None, {}, []
        for candidate in self._routes:
            match = candidate.pattern.match(request.path)
            if match:
                allowed.append(candidate.method)
                if candidate.method == method:
                    route, params = candidate, match.groupdict()
                    break
        if route is None and not allowed:
            raise PageError(404, "No such page.")
        if route is None:
            # Typically /create opened again from the address bar after the secret page.
            methods = ", ".join(sorted({*allowed, *(["HEAD"] if "GET" in allowed else [])}))
            message = (
                "This address only takes a form sent from these pages: go back to your tokens."
                if "GET" not in allowed
                else "This page is only opened, not sent to: go back to your tokens."
            )
            raise PageError(405, message, [("allow", methods)])
        if self._carries_token(request):
            # Whatever current_user says: a token authenticates API calls, never the pages.
            raise PageError(403, "An API token is not a sign-in for these pages.")
        user = self._current_user(request.native)
        if not user:
            return self._sign_in(request)
        admin = self._tokens._manager.is_admin(user)
        if route.admin and not admin:
            raise PageError(403, "Only token admins may see this page.")
        if method == "POST":
            self._check_csrf(request, user)
        visit = Visit(
            request=request,
            user=user,
            admin=admin,
            csrf=self._csrf.issue(user),
            tokens=self._tokens,
            templates=self._templates,
            now=self._clock(),
            title=self._title,
            api_url=self._api,
            page_size=self._page_size,
        )
        return route.view(visit, **params)

    def _carries_token(self, request: Request) -> bool:
        """Whether the request was authenticated by a token, or sends one (in any scheme)."""
        native = request.native
        result = native.get("apitokens.auth") if isinstance(native, Mapping) else None
        if isinstance(result, AuthResult) and result.token is not None:
            return True
        header = request.headers.get("authorization")
        try:
            credentials = read_credentials([header]) if header else None
        except MalformedCredentials:
            return False
        if credentials is None:
            return False
        parse = self._tokens.policy.token_format.parse
        return parse(credentials.secret) is not None or (
            credentials.username is not None and parse(credentials.username) is not None
        )

    def _check_csrf(self, request: Request, user: str) -> None:
        # A browser says when a request comes from another site: refuse it outright.
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise PageError(403, "This form was sent from another site: refused.")
        token = request.headers.get("x-csrf-token") or request.form.get("csrf_token")
        if not token or not self._csrf.valid(user, token):
            raise PageError(
                403,
                "This form has expired or was not sent from these pages. "
                "Go back to your tokens and send it again.",
            )

    def _sign_in(self, request: Request) -> Response:
        if self._login_url is None:
            raise PageError(401, "Sign in to this site first, then open this page again.")
        target = request.url(request.path) + (f"?{request.query}" if request.query else "")
        joiner = "&" if "?" in self._login_url else "?"
        return Response.redirect(self._login_url + joiner + urlencode({"next": target}))

    def _error(self, request: Request, status: int, message: str) -> Response:
        if request.path == "/rules/check":
            return Response.json(status, {"error": message})
        values = {
            "root": request.root_path,
            "title": self._title,
            "status": status,
            "message": message,
            "user": "",
            "admin": False,
            "active": "",
            "notice": "",
            "error": "",
        }
        try:
            return Response.html(status, self._templates.render("error.html", values))
        except Exception:  # the error page must not fail: plain text, same headers
            log.exception("token pages: the error page failed")
            return Response(status, message.encode(), "text/plain; charset=utf-8")
