"""The token string: ``<prefix>_<id><secret><checksum>``, generated, parsed and checked.

Parsing is deliberately cheap and exact: a string that does not have the shape
or whose CRC32 checksum is wrong is refused here, before anything touches the
store or a hasher, so garbage can never cost an argon2 verification.
"""

from __future__ import annotations

import re
import secrets
import string
import zlib
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "BASE62",
    "CHECKSUM_LENGTH",
    "DEFAULT_PREFIX",
    "ID_LENGTH",
    "SECRET_LENGTH",
    "TOKEN_PATTERN",
    "ParsedToken",
    "TokenFormat",
    "checksum",
]

BASE62: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase
ID_LENGTH: Final = 12
SECRET_LENGTH: Final = 32
CHECKSUM_LENGTH: Final = 6
DEFAULT_PREFIX: Final = "apt"
_BODY_LENGTH: Final = ID_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH
_PREFIX_RE: Final = re.compile(r"[a-z0-9]{2,10}")

TOKEN_PATTERN: Final[re.Pattern[str]] = re.compile(
    rf"\b[a-z0-9]{{2,10}}_[0-9A-Za-z]{{{_BODY_LENGTH}}}\b"
)
"""Matches an apitokens token of any prefix inside text, for secret scanners.

Use ``TOKEN_PATTERN.pattern`` for the regex source. A match whose last six
characters are the base62 CRC32 of the rest (see :func:`checksum`) is almost
certainly a real token.
"""


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, remainder = divmod(number, 62)
        digits.append(BASE62[remainder])
    return "".join(reversed(digits)).rjust(width, "0")


def checksum(text: str) -> str:
    """Return the 6-character base62 CRC32 of ``text`` (ASCII), most significant digit first.

    Args:
        text: everything before the checksum, i.e. ``<prefix>_<id><secret>``.
    """
    return _base62(zlib.crc32(text.encode("ascii")), CHECKSUM_LENGTH)


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


@dataclass(frozen=True, slots=True)
class ParsedToken:
    """A token string that has the right shape and checksum (not yet verified).

    Attributes:
        id: the public lookup key.
        value: the whole token string; never shown in ``repr``.
    """

    id: str
    value: str = field(repr=False)


class TokenFormat:
    """Generates and parses token strings for one prefix.

    Args:
        prefix: 2-10 characters ``[a-z0-9]``; the part before ``_``.

    Raises:
        ValueError: the prefix does not have that shape.
    """

    __slots__ = ("_body", "_head", "_inside", "prefix")

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"token prefix must be 2-10 characters of [a-z0-9], got {prefix!r}")
        self.prefix = prefix
        self._head = prefix + "_"
        self._body = re.compile(rf"[0-9A-Za-z]{{{_BODY_LENGTH}}}")
        # A token anywhere in a text, whatever stands around it (no \b: "xapt_..." counts),
        # its prefix in any case ("APT_..." keeps the secret all the same).
        self._inside = re.compile(
            rf"(?i:{re.escape(prefix)})_([0-9A-Za-z]{{{ID_LENGTH}}})"
            rf"[0-9A-Za-z]{{{_BODY_LENGTH - ID_LENGTH}}}"
        )

    def __repr__(self) -> str:
        return f"TokenFormat(prefix={self.prefix!r})"

    @staticmethod
    def new_id() -> str:
        """Return a fresh random token id (12 base62 characters)."""
        return _random_base62(ID_LENGTH)

    def issue(self, token_id: str | None = None) -> ParsedToken:
        """Return a new token string with a fresh secret.

        Args:
            token_id: keep this id (rotation); a new random id when ``None``.

        Raises:
            ValueError: ``token_id`` is not 12 base62 characters.
        """
        if token_id is None:
            token_id = self.new_id()
        elif len(token_id) != ID_LENGTH or any(c not in BASE62 for c in token_id):
            raise ValueError(f"token id must be {ID_LENGTH} base62 characters")
        head = f"{self._head}{token_id}{_random_base62(SECRET_LENGTH)}"
        return ParsedToken(id=token_id, value=head + checksum(head))

    def is_ours(self, candidate: str) -> bool:
        """Return whether ``candidate`` claims to be one of our tokens (has our prefix).

        A credential that is not ours (a password, another scheme's token) is
        left to the application; one that is ours is decided by apitokens.
        """
        return candidate.startswith(self._head)

    def _may_hold(self, text: str) -> bool:
        # A cheap look first (every request's path, address and reason pass here).
        return "_" in text and (self._head in text or self._head in text.lower())

    def contains(self, text: str) -> bool:
        """Return whether ``text`` holds a string of this token format anywhere.

        The prefix in any case: ``APT_<id><secret>...`` holds a secret too.
        """
        return self._may_hold(text) and self._inside.search(text) is not None

    def redact(self, text: str) -> str:
        """Return ``text`` with every token string in it cut to its public id.

        ``apt_<id><secret><checksum>`` becomes ``apt_<id>…``: what is left is
        safe for a log or the audit log, and no longer matches the format.
        """
        if not self._may_hold(text):
            return text
        return self._inside.sub(lambda m: f"{self._head}{m.group(1)}\u2026", text)

    def parse(self, candidate: str) -> ParsedToken | None:
        """Return the parsed token, or ``None`` if the shape or checksum is wrong.

        Costs a length check, one precompiled regex and a CRC32: no store
        access, no hashing.
        """
        head = self._head
        if len(candidate) != len(head) + _BODY_LENGTH or not candidate.startswith(head):
            return None
        body = candidate[len(head) :]
        if self._body.fullmatch(body) is None:
            return None
        cut = len(candidate) - CHECKSUM_LENGTH
        # The checksum is public (CRC32), so a plain comparison leaks nothing.
        if checksum(candidate[:cut]) != candidate[cut:]:
            return None
        return ParsedToken(id=body[:ID_LENGTH], value=candidate)
