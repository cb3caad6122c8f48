"""The browser tests: Playwright driving a real Chromium (tests/support/browser.py)."""

from __future__ import annotations

from tests.support.browser import browser, context, page, page_without_js  # noqa: F401
