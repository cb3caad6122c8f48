"""A store that tells of changed tokens (ChangeFeed): each ApiTokens on it sees a change at once."""

from __future__ import annotations

from apitokens import MemoryStore
from apitokens.storage import ChangeFeed
from tests.support import Clock, Monotonic, bearer, get, make_tokens


def test_a_revocation_through_one_apitokens_is_honoured_by_another_at_once() -> None:
    store = MemoryStore()
    assert isinstance(store, ChangeFeed)
    clock, ticks = Clock(), Monotonic()  # the monotonic clock never moves: no TTL runs out
    with (
        make_tokens(store, clock=clock, monotonic=ticks) as serving,
        make_tokens(store, clock=clock, monotonic=ticks) as admin,
    ):
        issued = admin.create(actor="alice", name="ci")
        request = get("/x", bearer(issued.secret))
        assert serving.authenticate(request).authenticated
        assert serving.authenticate(request).authenticated  # warm: the record is cached
        admin.revoke(actor="alice", token_id=issued.token.id)
        refused = serving.authenticate(request)
        assert refused.status_code == 401 and refused.reason == "token revoked"


def test_an_edit_through_another_apitokens_applies_to_the_next_request() -> None:
    store = MemoryStore()
    clock, ticks = Clock(), Monotonic()
    with (
        make_tokens(store, clock=clock, monotonic=ticks) as serving,
        make_tokens(store, clock=clock, monotonic=ticks) as admin,
    ):
        issued = admin.create(actor="alice", name="ci", secure=False)
        request = get("/rest/x", bearer(issued.secret))
        assert serving.authenticate(request).authenticated
        admin.edit(actor="alice", token_id=issued.token.id, restrictions=["[GET]/other"])
        assert serving.authenticate(request).status_code == 403


def test_closing_unsubscribes() -> None:
    store = MemoryStore()
    seen: list[str] = []
    unsubscribe = store.subscribe(seen.append)
    with make_tokens(store) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        assert len(store._subscribers) == 2  # ours and the ApiTokens'
    assert len(store._subscribers) == 1  # closed: the ApiTokens' is gone
    store.revoke(issued.token.id, Clock()())
    assert seen == [issued.token.id]
    unsubscribe()
    assert store._subscribers == []
