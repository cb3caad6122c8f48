"""``TokenMiddleware``: Django's request for the request flow, the result for Django."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse
from django.utils.functional import SimpleLazyObject

from apitokens._flow import RequestFlow
from apitokens._model import Outcome
from apitokens._policy import AuthScheme
from apitokens._request import AuthRequest, quote_path
from apitokens._result import AuthResult
from apitokens.asgi import request_from_scope
from apitokens.django._project import django_user, get_tokens
from apitokens.wsgi import request_from_environ

__all__ = ["TokenMiddleware", "auth_request", "decide", "read_body", "refusal_response"]


def auth_request(request: HttpRequest) -> AuthRequest:
    """The :class:`AuthRequest` of a Django request, under WSGI or ASGI.

    Under ASGI it is read from the server's scope, never from ``request.META``:
    Django's ASGI handler turns a client's ``X_Forwarded_For`` or ``Remote_User``
    header into the same ``META`` key as ``X-Forwarded-For`` or ``Remote-User``.
    """
    if isinstance(request, ASGIRequest):
        scope = request.scope
        query = scope.get("query_string")
        if isinstance(query, str):
            # Django's own AsyncClient sends a str (the ASGI spec says bytes), which
            # Django's ASGIRequest takes: so does this, rather than fail every request.
            scope = {**scope, "query_string": query.encode()}
        found = request_from_scope(scope)
        # Django routes request.path_info: the scope's path less FORCE_SCRIPT_NAME when
        # it is set (else less root_path). That is the path the app sees, protected too.
        routed = quote_path(request.path_info, "utf-8") or "/"
        if routed not in (found.path, found.app_path):
            found = replace(found, app_path=routed)
        return found
    return request_from_environ(request.META)


def read_body(request: HttpRequest) -> Callable[[int], bytes]:
    """The flow's body reader: ``request.body``, which the view can read again."""

    def read(limit: int) -> bytes:
        try:
            body = request.body
        except RequestDataTooBig:
            # Past DATA_UPLOAD_MAX_MEMORY_SIZE Django keeps none of it: the flow only
            # needs to know it is past its own limit (413); these bytes are never read.
            return bytes(limit + 1)
        if not request.META.get("CONTENT_LENGTH"):
            # A chunked body under ASGI: DRF goes by CONTENT_LENGTH and would parse none
            # of it, and the view would act on an empty request.data the rules never saw.
            request.META["CONTENT_LENGTH"] = str(len(body))
        return body[: limit + 1]

    return read


def refusal_response(result: AuthResult) -> HttpResponse:
    """The DESIGN §4 response of a refusal."""
    headers: dict[str, str] = {}
    for name, value in result.headers:
        # Django keeps one value per header name: a 401's challenges (Bearer and Basic)
        # are folded into one WWW-Authenticate, as RFC 9110 §11.6.1 allows.
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return HttpResponse(result.body, status=result.status_code, headers=headers)


class _Owner:
    """Loads the token owner's Django user when ``request.user`` is first read (once)."""

    __slots__ = ("username",)

    def __init__(self, username: str | None) -> None:
        self.username = username

    def __call__(self) -> Any:
        # Imported here: this package is an installed app, imported before the models load.
        from django.contrib.auth.models import AnonymousUser

        found = None if self.username is None else django_user(self.username)
        return found if found is not None else AnonymousUser()

    async def auser(self) -> Any:
        """``request.auser()``, as Django's AuthenticationMiddleware gives it."""
        from asgiref.sync import sync_to_async

        return await sync_to_async(self)()


def authenticated(request: HttpRequest, result: AuthResult) -> None:
    """Make ``request`` the token owner's: ``request.user``, ``request.auth``, no CSRF check."""
    token = result.token
    # An unbound token's user is the Basic username its client wrote: no one Django
    # vouches for, so it gets no Django user (AnonymousUser), only request.auth.
    owner = _Owner(result.user if token is not None and token.user is not None else None)
    request.user = SimpleLazyObject(owner)  # type: ignore[assignment]
    request.auser = owner.auser
    request.auth = result  # type: ignore[attr-defined]
    # A token is no ambient credential of the browser's (no cookie): like DRF's token
    # authentication, its requests need no CSRF token. Session requests keep the check.
    # But a browser that was given a token at a Basic prompt sends it by itself, to
    # cross-site form posts too: a Basic request the browser says comes from another
    # site keeps Django's CSRF check.
    if result.scheme is not AuthScheme.BASIC or not _cross_site(request):
        request._dont_enforce_csrf_checks = True  # type: ignore[attr-defined]


def _cross_site(request: HttpRequest) -> bool:
    """Whether a browser says the request comes from another site (Fetch metadata, Origin)."""
    site = request.META.get("HTTP_SEC_FETCH_SITE")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.META.get("HTTP_ORIGIN")
    if origin is None:
        return False
    try:
        here = f"{request.scheme}://{request.get_host()}"
    except Exception:  # DisallowedHost and the like: not this site
        return True
    return bool(origin != here)


def decide(request: HttpRequest, flow: RequestFlow, *, protected: bool = False) -> AuthResult:
    """The flow's result for ``request``: decided once per request (the middleware's, reused).

    ``protected``: check a token whatever the path (DRF's classes, which a view
    lists to accept tokens), not only on the policy's protected paths. On
    success the request becomes the owner's (:func:`authenticated`); otherwise
    ``request.auth`` is ``None``.
    """
    decided = getattr(request, "_apitokens", None)
    if decided is not None and decided[0] is flow:
        result: AuthResult = decided[1]
        # A pass-through where tokens were not checked (outside the protected paths) says
        # nothing about the token; it has no audit event, so deciding again adds none.
        if not protected or decided[2] or result.outcome is not Outcome.PASS_THROUGH:
            return result
    result = flow.run(auth_request(request), read_body(request), protected=protected)
    request._apitokens = (flow, result, protected)  # type: ignore[attr-defined]
    if result.authenticated:
        authenticated(request, result)
    else:
        request.auth = None  # type: ignore[attr-defined]
    return result


class TokenMiddleware:
    """Checks tokens on the policy's protected paths (DESIGN §9).

    Put it in ``MIDDLEWARE`` after ``AuthenticationMiddleware``. On success
    ``request.user`` is the Django user whose ``USERNAME_FIELD`` is the token's
    owner and ``request.auth`` the :class:`~apitokens.AuthResult` (the token, its
    scope); the request is exempt from the CSRF check. A refusal is answered
    here (401, 403, 413, 429, 503 with the body of DESIGN §4), audited. Other
    requests (no token, a password, an unprotected path) go on untouched, with
    ``request.auth`` set to ``None``.

    A synchronous middleware: under ASGI Django runs it in its thread for
    synchronous code, where the ORM (the owner's lookup) belongs.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        result = decide(request, get_tokens().flow)
        if not result.authenticated and result.status_code != 200:
            return refusal_response(result)
        return self.get_response(request)
