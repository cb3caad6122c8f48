"""MemoryStore against the storage contract."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from apitokens.storage import MemoryStore
from apitokens.testing import NOW, StoreContract, stored


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[MemoryStore]:
        with MemoryStore() as store:
            yield store


def test_repr_shows_sizes_not_secrets() -> None:
    with MemoryStore() as store:
        token = stored("t", secure=False, revealable="apt_plaintext")
        store.add(token)
        assert repr(store) == "MemoryStore(tokens=1, events=0)"
        assert token.secret_hash not in repr(store.get("t"))
        assert "apt_plaintext" not in repr(store.get("t"))
        assert len(store.list(now=NOW)) == 1
