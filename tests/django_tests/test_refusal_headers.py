"""A refusal answered by TokenMiddleware keeps every header of DESIGN §4: both challenges
of a 401 (Django's response holds one value per header name)."""

from __future__ import annotations

from django.test import Client

from apitokens import AuthRequest
from tests.django_project.tokens import tokens


def test_a_401_carries_the_bearer_and_the_basic_challenge() -> None:
    expected = tokens.authenticate(
        AuthRequest("GET", "/plain/whoami", headers=[("Authorization", "Bearer apt_nope")])
    )
    challenges = [value for name, value in expected.headers if name == "WWW-Authenticate"]
    assert len(challenges) == 2  # Bearer with error="invalid_token", then Basic
    answer = Client().get("/plain/whoami", HTTP_AUTHORIZATION="Bearer apt_nope")
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == ", ".join(challenges)
    assert answer.headers["Content-Type"] == "application/json"
