"""WSGI middleware: translate the environ for the request flow, then answer or call the app."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from ._flow import RequestFlow, Requirement
from ._request import READ_HEADERS, AuthRequest, quote_path
from ._result import AuthResult

__all__ = ["WSGIApplication", "WSGIMiddleware", "request_from_environ"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApplication = Callable[[Environ, StartResponse], Iterable[bytes]]

# The headers the core reads, by environ key.
_WANTED = tuple(
    ("CONTENT_TYPE" if name == "content-type" else "HTTP_" + name.upper().replace("-", "_"), name)
    for name in READ_HEADERS
)


_MOUNT_HEADERS = (("HTTP_SCRIPT_NAME", "script-name"), ("HTTP_PATH_INFO", "path-info"))


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
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return quote_path(path, "latin-1") or "/"


def request_from_environ(environ: Environ, body: bytes = b"") -> AuthRequest:
    """Build the :class:`AuthRequest` for a WSGI environ (headers the core reads)."""
    headers = [(name, str(v)) for key, name in _WANTED if (v := environ.get(key)) is not None]
    # gunicorn takes SCRIPT_NAME (and PATH_INFO) from request headers of the peers it
    # trusts: the core must know the mount point came from a request, not the server.
    for key, name in _MOUNT_HEADERS:
        if key in environ:
            headers.append((name, str(environ[key])))
    # The path the app routes, with the "/" frameworks put in front of PATH_INFO, when it
    # is not the path as sent: mounted (a DispatcherMiddleware, a server's SCRIPT_NAME),
    # gunicorn stripping SCRIPT_NAME "/api" from "/apirest/admin" as "rest/admin", or
    # waitress and cheroot parsing "/re\tst/admin" with urlsplit, which drops the tab.
    path_info: str = environ.get("PATH_INFO", "")
    app_path = quote_path(path_info if path_info[:1] == "/" else "/" + path_info, "latin-1")
    path = _raw_path(environ)
    return AuthRequest(
        environ.get("REQUEST_METHOD", "GET"),
        path,
        environ.get("QUERY_STRING", ""),
        headers,
        environ.get("REMOTE_ADDR", ""),
        body,
        app_path if app_path != path else "",
    )


class _Body:
    """Reads the body for the flow, at most ``limit + 1`` bytes, and replays it to the app."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Environ) -> None:
        self._environ = environ

    def __call__(self, limit: int) -> bytes:
        environ = self._environ
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
        body = b"".join(chunks)
        if len(body) > limit:
            # Past the limit (the decision is then 413, unless the token changed in
            # between): never hand the app a cut body as if whole; the rest follows.
            environ["wsgi.input"] = _Rejoined(body, stream)
        else:
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return body


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
    start_response(
        f"{status.value} {status.phrase}",
        [*result.headers, ("Content-Length", str(len(body)))],
    )
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
        request = request_from_environ(environ)
        result = self.flow.run(request, _Body(environ), require=self.require)
        if result.authenticated:
            environ["REMOTE_USER"] = result.user
            environ["apitokens.auth"] = result
        elif result.status_code != 200:
            return _respond(result, start_response)
        return self.app(environ, start_response)
