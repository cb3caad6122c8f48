"""Rate limits and credits on the token pages (DESIGN §11), through both drivers: the create
form's fields, the rows that show them and the credits left, the edit form, and refusals."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

import pytest

from apitokens import ApiTokens, AuthRequest, AuthResult, MemoryStore, Outcome, StorageError
from apitokens.storage import CreditSpend
from apitokens.web import TokenPages
from tests.support import CHEAP_HASHER, Clock
from tests.web.conftest import SECRET_KEY, Pages, signed_in


def call(pages: Pages, secret: str) -> AuthResult:
    request = AuthRequest("GET", "/rest/api", headers={"authorization": f"Bearer {secret}"})
    return pages.tokens.authenticate(request)


def limits_cell(page: str) -> list[str]:
    """The text of each row's Limits cell, tags dropped, spaces collapsed."""
    cells = re.findall(r'<td data-label="Limits">(.*?)</td>', page, re.S)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", cell)).split()) for cell in cells]


def test_the_create_form_has_labelled_limit_fields(pages: Pages) -> None:
    page = pages.get("/").text
    for field, label, name in (
        ("f-rate-limit", "Rate limit", "rate_limit"),
        ("f-credits", "Credits", "credits"),
        ("f-refill", "Refill", "refill"),
    ):
        assert f'<label for="{field}">{label}</label>' in page
        assert re.search(rf'<input id="{field}" name="{name}" ', page)
    assert 'placeholder="100/min"' in page and 'placeholder="1000/day"' in page


def test_a_token_created_with_limits_obeys_them_and_its_row_shows_them(pages: Pages) -> None:
    secret = pages.create("metered", rate_limit=" 2/minute ", credits="3", refill="1000/d")
    token = pages.tokens.list(actor="alice")[0]
    assert (token.rate_limit, token.credits, token.refill) == ("2/min", 3, "1000/day")
    assert limits_cell(pages.get("/").text) == [
        "Rate limit 2/min Credits: 3 of 3 left Refill 1000/day"
    ]
    assert [call(pages, secret).status_code for _ in range(3)] == [200, 200, 429]
    pages.tokens.flush()
    assert limits_cell(pages.get("/").text) == [
        "Rate limit 2/min Credits: 1 of 3 left Refill 1000/day"
    ]
    # The admin's list shows them too.
    admin = pages.get("/admin", user="root").text
    assert "Credits: 1 of 3 left" in admin


def test_a_token_without_limits_says_none(pages: Pages) -> None:
    pages.create("plain")
    assert limits_cell(pages.get("/").text) == ["None"]


def test_a_rate_limit_only_needs_no_credits(pages: Pages) -> None:
    secret = pages.create("fast", rate_limit="1/h", credits="", refill="")
    token = pages.tokens.list(actor="alice")[0]
    assert (token.rate_limit, token.credits, token.refill) == ("1/h", None, None)
    assert call(pages, secret).status_code == 200
    refused = call(pages, secret)
    assert (refused.status_code, refused.outcome) == (429, Outcome.FORBIDDEN)
    assert limits_cell(pages.get("/").text) == ["Rate limit 1/h"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"rate_limit": "fast"},
            "Rate limit &#39;fast&#39; is not of the form N/s, N/min, N/h or N/day.",
        ),
        ({"rate_limit": "0/s"}, "Rate limit: the count must be between 1 and 1000000000."),
        ({"credits": "lots"}, "Credits: &#39;lots&#39; is not a whole number of uses (1 or more)."),
        ({"credits": "0"}, "Credits must be between 1 and 1000000000."),
        ({"credits": "9" * 400}, "Credits: (400 characters) is not a whole number of uses"),
        ({"credits": "5", "refill": "5 a day"}, "Refill &#39;5 a day&#39; is not of the form"),
        ({"refill": "1000/day"}, "Refill needs credits: it gives back spent credits."),
    ],
)
def test_a_malformed_limit_is_the_forms_error_and_creates_nothing(
    pages: Pages, fields: dict[str, str], message: str
) -> None:
    data = {"action": "create", "name": "CI", "expires": "30", **fields}
    response = pages.submit("/create", data)
    assert response.status_code == 400
    assert '<p class="error" role="alert">' in response.text
    assert message in response.text
    assert pages.tokens.list(actor="alice") == []
    # What was typed is shown again, to be corrected.
    for name, value in fields.items():
        assert re.search(rf'name="{name}" value="{re.escape(html.escape(value))}"', response.text)


def test_the_edit_form_shows_the_limits(pages: Pages) -> None:
    pages.create("metered", mode="standard", rate_limit="100/min", credits="50", refill="5/h")
    token = pages.tokens.list(actor="alice")[0]
    form = pages.get(f"/tokens/{token.id}/edit").text
    assert '<label for="e-rate-limit">Rate limit</label>' in form
    assert 'name="rate_limit" value="100/min"' in form
    assert 'name="credits" value="50"' in form
    assert 'name="refill" value="5/h"' in form
    assert "50 of 50 left now." in form


def test_a_malformed_limit_in_the_edit_form_changes_nothing(pages: Pages) -> None:
    pages.create("metered", mode="standard", rate_limit="100/min")
    token = pages.tokens.list(actor="alice")[0]
    values = {"name": "renamed", "rules": "", "ips": "", "expires_on": ""}
    bad = pages.submit(f"/tokens/{token.id}/edit", {**values, "rate_limit": "lots", "credits": ""})
    assert bad.status_code == 400
    assert "Rate limit &#39;lots&#39; is not of the form" in bad.text
    assert 'name="rate_limit" value="lots"' in bad.text
    assert pages.tokens.get(token.id) == token


def test_an_edit_form_without_the_limit_fields_keeps_the_limits(pages: Pages) -> None:
    pages.create("metered", mode="standard", rate_limit="100/min", credits="50")
    token = pages.tokens.list(actor="alice")[0]
    values = {"name": "renamed", "rules": "", "ips": "", "expires_on": ""}
    assert pages.submit(f"/tokens/{token.id}/edit", values).status_code == 303
    after = pages.tokens.get(token.id)
    assert after is not None
    assert (after.name, after.rate_limit, after.credits) == ("renamed", "100/min", 50)


def test_the_edit_form_changes_and_removes_limits(pages: Pages) -> None:
    secret = pages.create("metered", mode="standard", credits="1")
    token = pages.tokens.list(actor="alice")[0]
    assert [call(pages, secret).status_code for _ in range(2)] == [200, 429]
    values = {"name": "metered", "rules": "", "ips": "", "expires_on": ""}
    limits = {"rate_limit": "5/s", "credits": "10", "refill": "1/day"}
    assert pages.submit(f"/tokens/{token.id}/edit", {**values, **limits}).status_code == 303
    after = pages.tokens.get(token.id)
    assert after is not None
    assert (after.rate_limit, after.credits, after.refill) == ("5/s", 10, "1/day")
    assert call(pages, secret).status_code == 200  # new credits: a new allotment
    pages.tokens.flush()
    assert "Credits: 9 of 10 left" in pages.get("/").text
    cleared = {"rate_limit": "", "credits": "", "refill": ""}
    assert pages.submit(f"/tokens/{token.id}/edit", {**values, **cleared}).status_code == 303
    after = pages.tokens.get(token.id)
    assert after is not None
    assert (after.rate_limit, after.credits, after.refill) == (None, None, None)


class _LedgerDown(MemoryStore):
    """A MemoryStore whose usage ledger fails once ``down`` is set."""

    down = False

    def spend_credits(self, spends: Mapping[str, CreditSpend]) -> dict[str, int]:
        if self.down:
            raise StorageError("the usage ledger is down")
        return super().spend_credits(spends)


def test_credits_left_the_store_cannot_give_are_unknown_not_an_error(driver: str) -> None:
    store = _LedgerDown()
    tokens = ApiTokens(store, groups=lambda user: set(), hasher=CHEAP_HASHER, clock=Clock())
    pages = TokenPages(tokens, current_user=signed_in, secret_key=SECRET_KEY)
    app = pages.asgi() if driver == "asgi" else pages.wsgi()
    made = Pages(driver, tokens, pages, Clock(), app=app)
    try:
        made.create("metered", credits="10")
        store.down = True
        page = made.get("/")
        assert page.status_code == 200
        assert limits_cell(page.text) == ["Credits: 10 (left: unknown)"]
    finally:
        tokens.close()
