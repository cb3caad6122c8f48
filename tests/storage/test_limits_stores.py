"""Per-token rate limits and credits held by two ApiTokens on one store (DESIGN §11).

Two ``ApiTokens`` on one SQLite file, or one PostgreSQL database, each with a store
object of its own, stand for two worker processes. Both clocks are injected,
so nothing sleeps: the wall clock places requests in windows and refill periods, and
the monotonic one, moved past the meter's ``STALE_AFTER`` before each request, makes
each instance read the counts the other sent (``flush()``) before it decides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from apitokens import ApiTokens, AuthRequest, Outcome, SQLiteStore, TokenStore
from apitokens._meter import STALE_AFTER
from apitokens.postgres import PostgresStore
from tests.support import START, Clock, Monotonic, bearer, make_tokens

Pair = tuple[ApiTokens, ApiTokens]


@pytest.fixture
def clock() -> Clock:
    return Clock(START)  # 12:00:00 UTC: a minute's window starts here


@pytest.fixture
def ticks() -> Monotonic:
    return Monotonic()


def _open(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], TokenStore]:
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path / "tokens.db")
    dsn = request.getfixturevalue("postgres_database")
    return lambda: PostgresStore(dsn)


@pytest.fixture(params=["sqlite", "postgres"])
def pair(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock, ticks: Monotonic
) -> Iterator[Pair]:
    store = _open(request, tmp_path)
    with (
        store() as one_store,
        store() as other_store,
        make_tokens(one_store, clock=clock, monotonic=ticks) as one,
        make_tokens(other_store, clock=clock, monotonic=ticks) as other,
    ):
        yield one, other


def _request(secret: str) -> AuthRequest:
    return AuthRequest("GET", "/api/x", headers=bearer(secret), client_ip="192.0.2.1")


def _send(tokens: ApiTokens, secret: str, ticks: Monotonic) -> tuple[int, str]:
    """One request through ``tokens``, on counts at most a moment old; then its counts sent."""
    ticks.advance(STALE_AFTER + 0.5)  # what this instance read before is stale: read again
    result = tokens.authenticate(_request(secret))
    assert tokens.flush(timeout=10)
    return result.status_code, result.reason


def test_a_rate_limit_holds_across_two_instances_and_its_window_rolls_over(
    pair: Pair, clock: Clock, ticks: Monotonic
) -> None:
    one, other = pair
    issued = one.create(actor="alice", name="ci", rate_limit="5/min")
    secret = issued.secret
    # Five requests, alternating: each admitted, each counted for both.
    for i in range(5):
        assert _send(pair[i % 2], secret, ticks) == (200, "authenticated")
    # The sixth is refused by either, with the headers that say when to come back.
    for tokens in (one, other):
        ticks.advance(STALE_AFTER + 0.5)
        refused = tokens.authenticate(_request(secret))
        assert refused.status_code == 429
        assert refused.outcome is Outcome.FORBIDDEN
        assert refused.reason == "rate limit exceeded (5/min)"
        headers = dict(refused.headers)
        assert headers["Retry-After"] == "60"
        assert headers["RateLimit-Policy"] == '"rate";q=5;w=60'
        assert headers["RateLimit"] == '"rate";r=0;t=60'
    # Refusals are not counted: half a minute on, still refused, and told 30 s.
    clock.advance(seconds=30)
    ticks.advance(STALE_AFTER + 0.5)
    assert dict(other.authenticate(_request(secret)).headers)["Retry-After"] == "30"
    # The next minute is a new window: both admit again, five in all.
    clock.advance(seconds=30)
    for i in range(5):
        assert _send(pair[(i + 1) % 2], secret, ticks) == (200, "authenticated")
    assert _send(one, secret, ticks)[0] == 429
    assert _send(other, secret, ticks)[0] == 429
    # Audited as forbidden, with the reason.
    one.flush()
    refusals = one.audit(token_id=issued.token.id, outcome=Outcome.FORBIDDEN)
    assert len(refusals) == 5
    assert {event.reason for event in refusals} == {"rate limit exceeded (5/min)"}


def test_credits_are_spent_across_two_instances_and_refilled_each_period(
    pair: Pair, clock: Clock, ticks: Monotonic
) -> None:
    one, other = pair
    issued = one.create(actor="alice", name="metered", credits=3, refill="2/day")
    secret = issued.secret
    assert _send(one, secret, ticks) == (200, "authenticated")
    assert _send(other, secret, ticks) == (200, "authenticated")
    assert _send(one, secret, ticks) == (200, "authenticated")
    for tokens in (other, one):
        ticks.advance(STALE_AFTER + 0.5)
        refused = tokens.authenticate(_request(secret))
        assert refused.status_code == 429
        assert refused.reason == "credits spent (3, refill 2/day)"
        headers = dict(refused.headers)
        assert headers["RateLimit-Policy"] == '"credits";q=3'
        assert headers["Retry-After"] == str(12 * 3600)  # midnight UTC: the next refill
    assert one.credits_left(issued.token.id) == 0
    # Midnight: 2 credits come back (never above 3), and are spent by either.
    clock.advance(hours=12)
    assert other.credits_left(issued.token.id) == 2
    assert _send(other, secret, ticks) == (200, "authenticated")
    assert _send(one, secret, ticks) == (200, "authenticated")
    assert _send(other, secret, ticks)[0] == 429
    # Three days on: refilled to the cap of 3, not 6.
    clock.advance(days=3)
    assert one.credits_left(issued.token.id) == 3
    for i in range(3):
        assert _send(pair[i % 2], secret, ticks) == (200, "authenticated")
    assert _send(one, secret, ticks)[1] == "credits spent (3, refill 2/day)"


def test_credits_without_refill_stay_spent_and_an_edit_starts_them_again(
    pair: Pair, clock: Clock, ticks: Monotonic
) -> None:
    one, other = pair
    issued = one.create(actor="alice", name="once", credits=2, secure=False)
    secret = issued.secret
    assert _send(one, secret, ticks) == (200, "authenticated")
    assert _send(other, secret, ticks) == (200, "authenticated")
    clock.advance(days=30)
    refused = _send(other, secret, ticks)
    assert refused == (429, "credits spent (2, no refill)")
    # New credits are a new allotment, for both instances.
    other.edit(actor="alice", token_id=issued.token.id, credits=1)
    assert _send(one, secret, ticks) == (200, "authenticated")
    assert _send(other, secret, ticks)[0] == 429
    assert one.get(issued.token.id).credits == 1  # type: ignore[union-attr]
