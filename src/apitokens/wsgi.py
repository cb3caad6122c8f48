"""WSGI middleware: translate the environ, ask the core, answer or call the app."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlsplit

from ._flow import RequestFlow, Requirement
from ._request import AuthRequest
from ._result import AuthResult

__all__ = ["WSGIApplication", "WSGIMiddleware", "request_from_environ"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApplication = Callable[[Environ, StartResponse], Iterable[bytes]]

# Characters left as they are when re-quoting PATH_INFO: RFC 3986 pchar and "/".
_PATH_SAFE = "/!$&'()*+,;=:@-._~"
# A path of only those characters and ASCII letters and digits is its own quoting.
_UNQUOTED = re.compile(r"[A-Za-z0-9/!$&'()*+,;=:@\-._~]+")
# AuthRequest's fast constructor, bound once: it is called on every request.
_trusted = AuthRequest._trusted
# The headers the core reads, by environ key: credentials, the proxy chain, the body's
# media type (JSON rules) and the method-override headers (checked as well as the method).
_WANTED = (
    ("HTTP_AUTHORIZATION", "authorization"),
    ("HTTP_X_FORWARDED_FOR", "x-forwarded-for"),
    ("CONTENT_TYPE", "content-type"),
    ("HTTP_X_HTTP_METHOD_OVERRIDE", "x-http-method-override"),
    ("HTTP_X_HTTP_METHOD", "x-http-method"),
    ("HTTP_X_METHOD_OVERRIDE", "x-method-override"),
)


def _quoted(path: str) -> str:
    """A PEP 3333 path (bytes as latin-1 characters) percent-encoded as it was sent."""
    if _UNQUOTED.fullmatch(path):
        return path  # nothing quote() would change: skip it (most paths)
    return quote(path.encode("latin-1", "replace"), safe=_PATH_SAFE)


def _raw_path(environ: Environ) -> str:
    """The path as sent: the server's raw URI when it gives one, else re-quoted.

    An absolute-form target (``http://host/path``) gives its path. Any other
    target without a leading ``/`` (``rest/admin``, ``http:rest/admin``, ``*``)
    is kept as it is: the core refuses it, since servers differ in how they
    route it.
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        raw = str(raw)
        if not raw.startswith("/"):
            parts = urlsplit(raw)
            if parts.scheme.lower() in ("http", "https") and parts.netloc:
                raw = parts.path or "/"
        # The query goes; a fragment stays, for the core to refuse.
        return raw.split("?", 1)[0]
    path: str = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return _quoted(path) or "/"


def request_from_environ(environ: Environ, body: bytes = b"") -> AuthRequest:
    """Build the :class:`AuthRequest` for a WSGI environ (headers the core reads)."""
    # The header pairs are built as AuthRequest would store them (lower-case
    # names, str values), so the fast constructor can take them as they are.
    headers: tuple[tuple[str, str], ...] = ()
    for key, name in _WANTED:
        value = environ.get(key)
        if value is not None:
            if value.__class__ is not str:  # PEP 3333 says str; __init__ would str() it
                value = str(value)
            headers += ((name, value),)
    # The path the app routes, with the "/" frameworks put in front of PATH_INFO, when it
    # is not the path as sent: mounted (a DispatcherMiddleware, a server's SCRIPT_NAME),
    # gunicorn stripping SCRIPT_NAME "/api" from "/apirest/admin" as "rest/admin", or
    # waitress and cheroot parsing "/re\tst/admin" with urlsplit, which drops the tab.
    path_info: str = environ.get("PATH_INFO", "")
    app_path = _quoted(path_info if path_info[:1] == "/" else "/" + path_info)
    path = _raw_path(environ)
    return _trusted(
        environ.get("REQUEST_METHOD", "GET"),
        path,
        environ.get("QUERY_STRING", ""),
        headers,
        environ.get("REMOTE_ADDR", ""),
        body,
        app_path if app_path != path else "",
    )


def _read_body(environ: Environ, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes (one more than allowed tells "too large")."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    if length < 0 and not environ.get("wsgi.input_terminated"):
        return b""  # no length and not a terminated stream: nothing safe to read
    want = limit + 1 if length < 0 else min(length, limit + 1)
    chunks, got = [], 0
    while got < want:
        chunk = stream.read(want - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class _Rejoined:
    """``wsgi.input`` for the app: the bytes already read, then the rest of the stream."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head = io.BytesIO(head)
        self._rest = rest

    def read(self, size: int | None = -1) -> bytes:
        data = self._head.read(size)
        if size is None or size < 0:
            return data + bytes(self._rest.read())
        if len(data) < size:
            data += bytes(self._rest.read(size - len(data)))
        return data

    def readline(self, size: int | None = -1) -> bytes:
        line = self._head.readline(size)
        limit = -1 if size is None or size < 0 else size - len(line)
        if line.endswith(b"\n") or limit == 0:
            return line
        return line + bytes(self._rest.readline(limit))

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def _respond(result: AuthResult, start_response: StartResponse) -> list[bytes]:
    body = result.body
    status = HTTPStatus(result.status_code)
    headers = [*result.headers, ("Content-Length", str(len(body)))]
    start_response(f"{status.value} {status.phrase}", headers)
    return [body]


class WSGIMiddleware:
    """Checks tokens on protected paths, then calls the wrapped app (``tokens.wsgi(app)``).

    On success the app sees ``environ["REMOTE_USER"]`` and
    ``environ["apitokens.auth"]`` (the :class:`AuthResult`). A body read for
    a JSON rule is replayed to the app byte for byte.

    Args:
        app: the WSGI application.
        flow: the request flow (:attr:`ApiTokens.flow`).
        require: the wrapped app's requirement (every request needs a token, or
            a read-write one), e.g. for an app mounted under an API prefix.
    """

    def __init__(
        self, app: WSGIApplication, flow: RequestFlow, *, require: Requirement = Requirement.NONE
    ) -> None:
        self.app = app
        self.flow = flow
        self.require = require

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        def read_body(limit: int) -> bytes:
            stream = environ.get("wsgi.input")
            body = _read_body(environ, limit)
            if len(body) > limit and stream is not None:
                # Past the limit (the decision is then 413, unless the token changed in
                # between): never hand the app a cut body as if whole; the rest follows.
                environ["wsgi.input"] = _Rejoined(body, stream)
            else:
                environ["wsgi.input"] = io.BytesIO(body)
                environ["CONTENT_LENGTH"] = str(len(body))
            return body

        result = self.flow.run(request_from_environ(environ), read_body, require=self.require)
        if result.authenticated:
            environ["REMOTE_USER"] = result.user
            environ["apitokens.auth"] = result
        elif result.status_code != 200:
            return _respond(result, start_response)
        return self.app(environ, start_response)
