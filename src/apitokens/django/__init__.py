"""Django: ``TokenMiddleware`` and the ``manage.py apitokens`` command (DESIGN §9).

Needs Django (the ``django`` extra)::

    pip install 'apitokens[django]'

    # settings.py
    INSTALLED_APPS = [..., "apitokens.django"]          # for manage.py apitokens
    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "apitokens.django.TokenMiddleware",
        ...,
    ]
    APITOKENS = "myproject.auth.tokens"   # the dotted path of your ApiTokens

See ``docs/django.md``.
"""

from __future__ import annotations

try:
    import django  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "apitokens.django needs Django, which apitokens does not install by itself"
        f" ({error.name} is missing): pip install 'apitokens[django]'",
        name=error.name,
    ) from error

from apitokens.django._middleware import TokenMiddleware
from apitokens.django._project import get_tokens

__all__ = ["TokenMiddleware", "get_tokens"]
