"""The adapter contract for a bare WSGI app (no framework) behind ``tokens.wsgi(app)``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest

from apitokens import ApiTokens
from tests.adapters.contract import AdapterContract, Build
from tests.adapters.harness import Environ, Recorder, WSGIContractClient, seen_from_environ


def _read_body(environ: Environ) -> bytes:
    """The whole body, as PEP 3333 allows reading it: by length, or to the end if terminated."""
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        return bytes(stream.read())
    length = int(environ.get("CONTENT_LENGTH") or 0)
    chunks = []
    while length > 0 and (chunk := stream.read(length)):
        chunks.append(chunk)
        length -= len(chunk)
    return b"".join(chunks)


def bare_app(recorder: Recorder) -> Callable[[Environ, Callable[..., Any]], Iterable[bytes]]:
    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not path.startswith(("/rest/", "/public/")):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        read_before_app = recorder.pulled
        body = _read_body(environ)
        recorder.seen.append(seen_from_environ(environ, body, read_before_app))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"ok": true}']

    return app


class TestBareWSGI(AdapterContract):
    interface = "wsgi"

    @pytest.fixture
    def build(self) -> Build:
        def build(tokens: ApiTokens, *, mount: str = "") -> WSGIContractClient:
            recorder = Recorder()
            return WSGIContractClient(tokens.wsgi(bare_app(recorder)), recorder, mount=mount)

        return build
