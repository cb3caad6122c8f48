"""What a new user of issue 18 (limits, notices, run-as, reuse) found, following only the
README and docs/: behaviour the docs do not lead a user to expect. Each was fixed since;
each test failed before its fix.

Real servers on 127.0.0.1 (werkzeug) and a real SQLite file, as a user runs them.
"""

from __future__ import annotations

import contextlib
import html
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from apitokens import Action, ApiTokens, SQLiteStore
from apitokens.web import TokenPages
from tests.support import Clock, make_tokens, serve_wsgi

SECRET_KEY = "a test key of at least 16 bytes, the same in every worker"


def _tokens(tmp_path: Path) -> ApiTokens:
    """A SQLite file, and a clock at noon: an expiry 30 days on is at noon too."""
    return make_tokens(
        SQLiteStore(tmp_path / "tokens.db"),
        clock=Clock(),
        protected_paths=["/rest/"],
        max_lifetime=timedelta(days=365),
    )


def _edit_form(client: httpx.Client, token_id: str) -> dict[str, str]:
    """The edit form's fields as the page fills them in, as a browser would send them back."""
    page = client.get(f"/tokens/{token_id}/edit", params={"back": "user"})
    assert page.status_code == 200, page.text
    start = page.text.index(f'action="/tokens/{token_id}/edit"')
    form = page.text[start : page.text.index("</form>", start)]
    fields: dict[str, str] = {}
    for tag in re.findall(r"<input[^>]*>", form):
        name = re.search(r'name="([^"]+)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name and ('type="radio"' not in tag or " checked" in tag):
            fields[name.group(1)] = html.unescape(value.group(1)) if value else ""
    for name, text in re.findall(r'<textarea[^>]*name="([^"]+)"[^>]*>(.*?)</textarea>', form, re.S):
        fields[name] = html.unescape(text)
    return fields


def _edit_rate_limit_through_the_pages(tmp_path: Path) -> tuple[ApiTokens, str, Any]:
    """Alice opens her standard token's edit form, changes only the rate limit, saves."""
    tokens = _tokens(tmp_path)
    issued = tokens.create(
        actor="alice", name="Nightly export", secure=False, expires_in=timedelta(days=30),
        rate_limit="100/min", credits=50,
    )  # fmt: skip
    before = tokens.get(issued.token.id)
    pages = TokenPages(tokens, current_user=lambda environ: "alice", secret_key=SECRET_KEY)
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(contextlib.contextmanager(serve_wsgi)(pages.wsgi()))
        client = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10))
        fields = _edit_form(client, issued.token.id)
        assert fields["rate_limit"] == "100/min"
        answer = client.post(
            f"/tokens/{issued.token.id}/edit", data=dict(fields, rate_limit="10/min")
        )
        assert answer.status_code == 303, answer.text
    tokens.flush()
    return tokens, issued.token.id, before


def test_editing_only_the_limits_on_the_pages_keeps_the_expiry(tmp_path: Path) -> None:
    tokens, token_id, before = _edit_rate_limit_through_the_pages(tmp_path)
    after = tokens.get(token_id)
    assert after is not None and before is not None
    assert after.rate_limit == "10/min"
    assert before.expires_at is not None and before.expires_at.hour == 12  # noon, not midnight
    assert after.expires_at == before.expires_at


def test_an_edit_on_the_pages_audits_only_what_changed(tmp_path: Path) -> None:
    tokens, token_id, _ = _edit_rate_limit_through_the_pages(tmp_path)
    [event] = tokens.audit(token_id=token_id, action=Action.EDIT)
    assert event.reason == "changed rate_limit"


def test_the_cli_edit_audits_only_what_changed(tmp_path: Path) -> None:
    """The same edit from Python, giving only the limit, names only the limit: the
    behaviour the pages should match."""
    tokens = _tokens(tmp_path)
    issued = tokens.create(
        actor="alice", name="n", secure=False, expires_in=timedelta(days=30), rate_limit="1/s"
    )
    tokens.edit(actor="alice", token_id=issued.token.id, rate_limit="2/s")
    [event] = tokens.audit(token_id=issued.token.id, action=Action.EDIT)
    assert event.reason == "changed rate_limit"


def _ok(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def test_spent_credits_without_refill_never_promise_a_retry(tmp_path: Path) -> None:
    tokens = _tokens(tmp_path)
    issued = tokens.create(
        actor="alice", name="one shot", expires_in=timedelta(days=30), rate_limit="1/h", credits=1
    )
    headers = {"Authorization": f"Bearer {issued.secret}"}
    with contextlib.contextmanager(serve_wsgi)(tokens.wsgi(_ok)) as port:
        url = f"http://127.0.0.1:{port}/rest/x"
        assert httpx.get(url, headers=headers, timeout=10).status_code == 200
        refused = httpx.get(url, headers=headers, timeout=10)
    assert refused.status_code == 429
    # The docs: spent credits without a refill get credits_spent and no Retry-After.
    assert refused.json()["error"] == "credits_spent"
    assert "Retry-After" not in refused.headers


def test_cli_edit_credits_tops_up_a_spent_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from apitokens.cli import main

    tokens = _tokens(tmp_path)
    issued = tokens.create(
        actor="alice", name="metered", secure=False, expires_in=timedelta(days=30), credits=2
    )
    headers = {"Authorization": f"Bearer {issued.secret}"}
    with contextlib.contextmanager(serve_wsgi)(tokens.wsgi(_ok)) as port:
        url = f"http://127.0.0.1:{port}/rest/x"
        answers = [httpx.get(url, headers=headers, timeout=10).status_code for _ in range(3)]
    assert answers == [200, 200, 429]
    tokens.close()
    db = str(tmp_path / "tokens.db")
    assert main(["--db", db, "edit", issued.token.id, "--credits", "2"]) == 0
    assert "2 credits" in capsys.readouterr().out
    reopened = _tokens(tmp_path)
    try:
        assert reopened.credits_left(issued.token.id) == 2
    finally:
        reopened.close()
