"""A real Chromium for the browser tests, driven by Playwright, and real servers for it.

The browser is Debian's ``chromium`` (``make test`` installs it when it may; Playwright's
own ``playwright install`` cannot download browsers everywhere). A missing Chromium or
Playwright fails the tests that need it, naming what to install: it is never a silent
skip. ``APITOKENS_TEST_NO_BROWSER=1`` skips them on purpose (for a contributor's machine;
CI never sets it).

The browser lives for one test package (``tests/browser``), not the whole session:
Playwright's sync API keeps an asyncio loop marked running in the main thread while it
is started, and ``asyncio.run()`` in any other test would then refuse to run. Each test
gets a fresh context (its own cookies), closed when the test ends.

The apps under test run in servers on ``127.0.0.1``, on a port the kernel picks: ASGI
apps under uvicorn, WSGI apps under werkzeug, each in a thread and stopped when the
test's ``with`` block ends. The socket listens before the server thread starts, so a
request never races the server's start-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support import serve_wsgi

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize

__all__ = [
    "IMAGES",
    "INSTALL",
    "OPT_OUT",
    "SCREENSHOTS",
    "browser",
    "chromium_executable",
    "context",
    "missing_chromium",
    "new_page",
    "page",
    "page_without_js",
    "screenshot",
    "served_asgi",
    "served_wsgi",
]

OPT_OUT = "APITOKENS_TEST_NO_BROWSER"
INSTALL = "apt-get install -y --no-install-recommends chromium"
SCREENSHOTS = "APITOKENS_SCREENSHOTS"
"""Set to ``1`` to (re)write the committed screenshots under ``docs/images/``."""
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
_DEBIAN_PATHS = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
"""Every context's window: the screenshots come out the same size on every machine."""
TIMEOUT_MS = 5_000
"""How long Playwright waits for an element or a navigation before failing the test."""


def chromium_executable(candidates: Sequence[str] = _DEBIAN_PATHS) -> str | None:
    """Chromium's path: ``chromium`` on ``PATH``, else Debian's paths; ``None`` if absent."""
    found = shutil.which("chromium")
    if found:
        return found
    return next((path for path in candidates if os.access(path, os.X_OK)), None)


def missing_chromium() -> str:
    """What a test says when there is no Chromium to drive."""
    return f"The browser tests need Chromium: {INSTALL} (or {OPT_OUT}=1 to skip them)"


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """A headless Chromium, launched once per test package (about half a second)."""
    if os.environ.get(OPT_OUT) == "1":
        pytest.skip(f"{OPT_OUT}=1: the browser tests are skipped on purpose")
    executable = chromium_executable()
    if executable is None:
        pytest.fail(missing_chromium(), pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("The browser tests need Playwright: pip install -e '.[dev]'", pytrace=False)
    with sync_playwright() as playwright:
        # As root Chromium needs its sandbox off, which is Playwright's default.
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@contextlib.contextmanager
def new_page(browser: Browser, **options: Any) -> Iterator[Page]:
    """A page in a fresh context (its own cookies), closed at the end of the block.

    ``options`` go to ``browser.new_context``: ``java_script_enabled=False``,
    ``viewport={"width": 390, "height": 844}`` for a phone, ...
    """
    context = browser.new_context(**{"viewport": VIEWPORT, **options})
    try:
        context.set_default_timeout(TIMEOUT_MS)
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser context for one test (JavaScript on)."""
    created = browser.new_context(viewport=VIEWPORT)
    try:
        created.set_default_timeout(TIMEOUT_MS)
        yield created
    finally:
        created.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    """A page in the test's own context, JavaScript on."""
    return context.new_page()


@pytest.fixture
def page_without_js(browser: Browser) -> Iterator[Page]:
    """A page in a context of its own with JavaScript off."""
    with new_page(browser, java_script_enabled=False) as created:
        yield created


@contextlib.contextmanager
def served_asgi(app: Callable[..., Any]) -> Iterator[str]:
    """Serve an ASGI ``app`` with uvicorn in a thread on 127.0.0.1; yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # requests wait in the backlog until uvicorn serves them
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop within 10 s"


@contextlib.contextmanager
def served_wsgi(app: Callable[..., Any]) -> Iterator[str]:
    """Serve a WSGI ``app`` with werkzeug's threaded server on 127.0.0.1; yield its base URL."""
    with contextlib.contextmanager(serve_wsgi)(app) as port:
        yield f"http://127.0.0.1:{port}"


def screenshot(page: Page, name: str, *, directory: Path = IMAGES) -> Path | None:
    """Take a PNG of ``page``; write it to ``directory/name.png`` only when asked to.

    The picture is always taken, so a page that cannot be pictured fails in every run;
    it is written only with ``APITOKENS_SCREENSHOTS=1``, so a normal run never rewrites
    the committed images. Returns the path written, or ``None``.
    """
    png = page.screenshot(full_page=True, animations="disabled")
    assert png.startswith(b"\x89PNG\r\n\x1a\n"), "the screenshot is not a PNG"
    if os.environ.get(SCREENSHOTS) != "1":
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    path.write_bytes(png)
    return path
