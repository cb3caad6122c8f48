"""An attacker's look at the token pages in a real Chromium (issue 17).

The hosts of tests/browser/test_pages.py (Starlette under uvicorn, Flask under werkzeug,
the pages at ``/settings/tokens``, each on ``127.0.0.1``); the attacker's own site is
another server reached as ``localhost``: another site to the browser.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect
from playwright.sync_api import Error as PlaywrightError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from apitokens import TokenStatus
from tests.browser.test_pages import ADMIN, SITES, Site, create_token, new_tokens, sign_in
from tests.support.browser import new_page, served_asgi

EVIL_PAGE = """<!doctype html><title>Cute cats</title>
<iframe id="framed" src="{pages}/" width="600" height="400"></iframe>
<form id="forged" method="post" action="{pages}/tokens/{token_id}/revoke">
<input type="hidden" name="back" value="user">
</form>
<script>
window.addEventListener("load", function () {{
  setTimeout(function () {{ document.getElementById("forged").submit(); }}, 300);
}});
</script>"""


@pytest.fixture(params=list(SITES))
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    """Each host of test_pages.py, served."""
    tokens = new_tokens()
    try:
        with SITES[request.param](tokens) as base:
            yield Site(request.param, base, tokens)
    finally:
        tokens.close()


@contextlib.contextmanager
def evil_site(pages: str, token_id: str, host: str) -> Iterator[str]:
    """The attacker's page at ``host``: it frames the pages and posts a revoke form to them."""

    async def home(request: Request) -> Response:
        return HTMLResponse(EVIL_PAGE.format(pages=pages, token_id=token_id))

    with served_asgi(Starlette(routes=[Route("/", home)])) as url:
        yield url.replace("127.0.0.1", host)


@pytest.mark.parametrize(
    "evil_host",
    [
        "localhost",  # another site: SameSite keeps the session cookie home (or Sec-Fetch-Site)
        "127.0.0.1",  # the same site on another port (as a sibling subdomain): the cookie goes
    ],
)
def test_another_origin_can_neither_post_to_the_pages_nor_frame_them(
    page: Page, site: Site, evil_host: str
) -> None:
    sign_in(page, site, "alice")
    token = site.tokens.create(actor="alice", name="victim").token
    pages = site.pages("").rstrip("/")
    with evil_site(pages, token.id, evil_host) as evil:
        with page.expect_response(re.compile(r"/revoke$")) as sent:
            page.goto(evil + "/")
        # 403: refused by the pages; 303: to the host's login, as no cookie was sent.
        assert sent.value.status in (303, 403)
        if evil_host == "127.0.0.1":
            assert sent.value.status == 403  # the cookie went: the pages themselves refused
        if sent.value.status == 403:
            expect(page.get_by_text("sent from another site")).to_be_visible()
    after = site.tokens.get(token.id)
    assert after is not None and after.status is TokenStatus.ACTIVE

    if evil_host == "127.0.0.1":  # signed in inside the frame: frame-ancestors must refuse
        with evil_site(pages, token.id, evil_host) as evil:
            page.route(re.compile(r"/revoke$"), lambda route: route.abort())
            with page.expect_response(pages + "/") as framed:
                page.goto(evil + "/")
            assert framed.value.status == 200  # the session went with the frame's request
            page.wait_for_load_state("load")
            expect(page.frame_locator("#framed").get_by_text("Your API tokens")).to_have_count(0)
            frame = next(f for f in page.frames if f is not page.main_frame)
            assert not frame.url.startswith(pages), frame.url


def _csp_errors(page: Page) -> list[str]:
    found: list[str] = []

    def seen(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            found.append(message.text)

    page.on("console", seen)
    return found


def test_no_page_breaks_its_own_content_security_policy(browser: Browser, site: Site) -> None:
    """Every page an admin can reach, JavaScript on: no resource or script is refused
    (a refusal is a part of the page that does not work, or markup that tried to run)."""
    standard = site.tokens.create(actor=ADMIN, name="std", secure=False).token
    with new_page(browser) as page:
        errors = _csp_errors(page)
        sign_in(page, site, ADMIN)
        create_token(page, "csp")
        for path in (
            "/",
            f"/tokens/{standard.id}/revoke",
            f"/tokens/{standard.id}/rotate",
            f"/tokens/{standard.id}/edit",
            "/admin",
            "/admin/audit",
            "/admin/policy",
            "/admin/revoke-unused?days=1",
            "/no-such-page",
        ):
            page.goto(site.pages(path))
        page.goto(site.pages("/"))
        page.get_by_label("Restriction rules").fill("[GET].*/api/.*")
        page.get_by_label("Path", exact=True).press_sequentially("/api/x")
        expect(page.locator("#tester-result")).to_contain_text("Allowed")
        assert errors == []


def test_markup_in_what_an_attacker_sends_the_api_is_inert_in_the_audit_log(
    page: Page, site: Site
) -> None:
    """Failed API calls are audited with their path and client: an attacker chooses them."""
    secret = site.tokens.create(actor="alice", name="a").secret
    markup = "<img src=x onerror=\"document.title='pwned'\">"
    with httpx.Client(base_url=site.base) as client:
        client.get(f"/api/{markup}", headers={"Authorization": f"Bearer {secret}x"})
        client.get(f"/api/{markup}", headers={"Authorization": f"Bearer {secret}"})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, site, ADMIN)
    page.goto(site.pages("/admin/audit"))
    expect(page.get_by_role("row").nth(1)).to_be_visible()
    assert page.locator("main img").count() == 0
    assert page.title() != "pwned"
    assert errors == []


def test_the_back_button_never_shows_the_secret_again(page: Page, site: Site) -> None:
    """The secret page answers a POST with ``no-store``: going back to it is no cache hit
    (no bfcache, no history copy), so it is not on screen for the next person at the desk."""
    sign_in(page, site, "alice")
    secret = create_token(page, "shown once")
    assert secret not in page.url
    page.get_by_role("link", name=re.compile("back to your tokens")).click()
    expect(page.get_by_role("heading", name="Your API tokens")).to_be_visible()
    # Not restored from the back/forward cache nor from the HTTP cache: Chromium would
    # have to send the POST again, and asks first (net::ERR_CACHE_MISS).
    with pytest.raises(PlaywrightError, match="ERR_CACHE_MISS"):
        page.go_back()
    assert len(site.tokens.list(actor="alice", user="alice")) == 1  # nothing sent again
