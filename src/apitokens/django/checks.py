"""System checks (``manage.py check``, run by ``runserver`` and ``migrate`` too): settings
under which ``TokenMiddleware`` or ``TokenAuthentication`` cannot do what they promise."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from apitokens.django._project import get_tokens

__all__ = ["check_settings"]

_OUR_MIDDLEWARE = "apitokens.django.TokenMiddleware"
_AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"
_OUR_CLASS = "apitokens.drf.TokenAuthentication"
_BASIC_AUTHENTICATION = "rest_framework.authentication.BasicAuthentication"


@register(Tags.security)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``apitokens.E001``: ``TokenMiddleware`` before ``AuthenticationMiddleware``;
    ``apitokens.W002``: DRF's ``BasicAuthentication`` before ``TokenAuthentication``;
    ``apitokens.E003``: ``APITOKENS`` missing or not naming an ``ApiTokens``."""
    found: list[CheckMessage] = []
    try:
        get_tokens()
    except ImproperlyConfigured as exc:
        found.append(
            Error(
                str(exc),
                hint="Set APITOKENS to the dotted path of your ApiTokens instance.",
                id="apitokens.E003",
            )
        )
    middleware = [str(name) for name in getattr(settings, "MIDDLEWARE", None) or ()]
    if (
        _OUR_MIDDLEWARE in middleware
        and _AUTH_MIDDLEWARE in middleware
        and middleware.index(_AUTH_MIDDLEWARE) > middleware.index(_OUR_MIDDLEWARE)
    ):
        found.append(
            Error(
                f"{_OUR_MIDDLEWARE} comes before {_AUTH_MIDDLEWARE}, which then sets"
                " request.user to the session's user on token requests.",
                hint=f"Put {_OUR_MIDDLEWARE} after {_AUTH_MIDDLEWARE} in MIDDLEWARE.",
                id="apitokens.E001",
            )
        )
    rest = getattr(settings, "REST_FRAMEWORK", None) or {}
    classes = [str(name) for name in rest.get("DEFAULT_AUTHENTICATION_CLASSES", ())]
    if (
        _OUR_CLASS in classes
        and _BASIC_AUTHENTICATION in classes
        and classes.index(_BASIC_AUTHENTICATION) < classes.index(_OUR_CLASS)
    ):
        found.append(
            Warning(
                f"{_BASIC_AUTHENTICATION} comes before {_OUR_CLASS} in"
                " DEFAULT_AUTHENTICATION_CLASSES: a token sent with Basic is checked as a"
                " password by every authentication backend (which get the secret) and"
                " refused.",
                hint=f"List {_OUR_CLASS} before {_BASIC_AUTHENTICATION}.",
                id="apitokens.W002",
            )
        )
    return found
