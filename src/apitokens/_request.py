"""AuthRequest: the framework-free view of an HTTP request that apitokens decides on."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

__all__ = [
    "METHOD_OVERRIDES",
    "READ_HEADERS",
    "RUN_AS",
    "AuthRequest",
    "Headers",
    "quote_path",
    "shown_method",
    "unquoted_fully",
]

Headers = Mapping[str, str] | Iterable[tuple[str, str]]

METHOD_OVERRIDES = ("x-http-method-override", "x-http-method", "x-method-override")
"""Headers through which common middleware (Flask's docs, Rails-style, Google's) lets a
request act as another method: the core checks the request as each of them says too."""
RUN_AS = "x-run-as"
"""The header through which a token of an owner in ``Policy.run_as_groups`` acts as
another user (never ignored: refused from anyone else)."""
READ_HEADERS = ("authorization", "x-forwarded-for", "content-type", *METHOD_OVERRIDES, RUN_AS)
"""The headers the core reads (credentials, the proxy chain, the body's media type for
JSON rules, the method overrides, run-as): all an adapter needs to put in an AuthRequest."""

# Characters left as they are when quoting a decoded path: RFC 3986 pchar and "/".
_PATH_SAFE = "/!$&'()*+,;=:@-._~"
# A path of only those characters and ASCII letters and digits is its own quoting.
_UNQUOTED = re.compile(r"[A-Za-z0-9/!$&'()*+,;=:@\-._~]*")


def quote_path(path: str, encoding: str) -> str:
    """A decoded path percent-encoded again, as a client would have sent it.

    Args:
        path: the path a server decoded (PEP 3333 gives bytes as latin-1
            characters; ASGI gives UTF-8 text).
        encoding: how it is turned back into bytes: ``"latin-1"`` (WSGI) or
            ``"utf-8"`` (ASGI, lone surrogates back to the bytes they stand for).
    """
    if _UNQUOTED.fullmatch(path):
        return path  # nothing quote() would change: skip it (most paths)
    errors = "surrogateescape" if encoding == "utf-8" else "replace"
    return quote(path.encode(encoding, errors), safe=_PATH_SAFE)


def _normalize(headers: Headers) -> tuple[tuple[str, str], ...]:
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((str(name).lower(), str(value)) for name, value in pairs)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """An HTTP request as the middleware hands it to the core.

    Attributes:
        method: the HTTP method, e.g. ``"GET"`` (compared case-insensitively).
        path: the path as sent, still percent-encoded, without the query.
        query: the raw query string, without the leading ``?``.
        headers: a mapping or a sequence of ``(name, value)`` pairs; names are
            case-insensitive and repeated headers are kept.
        client_ip: the address of the peer (or the trusted proxy's client).
        body: the request body, when it has been read.
        app_path: the path as a mounted app sees it (``SCRIPT_NAME`` or
            ``root_path`` stripped, percent-encoded), when it differs from
            ``path``; ``""`` otherwise. A protected prefix matching either
            path protects the request.
    """

    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = field(default=())
    client_ip: str = ""
    body: bytes = b""
    app_path: str = ""

    def __init__(
        self,
        method: str,
        path: str,
        query: str = "",
        headers: Headers = (),
        client_ip: str = "",
        body: bytes = b"",
        app_path: str = "",
    ) -> None:
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "query", query)
        object.__setattr__(self, "headers", _normalize(headers))
        object.__setattr__(self, "client_ip", client_ip)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "app_path", app_path)

    def header_values(self, name: str) -> list[str]:
        """Return every value of header ``name`` (case-insensitive), in order."""
        key = name.lower()
        return [value for header, value in self.headers if header == key]

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or ``None``."""
        key = name.lower()
        for header, value in self.headers:
            if header == key:
                return value
        return None

    def __repr__(self) -> str:
        # Headers carry credentials: never show their values.
        names = ", ".join(sorted({name for name, _ in self.headers}))
        path, query = _cut(self.path), _cut(self.query)
        return (
            f"AuthRequest(method={self.method!r}, path={path!r}, query={query!r}, "
            f"headers=[{names}], client_ip={self.client_ip!r}, body=<{len(self.body)} bytes>"
            + (f", app_path={_cut(self.app_path)!r})" if self.app_path else ")")
        )


# A token of any prefix (TOKEN_PATTERN's shape, any case), kept to its prefix and id.
_TOKENISH = re.compile(r"([a-zA-Z0-9]{2,10}_[0-9A-Za-z]{12})[0-9A-Za-z]{38}")


_METHOD_NAME = re.compile(r"[A-Za-z]{1,16}")


def shown_method(method: str) -> str:
    """A method as a reason may show it: a client's override header is any text."""
    return method.upper() if _METHOD_NAME.fullmatch(method) else "(not a method name)"


def unquoted_fully(text: str) -> str | None:
    """``text`` percent-decoded until nothing changes; ``None`` past 16 rounds.

    Every encoding of a token, at every depth, shows in the result, so a cut made
    on it misses none (a repr, the audit log's path).
    """
    for _ in range(16):
        decoded = unquote(text, errors="replace")
        if decoded == text:
            return text
        text = decoded
    return None


def _cut(text: str) -> str:
    """``text`` with anything shaped like a token cut to its id: a repr is often logged.

    A percent-encoded text is shown decoded, so no encoding hides a token from the cut.
    """
    if "%" in text:
        decoded = unquoted_fully(text)
        if decoded is None:
            return "(percent-encoded more than 16 times)"
        text = decoded
    return _TOKENISH.sub(r"\1…", text) if "_" in text else text
