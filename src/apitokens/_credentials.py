"""Reading credentials from the ``Authorization`` header (RFC 7617 Basic, RFC 6750 Bearer)."""

from __future__ import annotations

import binascii
from base64 import b64decode
from dataclasses import dataclass, field
from typing import Final

from ._policy import AuthScheme

__all__ = ["Credentials", "MalformedCredentials", "read_credentials"]

# Longer than any sane credential: refuse before decoding anything.
MAX_AUTHORIZATION_LENGTH: Final = 8192


class MalformedCredentials(Exception):
    """The Authorization header is present but unusable (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the client presented.

    Attributes:
        scheme: ``BASIC`` or ``BEARER``.
        secret: the password or bearer token; never shown in ``repr``.
        username: the Basic username (``None`` for Bearer).
    """

    scheme: AuthScheme
    secret: str = field(repr=False)
    username: str | None = None


def read_credentials(values: list[str]) -> Credentials | None:
    """Return the credentials in the ``Authorization`` header values given.

    Returns:
        ``None`` when there is no header or its scheme is neither Basic nor
        Bearer (someone else's scheme, left to the app).

    Raises:
        MalformedCredentials: two headers, an oversized one, bad base64, a
            Basic value without a colon, an empty or non-text credential.
    """
    if not values:
        return None
    if len(values) > 1:
        raise MalformedCredentials("more than one Authorization header")
    value = values[0]
    if len(value) > MAX_AUTHORIZATION_LENGTH:
        raise MalformedCredentials("Authorization header too long")
    # Any whitespace separates the scheme (RFC 9110 says one space; "Bearer<TAB>apt_..."
    # must still be read as Bearer, never left to the app as an unknown scheme).
    parts = value.split(None, 1)
    if not parts:
        return None
    scheme = parts[0].lower()
    rest = parts[1].strip() if len(parts) > 1 else ""
    if scheme == "bearer":
        # RFC 6750 token68: one word, printable ASCII.
        if not rest or not rest.isascii() or not rest.isprintable() or " " in rest:
            raise MalformedCredentials("Bearer credentials must be one printable ASCII word")
        return Credentials(AuthScheme.BEARER, rest)
    if scheme == "basic":
        return _basic(rest)
    return None


def _basic(encoded: str) -> Credentials:
    if not encoded or not encoded.isascii():
        raise MalformedCredentials("Basic credentials must be base64")
    try:
        raw = b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedCredentials("Basic credentials are not valid base64") from None
    try:
        # RFC 7617 charset="UTF-8", which is what we announce.
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedCredentials("Basic credentials are not UTF-8") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise MalformedCredentials("Basic credentials need 'user:password'")
    if not decoded.isprintable():
        raise MalformedCredentials("Basic credentials contain control characters")
    return Credentials(AuthScheme.BASIC, password, username)
