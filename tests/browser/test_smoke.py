"""The browser-test machinery itself: a real Chromium signs in to a Starlette and a Flask app.

Each host has its own demo login (tests/browser/hosts.py) and a page with a labelled
field and a button; the browser signs in, fills the field, presses the button by its
accessible name and reads the answer, with JavaScript on and off. The page's script
(an external file, as the token pages' Content-Security-Policy demands) writes a line
only a browser running JavaScript shows.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Page, expect
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.browser.hosts import flask_host, flask_signed_in, starlette_host, starlette_signed_in
from tests.support.browser import (
    INSTALL,
    SCREENSHOTS,
    chromium_executable,
    missing_chromium,
    screenshot,
    served_asgi,
    served_wsgi,
)

SCRIPT = "document.getElementById('js').textContent = 'JavaScript is on';"


def message_page(user: str) -> str:
    return f"""<!doctype html><title>Messages</title>
<p>Signed in as {html.escape(user)}</p>
<p id="js"></p>
<form method="post" action="/echo">
<label for="message">Message</label> <input id="message" name="message">
<button type="submit">Send</button>
</form>
<script src="/app.js"></script>"""


def answer_page(message: str) -> str:
    return f"<!doctype html><title>Sent</title><p>You said: {html.escape(message)}</p>"


# -- the two hosts ----------------------------------------------------------------------


async def _home(request: Request) -> Response:
    user = starlette_signed_in(request)
    if user is None:
        return RedirectResponse("/login?next=/", status_code=303)
    return HTMLResponse(message_page(user))


async def _echo(request: Request) -> Response:
    if starlette_signed_in(request) is None:
        return PlainTextResponse("Sign in first", status_code=401)
    form = await request.form()
    return HTMLResponse(answer_page(str(form.get("message", ""))))


async def _script(request: Request) -> Response:
    return Response(SCRIPT, media_type="text/javascript")


def _flask_routes(app: Flask) -> None:
    from flask import redirect, request

    @app.get("/")
    def home() -> Any:
        user = flask_signed_in()
        if user is None:
            return redirect("/login?next=/", code=303)
        return message_page(user)

    @app.post("/echo")
    def echo() -> Any:
        if flask_signed_in() is None:
            return "Sign in first", 401
        return answer_page(request.form.get("message", ""))

    @app.get("/app.js")
    def script() -> Any:
        return SCRIPT, 200, {"Content-Type": "text/javascript"}


@contextlib.contextmanager
def starlette_server() -> Iterator[str]:
    routes = [
        Route("/", _home),
        Route("/echo", _echo, methods=["POST"]),
        Route("/app.js", _script),
    ]
    with served_asgi(starlette_host(routes)) as url:
        yield url


@contextlib.contextmanager
def flask_server() -> Iterator[str]:
    with served_wsgi(flask_host(_flask_routes)) as url:
        yield url


HOSTS = pytest.mark.parametrize(
    "serve", [starlette_server, flask_server], ids=["starlette", "flask"]
)
Serve = Callable[[], contextlib.AbstractContextManager[str]]


def sign_in(page: Page, base: str, user: str) -> None:
    """Sign in through the host's own login form, as a person would."""
    page.goto(f"{base}/")
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))
    page.get_by_label("User name").fill(user)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text(f"Signed in as {user}")).to_be_visible()


# -- tests --------------------------------------------------------------------------------


@HOSTS
def test_sign_in_fill_and_press_with_javascript_on(page: Page, serve: Serve) -> None:
    with serve() as base:
        sign_in(page, base, "alice")
        expect(page.locator("#js")).to_have_text("JavaScript is on")
        page.get_by_label("Message").fill("<b>hello</b>")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_text("You said: <b>hello</b>")).to_be_visible()
        assert page.locator("b").count() == 0  # what the user typed is text, not markup


@HOSTS
def test_sign_in_fill_and_press_with_javascript_off(page_without_js: Page, serve: Serve) -> None:
    page = page_without_js
    with serve() as base:
        sign_in(page, base, "bob")
        expect(page.locator("#js")).to_have_text("")  # the script never ran
        page.get_by_label("Message").fill("plain forms work")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_text("You said: plain forms work")).to_be_visible()


@HOSTS
def test_a_fresh_context_is_signed_out(page: Page, serve: Serve) -> None:
    """Each test's context has its own cookies: nobody is signed in at the start."""
    with serve() as base:
        response = page.request.post(f"{base}/echo", form={"message": "x"})
        assert response.status == 401


def test_screenshots_are_written_only_when_asked(
    page: Page, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page.set_content("<h1>Tokens</h1>")
    monkeypatch.delenv(SCREENSHOTS, raising=False)
    assert screenshot(page, "picture", directory=tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv(SCREENSHOTS, "1")
    written = screenshot(page, "picture", directory=tmp_path)
    assert written == tmp_path / "picture.png"
    assert written.read_bytes().startswith(b"\x89PNG")


def test_a_missing_chromium_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", os.devnull)
    assert chromium_executable(candidates=("/nonexistent/chromium",)) is None
    assert INSTALL in missing_chromium()
    assert INSTALL == "apt-get install -y --no-install-recommends chromium"
