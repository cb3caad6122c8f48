"""The pages mounted under a prefix of a host app: links and redirects follow the mount point.

ASGI: a Starlette ``Mount`` (``root_path``); WSGI: werkzeug's ``DispatcherMiddleware``
(``SCRIPT_NAME``), as a Flask app mounts a WSGI app.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.web.conftest import Pages, make_pages

PREFIX = "/settings/tokens"


@pytest.fixture
def mounted(driver: str) -> Iterator[Pages]:
    made = make_pages(driver, prefix=PREFIX, login_url="/login")
    yield made
    made.tokens.close()


def test_every_link_and_form_starts_with_the_mount_point(mounted: Pages) -> None:
    mounted.create("CI")
    for path in ("/", "/admin", "/admin/audit", "/admin/policy"):
        page = mounted.get(path, user="root")
        assert page.status_code == 200, path
        targets = re.findall(r'(?:href|src|action|data-check-url)="([^"#]+)"', page.text)
        assert targets, path
        for target in targets:
            assert target.startswith(PREFIX + "/"), (path, target)


def test_redirects_and_static_files_under_the_mount_point(mounted: Pages) -> None:
    mounted.create("CI")
    token = mounted.tokens.list(actor="alice")[0]
    done = mounted.submit(f"/tokens/{token.id}/revoke", {})
    assert done.status_code == 303
    assert done.headers["location"] == f"{PREFIX}/?done=revoked&token={token.id}"
    assert mounted.get("/static/pages.css").status_code == 200
    signed_out = mounted.get("/admin", user=None)
    assert signed_out.headers["location"] == "/login?next=%2Fsettings%2Ftokens%2Fadmin"


def test_the_host_app_routes_outside_the_mount_point(mounted: Pages) -> None:
    mounted.prefix = ""
    assert mounted.get("/").status_code == 404
