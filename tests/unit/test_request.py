"""AuthRequest: the public constructor normalises; quote_path gives back what a server decoded."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apitokens import AuthRequest
from apitokens._request import quote_path


def test_a_request_is_frozen_and_replace_keeps_it_normalised() -> None:
    request = AuthRequest("GET", "/x", "q=1", [("Authorization", "Bearer a")], "192.0.2.1", b"{}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.path = "/y"  # type: ignore[misc]
    # The flow adds the body with dataclasses.replace, which goes through __init__.
    again = dataclasses.replace(request, body=b"[]")
    assert again.headers == (("authorization", "Bearer a"),) and again.body == b"[]"
    assert dataclasses.replace(again, body=b"{}") == request


@given(st.text(alphabet=st.characters(max_codepoint=255), max_size=40))
def test_quote_path_undoes_what_a_wsgi_server_decoded(path: str) -> None:
    quoted = quote_path(path, "latin-1")
    assert unquote(quoted, encoding="latin-1") == path
    assert all(c.isascii() and c.isprintable() and c not in " ?#" for c in quoted)


@given(st.text(max_size=40))
def test_quote_path_undoes_what_an_asgi_server_decoded(path: str) -> None:
    quoted = quote_path(path, "utf-8")
    assert unquote(quoted, encoding="utf-8", errors="surrogateescape") == path
    assert all(c.isascii() and c not in " ?#" for c in quoted)


def test_the_public_constructor_still_normalises_headers() -> None:
    mapping: dict[str, Any] = {"Authorization": "Bearer a", "X-A": 1}  # str() of a non-str value
    from_mapping = AuthRequest("GET", "/x", headers=mapping)
    assert from_mapping.headers == (("authorization", "Bearer a"), ("x-a", "1"))
    from_pairs = AuthRequest("GET", "/x", headers=iter([("X-Forwarded-For", "203.0.113.9")]))
    assert from_pairs.headers == (("x-forwarded-for", "203.0.113.9"),)
    assert AuthRequest("GET", "/x") == AuthRequest("GET", "/x", "", (), "", b"", "")


def test_the_repr_never_shows_a_token_in_the_path_or_query() -> None:
    from apitokens._tokens import TokenFormat

    token = TokenFormat("acme").issue().value
    request = AuthRequest("GET", f"/rest/{token}", query=f"t={token}", app_path=f"/{token}")
    shown = repr(request)
    assert token not in shown and token[16:] not in shown
    assert token[:17] in shown  # the prefix and id stay: enough to find the leaked token
