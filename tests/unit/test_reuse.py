"""Reuse of a rotated-out secret revokes the token (DESIGN §11), on every store.

The clock is the test's: a grace period ends by moving it, never by sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from apitokens import (
    Action,
    ApiTokens,
    MemoryStore,
    Outcome,
    SQLiteStore,
    StorageError,
    TokenNotFound,
    TokenStatus,
    TokenStore,
)
from apitokens._auth import REUSE_ACTOR
from apitokens.postgres import PostgresStore
from tests.support import Clock, bearer, get, last_event, make_tokens


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TokenStore]:
    s: TokenStore
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SQLiteStore(tmp_path / "t.db")
    else:
        s = PostgresStore(request.getfixturevalue("postgres_database"))
    yield s
    s.close()


@pytest.fixture
def tokens(store: TokenStore, clock: Clock) -> Iterator[ApiTokens]:
    with make_tokens(store, clock=clock) as t:
        yield t


def status(tokens: ApiTokens, secret: str) -> int:
    return tokens.authenticate(get("/x", bearer(secret))).status_code


def wrong_secret_for(tokens: ApiTokens, token_id: str) -> str:
    """A well-formed token string with ``token_id`` and a secret it never had."""
    return tokens.policy.token_format.issue(token_id).value


def test_old_secret_within_grace_works(tokens: ApiTokens, clock: Clock) -> None:
    old = tokens.create(actor="alice", name="ci")
    new = tokens.rotate(actor="alice", token_id=old.token.id, grace=timedelta(minutes=10))
    assert status(tokens, old.secret) == 200
    clock.advance(minutes=9, seconds=59)
    assert status(tokens, old.secret) == 200
    assert status(tokens, new.secret) == 200
    assert tokens.get(old.token.id).status is TokenStatus.ACTIVE  # type: ignore[union-attr]
    assert tokens.audit(action=Action.REVOKE) == []


def test_old_secret_after_grace_revokes_the_token(
    tokens: ApiTokens, store: TokenStore, clock: Clock
) -> None:
    old = tokens.create(actor="alice", name="ci")
    new = tokens.rotate(actor="alice", token_id=old.token.id, grace=timedelta(minutes=10))
    assert status(tokens, old.secret) == 200  # cached and hot: the grace still ends it
    clock.advance(minutes=10)
    assert status(tokens, new.secret) == 200
    assert status(tokens, old.secret) == 401
    # Revoked in the store, at once (not queued): every process sharing it stops too.
    kept = store.get(old.token.id)
    assert kept is not None and kept.token.revoked_at == clock.now
    assert status(tokens, new.secret) == 401
    assert last_event(tokens).reason == "token revoked"
    [revoke] = tokens.audit(action=Action.REVOKE)
    assert (revoke.outcome, revoke.actor, revoke.token_id) == (
        Outcome.SUCCESS,
        REUSE_ACTOR,
        old.token.id,
    )
    assert revoke.user == "alice"
    assert revoke.reason.startswith("reuse_detected")
    refused = tokens.audit(action=Action.AUTHENTICATE, outcome=Outcome.FAILED)
    assert [e.reason.split(":")[0] for e in refused] == ["token revoked", "reuse_detected"]
    # No secret in the audit log.
    for event in tokens.audit():
        for text in (event.reason, event.path or "", event.user or ""):
            assert old.secret not in text and new.secret not in text


def test_rotation_without_grace_keeps_the_old_hash_too(tokens: ApiTokens) -> None:
    old = tokens.create(actor="alice", name="ci")
    new = tokens.rotate(actor="alice", token_id=old.token.id)
    assert status(tokens, new.secret) == 200
    assert status(tokens, old.secret) == 401
    assert last_event(tokens).reason.startswith("reuse_detected")
    assert status(tokens, new.secret) == 401


def test_a_wrong_secret_is_no_reuse(tokens: ApiTokens) -> None:
    old = tokens.create(actor="alice", name="ci")
    new = tokens.rotate(actor="alice", token_id=old.token.id)
    assert status(tokens, wrong_secret_for(tokens, old.token.id)) == 401
    assert last_event(tokens).reason == "wrong secret"
    assert status(tokens, new.secret) == 200
    assert tokens.audit(action=Action.REVOKE) == []


def test_the_last_three_secrets_are_recognised(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="ci")
    secrets = [issued.secret]
    for _ in range(4):
        secrets.append(tokens.rotate(actor="alice", token_id=issued.token.id).secret)
    # secrets[0] is older than the three kept: only a wrong secret now.
    assert status(tokens, secrets[0]) == 401
    assert last_event(tokens).reason == "wrong secret"
    assert status(tokens, secrets[4]) == 200
    # secrets[1] is the oldest kept.
    assert status(tokens, secrets[1]) == 401
    assert last_event(tokens).reason.startswith("reuse_detected")
    assert status(tokens, secrets[4]) == 401


def test_without_revoke_on_reuse_an_old_secret_is_just_refused(
    store: TokenStore, clock: Clock
) -> None:
    with make_tokens(store, clock=clock, revoke_on_reuse=False) as tokens:
        old = tokens.create(actor="alice", name="ci")
        new = tokens.rotate(actor="alice", token_id=old.token.id, grace=timedelta(minutes=1))
        clock.advance(minutes=1)
        assert status(tokens, old.secret) == 401
        assert last_event(tokens).reason == "wrong secret"
        assert status(tokens, new.secret) == 200
        assert tokens.audit(action=Action.REVOKE) == []


class _FailingRevoke(MemoryStore):
    def revoke(self, token_id: str, at: datetime) -> bool:
        raise StorageError("the disk is full")


def test_a_reuse_that_cannot_be_revoked_is_refused_503(clock: Clock) -> None:
    with make_tokens(_FailingRevoke(), clock=clock) as tokens:
        old = tokens.create(actor="alice", name="ci")
        tokens.rotate(actor="alice", token_id=old.token.id)
        assert status(tokens, old.secret) == 503
        assert last_event(tokens).reason.startswith("reuse_detected")
        assert "revoking the token failed" in last_event(tokens).reason


class _GoneOnRevoke(MemoryStore):
    def revoke(self, token_id: str, at: datetime) -> bool:
        raise TokenNotFound(f"no token has id {token_id!r}")


def test_a_reuse_of_a_token_deleted_meanwhile_is_401(clock: Clock) -> None:
    with make_tokens(_GoneOnRevoke(), clock=clock) as tokens:
        old = tokens.create(actor="alice", name="ci")
        tokens.rotate(actor="alice", token_id=old.token.id)
        assert status(tokens, old.secret) == 401
        assert last_event(tokens).reason.endswith("the token is gone")
