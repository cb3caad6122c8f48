"""AuthRequest: the framework-free view of an HTTP request that apitokens decides on."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["AuthRequest", "Headers"]

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


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

    @classmethod
    def _trusted(
        cls,
        method: str,
        path: str,
        query: str,
        headers: tuple[tuple[str, str], ...],
        client_ip: str,
        body: bytes,
        app_path: str = "",
    ) -> AuthRequest:
        """Build a request from values that need no normalisation (the adapters' fast path).

        ``headers`` must already be what ``__init__`` would store: a tuple of
        ``(name, value)`` pairs of exact ``str``, names lower-case. The result
        is equal to ``AuthRequest(method, path, query, headers, client_ip, body)``.
        """
        # About a quarter of what __init__ costs: no header copy, and the slot
        # descriptors are called directly rather than through object.__setattr__
        # (which would look each name up on the type first).
        self = _new(cls)
        _set_method(self, method)
        _set_path(self, path)
        _set_query(self, query)
        _set_headers(self, headers)
        _set_client_ip(self, client_ip)
        _set_body(self, body)
        _set_app_path(self, app_path)
        return self

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


def _cut(text: str) -> str:
    """``text`` with anything shaped like a token cut to its id: a repr is often logged."""
    return _TOKENISH.sub(r"\1…", text) if "_" in text else text


_new = object.__new__
# The slots' own setters: they bypass the frozen class's __setattr__ like
# object.__setattr__ does, at a fraction of its cost.
_set_method = vars(AuthRequest)["method"].__set__
_set_path = vars(AuthRequest)["path"].__set__
_set_query = vars(AuthRequest)["query"].__set__
_set_headers = vars(AuthRequest)["headers"].__set__
_set_client_ip = vars(AuthRequest)["client_ip"].__set__
_set_body = vars(AuthRequest)["body"].__set__
_set_app_path = vars(AuthRequest)["app_path"].__set__
