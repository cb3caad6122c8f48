"""The request's user as an ASGI app reads it: what Starlette's ``request.user`` and
``request.auth`` expect in ``scope["user"]`` and ``scope["auth"]`` (no Starlette import)."""

from __future__ import annotations

from ._model import Outcome
from ._result import AuthResult

__all__ = ["ANONYMOUS", "NO_AUTH", "AnonymousUser", "TokenAuth", "TokenUser"]


class TokenUser:
    """``scope["user"]`` after a token authenticated: what Starlette's ``request.user`` expects."""

    __slots__ = ("result",)

    def __init__(self, result: AuthResult) -> None:
        self.result = result

    @property
    def is_authenticated(self) -> bool:
        """Always ``True``."""
        return True

    @property
    def display_name(self) -> str:
        """The username."""
        return self.result.user or ""

    @property
    def identity(self) -> str:
        """The username."""
        return self.result.user or ""

    @property
    def token_id(self) -> str | None:
        """The id of the token used."""
        return self.result.token.id if self.result.token else None

    def __repr__(self) -> str:
        return f"TokenUser({self.display_name!r})"


class TokenAuth:
    """``scope["auth"]``: ``.scopes`` as Starlette's ``request.auth`` expects."""

    __slots__ = ("result",)

    def __init__(self, result: AuthResult) -> None:
        self.result = result

    @property
    def scopes(self) -> list[str]:
        """``authenticated``, ``read`` and, if the token allows it, ``write``.

        Built when read: most endpoints never look (one made per request).
        """
        return self.result.scopes


class AnonymousUser:
    """``scope["user"]`` when no token authenticated the request (like Starlette's own)."""

    __slots__ = ()

    @property
    def is_authenticated(self) -> bool:
        """Always ``False``."""
        return False

    @property
    def display_name(self) -> str:
        """Empty."""
        return ""

    @property
    def identity(self) -> str:
        """Empty."""
        return ""

    def __repr__(self) -> str:
        return "AnonymousUser()"


ANONYMOUS = AnonymousUser()
NO_AUTH = TokenAuth(AuthResult(Outcome.PASS_THROUGH))  # .scopes == []
