"""AuthRequest: the public constructor normalises; the adapters' fast one builds the same value."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apitokens import AuthRequest

NAMES = st.sampled_from(["authorization", "x-forwarded-for", "host", "x-a"])
PAIRS = st.lists(st.tuples(NAMES, st.text(max_size=20)), max_size=4).map(tuple)


@given(
    method=st.text(max_size=8),
    path=st.text(max_size=30),
    query=st.text(max_size=20),
    headers=PAIRS,
    client_ip=st.text(max_size=15),
    body=st.binary(max_size=20),
)
def test_trusted_equals_the_public_constructor(
    method: str,
    path: str,
    query: str,
    headers: tuple[tuple[str, str], ...],
    client_ip: str,
    body: bytes,
) -> None:
    fast = AuthRequest._trusted(method, path, query, headers, client_ip, body)
    public = AuthRequest(method, path, query, headers, client_ip, body)
    assert type(fast) is AuthRequest
    assert fast == public
    assert hash(fast) == hash(public)
    assert repr(fast) == repr(public)
    assert dataclasses.astuple(fast) == dataclasses.astuple(public)
    for name in ("authorization", "x-forwarded-for", "Authorization", "missing"):
        assert fast.header_values(name) == public.header_values(name)
        assert fast.header(name) == public.header(name)


def test_trusted_takes_the_headers_as_they_are_and_stays_frozen() -> None:
    headers = (("authorization", "Bearer a"), ("authorization", "Bearer b"))
    request = AuthRequest._trusted("GET", "/x", "q=1", headers, "192.0.2.1", b"{}")
    assert request.headers is headers  # no copy
    assert request.header_values("Authorization") == ["Bearer a", "Bearer b"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.path = "/y"  # type: ignore[misc]
    # A field-by-field copy keeps working (dataclasses.replace goes through __init__).
    assert dataclasses.replace(request, body=b"") == AuthRequest(
        "GET", "/x", "q=1", list(headers), "192.0.2.1"
    )


def test_the_public_constructor_still_normalises_headers() -> None:
    mapping: dict[str, Any] = {"Authorization": "Bearer a", "X-A": 1}  # str() of a non-str value
    from_mapping = AuthRequest("GET", "/x", headers=mapping)
    assert from_mapping.headers == (("authorization", "Bearer a"), ("x-a", "1"))
    from_pairs = AuthRequest("GET", "/x", headers=iter([("X-Forwarded-For", "203.0.113.9")]))
    assert from_pairs.headers == (("x-forwarded-for", "203.0.113.9"),)
    assert AuthRequest("GET", "/x") == AuthRequest._trusted("GET", "/x", "", (), "", b"")


def test_the_repr_never_shows_a_token_in_the_path_or_query() -> None:
    from apitokens._tokens import TokenFormat

    token = TokenFormat("acme").issue().value
    request = AuthRequest("GET", f"/rest/{token}", query=f"t={token}", app_path=f"/{token}")
    shown = repr(request)
    assert token not in shown and token[16:] not in shown
    assert token[:17] in shown  # the prefix and id stay: enough to find the leaked token
