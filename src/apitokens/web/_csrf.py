"""Stateless CSRF tokens: signed with the pages' key, bound to the user and a time window."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from datetime import datetime, timedelta

__all__ = ["CsrfTokens"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class CsrfTokens:
    """Issue and check the token every form of the pages carries.

    A token is ``<issued at, hex seconds>.<HMAC-SHA256>`` over the signed-in user
    and the time: no server state, so every worker that shares the key accepts
    it; another user's token, an old one or one from another key is refused.

    Args:
        key: the pages' secret key (at least 16 bytes).
        clock: the current aware datetime.
        max_age: how long a token is accepted after it was issued.
    """

    def __init__(self, key: bytes, *, clock: Callable[[], datetime], max_age: timedelta) -> None:
        # A key of its own for this use, so the pages' key could sign other things too.
        self._key = hmac.new(key, b"apitokens.web.csrf", hashlib.sha256).digest()
        self._clock = clock
        self._max_age = int(max_age.total_seconds())

    def _sign(self, user: str, issued: int) -> str:
        message = f"{issued:x}\x00{user}".encode("utf-8", "surrogatepass")
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def _now(self) -> int:
        return int(self._clock().timestamp())

    def issue(self, user: str) -> str:
        """A token for ``user``'s next form."""
        issued = self._now()
        return f"{issued:x}.{self._sign(user, issued)}"

    def valid(self, user: str, token: str) -> bool:
        """Whether ``token`` was issued by this key for ``user`` within the window."""
        stamp, dot, signature = token.partition(".")
        if not dot or not 0 < len(stamp) <= 16:
            return False
        try:
            issued = int(stamp, 16)
        except ValueError:
            return False
        if not hmac.compare_digest(signature.encode(), self._sign(user, issued).encode()):
            return False
        age = self._now() - issued
        return -60 <= age <= self._max_age  # a minute of clock skew between workers
