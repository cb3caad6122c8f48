"""The pages' own request and response: what the ASGI and WSGI drivers translate to and from.

No I/O here: a driver reads the request whole (bounded), the pages answer with a
:class:`Response`, and :func:`finish` puts the headers every response carries
(errors included) on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote

__all__ = [
    "MAX_BODY",
    "MAX_FIELDS",
    "SECURITY_HEADERS",
    "FormData",
    "Request",
    "Response",
    "TooManyFields",
    "finish",
]

MAX_BODY = 256 * 1024
"""Largest request body the pages read (a form with a thousand rules fits); 413 beyond."""

MAX_FIELDS = 2000
"""Most fields a form or a query string may have (no page has nearly as many); 400 beyond."""

SECURITY_HEADERS = (
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
)
"""Sent on every response of the pages, errors included: no inline script, no framing."""


class TooManyFields(Exception):
    """A form or query string with more than :data:`MAX_FIELDS` fields (the pages answer 400)."""


class FormData:
    """Form fields by name (several values each), as an ``application/x-www-form-urlencoded``
    body or a query string gives them."""

    def __init__(self, fields: Mapping[str, list[str]] | None = None) -> None:
        self._fields = dict(fields or {})

    @classmethod
    def parse(cls, text: str) -> FormData:
        """Parse ``a=1&b=2``; a malformed pair is dropped, as browsers never send one.

        Raises:
            TooManyFields: more than :data:`MAX_FIELDS` fields.
        """
        try:
            return cls(parse_qs(text, keep_blank_values=True, max_num_fields=MAX_FIELDS))
        except ValueError:  # parse_qs's only ValueError here: too many fields
            raise TooManyFields(f"more than {MAX_FIELDS} fields") from None

    def get(self, name: str, default: str = "") -> str:
        """The field's first value, or ``default``."""
        values = self._fields.get(name)
        return values[0] if values else default

    def all(self, name: str) -> list[str]:
        """Every value of the field."""
        return list(self._fields.get(name, ()))

    def __contains__(self, name: object) -> bool:
        return name in self._fields


@dataclass(frozen=True)
class Request:
    """One request to the pages.

    Attributes:
        method: upper case.
        path: the path under the mount point, decoded, starting with ``/``.
        query: the raw query string.
        headers: lower-case names; a repeated header's values joined with ``, ``.
        body: the body, read whole (at most :data:`MAX_BODY` bytes).
        root_path: where the pages are mounted (``SCRIPT_NAME``, ``root_path``),
            without a trailing ``/``; every link and redirect starts with it.
        native: the ASGI scope or the WSGI environ, for ``current_user``.
        scheme: ``http`` or ``https``, as the server saw it.
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    root_path: str
    native: Any = field(repr=False, compare=False)
    scheme: str = "http"

    @property
    def args(self) -> FormData:
        """The query string's fields."""
        return FormData.parse(self.query)

    @property
    def content_type(self) -> str:
        """The media type of the body, lower case, without parameters."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @property
    def form(self) -> FormData:
        """The body's form fields (empty unless the body is a urlencoded form)."""
        if self.content_type != "application/x-www-form-urlencoded":
            return FormData()
        return FormData.parse(self.body.decode("utf-8", "replace"))

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` if it is not."""
        return json.loads(self.body.decode("utf-8"))

    def url(self, path: str) -> str:
        """The absolute path of ``path`` (under the mount) for a link or a redirect."""
        return quote(self.root_path + path, safe="/:@!$&'()*+,;=-._~%?")


@dataclass
class Response:
    """What the pages answer: a status, headers and the whole body."""

    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    cacheable: bool = False
    """A static file; every other response is ``no-store`` (the pages show who owns
    which token, and some show a secret once)."""

    @classmethod
    def html(cls, status: int, text: str) -> Response:
        """An HTML page."""
        return cls(status, text.encode("utf-8"))

    @classmethod
    def json(cls, status: int, value: object) -> Response:
        """A JSON document."""
        return cls(status, json.dumps(value).encode("utf-8"), "application/json")

    @classmethod
    def redirect(cls, location: str) -> Response:
        """A 303 See Other: after a POST, the browser GETs ``location`` (POST-redirect-GET)."""
        return cls(303, b"", "text/plain; charset=utf-8", [("location", location)])


def finish(response: Response) -> list[tuple[str, str]]:
    """The response's headers, with the ones every response of the pages carries."""
    headers = [("content-type", response.content_type), *SECURITY_HEADERS]
    cacheable = response.cacheable
    headers.append(("cache-control", "public, max-age=3600" if cacheable else "no-store"))
    if not cacheable:
        headers.append(("pragma", "no-cache"))
    headers.extend(response.headers)
    headers.append(("content-length", str(len(response.body))))
    return headers
