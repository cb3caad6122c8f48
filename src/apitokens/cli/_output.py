"""What the command prints: safe text, aligned tables, token details, JSON, notes on stderr.

Names, paths and reasons come from users and from HTTP requests, so every
string printed to a terminal goes through :func:`clean` first: control
characters, line breaks and bidirectional overrides are shown escaped, never
interpreted (a token named ``"\\x1b]0;..."`` must not retitle the admin's
terminal, and a name with a line break must not forge a table row).
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import Enum
from typing import Final

from apitokens import AuditEvent, Token

__all__ = [
    "TOKEN_HEADERS",
    "caret_lines",
    "clean",
    "event_json",
    "event_row",
    "events_table",
    "format_time",
    "json_text",
    "limits_text",
    "one_line",
    "table",
    "token_details",
    "token_json",
    "token_row",
    "tokens_table",
    "warn",
    "width",
]

# Cc: controls (C0, DEL, C1); Cf: format (bidi overrides, zero-width); Zl/Zp: line breaks;
# Cs: lone surrogates (from undecodable bytes).
_UNSAFE: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_GAP: Final = "  "

TOKEN_HEADERS: Final = (
    "ID",
    "NAME",
    "USER",
    "SCOPE",
    "STATUS",
    "EXPIRES",
    "LAST USED",
    "LIMITS",
    "USES",
)
EVENT_HEADERS: Final = (
    "AT",
    "ACTION",
    "OUTCOME",
    "TOKEN",
    "USER",
    "ACTOR",
    "CLIENT",
    "METHOD",
    "PATH",
    "REASON",
)


def _escape(char: str) -> str:
    if char == "\t":
        return "\\t"
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: object) -> str:
    """Return ``str(text)`` with every unsafe character shown as an escape."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(
        _escape(char) if unicodedata.category(char) in _UNSAFE else char for char in value
    )


def one_line(message: object) -> str:
    """``message`` on one line, whitespace collapsed, unsafe characters escaped."""
    return clean(" ".join(str(message).split()))


def warn(message: str) -> None:
    """A note on stderr that is not an error."""
    print(f"apitokens: {message}", file=sys.stderr)


def width(text: str) -> int:
    """Columns ``text`` takes in a terminal (wide East Asian characters count two)."""
    total = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        total += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return total


def caret_lines(rule: str, column: int) -> list[str]:
    """The rule (escaped where unsafe) and a caret under ``column`` (1-based)."""
    pieces = [clean(char) for char in rule]
    before = pieces[: max(column - 1, 0)]
    return ["  " + "".join(pieces), "  " + " " * sum(width(piece) for piece in before) + "^"]


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: int | None = None
) -> list[str]:
    """Align ``rows`` under ``headers``; column ``right`` (an index), if any, is right-aligned.

    The cells must already be clean. The last column is not padded, so no line
    ends in spaces.
    """
    grid = [list(headers), *(list(row) for row in rows)]
    widths = [max(width(row[col]) for row in grid) for col in range(len(headers))]
    last = len(headers) - 1
    lines = []
    for row in grid:
        cells = []
        for col, cell in enumerate(row):
            pad = " " * (widths[col] - width(cell))
            if right is not None and col == right % len(headers):
                cells.append(pad + cell)
            else:
                cells.append(cell if col == last else cell + pad)
        lines.append(_GAP.join(cells).rstrip())
    return lines


def format_time(value: datetime | None, missing: str = "-") -> str:
    """``2026-01-31 12:00:00Z`` (UTC, to the second), or ``missing`` for ``None``."""
    if value is None:
        return missing
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _owner(user: str | None) -> str:
    return "(unbound)" if user is None else clean(user)


def limits_text(token: Token) -> str:
    """``100/min, 5000 credits +1000/day``: the token's limits, or ``""`` for none."""
    parts = []
    if token.rate_limit is not None:
        parts.append(clean(token.rate_limit))
    if token.credits is not None:
        refill = "" if token.refill is None else f" +{clean(token.refill)}"
        parts.append(f"{token.credits} credits{refill}")
    return ", ".join(parts)


def token_row(token: Token) -> list[str]:
    """One row of :data:`TOKEN_HEADERS` for ``token``."""
    return [
        clean(token.id),
        clean(token.name),
        _owner(token.user),
        str(token.scope),
        str(token.status),
        format_time(token.expires_at, "never"),
        format_time(token.last_used_at, "never"),
        limits_text(token) or "-",
        str(token.use_count),
    ]


def tokens_table(tokens: Iterable[Token]) -> list[str]:
    """The aligned table of ``apitokens list``."""
    return table(TOKEN_HEADERS, (token_row(token) for token in tokens), right=-1)


def event_row(event: AuditEvent) -> list[str]:
    """One row of the audit table for ``event``."""
    return [
        format_time(event.at),
        str(event.action),
        str(event.outcome),
        clean(event.token_id) if event.token_id else "-",
        "-" if event.user is None else clean(event.user),
        "-" if event.actor is None else clean(event.actor),
        clean(event.client_ip) if event.client_ip else "-",
        clean(event.method) if event.method else "-",
        clean(event.path) if event.path else "-",
        clean(event.reason) or "-",
    ]


def events_table(events: Iterable[AuditEvent]) -> list[str]:
    """The aligned table of ``apitokens audit``."""
    return table(EVENT_HEADERS, (event_row(event) for event in events))


def token_details(token: Token, credits_left: int | None = None) -> list[str]:
    """Every field of ``token``, one ``label: value`` per line (rules and IPs one per line).

    ``credits_left`` (read from the store by the caller) is shown for a token with credits.
    """
    rules = [clean(rule) for rule in token.restrictions] or ["none (any request in scope)"]
    ips = [clean(ip) for ip in token.allowed_ips] or ["any"]
    fields: list[tuple[str, list[str]]] = [
        ("id", [clean(token.id)]),
        ("name", [clean(token.name)]),
        ("user", [_owner(token.user)]),
        ("status", [str(token.status)]),
        ("scope", [str(token.scope)]),
        ("mode", ["secure" if token.secure else "standard"]),
        ("created at", [format_time(token.created_at)]),
        ("created by", [clean(token.created_by)]),
        ("expires at", [format_time(token.expires_at, "never")]),
        ("revoked at", [format_time(token.revoked_at)]),
        ("restrictions", rules),
        ("allowed ips", ips),
        ("last used at", [format_time(token.last_used_at, "never")]),
        ("last used ip", [clean(token.last_used_ip or "-")]),
        ("uses", [str(token.use_count)]),
        ("rate limit", [clean(token.rate_limit or "none")]),
        ("credits", ["none" if token.credits is None else str(token.credits)]),
        ("refill", [clean(token.refill or "none")]),
    ]
    if token.credits is not None:
        fields.append(("credits left", ["-" if credits_left is None else str(credits_left)]))
    label_width = max(len(label) for label, _ in fields) + 2
    lines = []
    for label, values in fields:
        lines.append(f"{label + ':':<{label_width}}{values[0]}")
        lines.extend(" " * label_width + value for value in values[1:])
    return lines


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [_jsonable(item) for item in value]
    return value


def token_json(token: Token) -> dict[str, object]:
    """``token`` as a JSON object: every field, datetimes in ISO 8601 (UTC)."""
    return {name: _jsonable(getattr(token, name)) for name in Token.__dataclass_fields__}


def event_json(event: AuditEvent) -> dict[str, object]:
    """``event`` as a JSON object: every field, datetimes in ISO 8601 (UTC)."""
    return {name: _jsonable(getattr(event, name)) for name in AuditEvent.__dataclass_fields__}


def json_text(value: object) -> str:
    """Indented JSON, ASCII only (so no control character reaches the terminal raw)."""
    return json.dumps(value, indent=2, ensure_ascii=True)
