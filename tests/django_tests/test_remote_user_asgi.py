"""Why docs/django.md says never to use Django's RemoteUserMiddleware under ASGI: there it
reads the client's ``Remote-User`` header. TokenMiddleware under ASGI reads the token only."""

from __future__ import annotations

import asyncio
from typing import Any

from django.test import AsyncClient, override_settings

from apitokens import Scope
from tests.django_project.tokens import tokens
from tests.support.django import make_user

REMOTE_USER_STACK = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.RemoteUserMiddleware",
]


def get(path: str, headers: dict[str, str]) -> Any:
    """GET ``path`` through Django's ASGI request handling (AsyncClient)."""
    return asyncio.run(AsyncClient().get(path, headers=headers))


def test_remote_user_middleware_under_asgi_believes_the_clients_header() -> None:
    admin = make_user("admin")
    with override_settings(
        MIDDLEWARE=REMOTE_USER_STACK,
        AUTHENTICATION_BACKENDS=["django.contrib.auth.backends.RemoteUserBackend"],
    ):
        answer = get("/session/whoami", {"Remote-User": admin.username})
    assert answer.status_code == 200
    assert answer.json()["user"] == admin.username  # anyone can say so
    assert answer.cookies["sessionid"].value  # and is now logged in as admin


def test_token_middleware_under_asgi_takes_the_user_from_the_token_only() -> None:
    admin, reader = make_user("admin"), make_user("reader")
    issued = tokens.create(actor=reader.username, name="ro", scope=Scope.READ_ONLY)
    headers = {"Authorization": f"Bearer {issued.secret}", "Remote-User": admin.username}
    seen = get("/plain/whoami", headers).json()
    assert (seen["user"], seen["token"]) == (reader.username, issued.token.id)
