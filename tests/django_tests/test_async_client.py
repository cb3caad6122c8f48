"""TokenMiddleware under Django's AsyncClient, as a project's async tests drive it (its
scope's query string is a str, where servers give bytes)."""

from __future__ import annotations

import asyncio
from typing import Any

from django.test import AsyncClient

from apitokens import Scope
from tests.django_project.tokens import tokens
from tests.support.django import make_user


def get(path: str, secret: str) -> Any:
    return asyncio.run(AsyncClient().get(path, headers={"Authorization": f"Bearer {secret}"}))


def test_a_token_with_a_query_rule_through_the_async_client() -> None:
    user = make_user("async")
    ruled = tokens.create(actor=user.username, name="q", scope=Scope.READ_ONLY,
                          restrictions=[".*/plain/whoami[QueryParam::page==[0-9]+]"])  # fmt: skip
    allowed = get("/plain/whoami?page=2", ruled.secret)
    assert allowed.status_code == 200, allowed.content
    assert allowed.json()["user"] == user.username
    refused = get("/plain/whoami?page=two", ruled.secret)
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_scope"
