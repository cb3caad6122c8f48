"""The token pages (DESIGN §10): a user's own tokens, and the admin's view of all.

Needs the ``web`` extra (Jinja2)::

    pip install 'apitokens[web]'

    from apitokens.web import TokenPages
    pages = TokenPages(tokens, current_user=lambda scope: scope["session"].get("user"),
                       secret_key=SECRET_KEY)
    app.mount("/settings/tokens", pages.asgi())      # or pages.wsgi()

The package, by concern: ``_http`` (the pages' request and response, the headers
every response carries), ``_drivers`` (ASGI and WSGI, translation only),
``_csrf`` (signed form tokens), ``_pages`` (:class:`TokenPages`: routing, sign-in,
CSRF, errors), ``_user`` and ``_admin`` (the pages), ``_forms`` (reading what was
typed), ``_tester`` (the rule tester), ``_render`` (templates, dates); the templates
and the CSS and script under ``templates/`` and ``static/``. See ``docs/pages.md``.
"""

from __future__ import annotations

# First: without the extra, importing any part of the package says what to install.
try:
    import jinja2  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "apitokens.web needs Jinja2, which apitokens does not install by itself"
        f" ({error.name} is missing): pip install 'apitokens[web]'",
        name=error.name,
    ) from error

from apitokens.web._http import Request, Response
from apitokens.web._pages import TokenPages

__all__ = ["Request", "Response", "TokenPages"]
