"""Command-line values: durations, moments, scopes and token ids, parsed for argparse.

Every parser raises :class:`argparse.ArgumentTypeError` with a message a person
can act on; argparse turns it into the one-line usage error of the command.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from datetime import UTC, datetime, timedelta
from typing import Final

from apitokens import Scope
from apitokens._limits import check_credits, parse_rate, shown
from apitokens._snippets import render_snippet
from apitokens._tokens import ID_LENGTH

__all__ = [
    "DURATION_HELP",
    "MOMENT_HELP",
    "RATE_HELP",
    "format_duration",
    "parse_credits",
    "parse_datetime",
    "parse_duration",
    "parse_moment",
    "parse_network",
    "parse_rate_text",
    "parse_scope",
    "parse_url",
    "token_id",
    "utcnow",
]

DURATION_HELP: Final = "e.g. 30d, 12h, 10m, 45s, 2w, or combined: 1h30m"
MOMENT_HELP: Final = "a duration ago (90d) or an ISO 8601 date (2026-01-31, 2026-01-31T12:00Z)"
RATE_HELP: Final = "N/s, N/min, N/h or N/day, e.g. 100/min"

_UNITS: Final = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}
_DURATION: Final = re.compile(r"(?:[0-9]{1,9}[wdhms])+")
_PART: Final = re.compile(r"([0-9]+)([wdhms])")
# A whole token string (a leaked one, say) where an id is expected: <prefix>_<id>...
_WHOLE_TOKEN: Final = re.compile(rf"[a-z0-9]{{2,10}}_([0-9A-Za-z]{{{ID_LENGTH}}})[0-9A-Za-z]{{38}}")
_SCOPES: Final = {
    "read-only": Scope.READ_ONLY,
    "read_only": Scope.READ_ONLY,
    "read-write": Scope.READ_WRITE,
    "read_write": Scope.READ_WRITE,
}


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def parse_duration(text: str) -> timedelta:
    """Parse ``30d``, ``12h``, ``10m``, ``45s``, ``2w`` or a combination such as ``1h30m``."""
    if not _DURATION.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} ({DURATION_HELP})")
    try:
        return sum(
            (int(number) * _UNITS[unit] for number, unit in _PART.findall(text)), timedelta()
        )
    except OverflowError:
        raise argparse.ArgumentTypeError(f"duration {text!r} is too long") from None


def format_duration(value: timedelta) -> str:
    """The inverse of :func:`parse_duration`: ``timedelta(minutes=90)`` is ``1h30m``."""
    seconds = int(value.total_seconds())
    parts = []
    for unit in "wdhms":
        count, seconds = divmod(seconds, int(_UNITS[unit].total_seconds()))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_datetime(text: str) -> datetime:
    """Parse an ISO 8601 date or date-time; a naive one is UTC. Returned aware, in UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid date {text!r} (ISO 8601, e.g. 2026-01-31 or 2026-01-31T12:00:00Z)"
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_moment(text: str) -> datetime:
    """Parse a moment: a duration meaning "that long ago", or an ISO 8601 date."""
    if _DURATION.fullmatch(text):
        try:
            return utcnow() - parse_duration(text)
        except OverflowError:
            raise argparse.ArgumentTypeError(f"{text!r} ago is before year 1") from None
    try:
        return parse_datetime(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"invalid duration or date {text!r} ({MOMENT_HELP})"
        ) from None


def parse_scope(text: str) -> Scope:
    """Parse ``read-only`` or ``read-write`` (``read_only``, ``read_write`` also work)."""
    scope = _SCOPES.get(text.strip().lower())
    if scope is None:
        raise argparse.ArgumentTypeError(f"invalid scope {text!r} (choose read-only or read-write)")
    return scope


def parse_network(text: str) -> str:
    """Check an address or CIDR network (v4 or v6); return it as given."""
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IP address or CIDR network (e.g. 203.0.113.0/24, 2001:db8::/32)"
        ) from None
    return text


def parse_url(text: str) -> str:
    """Check a snippet URL with the library's own rule (an http or https URL)."""
    try:
        render_snippet("apt_0", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_rate_text(text: str) -> str:
    """Check a rate (``100/min``; also ``N/s``, ``N/h``, ``N/day``); return its canonical text."""
    try:
        return str(parse_rate(text, "rate"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_credits(text: str) -> int:
    """Check a number of credits: a whole number from 1 to 10**9."""
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise argparse.ArgumentTypeError(f"invalid credits {shown(text)} (a whole number of uses)")
    try:
        # Too many digits is out of range anyway (and int() of thousands is refused).
        credits = check_credits(int(digits) if len(digits) <= 12 else 0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert credits is not None
    return credits


def token_id(text: str) -> str:
    """Return the token id: ``text`` itself, or the id inside a whole token string."""
    whole = _WHOLE_TOKEN.fullmatch(text.strip())
    return whole.group(1) if whole else text.strip()
