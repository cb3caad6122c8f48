"""Per-token rate limits and credits (DESIGN §11): the decision, on injected clocks.

Every store's ledger is tested by ``StoreContract``; these tests drive ``ApiTokens`` on
a ``MemoryStore`` (whose ledger two instances share, as processes share a database).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apitokens import ApiTokens, AuthRequest, AuthResult, MemoryStore, Outcome, StorageError
from apitokens._limits import MAX_COUNT, Rate, parse_rate, settle
from apitokens.storage import CreditSpend
from tests.support import Clock, Monotonic, bearer, get, make_tokens


def call(tokens: ApiTokens, secret: str) -> AuthResult:
    return tokens.authenticate(get("/rest/x", bearer(secret)))


def statuses(tokens: ApiTokens, secret: str, n: int) -> list[int]:
    return [call(tokens, secret).status_code for _ in range(n)]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ticks() -> Monotonic:
    return Monotonic()


# -- the text of a limit ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("100/min", "100/min"),
        ("1/s", "1/s"),
        (" 5 / Second ", "5/s"),
        ("7/hour", "7/h"),
        ("1000/d", "1000/day"),
        (f"{MAX_COUNT}/day", f"{MAX_COUNT}/day"),
    ],
)
def test_a_rate_is_read_into_its_canonical_text(text: str, canonical: str) -> None:
    assert str(parse_rate(text)) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "",
        "100",
        "100/",
        "/min",
        "0/min",
        "-1/min",
        "1.5/min",
        "100/week",
        "100/fortnight",
        "\uff11\uff10\uff10/min",  # fullwidth digits
        "1e3/min",
        f"{MAX_COUNT + 1}/s",
        "100/min/s",
        "100 per min",
    ],
)
def test_a_malformed_rate_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        parse_rate(text)


@given(st.integers(1, MAX_COUNT), st.sampled_from(["s", "sec", "min", "minute", "h", "day", "d"]))
def test_canonical_text_reads_back_to_the_same_rate(count: int, unit: str) -> None:
    rate = parse_rate(f"{count}/{unit}")
    assert parse_rate(str(rate)) == rate
    assert rate == Rate(count, rate.seconds)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_limit": "10/fortnight"},
        {"rate_limit": 10},
        {"credits": 0},
        {"credits": -5},
        {"credits": True},
        {"credits": 2.5},
        {"credits": MAX_COUNT + 1},
        {"refill": "10/day"},  # no credits to refill
        {"credits": 10, "refill": "ten/day"},
    ],
)
def test_create_refuses_a_malformed_limit_and_keeps_nothing(kwargs: dict[str, object]) -> None:
    with make_tokens() as tokens:
        with pytest.raises(ValueError, match=r"rate_limit|credits|refill"):
            tokens.create(actor="alice", name="x", **kwargs)  # type: ignore[arg-type]
        assert tokens.list(actor="alice") == []


def test_limits_are_shown_on_the_token_in_canonical_text() -> None:
    with make_tokens() as tokens:
        issued = tokens.create(
            actor="alice", name="x", rate_limit="100/minute", credits=50, refill="10/d"
        )
        token = tokens.get(issued.token.id)
        assert token is not None
        assert (token.rate_limit, token.credits, token.refill) == ("100/min", 50, "10/day")
        assert tokens.credits_left(issued.token.id) == 50


def test_a_store_without_a_usage_ledger_refuses_limits_and_fails_closed_on_them() -> None:
    class NoLedger(MemoryStore):
        count_requests = spend_credits = reset_credits = None  # type: ignore[assignment]

    store = NoLedger()
    with make_tokens(store) as tokens, pytest.raises(ValueError, match="UsageLedger"):
        tokens.create(actor="alice", name="x", rate_limit="1/s")
    # A record with limits that reached such a store anyway (written by another tool).
    with make_tokens(MemoryStore()) as other:
        issued = other.create(actor="alice", name="x", credits=5)
        stored = other._store.get(issued.token.id)
    assert stored is not None
    store.add(stored)
    with make_tokens(store) as tokens:
        result = call(tokens, issued.secret)
        assert (result.status_code, result.reason) == (
            503,
            "the store keeps no usage counts for limits",
        )


# -- rate limits ----------------------------------------------------------------------------


def test_a_burst_of_n_then_429_until_the_window_rolls_over(clock: Clock) -> None:
    with make_tokens(clock=clock) as tokens:
        issued = tokens.create(actor="alice", name="x", rate_limit="5/min")
        clock.advance(seconds=30)
        assert statuses(tokens, issued.secret, 7) == [200] * 5 + [429] * 2
        over = call(tokens, issued.secret)
        assert (over.outcome, over.error) == (Outcome.FORBIDDEN, "rate_limit_exceeded")
        assert ("Retry-After", "30") in over.headers
        clock.advance(seconds=29)
        assert call(tokens, issued.secret).status_code == 429
        clock.advance(seconds=1)  # 12:01:00, a new window
        assert statuses(tokens, issued.secret, 6) == [200] * 5 + [429]
        tokens.flush()
        refused = tokens.audit(outcome="forbidden", limit=100)
        assert len(refused) == 5
        assert {e.reason for e in refused} == {"rate limit exceeded (5/min)"}
        assert tokens.get(issued.token.id).use_count == 10  # type: ignore[union-attr]


def test_within_one_process_the_limit_is_exact_under_concurrency(clock: Clock) -> None:
    with make_tokens(clock=clock) as tokens:
        issued = tokens.create(actor="alice", name="x", rate_limit="50/h")
        call(tokens, issued.secret)  # verified and cached: the rest race on the meter only
        results: list[int] = []
        lock = threading.Lock()

        def hammer() -> None:
            mine = statuses(tokens, issued.secret, 25)
            with lock:
                results.extend(mine)

        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results.count(200) == 49 and results.count(429) == 200 - 49


def test_two_instances_on_one_store_overshoot_by_at_most_a_second_of_the_others(
    clock: Clock, ticks: Monotonic
) -> None:
    store = MemoryStore()
    with (
        make_tokens(store, clock=clock, monotonic=ticks) as a,
        make_tokens(store, clock=clock, monotonic=ticks) as b,
    ):
        issued = a.create(actor="alice", name="x", rate_limit="5/min")
        assert call(b, issued.secret).status_code == 200
        b.flush()
        assert statuses(a, issued.secret, 5) == [200] * 4 + [429]  # A read B's one
        a.flush()
        # B's count is fresh (read within the second): it may still admit what A did
        # meanwhile, never more.
        overshoot = statuses(b, issued.secret, 6).count(200)
        assert overshoot <= 4
        ticks.advance(1.0)  # B's count is now stale: read again before deciding
        assert call(b, issued.secret).status_code == 429
        assert call(a, issued.secret).status_code == 429


def test_an_edit_of_the_rate_limit_counts_from_the_next_request(clock: Clock) -> None:
    with make_tokens(clock=clock) as tokens:
        issued = tokens.create(actor="alice", name="x", rate_limit="2/min", secure=False)
        assert statuses(tokens, issued.secret, 3) == [200, 200, 429]
        tokens.edit(actor="alice", token_id=issued.token.id, rate_limit="3/min")
        assert statuses(tokens, issued.secret, 2) == [200, 429]  # same window, 3 in all
        tokens.edit(actor="alice", token_id=issued.token.id, rate_limit=None)
        assert statuses(tokens, issued.secret, 5) == [200] * 5


# -- credits --------------------------------------------------------------------------------


def test_credits_are_spent_then_429_with_their_own_reason(clock: Clock) -> None:
    with make_tokens(clock=clock) as tokens:
        issued = tokens.create(actor="alice", name="x", credits=3)
        assert statuses(tokens, issued.secret, 5) == [200, 200, 200, 429, 429]
        spent = call(tokens, issued.secret)
        assert (spent.outcome, spent.error, spent.reason) == (
            Outcome.FORBIDDEN,
            "credits_spent",
            "credits spent (3, no refill)",
        )
        assert not any(name == "Retry-After" for name, _ in spent.headers)  # never again
        assert ("RateLimit", '"credits";r=0') in spent.headers
        clock.advance(days=400)
        assert call(tokens, issued.secret).status_code == 429
        assert tokens.credits_left(issued.token.id) == 0


def test_a_refill_never_raises_credits_above_the_original(clock: Clock) -> None:
    with make_tokens(clock=clock) as tokens:
        issued = tokens.create(actor="alice", name="x", credits=3, refill="2/h")
        token_id = issued.token.id
        assert statuses(tokens, issued.secret, 3) == [200] * 3
        assert tokens.credits_left(token_id) == 0
        clock.advance(hours=1)
        assert tokens.credits_left(token_id) == 2
        assert statuses(tokens, issued.secret, 3) == [200, 200, 429]
        clock.advance(hours=5)  # five refills of 2: still 3 at most
        assert tokens.credits_left(token_id) == 3
        assert statuses(tokens, issued.secret, 4) == [200] * 3 + [429]


def test_rate_limit_and_credits_together_spend_nothing_on_a_refusal(clock: Clock) -> None:
    with make_tokens(clock=clock) as tokens:
        issued = tokens.create(actor="alice", name="x", rate_limit="2/min", credits=5)
        assert statuses(tokens, issued.secret, 4) == [200, 200, 429, 429]
        assert tokens.credits_left(issued.token.id) == 3  # the 429s spent no credit
        write = tokens.authenticate(
            AuthRequest("POST", "/rest/x", headers=bearer(issued.secret), client_ip="192.0.2.1")
        )
        assert write.status_code == 403  # read-only: refused before the limits
        clock.advance(minutes=1)
        assert statuses(tokens, issued.secret, 2) == [200, 200]
        assert tokens.credits_left(issued.token.id) == 1


def test_new_credits_start_a_new_allotment(clock: Clock) -> None:
    with make_tokens(clock=clock) as tokens:
        issued = tokens.create(actor="alice", name="x", credits=2, secure=False)
        assert statuses(tokens, issued.secret, 3) == [200, 200, 429]
        tokens.edit(actor="alice", token_id=issued.token.id, credits=4)
        assert tokens.credits_left(issued.token.id) == 4
        assert statuses(tokens, issued.secret, 5) == [200] * 4 + [429]
        tokens.edit(actor="alice", token_id=issued.token.id, name="renamed")
        assert tokens.credits_left(issued.token.id) == 0  # other edits leave the balance


def test_credits_hold_across_two_instances_on_one_store(clock: Clock, ticks: Monotonic) -> None:
    store = MemoryStore()
    with (
        make_tokens(store, clock=clock, monotonic=ticks) as a,
        make_tokens(store, clock=clock, monotonic=ticks) as b,
    ):
        issued = a.create(actor="alice", name="x", credits=4, refill="4/day")
        assert statuses(a, issued.secret, 3) == [200] * 3
        a.flush()
        assert statuses(b, issued.secret, 2) == [200, 429]
        b.flush()
        ticks.advance(1.0)
        assert call(a, issued.secret).status_code == 429
        clock.advance(days=1)
        assert b.credits_left(issued.token.id) == 4


# -- failing closed -------------------------------------------------------------------------


class BrokenLedger(MemoryStore):
    """A store whose usage ledger fails on demand."""

    broken = False

    def count_requests(
        self, counts: Mapping[tuple[str, int, int], int], *, ended_before: int
    ) -> dict[tuple[str, int, int], int]:
        if self.broken:
            raise StorageError("ledger down")
        return super().count_requests(counts, ended_before=ended_before)

    def spend_credits(self, spends: Mapping[str, CreditSpend]) -> dict[str, int]:
        if self.broken:
            raise StorageError("ledger down")
        return super().spend_credits(spends)


def test_a_ledger_that_cannot_be_read_is_503_once_the_count_is_stale(
    clock: Clock, ticks: Monotonic
) -> None:
    store = BrokenLedger()
    with make_tokens(store, clock=clock, monotonic=ticks) as tokens:
        issued = tokens.create(actor="alice", name="x", rate_limit="100/min", credits=100)
        assert call(tokens, issued.secret).status_code == 200
        store.broken = True
        assert call(tokens, issued.secret).status_code == 200  # a fresh count decides
        ticks.advance(1.0)
        failed = call(tokens, issued.secret)
        # Its own read failed, or the sending thread's failed while it waited its turn.
        assert failed.status_code == 503
        assert failed.reason in (
            "token store unavailable: ledger down",
            "token store unavailable: the usage ledger could not be read",
        )
        store.broken = False
        assert call(tokens, issued.secret).status_code == 200
        tokens.flush()
        assert tokens.credits_left(issued.token.id) == 97  # the uses kept while it was down


# -- the arithmetic's laws ------------------------------------------------------------------


@given(
    credits=st.integers(1, 1000),
    refill=st.integers(0, 1000),
    steps=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50)), max_size=20),
)
def test_a_balance_stays_within_zero_and_its_credits(
    credits: int, refill: int, steps: list[tuple[int, int]]
) -> None:
    balance: tuple[int, int] | None = None
    period = 0
    for advance, spent in steps:
        period += advance
        before = balance
        balance = settle(balance, spent, credits, refill, period)
        left, since = balance
        assert 0 <= left <= credits
        assert since == period
        if before is not None and advance == 0:
            assert left == max(0, before[0] - spent)  # no refill within a period


@given(st.integers(1, 100), st.integers(0, 100), st.integers(0, 100))
def test_spending_in_one_batch_or_many_leaves_the_same_balance(
    credits: int, a: int, b: int
) -> None:
    together = settle(None, a + b, credits, 0, 0)
    apart = settle(settle(None, a, credits, 0, 0), b, credits, 0, 0)
    # Equal while nothing was refused for going below zero in between.
    if a <= credits:
        assert together == apart
    else:
        assert together[0] == apart[0] == 0


def test_the_refill_period_is_a_whole_refill_length(clock: Clock) -> None:
    # 2026-01-01 12:00 UTC: the daily refill comes at midnight, in 12 hours.
    with make_tokens(clock=clock) as tokens:
        issued = tokens.create(actor="alice", name="x", credits=1, refill="1/day")
        call(tokens, issued.secret)
        spent = call(tokens, issued.secret)
        assert ("Retry-After", str(int(timedelta(hours=12).total_seconds()))) in spent.headers
