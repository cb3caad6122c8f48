"""The pages' security (DESIGN §10): headers, CSRF, show-once, escaping, other users' ids."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx
import pytest

from apitokens import TOKEN_PATTERN, Outcome
from tests.support import CHEAP_HASHER, Clock
from tests.web.conftest import Pages

CSP = re.compile(r"script-src 'self'(;|$)")


def assert_safe_headers(response: httpx.Response) -> None:
    policy = response.headers["content-security-policy"]
    assert CSP.search(policy), policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    for directive in (
        "default-src 'none'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "base-uri 'none'",
    ):
        assert directive in policy, policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_every_response_carries_the_headers_errors_included(pages: Pages) -> None:
    token_id = pages.tokens.create(actor="bob", name="bob's").token.id
    responses = {
        "page": pages.get("/"),
        "not found": pages.get("/no/such/page"),
        "method": pages.request("DELETE", "/"),
        "signed out": pages.get("/", user=None),
        "admin only": pages.get("/admin"),
        "no csrf": pages.post("/create", data={"name": "x"}),
        "another's token": pages.get(f"/tokens/{token_id}/revoke"),
        "static": pages.get("/static/pages.css"),
        "script": pages.get("/static/pages.js"),
        "tester": pages.post(
            "/rules/check", json={"rules": "", "path": "/"}, headers={"x-csrf-token": "bad"}
        ),
        "refusal": pages.submit("/create", {"name": "", "expires": "30"}),
        "created": pages.submit("/create", {"name": "ok", "expires": "30"}),
        "too large": pages.post("/create", content=b"x" * (300 * 1024)),
    }
    statuses = {name: response.status_code for name, response in responses.items()}
    assert statuses == {
        "page": 200,
        "not found": 404,
        "method": 405,
        "signed out": 401,
        "admin only": 403,
        "no csrf": 403,
        "another's token": 404,
        "static": 200,
        "script": 200,
        "tester": 403,
        "refusal": 400,
        "created": 200,
        "too large": 413,
    }
    for name, response in responses.items():
        assert_safe_headers(response), name
    for name in ("page", "created", "refusal", "another's token"):
        assert responses[name].headers["cache-control"] == "no-store", name
    assert responses["script"].headers["content-type"].startswith("text/javascript")


def test_a_failure_inside_a_page_is_a_500_with_the_headers(
    pages: Pages, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_native: object) -> str:
        raise RuntimeError("the host app's session store is down")

    pages.pages._current_user = broken
    with caplog.at_level(logging.ERROR, logger="apitokens.web"):
        response = pages.get("/")
    assert response.status_code == 500
    assert_safe_headers(response)
    assert "session store" not in response.text  # not shown to the user; logged
    assert "session store" in caplog.text


def test_no_page_has_inline_script_or_style(pages: Pages) -> None:
    pages.create("one")
    for path in ("/", "/admin", "/admin/audit", "/admin/policy"):
        text = pages.get(path, user="root").text
        assert re.findall(r"<script\b[^>]*>", text) == ['<script src="/static/pages.js" defer>'], (
            path
        )
        assert not re.search(r"<[^>]*\s(on[a-z]+|style)\s*=", text), path
        assert "<style" not in text and "javascript:" not in text, path


@pytest.mark.parametrize("token", [None, "", "garbage", "0.AAAA", "ffffffff.signature"], ids=repr)
def test_a_post_without_a_good_csrf_token_is_403_and_does_nothing(
    pages: Pages, token: str | None
) -> None:
    alice = pages.tokens.create(actor="alice", name="keep").token.id
    data = {} if token is None else {"csrf_token": token}
    posts = [
        ("/create", {"name": "sneaky", "expires": "30", "action": "create"}),
        (f"/tokens/{alice}/revoke", {}),
        (f"/tokens/{alice}/rotate", {"grace": "0"}),
    ]
    for path, fields in posts:
        response = pages.post(path, data={**data, **fields}, user="alice")
        assert response.status_code == 403, path
        assert "expired or was not sent from these pages" in response.text
    root = pages.post("/admin/revoke-unused", data={**data, "days": "1"}, user="root")
    assert root.status_code == 403
    listed = pages.tokens.list(actor="root")
    assert [(t.name, t.status) for t in listed] == [("keep", "active")]


def test_another_users_csrf_token_is_refused(pages: Pages) -> None:
    bobs = pages.csrf("bob")
    response = pages.post(
        "/create", data={"csrf_token": bobs, "name": "x", "expires": "30"}, user="alice"
    )
    assert response.status_code == 403
    assert pages.tokens.list(actor="alice") == []


def test_a_csrf_token_expires(pages: Pages) -> None:
    old = pages.csrf("alice")
    pages.clock.advance(hours=13)
    response = pages.post("/create", data={"csrf_token": old, "name": "x", "expires": "30"})
    assert response.status_code == 403
    pages.clock.advance(hours=-12)  # within the 12 hours: accepted
    response = pages.post(
        "/create", data={"csrf_token": old, "name": "x", "expires": "30", "action": "create"}
    )
    assert response.status_code == 200


def test_a_form_sent_from_another_site_is_refused(pages: Pages) -> None:
    response = pages.submit(
        "/create", {"name": "x", "expires": "30"}, headers={"sec-fetch-site": "cross-site"}
    )
    assert response.status_code == 403
    assert pages.tokens.list(actor="alice") == []


def test_the_new_secret_is_shown_once_and_never_stored_anywhere_else(
    pages: Pages, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        response = pages.submit("/create", {"name": "CI", "expires": "30", "action": "create"})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert "location" not in response.headers
    secrets = TOKEN_PATTERN.findall(response.text)
    secret = re.search(r'<output id="new-token" class="secret">([^<]+)<', response.text)
    assert secret and TOKEN_PATTERN.fullmatch(secret.group(1))
    assert secrets and set(secrets) <= {secret.group(1)}
    assert secret.group(1) not in caplog.text
    listing = pages.get("/")
    assert secret.group(1) not in listing.text and "CI" in listing.text
    for event in pages.tokens.audit():
        assert secret.group(1) not in repr(event)
    # The secret works: the API accepts it.
    from apitokens import AuthRequest

    result = pages.tokens.authenticate(
        AuthRequest("GET", "/rest/x", headers={"authorization": f"Bearer {secret.group(1)}"})
    )
    assert result.outcome is Outcome.SUCCESS


XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_what_a_user_typed_is_rendered_inert(pages: Pages) -> None:
    created = pages.submit(
        "/create",
        {
            "name": XSS,
            "expires": "30",
            "action": "create",
            "rules": '[GET].*/rest/<b>"x".*',
        },
    )
    assert created.status_code == 200
    for response in (created, pages.get("/"), pages.get("/admin", user="root")):
        assert "<script>alert" not in response.text
        assert "<img src=x" not in response.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in response.text
    refused = pages.submit("/create", {"name": XSS, "expires": "30", "rules": "[GET<script>"})
    assert refused.status_code == 400
    assert "<script>" not in refused.text.replace('<script src="/static/pages.js" defer>', "")
    audit = pages.get("/admin/audit", user="root", params={"user": XSS})
    assert "<script>alert" not in audit.text


def test_a_user_can_neither_see_nor_touch_another_users_token(pages: Pages) -> None:
    bobs = pages.tokens.create(actor="bob", name="bob's secret project", secure=False).token.id
    gets = [f"/tokens/{bobs}/revoke", f"/tokens/{bobs}/rotate", f"/tokens/{bobs}/edit"]
    for path in gets:
        response = pages.get(path, user="alice")
        assert response.status_code == 404, path
        assert "bob's secret project" not in response.text
    csrf = pages.csrf("alice")
    posts = [
        (f"/tokens/{bobs}/revoke", {}),
        (f"/tokens/{bobs}/rotate", {"grace": "0"}),
        (f"/tokens/{bobs}/reveal", {}),
        (f"/tokens/{bobs}/edit", {"name": "mine now", "expires_on": ""}),
    ]
    for path, fields in posts:
        response = pages.post(path, data={"csrf_token": csrf, **fields}, user="alice")
        assert response.status_code == 404, path
        assert "bob's secret project" not in response.text
        assert not TOKEN_PATTERN.search(response.text)
    token = pages.tokens.get(bobs)
    assert token is not None
    assert (token.name, token.status) == ("bob's secret project", "active")
    # Each attempt on the API was refused and audited with its actor.
    refused = pages.tokens.audit(token_id=bobs, outcome=Outcome.FORBIDDEN)
    assert {event.actor for event in refused} == {"alice"}
    assert len(refused) == 4
    assert "bob's secret project" not in pages.get("/", user="alice").text


def test_an_unknown_or_malformed_id_is_404(pages: Pages) -> None:
    for token_id in ("AAAAAAAAAAAA", "nope", "apt_" + "A" * 50, "%3Cscript%3E"):
        response = pages.get(f"/tokens/{token_id}/revoke")
        assert response.status_code == 404
        assert "<script>" not in response.text.replace('<script src="/static/pages.js" defer>', "")
        post = pages.submit(f"/tokens/{token_id}/revoke", {})
        assert post.status_code == 404


def test_signed_out_is_401_or_the_login_redirect(driver: str) -> None:
    from tests.web.conftest import make_pages

    made = make_pages(driver, login_url="/login")
    try:
        response = made.get("/admin/audit", user=None, params={"user": "x"})
        assert response.status_code == 303
        assert response.headers["location"] == "/login?next=%2Fadmin%2Faudit%3Fuser%3Dx"
        assert_safe_headers(response)
        post = made.post("/create", user=None, data={"name": "x"})
        assert post.status_code == 303
    finally:
        made.tokens.close()


def test_a_token_is_never_a_sign_in_for_the_pages(driver: str) -> None:
    """Even when the host app's login would take the token's user (scope["user"]), and
    whether or not apitokens' middleware ran before the pages."""
    import base64

    from apitokens.asgi import TokenUser
    from tests.web.conftest import make_pages

    made = make_pages(driver)
    try:
        secret = made.tokens.create(actor="alice", name="api").secret

        def from_the_middleware(native: dict) -> str | None:
            user = native.get("user") or native.get("REMOTE_USER")
            if isinstance(user, TokenUser):
                return user.display_name
            return user if isinstance(user, str) else None

        made.pages._current_user = from_the_middleware
        inner = made.app
        made.app = made.tokens.asgi(inner) if driver == "asgi" else made.tokens.wsgi(inner)
        basic = base64.b64encode(f"alice:{secret}".encode()).decode()
        for header in (f"Bearer {secret}", f"Basic {basic}"):
            response = made.get("/", user=None, headers={"authorization": header})
            assert response.status_code == 403, header
            assert "not a sign-in" in response.text
            assert "api" not in re.findall(r'class="name">([^<]*)', response.text)
        # Without the middleware too: a token in the header is refused, whoever is signed in.
        made.app = inner
        response = made.get("/", user="alice", headers={"authorization": f"Bearer {secret}"})
        assert response.status_code == 403
    finally:
        made.tokens.close()


def test_a_token_pasted_where_an_id_goes_is_never_logged(
    pages: Pages, caplog: pytest.LogCaptureFixture
) -> None:
    secret = pages.tokens.create(actor="alice", name="leaked").secret

    def broken(_native: object) -> str:
        raise RuntimeError("boom")

    pages.pages._current_user = broken
    with caplog.at_level(logging.DEBUG):
        response = pages.get(f"/tokens/{secret}/revoke")
    assert response.status_code == 500
    ours = [r for r in caplog.records if r.name.startswith("apitokens")]  # not httpx's own
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in ours)
    assert "token pages: GET /tokens/<token>/revoke failed" in text
    assert secret not in text and secret not in response.text


def test_a_store_that_fails_is_a_503_page(driver: str, tmp_path: Path) -> None:
    from apitokens import ApiTokens, SQLiteStore
    from apitokens.web import TokenPages
    from tests.web.conftest import SECRET_KEY, signed_in

    store = SQLiteStore(tmp_path / "tokens.db")
    tokens = ApiTokens(store, hasher=CHEAP_HASHER, journal=False)
    try:
        pages = TokenPages(tokens, current_user=signed_in, secret_key=SECRET_KEY)
        app = pages.asgi() if driver == "asgi" else pages.wsgi()
        store.close()  # a real failure: every call now raises StorageError
        client = Pages(driver, tokens, pages, Clock(), app=app)
        response = client.get("/")
        assert response.status_code == 503
        assert "The token store is not available right now." in response.text
        assert "closed" not in response.text
        assert_safe_headers(response)
    finally:
        tokens.close()
