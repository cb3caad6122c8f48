"""Django REST framework: ``TokenAuthentication``, ``HasToken``, ``HasReadWriteToken`` (DESIGN §9).

Needs Django REST framework (the ``drf`` extra)::

    pip install 'apitokens[drf]'

    REST_FRAMEWORK = {
        "DEFAULT_AUTHENTICATION_CLASSES": [
            "apitokens.drf.TokenAuthentication",
            "rest_framework.authentication.SessionAuthentication",
        ],
    }

``TokenAuthentication`` works with or without ``apitokens.django.TokenMiddleware``
(with it, it reuses the middleware's decision). A view that lists it (or
``HasToken``) has tokens checked whatever its path, not only on the policy's
``protected_paths``. The project's ``ApiTokens`` is ``settings.APITOKENS``, as
for the middleware. See ``docs/django.md``.
"""

from __future__ import annotations

from typing import Any

try:
    import rest_framework  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "apitokens.drf needs Django REST framework, which apitokens does not install by"
        f" itself ({error.name} is missing): pip install 'apitokens[drf]'",
        name=error.name,
    ) from error

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from apitokens._flow import Requirement
from apitokens._result import AuthResult
from apitokens.django._middleware import auth_request, decide
from apitokens.django._project import get_tokens

__all__ = ["HasReadWriteToken", "HasToken", "TokenAuthentication", "TokenRefused"]

# The refusal's headers DRF sends itself: the body's type, and the exception's
# ``auth_header`` and ``wait``.
_SENT_BY_DRF = frozenset({"content-type", "www-authenticate", "retry-after"})


class TokenRefused(exceptions.APIException):
    """A refusal (DESIGN §4) as DRF answers it: the status, the body and the headers.

    The body is apitokens' own (``{"error": ..., "error_description": ...}``), as
    the middleware and every other adapter send it.
    """

    def __init__(self, result: AuthResult) -> None:
        self.status_code = result.status_code
        super().__init__({"error": result.error or "", "error_description": result.description})
        self.result = result
        challenges = [v for k, v in result.headers if k.lower() == "www-authenticate"]
        if challenges:
            # DRF sends one WWW-Authenticate; one header may hold several challenges.
            self.auth_header = ", ".join(challenges)
        retry = [v for k, v in result.headers if k.lower() == "retry-after"]
        if retry:
            self.wait = int(retry[0])

    @classmethod
    def on(cls, request: Request, result: AuthResult) -> TokenRefused:
        """The refusal of ``result``, answered in JSON whatever ``request`` accepts.

        DRF renders an exception with the renderer it negotiated (the browsable
        API's HTML for ``Accept: text/html``); a refusal is apitokens' JSON body
        with ``Content-Type: application/json``, as the middleware sends it.
        """
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = JSONRenderer.media_type
        # DRF's exception handler sends only WWW-Authenticate and Retry-After of an
        # exception; the view's own response headers (a dict made per request, put on
        # every response it finalizes) carry the rest: a 429's RateLimit fields.
        view = (request.parser_context or {}).get("view")
        headers = getattr(view, "headers", None)
        if isinstance(headers, dict):
            for name, value in result.headers:
                if name.lower() not in _SENT_BY_DRF:
                    headers[name] = value
        return cls(result)


class TokenAuthentication(BaseAuthentication):
    """DRF authentication by apitokens: ``request.user`` the owner's Django user.

    A request without a token (none, or a password) is left to the next
    authentication class; a refused token is answered with the refusal (401,
    403, 413, 429 or 503, audited); an accepted one gives ``request.user`` (the
    Django user whose ``USERNAME_FIELD`` is the owner) and ``request.auth`` (the
    :class:`~apitokens.AuthResult`).
    """

    def authenticate(self, request: Request) -> tuple[Any, AuthResult] | None:
        """See DRF's ``BaseAuthentication.authenticate``."""
        django_request = request._request
        result = decide(django_request, get_tokens().flow, protected=True)
        if result.authenticated:
            return django_request.user, result
        if result.status_code == 200:
            return None
        raise TokenRefused.on(request, result)

    def authenticate_header(self, request: Request) -> str:
        """The challenge of a 401 (so DRF answers 401, not 403, without credentials)."""
        policy = get_tokens().policy
        challenges = []
        if policy.auth_schemes.bearer:
            challenges.append(f'Bearer realm="{policy.realm}"')
        if policy.auth_schemes.basic:
            challenges.append(f'Basic realm="{policy.realm}", charset="UTF-8"')
        return ", ".join(challenges)


class HasToken(BasePermission):
    """The request must be authenticated by a token (any scope). Refusals are audited.

    A refusal is raised (apitokens' status and body: 401 for a request without a
    token, a session user's too), never answered ``False``. So in a composition
    put it last: ``HasAPIKey | HasToken`` asks drf-api-key first and refuses
    with apitokens' 401 when neither is there; ``HasToken | HasAPIKey`` never
    asks the other.
    """

    requirement = Requirement.TOKEN

    def has_permission(self, request: Request, view: Any) -> bool:
        """See DRF's ``BasePermission.has_permission``; raises the refusal."""
        flow = get_tokens().flow
        django_request = request._request
        # The decision of the middleware or of TokenAuthentication, else made here.
        auth = decide(django_request, flow, protected=True)
        checked = auth
        if flow.refuses(auth, self.requirement):  # the request is built only to refuse it
            checked = flow.require(auth_request(django_request), auth, self.requirement)
        if not checked.authenticated:
            raise TokenRefused.on(request, checked)
        if request.auth is not checked:
            # Another class authenticated the request (a session, or no one): the token
            # this view requires is what it acts on, so the view sees its owner and it.
            request.user = django_request.user
            request.auth = checked
        return True


class HasReadWriteToken(HasToken):
    """The request must be authenticated by a READ_WRITE token. Refusals are audited."""

    requirement = Requirement.READ_WRITE
