"""The token pages in a real Chromium, mounted in a Starlette app and in a Flask app.

Each host (tests/browser/hosts.py) signs its users in with its own session cookie and
serves, beside the pages at ``/settings/tokens``, an API at ``/api/`` that apitokens
protects. A person signs in through the host, makes a token in the page, and the test
uses the secret the page showed against the API with an HTTP client: 200 while the
token lives, 401 once it was revoked in the page. The pages are driven by the
accessible names DESIGN §10 fixes (a field ``Name``, buttons ``Create token`` and
``Revoke``) and, elsewhere, by role and label, as a screen reader finds them.

The screenshots in docs/images/ come from here (``APITOKENS_SCREENSHOTS=1``), taken on
the Starlette host.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from flask import Flask, jsonify
from flask import request as flask_request
from playwright.sync_api import Browser, Locator, Page, expect
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from apitokens import TOKEN_PATTERN, ApiTokens, Scope
from apitokens.web import TokenPages
from tests.browser.hosts import (
    flask_host,
    flask_user,
    starlette_host,
    starlette_user,
    with_mounts,
)
from tests.support import make_tokens
from tests.support.browser import new_page, screenshot, served_asgi, served_wsgi

PAGES = "/settings/tokens"
PAGES_KEY = "browser-tests-pages-key-0123456789"
ADMIN = "root"


def new_tokens() -> ApiTokens:
    """Tokens for ``/api/``; ``root`` is a token admin, everyone else a user."""
    return make_tokens(
        protected_paths=["/api/"],
        token_admins={"token-admins"},
        groups=lambda user: {"token-admins"} if user == ADMIN else set(),
    )


# -- the hosts: a login of their own, the pages mounted, an API behind apitokens ----------


async def _whoami(request: Request) -> Response:
    user = request.scope.get("user")
    if not getattr(user, "is_authenticated", False):
        return JSONResponse({"error": "a token is needed"}, status_code=401)
    return JSONResponse({"user": getattr(user, "display_name", "")})


@contextlib.contextmanager
def starlette_site(tokens: ApiTokens) -> Iterator[str]:
    pages = TokenPages(
        tokens, current_user=starlette_user, secret_key=PAGES_KEY, login_url="/login"
    )
    host = starlette_host([Route("/api/whoami", _whoami)], mounts={PAGES: pages.asgi()})
    with served_asgi(tokens.asgi(host)) as url:
        yield url


def _flask_api(app: Flask) -> None:
    @app.get("/api/whoami")
    def whoami() -> Any:
        user = flask_request.environ.get("REMOTE_USER")
        if user is None:
            return jsonify(error="a token is needed"), 401
        return jsonify(user=user)


@contextlib.contextmanager
def flask_site(tokens: ApiTokens) -> Iterator[str]:
    app = flask_host(_flask_api)
    pages = TokenPages(
        tokens, current_user=flask_user(app), secret_key=PAGES_KEY, login_url="/login"
    )
    with served_wsgi(tokens.wsgi(with_mounts(app, {PAGES: pages.wsgi()}))) as url:
        yield url


@dataclass
class Site:
    """A served host: which, its base URL and its tokens."""

    name: str
    base: str
    tokens: ApiTokens

    def pages(self, path: str = "/") -> str:
        return f"{self.base}{PAGES}{path}"

    def api(self, secret: str) -> httpx.Response:
        """What the host's API answers a request carrying ``secret``."""
        headers = {"Authorization": f"Bearer {secret}"}
        return httpx.get(f"{self.base}/api/whoami", headers=headers, timeout=10)

    def screenshot(self, page: Page, name: str) -> None:
        """The docs' pictures come from one host (the pages look the same on both)."""
        if self.name == "starlette":
            screenshot(page, name)


SITES: dict[str, Callable[[ApiTokens], contextlib.AbstractContextManager[str]]] = {
    "starlette": starlette_site,
    "flask": flask_site,
}


@pytest.fixture(params=list(SITES))
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    tokens = new_tokens()
    try:
        with SITES[request.param](tokens) as base:
            yield Site(request.param, base, tokens)
    finally:
        tokens.close()


# -- what a person does in the pages ------------------------------------------------------


def sign_in(page: Page, site: Site, user: str) -> None:
    """Open the pages signed out: the host's login form, then back to the pages."""
    page.goto(site.pages())
    expect(page).to_have_url(re.compile(r"/login\?"))
    page.get_by_label("User name").fill(user)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(site.pages())
    expect(page.get_by_text(f"Signed in as {user}")).to_be_visible()


def create_token(page: Page, name: str) -> str:
    """Create a token named ``name`` in the open page; return the secret it shows once."""
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_role("heading", name="Copy your new token now")).to_be_visible()
    found = TOKEN_PATTERN.search(page.locator("output").inner_text())
    assert found is not None, "the page shows no secret"
    return found.group(0)


def row(page: Page, name: str) -> Locator:
    """The table row of the token named ``name``."""
    return page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=name))


def revoke_token(page: Page, site: Site, name: str) -> None:
    """Revoke the token named ``name`` from the user's page, confirming on the next page."""
    page.goto(site.pages())
    row(page, name).get_by_role("button", name="Revoke", exact=True).click()
    page.get_by_role("button", name="Revoke token").click()
    expect(page.get_by_role("status")).to_contain_text("was revoked")


# -- tests --------------------------------------------------------------------------------


def earlier_tokens(tokens: ApiTokens, user: str) -> None:
    """Tokens a user made before (the screenshot of their page shows a lived-in list)."""
    tokens.create(
        actor=user,
        name="Grafana dashboards",
        expires_in=timedelta(days=90),
        restrictions=["[GET].*/api/reports.*"],
        allowed_ips=["203.0.113.0/24"],
        rate_limit="60/min",
        credits=5000,
        refill="1000/day",
    )
    old = tokens.create(actor=user, name="old laptop", scope=Scope.READ_WRITE)
    tokens.revoke(actor=user, token_id=old.token.id)


def test_create_use_and_revoke_a_token(page: Page, site: Site) -> None:
    earlier_tokens(site.tokens, "alice")
    sign_in(page, site, "alice")
    expect(row(page, "old laptop")).to_contain_text("revoked", ignore_case=True)
    secret = create_token(page, "CI report")
    site.screenshot(page, "pages-created")
    assert secret not in page.url

    answer = site.api(secret)
    assert (answer.status_code, answer.json()) == (200, {"user": "alice"})

    page.get_by_role("link", name=re.compile("back to your tokens")).click()
    expect(row(page, "CI report")).to_contain_text("active", ignore_case=True)
    assert secret not in page.content(), "the secret is shown once only"
    site.screenshot(page, "pages-user")

    revoke_token(page, site, "CI report")
    expect(row(page, "CI report")).to_contain_text("revoked", ignore_case=True)
    assert site.api(secret).status_code == 401


def test_a_token_is_no_login_for_the_pages(browser: Browser, site: Site) -> None:
    secret = site.tokens.create(actor="alice", name="script").secret
    assert site.api(secret).status_code == 200
    with new_page(browser, extra_http_headers={"Authorization": f"Bearer {secret}"}) as page:
        answer = page.goto(site.pages())
        assert answer is not None
        assert answer.status == 403
        expect(page.get_by_role("alert")).to_contain_text("not a sign-in")
        expect(page.get_by_role("button", name="Create token")).to_have_count(0)


def test_the_rule_tester_answers_as_you_type(page: Page, site: Site) -> None:
    sign_in(page, site, "alice")
    page.get_by_label("Restriction rules").fill("[GET].*/api/reports.*")
    page.get_by_label("Path", exact=True).press_sequentially("/api/reports/7")
    verdict = page.locator("#tester-result")
    expect(verdict).to_contain_text("allowed by the rule", ignore_case=True)
    page.get_by_label("Path", exact=True).fill("/api/users")
    expect(verdict).to_contain_text("no rule matches this request", ignore_case=True)
    page.get_by_label("Restriction rules").fill("[GET")
    expect(verdict).to_contain_text("does not parse", ignore_case=True)


def test_the_rule_tester_without_javascript(page_without_js: Page, site: Site) -> None:
    page = page_without_js
    sign_in(page, site, "alice")
    page.get_by_label("Restriction rules").fill("[GET].*/api/reports.*")
    page.get_by_label("Path", exact=True).fill("/api/reports/7")
    page.get_by_role("button", name="Check request").click()
    expect(page.locator("#tester-result")).to_contain_text("allowed by the rule", ignore_case=True)
    expect(page.locator("#tester-result")).to_be_in_viewport()  # not back at the page's top
    assert site.tokens.list(actor="alice", user="alice") == []  # a check creates nothing


def test_copy_buttons_only_when_javascript_can_copy(
    page: Page, page_without_js: Page, site: Site
) -> None:
    sign_in(page, site, "alice")
    create_token(page, "with script")
    expect(page.get_by_role("button", name="Copy", exact=True).first).to_be_visible()

    sign_in(page_without_js, site, "bob")
    create_token(page_without_js, "without script")
    expect(page_without_js.get_by_role("button", name="Copy", exact=True)).to_have_count(0)


def test_the_heading_has_room_below_the_top_bar(page: Page, site: Site) -> None:
    page.goto(site.pages("/no/such/page"))  # any page: they share the layout
    bar = page.locator("header").bounding_box()
    heading = page.get_by_role("heading", level=1).bounding_box()
    assert bar is not None and heading is not None
    assert heading["y"] - (bar["y"] + bar["height"]) >= 16


def test_a_form_without_its_csrf_token_is_refused(page: Page, site: Site) -> None:
    sign_in(page, site, "alice")
    page.locator("input[name=csrf_token]").evaluate_all("fields => fields.forEach(f => f.remove())")
    page.get_by_label("Name", exact=True).fill("forged")
    with page.expect_response(re.compile(r"/create$")) as sent:
        page.get_by_role("button", name="Create token").click()
    assert sent.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text("not sent from these pages")
    assert site.tokens.list(actor="alice", user="alice") == []


def test_a_name_with_markup_is_inert(page: Page, site: Site) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    name = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
    sign_in(page, site, "alice")
    create_token(page, name)
    page.get_by_role("link", name=re.compile("back to your tokens")).click()
    expect(page.get_by_role("rowheader", name=name)).to_be_visible()
    assert page.locator("img").count() == 0
    assert page.locator("main script").count() == 0
    assert page.title() != "pwned"
    assert errors == []


def test_an_admin_sees_every_token_and_the_audit_log(
    page: Page, browser: Browser, site: Site
) -> None:
    sign_in(page, site, "alice")
    secret = create_token(page, "alice's report")
    assert site.api(secret).status_code == 200
    revoke_token(page, site, "alice's report")
    assert site.api(secret).status_code == 401
    token = site.tokens.list(actor="alice", user="alice")[0]

    with new_page(browser) as admin:
        sign_in(admin, site, ADMIN)
        admin.get_by_role("link", name="All tokens").click()
        listed = row(admin, "alice's report")
        expect(listed).to_contain_text("alice")
        expect(listed).to_contain_text("revoked", ignore_case=True)

        admin.get_by_role("link", name="Audit log").click()
        events = admin.get_by_role("row").filter(has_text=token.id)

        def cell(text: str) -> Locator:
            return admin.get_by_role("cell", name=re.compile(f"^{text}$", re.IGNORECASE))

        for action, outcome in [
            ("create", "Success"),
            ("authenticate", "Success"),
            ("revoke", "Success"),
            ("authenticate", "Failed"),
        ]:
            expect(events.filter(has=cell(action)).filter(has=cell(outcome))).to_have_count(1)
        expect(events.filter(has=cell("revoke"))).to_contain_text("alice")  # the actor
        site.screenshot(admin, "pages-audit")


def test_a_user_who_is_no_admin_sees_only_their_own(
    page: Page, browser: Browser, site: Site
) -> None:
    site.tokens.create(actor="alice", name="alice's report")
    with new_page(browser) as bob:
        sign_in(bob, site, "bob")
        expect(bob.get_by_text("You have no tokens yet.")).to_be_visible()
        expect(bob.get_by_text("alice's report")).to_have_count(0)
        expect(bob.get_by_role("link", name="All tokens")).to_have_count(0)
        for path in ("/admin", "/admin/audit"):
            answer = bob.goto(site.pages(path))
            assert answer is not None
            assert answer.status == 403
            expect(bob.get_by_text("alice's report")).to_have_count(0)


def test_a_token_created_with_a_rate_limit_gets_429_over_it(page: Page, site: Site) -> None:
    sign_in(page, site, "alice")
    page.get_by_label("Rate limit", exact=True).fill("1/min")
    secret = create_token(page, "rate-limited")
    assert site.api(secret).status_code == 200
    over = site.api(secret)  # the tests' clock stands still: the same minute
    assert over.status_code == 429
    assert over.headers["ratelimit-policy"] == '"rate";q=1;w=60'
    assert over.headers["retry-after"].isdigit()
    page.goto(site.pages())
    expect(row(page, "rate-limited")).to_contain_text("Rate limit 1/min")
