"""apitokens.drf through DRF's APIClient, with and without TokenMiddleware (DESIGN §4, §9).

Every test sends from an address of its own, so the audit events of one request
can be counted: with the middleware the decision is made once and reused (one
event), never made again by the authentication or the permission class.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from rest_framework.test import APIClient

from apitokens import ApiTokens, AuditEvent, Outcome
from tests.django_project.tokens import tokens

_addresses = itertools.count(1)
JSON_RULE = "[post].*/api/echo[JsonData::project==ABC]"


def fresh_ip() -> str:
    """An address no other test sends from (TEST-NET-2 and TEST-NET-3)."""
    n = next(_addresses)
    return f"198.51.{100 + n // 250}.{n % 250 + 1}"


def bearer(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def events(ip: str, source: ApiTokens = tokens) -> list[AuditEvent]:
    """The authentication events of requests from ``ip``, oldest first."""
    found = source.audit(action="authenticate", limit=100_000)
    return [event for event in reversed(found) if event.client_ip == ip]


def outcomes(ip: str) -> list[Outcome]:
    return [event.outcome for event in events(ip)]


def refusal_body(answer: Any, status: int, error: str) -> None:
    """``answer`` is the DESIGN §4 refusal: status, JSON body, nothing more."""
    assert answer.status_code == status, answer.content
    assert answer["Content-Type"] == "application/json"
    body = json.loads(answer.content)
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error


WITHOUT_MIDDLEWARE = [m for m in settings.MIDDLEWARE if not m.endswith(".TokenMiddleware")]


@pytest.fixture(params=["middleware", "no-middleware"])
def middleware(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Each test twice: behind TokenMiddleware, and with DRF's classes alone."""
    if request.param == "middleware":
        yield True
    else:
        with override_settings(MIDDLEWARE=WITHOUT_MIDDLEWARE):
            yield False


@pytest.fixture
def ip() -> str:
    return fresh_ip()


@pytest.fixture
def client(ip: str) -> APIClient:
    """A client from an address of its own that sends CSRF checks as a browser's would."""
    return APIClient(REMOTE_ADDR=ip, enforce_csrf_checks=True)


def test_the_middlewares_401_sends_both_challenges(client: APIClient) -> None:
    # A plain Django view: the refusal is the middleware's own response.
    answer = client.get("/plain/whoami", HTTP_AUTHORIZATION="Bearer apt_nope")
    refusal_body(answer, 401, "invalid_token")
    challenge = answer["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="api", error="invalid_token"'), challenge
    assert challenge.endswith(', Basic realm="api", charset="UTF-8"'), challenge
