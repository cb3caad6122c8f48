"""The pages' parts on their own: CSRF tokens, relative times, the forms' choices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apitokens import Policy
from apitokens.web._csrf import CsrfTokens
from apitokens.web._forms import expiry_choices
from apitokens.web._render import exact_time, relative_time
from tests.support import Clock

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_a_csrf_token_is_bound_to_its_key_its_user_and_its_time() -> None:
    clock = Clock(NOW)
    csrf = CsrfTokens(b"k" * 32, clock=clock, max_age=timedelta(hours=1))
    token = csrf.issue("alice")
    assert csrf.valid("alice", token)
    assert not csrf.valid("bob", token)
    assert not csrf.valid("alice", token + "x")
    other = CsrfTokens(b"j" * 32, clock=clock, max_age=timedelta(hours=1))
    assert not other.valid("alice", token)
    stamp, _, signature = token.partition(".")
    later = f"{int(stamp, 16) + 3600:x}"
    assert not csrf.valid("alice", f"{later}.{signature}")  # the time is signed too
    clock.advance(minutes=59)
    assert csrf.valid("alice", token)
    clock.advance(minutes=2)
    assert not csrf.valid("alice", token)
    for junk in ("", ".", "zz.zz", "1" * 40 + ".x", "é.é"):
        assert not csrf.valid("alice", junk)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=20), "just now"),
        (timedelta(minutes=1), "1 minute ago"),
        (timedelta(hours=5), "5 hours ago"),
        (timedelta(days=3), "3 days ago"),
        (timedelta(days=15), "2 weeks ago"),
        (timedelta(days=400), "1 year ago"),
        (-timedelta(days=30), "in 1 month"),
        (-timedelta(days=2, hours=1), "in 2 days"),
        (-timedelta(seconds=5), "in a minute"),
    ],
)
def test_relative_times(delta: timedelta, text: str) -> None:
    assert relative_time(NOW - delta, NOW) == text


def test_the_exact_time_is_utc() -> None:
    assert exact_time(NOW.astimezone(UTC)) == "2026-03-01 12:00:00 UTC"


def test_the_expiry_choices_follow_the_policy() -> None:
    def values(policy: Policy) -> list[str]:
        return [choice.value for choice in expiry_choices(policy)]

    assert values(Policy()) == ["7", "30", "60", "90", "180", "365", "never"]
    assert values(Policy(require_expiry=True)) == ["7", "30", "60", "90", "180", "365"]
    assert values(Policy(max_lifetime=timedelta(days=100))) == ["7", "30", "60", "90", "longest"]
    assert values(Policy(max_lifetime=timedelta(days=90))) == ["7", "30", "60", "90"]
    [short] = expiry_choices(Policy(max_lifetime=timedelta(hours=12)))
    assert (short.value, short.label, short.lifetime) == (
        "longest",
        "12 hours (the longest allowed)",
        timedelta(hours=12),
    )
