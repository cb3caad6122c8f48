"""Per-token rate limits and usage credits: their text and their arithmetic (DESIGN §11).

A rate limit ``"100/min"`` allows 100 requests in each fixed window of a minute;
windows start at whole multiples of their length since the Unix epoch (a day at
midnight UTC), so every process sharing a store counts in the same windows without
talking to the others. ``credits=N`` allows N uses in all; ``refill="1000/day"``
adds 1000 at the start of each day, never above N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from ._model import Token

__all__ = [
    "MAX_COUNT",
    "Limits",
    "Over",
    "Rate",
    "check_credits",
    "new_allotment",
    "normalize_rate",
    "over_credits",
    "over_rate",
    "parse_rate",
    "shown",
]

MAX_COUNT = 1_000_000_000
"""The largest count a rate, a refill or credits may name."""

# Unit spellings accepted, to their length in seconds; the first of each is canonical.
_UNITS: dict[str, int] = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "day": 86400,
    "d": 86400,
}
_CANONICAL = {1: "s", 60: "min", 3600: "h", 86400: "day"}
_FORMS = "N/s, N/min, N/h or N/day"
# The longest value an error message repeats: a token string's prefix and id are
# public, what follows is its secret (a secret pasted into a limit's field must not
# reach the message, a log or a page).
_SHOWN = 16


def shown(text: str) -> str:
    """``text`` quoted for an error message, or only its length when it is long."""
    return repr(text) if len(text) <= _SHOWN else f"({len(text)} characters)"


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` per ``seconds``: a rate limit, or a refill of credits."""

    count: int
    seconds: int

    def __str__(self) -> str:
        return f"{self.count}/{_CANONICAL[self.seconds]}"


def parse_rate(text: object, what: str = "rate_limit") -> Rate:
    """Parse ``"100/min"`` (also ``N/s``, ``N/h``, ``N/day``).

    Raises:
        ValueError: not a string of that form, or a count not in 1..10**9.
    """
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string such as '100/min' ({_FORMS})")
    count, slash, unit = text.strip().partition("/")
    seconds = _UNITS.get(unit.strip().lower())
    digits = count.strip()
    if not slash or seconds is None or not digits.isascii() or not digits.isdigit():
        raise ValueError(f"{what} {shown(text)} is not of the form {_FORMS}")
    number = int(digits)
    if not 1 <= number <= MAX_COUNT:
        raise ValueError(f"{what}: the count must be between 1 and {MAX_COUNT}")
    return Rate(number, seconds)


def normalize_rate(text: str | None, what: str = "rate_limit") -> str | None:
    """The canonical text of a rate (``"100/min"``), or ``None`` for none.

    Raises:
        ValueError: as :func:`parse_rate`.
    """
    return None if text is None else str(parse_rate(text, what))


def check_credits(credits: object) -> int | None:
    """Return ``credits`` (an int in 1..10**9) or ``None``.

    Raises:
        ValueError: anything else (a bool, zero, a negative number, a float).
    """
    if credits is None:
        return None
    if isinstance(credits, bool) or not isinstance(credits, int):
        raise ValueError("credits must be a whole number of uses")
    if not 1 <= credits <= MAX_COUNT:
        raise ValueError(f"credits must be between 1 and {MAX_COUNT}")
    return credits


@dataclass(frozen=True, slots=True)
class Limits:
    """A token's limits, parsed once per cached record.

    Attributes:
        token_id: whose.
        rate: at most ``rate.count`` requests per window, or ``None``.
        credits: uses in all (and the most a refill brings them back to), or ``None``.
        refill: credits added at the start of each period, or ``None``.
    """

    token_id: str
    rate: Rate | None
    credits: int | None
    refill: Rate | None

    @classmethod
    def of(cls, token: Token) -> Limits | None:
        """The limits of ``token``, or ``None`` when it has none.

        Raises:
            ValueError: a stored limit does not parse (the caller fails closed).
        """
        if token.rate_limit is None and token.credits is None:
            return None
        rate = None if token.rate_limit is None else parse_rate(token.rate_limit)
        credits = check_credits(token.credits)
        refill = None if token.refill is None else parse_rate(token.refill, "refill")
        if refill is not None and credits is None:
            raise ValueError("refill without credits")
        return cls(token.id, rate, credits, refill)


def settle(
    balance: tuple[int, int] | None, spent: int, credits: int, refill: int, period: int
) -> tuple[int, int]:
    """A credit balance after a spend: ``(left, period)`` from ``(left, period)`` or ``None``.

    The arithmetic of :meth:`~apitokens.storage.UsageLedger.spend_credits`, for stores
    that do it in Python: a new balance starts at ``credits``; each period since the
    balance's own adds ``refill``, never above ``credits``; then ``spent`` is taken
    off, never below 0.
    """
    if balance is None:
        left, since = credits, period
    else:
        left, since = balance
        if period > since and refill > 0:
            left = max(left, min(credits, left + refill * (period - since)))
        since = max(since, period)
    return max(0, left - spent), since


def new_allotment(before: Token, after: Token) -> bool:
    """Whether an edit from ``before`` to ``after`` starts the credits again from ``credits``.

    New credits do; so does a refill added or given a new period length (``"100/h"``
    to ``"100/day"``): a balance is dated by its refill period's number (hours since
    the epoch, then days; 0 without refill), and dated in another unit it would be
    refilled in full at once (0 or days to hours) or, the other way, never again for
    centuries. A refill removed or given a new count keeps the credits left.
    """
    if after.credits is None:
        return False
    if before.credits != after.credits:
        return True
    if after.refill is None:
        return False
    if before.refill is None:
        return True
    return parse_rate(before.refill, "refill").seconds != parse_rate(after.refill, "refill").seconds


def check_count(value: object, what: str) -> int:
    """``value`` if it is a non-negative int, else ``ValueError`` (for the ledgers)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative whole number")
    return value


class Over(NamedTuple):
    """A request over a token's limit: why, and the response headers that say so."""

    kind: str  # "rate" or "credits"
    reason: str
    retry_after: int | None
    headers: tuple[tuple[str, str], ...]


def over_rate(limits: Limits, now: float, start: int) -> Over:
    """The refusal of a request over the rate limit, in the window starting at ``start``."""
    assert limits.rate is not None
    seconds = limits.rate.seconds
    reset = max(1, math.ceil(start + seconds - now))
    return Over(
        "rate",
        f"rate limit exceeded ({limits.rate})",
        reset,
        (
            ("RateLimit-Policy", f'"rate";q={limits.rate.count};w={seconds}'),
            ("RateLimit", f'"rate";r=0;t={reset}'),
        ),
    )


def over_credits(limits: Limits, now: float) -> Over:
    """The refusal of a request whose token's credits are spent."""
    refill = limits.refill
    what = f"credits spent ({limits.credits}"
    if refill is None:
        return Over(
            "credits",
            what + ", no refill)",
            None,
            (
                ("RateLimit-Policy", f'"credits";q={limits.credits}'),
                ("RateLimit", '"credits";r=0'),
            ),
        )
    seconds = refill.seconds
    reset = max(1, math.ceil((now // seconds + 1) * seconds - now))
    return Over(
        "credits",
        what + f", refill {refill})",
        reset,
        (
            ("RateLimit-Policy", f'"credits";q={limits.credits}'),
            ("RateLimit", f'"credits";r=0;t={reset}'),
        ),
    )
