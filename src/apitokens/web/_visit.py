"""One signed-in user's request to the pages: who, whether admin, and how to answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apitokens._api import ApiTokens
from apitokens._errors import (
    PermissionDenied,
    PolicyViolation,
    RuleSyntaxError,
    StorageError,
    TokenImmutable,
    TokenNotFound,
)
from apitokens._model import Token
from apitokens._tokens import BASE62, ID_LENGTH

from ._http import Request, Response
from ._render import Templates

__all__ = ["PageError", "Visit", "is_token_id", "message_of", "status_of"]


class PageError(Exception):
    """Answer with an error page: ``status`` and a message for the user."""

    def __init__(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


def is_token_id(value: str) -> bool:
    """Whether ``value`` has the shape of a token id (12 base62 characters)."""
    return len(value) == ID_LENGTH and all(char in BASE62 for char in value)


def status_of(error: Exception) -> int:
    """The HTTP status of a refusal of the management API."""
    if isinstance(error, PermissionDenied):
        return 403
    if isinstance(error, TokenNotFound):
        return 404
    if isinstance(error, TokenImmutable):
        return 409
    if isinstance(error, StorageError):
        return 503
    return 400  # PolicyViolation, RuleSyntaxError, ValueError: what was typed


def message_of(error: Exception) -> str:
    """What to tell the user about a refusal (never a secret: the API's messages hold none)."""
    if isinstance(error, RuleSyntaxError):
        return f"The rule {error.rule!r} does not parse: column {error.column}: {error.reason}."
    if isinstance(error, StorageError):
        return "The token store is not available right now. Try again in a moment."
    if isinstance(error, PermissionDenied):
        return f"Not allowed: {error}."
    if isinstance(error, PolicyViolation):
        return f"The policy does not allow this: {error}."
    text = str(error)
    # The API names its arguments; the page names the fields the user filled in.
    for argument, label in _FIELD_LABELS:
        if text.startswith(argument):
            text = label + text[len(argument) :]
            break
    return f"{text[:1].upper()}{text[1:]}."


_FIELD_LABELS = (
    ("allowed_ips:", "Allowed IP addresses:"),
    ("rate_limit", "rate limit"),
    ("expires_at is", "the expiry date is"),
    ("name must be", "the name must be"),
)


@dataclass
class Visit:
    """The request, the signed-in user, and what every page of theirs shows."""

    request: Request
    user: str
    admin: bool
    csrf: str
    tokens: ApiTokens
    templates: Templates
    now: datetime
    title: str
    api_url: Callable[[Request], str]
    page_size: int = 50

    def page(self, template: str, status: int = 200, **values: Any) -> Response:
        """Render a page of the pages (the common values added)."""
        common = {
            "root": self.request.root_path,
            "user": self.user,
            "admin": self.admin,
            "csrf": self.csrf,
            "now": self.now,
            "title": self.title,
            "notice": "",
            "error": "",
            "credits_left": {},
        }
        common.update(values)
        return Response.html(status, self.templates.render(template, common))

    def credits_left(self, tokens: Sequence[Token]) -> dict[str, int | None]:
        """The credits left of each token with credits (``None``: the store could not say).

        A store that cannot be read now must not take the whole list down with it:
        the page says "unknown" for those tokens instead.
        """
        left: dict[str, int | None] = {}
        for token in tokens:
            if token.credits is not None:
                try:
                    left[token.id] = self.tokens.credits_left(token.id)
                except (StorageError, TokenNotFound):
                    left[token.id] = None
        return left

    def token(self, token_id: str) -> Token:
        """The token, if the user may see it (theirs, or any for an admin); else 404.

        The same answer for a token that does not exist and another user's, so that
        changing an id in a URL tells nothing.
        """
        token = self.tokens.get(token_id) if is_token_id(token_id) else None
        if token is None or (token.user != self.user and not self.admin):
            raise PageError(404, "No such token among yours.")
        return token

    def refused(self, error: Exception) -> PageError:
        """A refusal of a call on an existing token, as an error page.

        For a user who is no admin, "not yours" is "not found", as in :meth:`token`.
        """
        if isinstance(error, (PermissionDenied, TokenNotFound)) and not self.admin:
            return PageError(404, "No such token among yours.")
        return PageError(status_of(error), message_of(error))
