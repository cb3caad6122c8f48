"""Checks shared by create and edit: names, expiries, lifetimes, rules and addresses."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from datetime import datetime, timedelta

from ._errors import PolicyViolation
from ._policy import Policy, parse_networks
from .rules import RuleSet

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_RULES",
    "UNSET",
    "Unset",
    "check_name",
    "expiry_from",
    "lifetime_violation",
    "normalize_ips",
    "normalize_rules",
]

MAX_NAME_LENGTH = 200
MAX_RULES = 1000


class Unset(enum.Enum):
    """The type of :data:`UNSET`: "leave this field as it is" in ``edit``."""

    UNSET = enum.auto()

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset.UNSET


def check_name(name: object) -> str:
    """Return the stripped name, or raise ``ValueError``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise ValueError(f"name must be at most {MAX_NAME_LENGTH} printable characters")
    return name.strip()


def _aware(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value


def expiry_from(
    now: datetime, expires_in: timedelta | None, expires_at: datetime | None
) -> datetime | None:
    """Return the expiry asked for (``None``: never), or raise ``ValueError``."""
    if expires_in is not None and expires_at is not None:
        raise ValueError("pass expires_in or expires_at, not both")
    if expires_in is not None:
        if not isinstance(expires_in, timedelta) or expires_in <= timedelta(0):
            raise ValueError("expires_in must be a positive timedelta")
        return now + expires_in
    if expires_at is not None:
        if _aware(expires_at, "expires_at") <= now:
            raise ValueError("expires_at is in the past")
        return expires_at
    return None


def lifetime_violation(
    policy: Policy, created_at: datetime, expiry: datetime | None
) -> PolicyViolation | None:
    """Return why ``expiry`` breaks the policy's lifetime limits, or ``None``."""
    if expiry is None:
        if policy.max_lifetime is not None:
            days = math.floor(policy.max_lifetime / timedelta(days=1))
            return PolicyViolation(f"tokens must expire within max_lifetime ({days} days)")
        if policy.require_expiry:
            return PolicyViolation("tokens must have an expiry (require_expiry)")
        return None
    if policy.max_lifetime is not None and expiry - created_at > policy.max_lifetime:
        days = math.floor(policy.max_lifetime / timedelta(days=1))
        return PolicyViolation(f"expiry beyond max_lifetime ({days} days after creation)")
    return None


def normalize_rules(restrictions: Iterable[str]) -> tuple[str, ...]:
    """Parse the rules (``RuleSyntaxError`` if one is bad); return their canonical texts.

    Raises:
        ValueError: more than :data:`MAX_RULES` rules. Every rule is compiled
            in each process that sees the token; a bound keeps that cheap.
    """
    if isinstance(restrictions, str):
        raise TypeError("restrictions must be a collection of rules, one per item")
    items = list(restrictions)
    if len(items) > MAX_RULES:
        raise ValueError(f"a token may have at most {MAX_RULES} restriction rules")
    return tuple(str(rule) for rule in RuleSet.parse(items).rules)


def normalize_ips(allowed_ips: Iterable[str]) -> tuple[str, ...]:
    """Parse CIDRs and addresses (``ValueError`` if one is bad); return canonical networks."""
    if isinstance(allowed_ips, str):
        raise TypeError("allowed_ips must be a collection of CIDRs, one per item")
    return tuple(str(network) for network in parse_networks(allowed_ips))
