"""The admin's page through both drivers: every token, filters, paging, revoke unused, audit."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from apitokens import TOKEN_PATTERN, AuthRequest, Policy
from tests.web.conftest import ADMINS, Pages, make_pages


def names(html: str) -> list[str]:
    return re.findall(r'<th scope="row" data-label="Name" class="name">([^<]*)', html)


@pytest.mark.parametrize(
    "path",
    ["/admin", "/admin/audit", "/admin/policy", "/admin/revoke-unused?days=1"],
)
def test_a_user_who_is_no_admin_gets_403(pages: Pages, path: str) -> None:
    pages.tokens.create(actor="bob", name="bob's")
    response = pages.get(path, user="alice")
    assert response.status_code == 403
    assert "Only token admins may see this page." in response.text
    assert "bob&#39;s" not in response.text
    nav = pages.get("/", user="alice").text
    assert "Audit log" not in nav and "All tokens" not in nav


def test_an_admin_sees_every_token_and_can_filter_them(pages: Pages) -> None:
    pages.tokens.create(actor="alice", name="alice's")
    pages.clock.advance(minutes=1)
    bobs = pages.tokens.create(actor="bob", name="bob's").token.id
    pages.clock.advance(minutes=1)
    pages.tokens.create(actor="bob", name="bob's old")
    pages.tokens.revoke(actor="bob", token_id=bobs)
    page = pages.get("/admin", user="root")
    assert page.status_code == 200
    assert names(page.text) == ["bob&#39;s old", "bob&#39;s", "alice&#39;s"]
    assert names(pages.get("/admin", user="root", params={"user": "bob"}).text) == [
        "bob&#39;s old",
        "bob&#39;s",
    ]
    revoked = pages.get("/admin", user="root", params={"status": "revoked"}).text
    assert names(revoked) == ["bob&#39;s"]
    unused = pages.get("/admin", user="root", params={"unused_since": "2026-01-02"}).text
    assert len(names(unused)) == 3
    nothing = pages.get("/admin", user="root", params={"user": "nobody"}).text
    assert "No tokens match these filters." in nothing
    bad = pages.get("/admin", user="root", params={"unused_since": "soon"})
    assert bad.status_code == 400 and "Unused since" in bad.text


def test_the_admin_list_pages(driver: str) -> None:
    made = make_pages(driver, page_size=2)
    try:
        for number in range(5):
            made.tokens.create(actor="alice", name=f"token {number}")
            made.clock.advance(minutes=1)
        first = made.get("/admin", user="root", params={"user": "alice"}).text
        assert names(first) == ["token 4", "token 3"]
        link = re.search(r'<a href="([^"]+)" rel="next">Next page</a>', first)
        assert link and link.group(1) == "/admin?user=alice&amp;page=2"
        second = made.get("/admin", user="root", params={"user": "alice", "page": "2"}).text
        assert names(second) == ["token 2", "token 1"]
        assert 'rel="prev"' in second
        third = made.get("/admin", user="root", params={"user": "alice", "page": "3"}).text
        assert names(third) == ["token 0"] and 'rel="next"' not in third
    finally:
        made.tokens.close()


def test_an_admin_revokes_another_users_token_audited_as_the_admin(pages: Pages) -> None:
    issued = pages.tokens.create(actor="bob", name="bob's")
    confirm = pages.get(f"/tokens/{issued.token.id}/revoke", user="root", params={"back": "admin"})
    assert confirm.status_code == 200 and "bob&#39;s" in confirm.text
    done = pages.submit(f"/tokens/{issued.token.id}/revoke", {"back": "admin"}, user="root")
    assert done.status_code == 303
    assert done.headers["location"] == f"/admin?done=revoked&token={issued.token.id}"
    token = pages.tokens.get(issued.token.id)
    assert token is not None and token.status == "revoked"
    events = pages.tokens.audit(token_id=issued.token.id, action="revoke")
    assert [(e.actor, e.user) for e in events] == [("root", "bob")]


def test_an_admin_creates_a_token_for_another_user(pages: Pages) -> None:
    page = pages.get("/admin", user="root").text
    assert '<label for="f-user">User</label>' in page
    response = pages.submit(
        "/create",
        {"user": "bob", "name": "for bob", "expires": "30", "action": "create", "back": "admin"},
        user="root",
    )
    assert response.status_code == 200
    assert TOKEN_PATTERN.search(response.text)
    [token] = pages.tokens.list(actor="root", user="bob")
    assert (token.name, token.created_by) == ("for bob", "root")
    refused = pages.submit(
        "/create",
        {"user": "bob", "name": "x", "expires": "30", "rules": "[", "back": "admin"},
        user="root",
    )
    assert refused.status_code == 400
    assert "All tokens" in refused.text and 'value="bob"' in refused.text


def test_revoke_unused_shows_the_list_first(pages: Pages) -> None:
    used = pages.tokens.create(actor="alice", name="used")
    pages.tokens.create(actor="bob", name="idle")
    pages.clock.advance(days=100)
    request = AuthRequest("GET", "/rest/x", headers={"authorization": f"Bearer {used.secret}"})
    pages.tokens.authenticate(request)
    confirm = pages.get("/admin/revoke-unused", user="root", params={"days": "90"})
    assert confirm.status_code == 200
    assert names(confirm.text) == ["idle"]
    assert ">Revoke 1 unused token</button>" in confirm.text
    done = pages.submit("/admin/revoke-unused", {"days": "90"}, user="root")
    assert done.status_code == 303
    assert done.headers["location"] == "/admin?revoked_unused=1"
    assert "Revoked 1 unused token." in pages.get("/admin?revoked_unused=1", user="root").text
    statuses = {t.name: t.status for t in pages.tokens.list(actor="root")}
    assert statuses == {"used": "active", "idle": "revoked"}
    [event] = pages.tokens.audit(action="revoke")
    assert (event.actor, event.user) == ("root", "bob")
    none = pages.get("/admin/revoke-unused", user="root", params={"days": "90"})
    assert "No active token is unused for 90 days." in none.text
    one = pages.get("/admin/revoke-unused", user="root", params={"days": "1"})
    assert "No active token is unused for 1 day." in one.text
    assert "Active tokens unused for 1 day</h1>" in one.text
    bad = pages.get("/admin/revoke-unused", user="root", params={"days": "-1"})
    assert bad.status_code == 400


def test_the_audit_log_shows_the_pages_actions_with_filters_and_paging(driver: str) -> None:
    made = make_pages(driver, page_size=3)
    try:
        made.create("one")
        made.create("two")
        token = made.tokens.list(actor="alice")[0]
        made.submit(f"/tokens/{token.id}/revoke", {})
        page = made.get("/admin/audit", user="root")
        assert page.status_code == 200
        # Newest first: the revoke, the two creates (the page size is 3).
        assert re.findall(r'<td data-label="Action">(\w+)</td>', page.text) == [
            "revoke",
            "create",
            "create",
        ]
        assert re.findall(r'<td data-label="Actor">(\w+)</td>', page.text) == ["alice"] * 3
        assert 'rel="next"' not in page.text
        only = made.get("/admin/audit", user="root", params={"action": "revoke"}).text
        assert re.findall(r'<td data-label="Action">(\w+)</td>', only) == ["revoke"]
        by_token = made.get("/admin/audit", user="root", params={"token": token.id}).text
        assert len(re.findall(r'<td data-label="Action">', by_token)) == 2
        failed = made.get("/admin/audit", user="root", params={"outcome": "forbidden"}).text
        assert "No audit events match these filters." in failed
        made.tokens.authenticate(AuthRequest("GET", "/rest/x", headers={"authorization": "x"}))
        made.submit("/create", {"name": "", "expires": "30"})  # refused: not audited (ValueError)
        made.submit("/create", {"name": "x", "expires": "30", "user": "bob"})  # refused, audited
        first = made.get("/admin/audit", user="root").text
        link = re.search(r'<a href="([^"]+)" rel="next">Older events</a>', first)
        assert link and link.group(1) == "/admin/audit?page=2"
        second = made.get("/admin/audit", user="root", params={"page": "2"}).text
        assert len(re.findall(r'<td data-label="Action">', second)) >= 1
        since = made.get("/admin/audit", user="root", params={"since": "2026-01-02"}).text
        assert "No audit events match these filters." in since
        until = made.get("/admin/audit", user="root", params={"until": "2026-01-01"}).text
        assert 'data-label="Action">' in until
    finally:
        made.tokens.close()


def test_the_policy_page_shows_the_policy_read_only(pages: Pages) -> None:
    page = pages.get("/admin/policy", user="root")
    assert page.status_code == 200
    assert "<dt><code>token_admins</code></dt><dd>token-admins</dd>" in page.text
    assert "<dt><code>protected_paths</code></dt><dd>/rest/</dd>" in page.text
    assert "<dt><code>max_lifetime</code></dt><dd>not set</dd>" in page.text
    assert "<form" not in page.text.split("<main")[1]


def test_the_policy_page_shows_durations_in_words(driver: str) -> None:
    policy = Policy(
        token_admins={ADMINS},
        max_lifetime=timedelta(days=365),
        failure_window=timedelta(seconds=90),
    )
    made = make_pages(driver, policy=policy)
    try:
        page = made.get("/admin/policy", user="root").text
        assert "<dt><code>max_lifetime</code></dt><dd>365 days</dd>" in page
        assert "<dt><code>failure_window</code></dt><dd>90 seconds</dd>" in page
        assert "<dt><code>rule_timeout</code></dt><dd>0.05 seconds</dd>" in page
    finally:
        made.tokens.close()
