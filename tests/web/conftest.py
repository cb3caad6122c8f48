"""The token pages under test, driven through httpx by both drivers (ASGI and WSGI).

Each test that takes ``pages`` runs twice: through ``httpx.ASGITransport`` on
``TokenPages.asgi()`` and through ``httpx.WSGITransport`` on ``TokenPages.wsgi()``.
The host app's login is a request header here (``X-Test-User``), read by
``current_user`` from the scope or the environ as a host app reads its session.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from apitokens import ApiTokens, MemoryStore, Policy
from apitokens.web import TokenPages
from tests.support import CHEAP_HASHER, Clock

SECRET_KEY = "test-key-" + "k" * 32
ADMINS = "token-admins"
GROUPS = {"root": {ADMINS}, "alice": {"staff"}, "bob": {"staff"}}


def signed_in(native: Any) -> str | None:
    """The host app's login: ``X-Test-User``, from an ASGI scope or a WSGI environ."""
    if "headers" in native and "type" in native:  # an ASGI scope
        for name, value in native["headers"]:
            if name == b"x-test-user":
                return str(value.decode("latin-1"))
        return None
    user = native.get("HTTP_X_TEST_USER")
    return str(user) if user else None


_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


@dataclass
class Pages:
    """The pages behind one driver, and a small client for them."""

    driver: str
    tokens: ApiTokens
    pages: TokenPages
    clock: Clock
    prefix: str = ""
    app: Any = field(default=None, repr=False)

    def request(
        self, method: str, path: str, *, user: str | None = "alice", **kwargs: Any
    ) -> httpx.Response:
        """One request to the pages as ``user`` (``None``: nobody signed in); no redirects."""
        headers = dict(kwargs.pop("headers", {}) or {})
        if user is not None:
            headers["x-test-user"] = user
        url = self.prefix + path
        if self.driver == "wsgi":
            transport = httpx.WSGITransport(app=self.app)
            with httpx.Client(transport=transport, base_url="http://pages.test") as client:
                return client.request(method, url, headers=headers, **kwargs)

        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://pages.test") as c:
                response = await c.request(method, url, headers=headers, **kwargs)
                await response.aread()
                return response

        return asyncio.run(call())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def csrf(self, user: str = "alice") -> str:
        """A CSRF token from a page of ``user``'s, as a browser gets it."""
        page = self.get("/", user=user)
        found = _CSRF.search(page.text)
        assert found, page.text
        return found.group(1)

    def submit(
        self, path: str, data: dict[str, str], *, user: str = "alice", **kwargs: Any
    ) -> httpx.Response:
        """POST a form of the pages with a valid CSRF token of ``user``'s."""
        return self.post(path, user=user, data={"csrf_token": self.csrf(user), **data}, **kwargs)

    def create(self, name: str = "CI report", *, user: str = "alice", **fields: str) -> str:
        """Create a token through the create form; its secret, from the page that shows it."""
        data = {"name": name, "expires": "30", "scope": "read_only", "mode": "secure"}
        data.update(fields)
        response = self.submit("/create", {"action": "create", **data}, user=user)
        assert response.status_code == 200, response.text
        found = re.search(r'<output id="new-token" class="secret">([^<]+)</output>', response.text)
        assert found, response.text
        return found.group(1)


def make_pages(
    driver: str, *, policy: Policy | None = None, prefix: str = "", **options: Any
) -> Pages:
    clock = Clock()
    tokens = ApiTokens(
        MemoryStore(),
        policy=policy or Policy(token_admins={ADMINS}, protected_paths=["/rest/"]),
        groups=lambda user: GROUPS.get(user, set()),
        hasher=CHEAP_HASHER,
        clock=clock,
    )
    pages = TokenPages(tokens, current_user=signed_in, secret_key=SECRET_KEY, **options)
    app = pages.asgi() if driver == "asgi" else pages.wsgi()
    if prefix:
        app = mounted(driver, prefix, app)
    return Pages(driver, tokens, pages, clock, prefix, app)


def mounted(driver: str, prefix: str, app: Any) -> Any:
    """``app`` mounted at ``prefix`` of a host app: a Starlette ``Mount`` (its
    ``root_path``), or werkzeug's ``DispatcherMiddleware`` (``SCRIPT_NAME``), as Flask
    mounts a WSGI app."""
    if driver == "asgi":
        from starlette.applications import Starlette
        from starlette.routing import Mount

        return Starlette(routes=[Mount(prefix, app=app)])
    from werkzeug.exceptions import NotFound
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    return DispatcherMiddleware(NotFound(), {prefix: app})


@pytest.fixture(params=["asgi", "wsgi"])
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pages(driver: str) -> Iterator[Pages]:
    made = make_pages(driver)
    yield made
    made.tokens.close()
