"""``edit`` and ``rotate`` racing a rotation made through another handle on the store.

Each race is made certain, not hoped for: a store whose ``update`` lets another
``ApiTokens`` rotate the token first, between the manager's read and its write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from apitokens import ApiTokens, MemoryStore, SQLiteStore, StorageError, StoredToken
from apitokens._manager import CHANGE_TRIES
from tests.support import Clock, bearer, get, make_tokens


class _Racing:
    """Mixed into a store: before each of the next ``rotations`` updates, ``other``
    rotates the token (its own update passes straight through)."""

    other: ApiTokens | None = None
    rotations = 0
    secrets: list[str]
    _inside = False

    def update(self, stored: StoredToken, **guard: Any) -> bool:
        if self.rotations and not self._inside and self.other is not None:
            self.rotations -= 1
            self._inside = True
            try:
                self.secrets.append(
                    self.other.rotate(actor="alice", token_id=stored.token.id).secret
                )
            finally:
                self._inside = False
        return super().update(stored, **guard)  # type: ignore[misc, no-any-return]


class _RacingMemory(_Racing, MemoryStore):
    pass


class _RacingSQLite(_Racing, SQLiteStore):
    pass


_RacingStore = _RacingMemory | _RacingSQLite


@pytest.fixture(params=["memory", "sqlite"])
def racing(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[_RacingStore]:
    store: _RacingStore
    if request.param == "memory":
        store = _RacingMemory()
        other = make_tokens(store, clock=clock)  # MemoryStore: one object, shared
        plain = None
    else:
        store = _RacingSQLite(tmp_path / "t.db")
        plain = SQLiteStore(tmp_path / "t.db")  # another handle, as another process has
        other = make_tokens(plain, clock=clock)
    store.secrets = []
    store.other = other
    yield store
    other.close()
    if plain is not None:
        plain.close()
    store.close()


def _status(tokens: ApiTokens, secret: str) -> int:
    return tokens.authenticate(get("/x", bearer(secret))).status_code


def test_rotate_racing_rotate_keeps_both(racing: _RacingStore, clock: Clock) -> None:
    """Before the fix the second rotation wrote the record it read before the first: the
    first's secret was lost (neither current nor previous) and the original secret
    became the previous one again, valid for the second's grace."""
    with make_tokens(racing, clock=clock, revoke_on_reuse=False) as tokens:
        original = tokens.create(actor="alice", name="ci")
        before = racing.get(original.token.id)
        assert before is not None
        racing.rotations = 1
        second = tokens.rotate(actor="alice", token_id=original.token.id, grace=timedelta(hours=1))
        (first,) = racing.secrets
        after = racing.get(original.token.id)
        assert after is not None
        # The second rotation went on top of the first: its secret is the token's, the
        # first's is the previous one (for the second's grace), the original is retired.
        assert after.retired_hashes[0] == before.secret_hash
        assert after.previous_valid_until == clock() + timedelta(hours=1)
        with make_tokens(racing, clock=clock, revoke_on_reuse=False) as fresh:
            assert _status(fresh, second.secret) == 200
            assert _status(fresh, first) == 200
            assert _status(fresh, original.secret) == 401


def test_an_edit_racing_a_rotation_keeps_it(racing: _RacingStore, clock: Clock) -> None:
    with make_tokens(racing, clock=clock) as tokens:
        leaked = tokens.create(actor="alice", name="ci", secure=False)
        racing.rotations = 1
        edited = tokens.edit(actor="alice", token_id=leaked.token.id, name="renamed")
        (rotated,) = racing.secrets
        assert edited.name == "renamed"
        assert tokens.reveal(actor="alice", token_id=leaked.token.id) == rotated
        with make_tokens(racing, clock=clock) as fresh:
            assert _status(fresh, rotated) == 200
            assert _status(fresh, leaked.secret) == 401


@pytest.mark.parametrize("call", ["edit", "rotate"])
def test_a_token_rotated_under_every_try_gives_up_changing_nothing(
    racing: _RacingStore, clock: Clock, call: str
) -> None:
    with make_tokens(racing, clock=clock) as tokens:
        token_id = tokens.create(actor="alice", name="ci", secure=False).token.id
        racing.rotations = CHANGE_TRIES
        attempt: Callable[[], object] = (
            (lambda: tokens.edit(actor="alice", token_id=token_id, name="renamed"))
            if call == "edit"
            else (lambda: tokens.rotate(actor="alice", token_id=token_id))
        )
        with pytest.raises(StorageError, match="gave up: another caller rotated it") as caught:
            attempt()
        assert len(racing.secrets) == CHANGE_TRIES
        assert not any(secret in str(caught.value) for secret in racing.secrets)
        # The last rotation stands; the failed call changed nothing.
        assert tokens.reveal(actor="alice", token_id=token_id) == racing.secrets[-1]
        token = tokens.get(token_id)
        assert token is not None and token.name == "ci"
        # One fewer rotation under it, and the same call goes through.
        racing.rotations = CHANGE_TRIES - 1
        if call == "edit":
            tokens.edit(actor="alice", token_id=token_id, name="renamed")
            assert tokens.reveal(actor="alice", token_id=token_id) == racing.secrets[-1]
        else:
            mine = tokens.rotate(actor="alice", token_id=token_id).secret
            assert tokens.reveal(actor="alice", token_id=token_id) == mine


def test_an_edit_racing_a_revocation_is_refused(clock: Clock) -> None:
    """Having lost to a rotation, the edit checks the fresh record again: revoked
    meanwhile (the rotation raced a revocation too), it is refused, not written."""

    class RotatedAndRevoked(MemoryStore):
        other: ApiTokens | None = None

        def update(self, stored: StoredToken, **guard: Any) -> bool:
            if self.other is not None:
                other, self.other = self.other, None
                other.rotate(actor="alice", token_id=stored.token.id)
                other.revoke(actor="alice", token_id=stored.token.id)
            return super().update(stored, **guard)

    store = RotatedAndRevoked()
    with make_tokens(store, clock=clock) as tokens, make_tokens(store, clock=clock) as other:
        token_id = tokens.create(actor="alice", name="ci", secure=False).token.id
        store.other = other
        with pytest.raises(Exception, match="revoked"):
            tokens.edit(actor="alice", token_id=token_id, name="renamed")
        token = tokens.get(token_id)
        assert token is not None and token.name == "ci"


class _OldProtocolStore(MemoryStore):
    """A store written before ``update`` took ``expected_hash``."""

    def update(self, stored: StoredToken) -> None:  # type: ignore[override]
        super().update(stored)


def test_a_store_without_the_guard_still_edits_and_rotates(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="apitokens"):
        tokens = make_tokens(_OldProtocolStore(), clock=clock)
    with tokens:
        assert any("takes no expected_hash" in r.getMessage() for r in caplog.records)
        issued = tokens.create(actor="alice", name="ci", secure=False)
        assert tokens.edit(actor="alice", token_id=issued.token.id, name="renamed").name == (
            "renamed"
        )
        rotated = tokens.rotate(actor="alice", token_id=issued.token.id)
        assert _status(tokens, rotated.secret) == 200
        assert tokens.reveal(actor="alice", token_id=issued.token.id) == rotated.secret


def test_a_store_without_the_guard_checks_the_hash_before_writing(clock: Clock) -> None:
    """Not atomic (documented), but a rotation seen before the write is kept."""

    class RotatedBeforeTheCheck(_OldProtocolStore):
        other: ApiTokens | None = None
        reads = 0
        written = False  # by the edit
        rotating = False
        rotated_before_the_write = False

        def get(self, token_id: str) -> StoredToken | None:
            self.reads += 1
            if self.reads == 2 and self.other is not None:  # the manager's check, not its read
                other, self.other = self.other, None
                self.rotated_before_the_write = not self.written
                self.rotating = True
                other.rotate(actor="alice", token_id=token_id)
                self.rotating = False
            return super().get(token_id)

        def update(self, stored: StoredToken) -> None:
            self.written = self.written or not self.rotating
            super().update(stored)

    store = RotatedBeforeTheCheck()
    with make_tokens(store, clock=clock) as tokens, make_tokens(store, clock=clock) as other:
        issued = tokens.create(actor="alice", name="ci", secure=False)
        store.reads, store.written, store.other = 0, False, other
        tokens.edit(actor="alice", token_id=issued.token.id, name="renamed")
        assert store.rotated_before_the_write
        rotated = tokens.reveal(actor="alice", token_id=issued.token.id)
        assert rotated != issued.secret
        assert _status(tokens, rotated) == 200
        assert _status(tokens, issued.secret) == 401
        token = tokens.get(issued.token.id)
        assert token is not None and token.name == "renamed"


def test_a_guarded_update_that_answers_no_bool_fails_closed(clock: Clock) -> None:
    class Vague(MemoryStore):
        def update(self, stored: StoredToken, **guard: Any) -> Any:
            super().update(stored, **guard)
            return None

    with make_tokens(Vague(), clock=clock) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        with pytest.raises(StorageError, match="not a bool"):
            tokens.rotate(actor="alice", token_id=issued.token.id)
