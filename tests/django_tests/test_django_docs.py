"""docs/django.md's code does what the page says: the views, the permission classes, the
knox-style login/logout views and the Django-groups policy, run from the page itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.test import RequestFactory
from rest_framework.test import APIRequestFactory, force_authenticate

from apitokens import PolicyViolation, Scope
from apitokens.django import TokenMiddleware
from tests.django_project.tokens import tokens
from tests.support.django import make_user
from tests.unit.test_docs import ROOT, run_page


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(settings, "BASE_DIR", tmp_path, raising=False)  # its SQLite files
    with run_page(ROOT / "docs" / "django.md") as namespace:
        yield namespace


def bearer(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def test_the_plain_view_sees_the_token_and_its_owner(page: dict[str, Any]) -> None:
    user = make_user("docs")
    issued = tokens.create(actor=user.username, name="docs")
    view = TokenMiddleware(page["whoami"])
    answer = view(RequestFactory().get("/api/whoami", **bearer(issued.secret)))
    assert answer.status_code == 200
    assert json.loads(answer.content) == {
        "user": user.username,
        "token": issued.token.id,
        "scope": "read_only",
    }


def test_the_drf_views_and_their_permissions(page: dict[str, Any]) -> None:
    user = make_user("docs")
    reader = tokens.create(actor=user.username, name="r").secret
    writer = tokens.create(actor=user.username, name="w", scope=Scope.READ_WRITE).secret
    factory = APIRequestFactory()

    def call(name: str, method: str, secret: str | None, **data: Any) -> Any:
        headers = bearer(secret) if secret else {}
        request = getattr(factory, method)(f"/api/{name}", data or None, format="json", **headers)
        return page[name].as_view()(request)

    assert call("Notes", "get", reader).data == {"user": user.username}
    assert call("Notes", "get", None).status_code == 401
    export = call("Export", "get", reader)
    assert export.status_code == 200 and export.data["token"] == reader[4:16]
    assert call("Deploy", "post", reader, ref="main").status_code == 403
    deployed = call("Deploy", "post", writer, ref="main")
    assert (deployed.status_code, deployed.data) == (202, {"data": {"ref": "main"}})


def test_the_knox_style_views(page: dict[str, Any]) -> None:
    user = make_user("knox")
    factory = APIRequestFactory()

    def login() -> Any:
        request = factory.post("/api/auth/login")
        force_authenticate(request, user=user)  # as a session or a password would
        return page["Login"].as_view()(request)

    first = login()
    assert first.status_code == 200 and first["Cache-Control"] == "no-store"
    secret = first.data["token"]
    by_token = factory.post("/api/auth/login", **bearer(secret))
    assert page["Login"].as_view()(by_token).status_code == 403  # a token gets no successor
    assert first.data["expiry"] is not None
    assert all(login().status_code == 200 for _ in range(4))
    assert login().status_code == 403  # limit_per_user = 5

    def post(view: str, token: str) -> Any:
        return page[view].as_view()(factory.post(f"/api/auth/{view}", **bearer(token)))

    assert post("Logout", secret).status_code == 204
    assert post("Logout", secret).status_code == 401  # revoked at once
    assert len(tokens.list(actor=user.username, user=user.username, status="active")) == 4
    latest = login()  # room for one more again
    assert latest.status_code == 200
    assert post("LogoutAll", latest.data["token"]).status_code == 204
    assert tokens.list(actor=user.username, user=user.username, status="active") == []


def test_the_django_groups_policy(page: dict[str, Any]) -> None:
    staff, member, outsider = make_user("staff"), make_user("member"), make_user("outsider")
    staff.is_staff = True
    staff.save()
    Group.objects.get_or_create(name="api")[0].user_set.add(member)
    groups = page["tokens"]
    assert groups.create(actor=staff.username, user=member.username, name="ok").secret
    with pytest.raises(PolicyViolation, match="not in token_users"):
        groups.create(actor=staff.username, user=outsider.username, name="no")
    assert page["django_groups"](member.username) == {"api"}
    assert page["django_groups"]("nobody") == set()
