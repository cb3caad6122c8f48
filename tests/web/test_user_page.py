"""A user's page through both drivers: list, create, rotate, revoke, reveal, edit, refusals."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from apitokens import TOKEN_PATTERN, AuthRequest, Outcome, Policy
from tests.web.conftest import ADMINS, Pages, make_pages


def rows(html: str) -> list[str]:
    """The token names of a page's table, in order."""
    return re.findall(r'<th scope="row" data-label="Name" class="name">([^<]*)', html)


def works(pages: Pages, secret: str) -> bool:
    request = AuthRequest("GET", "/rest/api", headers={"authorization": f"Bearer {secret}"})
    return pages.tokens.authenticate(request).outcome is Outcome.SUCCESS


def test_the_empty_page_says_what_to_do_and_labels_every_field(pages: Pages) -> None:
    page = pages.get("/")
    assert page.status_code == 200
    assert "You have no tokens yet." in page.text
    assert re.search(r'<label for="f-name">Name</label>', page.text)
    assert re.search(
        r'<button type="submit" name="action" value="create" class="primary">'
        r"Create token</button>",
        page.text,
    )
    # Every input, select and textarea has a label naming it (or is hidden).
    ids = set(re.findall(r'<label for="([^"]+)"', page.text))
    for tag in re.findall(r"<(?:input|select|textarea)\b[^>]*>", page.text):
        if 'type="hidden"' in tag or 'type="radio"' in tag:
            continue
        found = re.search(r'id="([^"]+)"', tag)
        assert found and found.group(1) in ids, tag


def test_tokens_are_listed_newest_first_with_their_details(pages: Pages) -> None:
    pages.create("first", rules="[GET].*/rest/api/2/search.*", ips="203.0.113.0/24")
    pages.clock.advance(days=3)
    secret = pages.create("second", expires="7")
    assert works(pages, secret)
    pages.tokens.flush()
    page = pages.get("/").text
    assert rows(page) == ["second", "first"]
    assert "<code>[GET].*/rest/api/2/search.*</code>" in page
    assert "<code>203.0.113.0/24</code>" in page
    assert 'title="2026-01-01 12:00:00 UTC">3 days ago</time>' in page  # created, exact on hover
    assert ">in 1 week</time>" in page  # expires
    assert "Never used" in page  # the first one
    assert 'data-label="Uses" class="num">1</td>' in page
    assert page.count('<span class="badge badge-active">active</span>') == 2
    assert page.count(">Revoke</button>") == 2


def test_revoked_and_expired_tokens_stay_listed_with_their_status(pages: Pages) -> None:
    pages.create("short", expires="7")
    pages.clock.advance(minutes=1)
    gone = pages.tokens.create(actor="alice", name="gone").token.id
    pages.tokens.revoke(actor="alice", token_id=gone)
    pages.clock.advance(days=8)
    page = pages.get("/").text
    assert rows(page) == ["gone", "short"]
    assert '<span class="badge badge-revoked">revoked</span>' in page
    assert '<span class="badge badge-expired">expired</span>' in page
    assert page.count(">Revoke</button>") == 1  # the expired one; nothing left to revoke


def test_create_is_audited_with_its_actor(pages: Pages) -> None:
    secret = pages.create("CI", scope="read_write")
    token_id = pages.tokens.policy.token_format.parse(secret).id  # type: ignore[union-attr]
    created = pages.tokens.audit(token_id=token_id, action="create")
    assert [(e.actor, e.user, e.outcome) for e in created] == [("alice", "alice", "success")]
    token = pages.tokens.get(token_id)
    assert token is not None and token.scope == "read_write"


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"name": ""}, 400, "The name must be a non-empty string."),
        ({"rules": "[GET.*"}, 400, "The rule &#39;[GET.*&#39; does not parse: column"),
        ({"ips": "10.0.0.300"}, 400, "Allowed IP addresses: &#39;10.0.0.300&#39; is not an IP"),
        ({"expires_on": "2030-01-01"}, 400, "The policy does not allow this: expiry beyond"),
        ({"expires_on": "yesterday"}, 400, "Expires on: &#39;yesterday&#39; is not a date"),
        ({"expires_on": "2025-01-01"}, 400, "The expiry date is in the past."),
        ({"scope": "read_write"}, 403, "Not allowed: read_only_for_users"),
        ({"user": "bob"}, 403, "Not allowed: only token_admins may create tokens for other"),
        ({"expires": "never"}, 400, "Choose an expiry from the list, or a date."),  # not offered
        ({"scope": "root"}, 400, "Choose a scope from the list."),
    ],
)
def test_a_refusal_is_a_message_on_the_page_with_what_was_typed(
    driver: str, fields: dict[str, str], status: int, message: str
) -> None:
    policy = Policy(
        token_admins={ADMINS}, read_only_for_users=True, max_lifetime=timedelta(days=365)
    )
    made = make_pages(driver, policy=policy)
    try:
        data = {"name": "kept", "expires": "30", "action": "create", **fields}
        response = made.submit("/create", data)
        assert response.status_code == status
        assert message in response.text, response.text
        assert 'role="alert"' in response.text
        assert not TOKEN_PATTERN.search(response.text)
        if fields.get("name", "kept") == "kept":
            assert 'value="kept"' in response.text  # what was typed is kept
        assert made.tokens.list(actor="alice") == []
    finally:
        made.tokens.close()


def test_an_unbound_token_from_the_admins_form_when_the_policy_allows_it(driver: str) -> None:
    policy = Policy(token_admins={ADMINS}, allow_unbound_tokens=True)
    made = make_pages(driver, policy=policy)
    try:
        page = made.get("/admin", user="root").text
        assert 'name="unbound" value="yes"' in page
        assert 'name="unbound"' not in made.get("/", user="alice").text
        made.create("shared", user="root", unbound="yes", back="admin")
        [token] = made.tokens.list(actor="root")
        assert token.user is None
        refused = made.submit(
            "/create", {"name": "x", "expires": "30", "unbound": "yes", "action": "create"}
        )
        assert refused.status_code == 403  # alice: the API refuses, whatever the form sent
    finally:
        made.tokens.close()


def test_the_form_offers_only_what_the_policy_allows(driver: str) -> None:
    policy = Policy(
        token_admins={ADMINS}, read_only_for_users=True, max_lifetime=timedelta(days=45)
    )
    made = make_pages(driver, policy=policy)
    try:
        page = made.get("/").text
        expiry = re.search(r'<select id="f-expires" name="expires">(.*?)</select>', page, re.S)
        assert expiry
        assert re.findall(r'<option value="([^"]+)"', expiry.group(1)) == ["7", "30", "longest"]
        assert "45 days (the longest allowed)" in expiry.group(1)
        assert 'value="never"' not in page
        assert 'value="read_write"' not in page
        assert "The policy allows at most 45 days." in page
        admin = made.get("/", user="root").text
        assert 'value="read_write"' in admin
    finally:
        made.tokens.close()


def test_revoke_asks_first_then_redirects_to_the_list(pages: Pages) -> None:
    secret = pages.create("CI")
    token = pages.tokens.list(actor="alice")[0]
    confirm = pages.get(f"/tokens/{token.id}/revoke")
    assert confirm.status_code == 200
    assert "Revoke the token “CI”?" in confirm.text
    assert ">Revoke token</button>" in confirm.text
    assert works(pages, secret)  # asking revoked nothing
    done = pages.submit(f"/tokens/{token.id}/revoke", {"back": "user"})
    assert done.status_code == 303
    assert done.headers["location"] == f"/?done=revoked&token={token.id}"
    assert not works(pages, secret)
    after = pages.get("/", params={"done": "revoked", "token": token.id})
    assert f"Token {token.id} was revoked" in after.text
    assert '<span class="badge badge-revoked">revoked</span>' in after.text
    events = pages.tokens.audit(token_id=token.id, action="revoke")
    assert [(e.actor, e.outcome) for e in events] == [("alice", "success")]


def test_rotate_shows_the_new_secret_once_and_keeps_the_old_one_for_the_grace(
    pages: Pages,
) -> None:
    old = pages.create("CI")
    token = pages.tokens.list(actor="alice")[0]
    form = pages.get(f"/tokens/{token.id}/rotate")
    assert form.status_code == 200 and 'name="grace"' in form.text
    rotated = pages.submit(f"/tokens/{token.id}/rotate", {"grace": "3600"})
    assert rotated.status_code == 200
    assert rotated.headers["cache-control"] == "no-store"
    new = re.search(r'<output id="new-token" class="secret">([^<]+)<', rotated.text)
    assert new and TOKEN_PATTERN.fullmatch(new.group(1)) and new.group(1) != old
    assert works(pages, new.group(1)) and works(pages, old)
    pages.clock.advance(hours=2)
    assert works(pages, new.group(1)) and not works(pages, old)
    events = pages.tokens.audit(token_id=token.id, action="rotate")
    assert [e.actor for e in events] == ["alice"]


def test_a_bad_grace_is_a_message(pages: Pages) -> None:
    pages.create("CI")
    token = pages.tokens.list(actor="alice")[0]
    response = pages.submit(f"/tokens/{token.id}/rotate", {"grace": "99999999"})
    assert response.status_code == 400
    assert "Choose a grace period from the list." in response.text


def test_the_snippets_call_the_api_with_the_new_secret(driver: str) -> None:
    made = make_pages(driver, api_url="https://jira.example.com/rest/api/2/myself")
    try:
        response = made.submit("/create", {"name": "CI", "expires": "30", "action": "create"})
        secret = re.search(r'<output id="new-token" class="secret">([^<]+)<', response.text)
        assert secret
        issued_url = "https://jira.example.com/rest/api/2/myself"
        assert f"curl -H &#39;Authorization: Bearer {secret.group(1)}&#39; {issued_url}" in (
            response.text
        )
        assert "import httpx" in response.text
        assert "await fetch(" in response.text
        for lang in ("curl", "python", "javascript"):
            assert f'data-copy="snippet-{lang}"' in response.text
    finally:
        made.tokens.close()


def test_standard_mode_tokens_can_be_revealed_and_edited(pages: Pages) -> None:
    secret = pages.create("Grafana", mode="standard")
    token = pages.tokens.list(actor="alice")[0]
    page = pages.get("/").text
    assert ">Reveal</button>" in page and ">Edit</button>" in page
    revealed = pages.submit(f"/tokens/{token.id}/reveal", {})
    assert revealed.status_code == 200
    assert revealed.headers["cache-control"] == "no-store"
    assert f'<output id="new-token" class="secret">{secret}</output>' in revealed.text
    form = pages.get(f"/tokens/{token.id}/edit")
    assert form.status_code == 200 and 'value="Grafana"' in form.text
    bad = pages.submit(
        f"/tokens/{token.id}/edit", {"name": "Grafana", "rules": "[POST", "expires_on": ""}
    )
    assert bad.status_code == 400 and "does not parse" in bad.text
    edited = pages.submit(
        f"/tokens/{token.id}/edit",
        {"name": "Grafana 2", "rules": "[GET].*/rest/.*", "ips": "", "expires_on": "2026-02-01"},
    )
    assert edited.status_code == 303
    assert edited.headers["location"] == f"/?done=edited&token={token.id}"
    after = pages.tokens.get(token.id)
    assert after is not None
    assert (after.name, after.restrictions) == ("Grafana 2", ("[GET].*/rest/.*",))
    actions = [e.action for e in pages.tokens.audit(token_id=token.id)]
    assert "reveal" in actions and "edit" in actions


def test_a_secure_token_cannot_be_revealed_or_edited(pages: Pages) -> None:
    pages.create("CI")
    token = pages.tokens.list(actor="alice")[0]
    page = pages.get("/").text
    assert ">Reveal</button>" not in page and ">Edit</button>" not in page
    assert pages.get(f"/tokens/{token.id}/edit").status_code == 409
    reveal = pages.submit(f"/tokens/{token.id}/reveal", {})
    assert reveal.status_code == 409
    assert "secure mode" in reveal.text
    assert not TOKEN_PATTERN.search(reveal.text)


def test_the_rule_tester_works_without_javascript(pages: Pages) -> None:
    data = {
        "action": "check",
        "name": "",
        "expires": "30",
        "scope": "read_only",
        "rules": "[GET].*/rest/api/2/search.*\n[GET].*/rest/api/2/issue/.*",
        "check_method": "GET",
        "check_path": "/rest/api/2/issue/OPS-1",
    }
    response = pages.submit("/create", data)
    assert response.status_code == 200
    assert "Allowed by the rule [GET].*/rest/api/2/issue/.*" in response.text
    assert pages.tokens.list(actor="alice") == []  # testing creates nothing
    assert "[GET].*/rest/api/2/search.*\n[GET].*/rest/api/2/issue/.*</textarea>" in response.text
    refused = pages.submit("/create", {**data, "check_method": "POST"})
    assert "Refused: the read-only scope does not allow POST" in refused.text


def test_head_answers_like_get_without_a_body(pages: Pages) -> None:
    response = pages.request("HEAD", "/")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-security-policy"]


def test_a_user_who_may_not_create_tokens_is_told_so(driver: str) -> None:
    made = make_pages(driver, policy=Policy(token_admins={ADMINS}, token_creators={"creators"}))
    try:
        page = made.get("/").text
        assert "You may not create tokens" in page and ">Create token</button>" not in page
        refused = made.submit("/create", {"name": "x", "expires": "30", "action": "create"})
        assert refused.status_code == 403
        assert "Not allowed: &#39;alice&#39; is not in token_creators." in refused.text
        assert ">Create token</button>" in made.get("/", user="root").text
    finally:
        made.tokens.close()


@pytest.mark.parametrize("host", ["pages.test:8443", "[::1]:80", "bad host", 'x"; rm -rf /'])
def test_the_snippets_default_to_this_host_when_it_is_a_host(pages: Pages, host: str) -> None:
    response = pages.submit(
        "/create", {"name": "CI", "expires": "30", "action": "create"}, headers={"host": host}
    )
    assert response.status_code == 200
    shown = host if " " not in host else "localhost"
    assert f"http://{shown}/rest/" in response.text


def test_opening_a_forms_address_says_what_to_do(pages: Pages) -> None:
    # The address bar shows /create after the secret page; opening it again is a GET.
    response = pages.get("/create")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "Back to your tokens" in response.text
    assert "only takes a form sent from these pages" in response.text
    assert pages.request("DELETE", "/").headers["allow"] == "GET, HEAD"


def test_error_pages_say_what_to_do(pages: Pages) -> None:
    signed_out = pages.get("/", user=None)
    assert signed_out.status_code == 401
    assert "Sign in to this site first" in signed_out.text
    assert "Back to your tokens" not in signed_out.text  # it would lead here again
    stale = pages.post("/create", data={"name": "x"}, user="alice")
    assert stale.status_code == 403
    assert "send it again" in stale.text  # not "reload": that sends the same stale form
