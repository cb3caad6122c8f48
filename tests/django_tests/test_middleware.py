"""TokenMiddleware through Django's test client: the owner as ``request.user``, refusals,
CSRF, the session login untouched (DESIGN §9)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from apitokens import Outcome, Scope
from tests.django_project.tokens import tokens
from tests.support.django import make_user


def bearer(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def last_event() -> Any:
    return tokens.audit(limit=1)[0]


@pytest.fixture
def client() -> Client:
    return Client(enforce_csrf_checks=True)


def test_a_token_makes_the_owner_request_user(client: Client) -> None:
    user = make_user("alice")
    issued = tokens.create(actor=user.username, name="ci")
    answer = client.get("/plain/whoami", **bearer(issued.secret))
    assert answer.status_code == 200, answer.content
    seen = answer.json()
    assert (seen["user"], seen["user_class"]) == (user.username, "User")
    assert (seen["token"], seen["scope"]) == (issued.token.id, str(Scope.READ_ONLY))
    event = last_event()
    assert (event.outcome, event.user, event.token_id) == (
        Outcome.SUCCESS,
        user.username,
        issued.token.id,
    )


def test_a_read_only_token_on_a_write_is_403(client: Client) -> None:
    user = make_user("bob")
    issued = tokens.create(actor=user.username, name="ro")
    answer = client.post("/plain/whoami", data=b"{}", content_type="application/json",
                         **bearer(issued.secret))  # fmt: skip
    assert answer.status_code == 403
    assert answer.json()["error"] == "insufficient_scope"
    assert last_event().outcome is Outcome.FORBIDDEN


def test_rule_and_ip_refusals(client: Client) -> None:
    user = make_user("carol")
    ruled = tokens.create(actor=user.username, name="r", restrictions=["[get].*/plain/other"])
    assert client.get("/plain/whoami", **bearer(ruled.secret)).status_code == 403
    fenced = tokens.create(actor=user.username, name="ip", allowed_ips=["203.0.113.0/24"])
    assert client.get("/plain/whoami", **bearer(fenced.secret)).status_code == 403
    inside = client.get("/plain/whoami", REMOTE_ADDR="203.0.113.5", **bearer(fenced.secret))
    assert inside.status_code == 200


def test_an_unknown_or_inactive_django_user_is_401_audited(client: Client) -> None:
    ghost = tokens.create(actor="nobody-in-django", name="ghost")
    answer = client.get("/plain/whoami", **bearer(ghost.secret))
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_token"
    event = last_event()
    assert (event.outcome, event.reason) == (
        Outcome.FAILED,
        "user 'nobody-in-django' is unknown or inactive",
    )
    asleep = make_user("dave", active=False)
    issued = tokens.create(actor=asleep.username, name="ci")
    assert client.get("/plain/whoami", **bearer(issued.secret)).status_code == 401


def test_a_token_request_needs_no_csrf_token_a_session_one_does(client: Client) -> None:
    user = make_user("erin")
    issued = tokens.create(actor=user.username, name="rw", scope=Scope.READ_WRITE)
    answer = client.post("/plain/whoami", data=b'{"a": 1}', content_type="application/json",
                         **bearer(issued.secret))  # fmt: skip
    assert answer.status_code == 200, answer.content
    assert answer.json()["body"] == '{"a": 1}'
    # The same user signed in with the session: the CSRF check stands.
    client.force_login(user)
    refused = client.post("/plain/whoami", data=b"{}", content_type="application/json")
    assert refused.status_code == 403
    assert b"CSRF" in refused.content


def test_the_session_login_is_untouched_outside_and_without_tokens(client: Client) -> None:
    user = make_user("frank")
    client.force_login(user)
    for path in ("/session/whoami", "/plain/whoami"):
        seen = client.get(path).json()
        assert (seen["user"], seen["token"]) == (user.username, None), path


def test_a_password_on_a_protected_path_passes_through_to_django(client: Client) -> None:
    answer = client.get("/plain/whoami", HTTP_AUTHORIZATION="Basic dXNlcjpwYXNzd29yZA==")
    assert answer.status_code == 200
    assert json.loads(answer.content)["user"] is None


def test_a_401_names_both_schemes_in_its_challenge(client: Client) -> None:
    """Django keeps one value per header: the two challenges are folded into one."""
    unknown = tokens.policy.token_format.issue().value
    answer = client.get("/plain/whoami", **bearer(unknown))
    assert answer.status_code == 401
    assert answer["WWW-Authenticate"] == (
        'Bearer realm="api", error="invalid_token", error_description="The access token is'
        ' missing, invalid, expired or revoked.", Basic realm="api", charset="UTF-8"'
    )


def test_deleting_or_renaming_a_user_revokes_their_tokens_and_logins_do_not() -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import update_last_login

    kept = make_user("kept")
    issued = tokens.create(actor=kept.username, name="kept")
    update_last_login(None, kept)  # a save of last_login, at every login
    kept.first_name = "K"
    kept.save()  # a save of other fields
    stored = tokens.get(issued.token.id)
    assert stored is not None
    assert stored.status == "active"

    renamed = make_user("renamed")
    old_name = renamed.username
    first = tokens.create(actor=old_name, name="one")
    renamed.username = old_name + "-new"
    renamed.save()
    stored = tokens.get(first.token.id)
    assert stored is not None
    assert stored.status == "revoked"
    event = tokens.audit(token_id=first.token.id, action="revoke")[0]
    assert (event.actor, event.outcome) == (old_name, Outcome.SUCCESS)

    leaver = make_user("leaver")
    second = tokens.create(actor=leaver.username, name="two")
    name = leaver.username
    leaver.delete()
    get_user_model().objects.create_user(name, password="x")  # the name reused
    stored = tokens.get(second.token.id)
    assert stored is not None
    assert stored.status == "revoked"
    assert Client().get("/plain/whoami", **bearer(second.secret)).status_code == 401
