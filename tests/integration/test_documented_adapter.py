"""The ``http.server`` adapter docs/architecture.md shows, run as the page has it.

The page's "Writing an adapter" section holds one python block: a driver of the
request flow for the standard library's ``http.server``, and a handler using it.
It runs here behind a real ``ThreadingHTTPServer`` on 127.0.0.1, so a page whose
adapter loses the body, passes a refusal or leaves a request unaudited fails here.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from apitokens import ApiTokens, Outcome, Scope
from tests.unit.test_docs import ROOT, blocks

PAGE = ROOT / "docs" / "architecture.md"
HEADING = "## Writing an adapter"


def _example() -> tuple[int, str]:
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    start = lines.index(HEADING) + 1
    end = next((n for n in range(start, len(lines)) if lines[n].startswith("## ")), len(lines))
    found = [b for b in blocks(PAGE) if b.lang == "python" and start < b.line <= end]
    assert len(found) == 1, f"{HEADING!r} shows {len(found)} python blocks, not one"
    return found[0].line, found[0].code


@pytest.fixture
def served() -> Iterator[tuple[ApiTokens, int]]:
    line, code = _example()
    example: dict[str, Any] = {"__name__": "documented_adapter"}
    exec(compile("\n" * line + code, str(PAGE), "exec", dont_inherit=True), example)  # noqa: S102
    tokens: ApiTokens = example["tokens"]
    server = ThreadingHTTPServer(("127.0.0.1", 0), example["Handler"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tokens, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        tokens.close()


def post(port: int, path: str, body: bytes, token: str | None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_documented_adapter_drives_the_flow_behind_a_real_server(
    served: tuple[ApiTokens, int],
) -> None:
    tokens, port = served
    rule = "[POST].*/rest/issue[JsonData::project==JRA]"
    ruled = tokens.create(actor="alice", name="ci", scope=Scope.READ_WRITE, restrictions=[rule])
    reader = tokens.create(actor="bob", name="reader")
    good = json.dumps({"project": "JRA"}).encode()

    # The rule read the body: the handler gets those very bytes (it would hang on rfile).
    assert post(port, "/rest/issue", good, ruled.secret) == (
        200,
        f"alice sent {len(good)} bytes".encode(),
    )
    status, body = post(port, "/rest/issue", b'{"project": "ABC"}', ruled.secret)
    assert status == 403 and json.loads(body)["error"] == "insufficient_scope"
    status, body = post(port, "/rest/issue", good, reader.secret)  # read-only: no POST
    assert status == 403
    status, body = post(port, "/rest/issue", good, tokens.create(actor="c", name="x").secret[:-1])
    assert status == 401 and json.loads(body)["error"] == "invalid_token"
    # No rule needed the body, or no token at all: the handler reads it itself.
    assert post(port, "/public", good, None) == (200, f"anonymous sent {len(good)} bytes".encode())

    outcomes = [event.outcome for event in tokens.audit(action="authenticate")]
    assert outcomes == [Outcome.FAILED, Outcome.FORBIDDEN, Outcome.FORBIDDEN, Outcome.SUCCESS]
