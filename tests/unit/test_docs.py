"""The docs a user copies run as written.

Every ```python block in README.md and docs/*.md runs here. A page's blocks run
in order in one namespace: a page reads as one session, its first block
imports and builds what the later ones use, and every later block imports the
names it adds. Each page runs in a fresh, empty working directory (so
``SQLiteStore("tokens.db")`` lands there) with no network: a block that binds
or connects a socket fails, so no block starts a server or calls out. Every
fence names its language, so Python cannot hide in an untagged block.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import uvicorn

from apitokens import TOKEN_PATTERN, ApiTokens, MemoryStore, Policy
from apitokens._tokens import TokenFormat

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<info>[^`\n]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: where it opens, its language, its text."""

    line: int  # 1-based line of the opening fence
    lang: str
    code: str


def blocks(page: Path) -> list[Block]:
    """Return the fenced blocks of a Markdown page, in order."""
    found: list[Block] = []
    opened: tuple[int, str, str, str] | None = None  # line, indent, fence, lang
    body: list[str] = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        match = FENCE.match(line)
        if opened is None:
            if match:
                lang = match["info"].strip().split(" ")[0]
                opened, body = (number, match["indent"], match["fence"], lang), []
            continue
        start, indent, fence, lang = opened
        if match and match["fence"].startswith(fence) and not match["info"].strip():
            found.append(Block(start, lang, "\n".join(body) + "\n"))
            opened = None
        else:
            # A block indented under a list item: drop the list's indent.
            body.append(line[len(indent) :] if line.startswith(indent) else line)
    assert opened is None, f"{page.name}: the block at line {opened[0]} is never closed"
    return found


def _no_network(*_args: object, **_kwargs: object) -> NoReturn:
    raise AssertionError("a docs block must not open a network connection or a server")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any block that binds or connects a socket."""
    for name in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, _no_network)


@pytest.fixture
def environ_restored() -> Iterator[None]:
    """Undo what a block sets in ``os.environ`` (hashing.md sets an example key)."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """Undo the handlers and levels a block sets on loggers (the docs show how to)."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    before = {
        id(lg): (lg.level, list(lg.handlers)) for lg in loggers if isinstance(lg, logging.Logger)
    }
    yield
    for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        if not isinstance(lg, logging.Logger):
            continue
        level, handlers = before.get(id(lg), (logging.NOTSET, []))
        lg.setLevel(level)
        for handler in [h for h in lg.handlers if h not in handlers]:
            lg.removeHandler(handler)
            handler.close()


def _ids(page: Path) -> str:
    return str(page.relative_to(ROOT))


@contextmanager
def run_page(page: Path) -> Iterator[dict[str, Any]]:
    """Run the page's python blocks in order in one namespace; yield the namespace."""
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    try:
        for block in blocks(page):
            if block.lang != "python":
                continue
            # Pad so a traceback names the line of the Markdown page itself.
            source = "\n" * block.line + block.code
            try:
                # dont_inherit: run as the user's copy would, without this module's
                # ``from __future__ import annotations`` (FastAPI reads annotations).
                exec(compile(source, str(page), "exec", dont_inherit=True), namespace)  # noqa: S102
            except BaseException as error:
                raise AssertionError(
                    f"{_ids(page)}: the python block at line {block.line} raised "
                    f"{type(error).__name__}: {error}"
                ) from error
        yield namespace
    finally:
        # What the page opened: the writers first (they flush), then the stores.
        made = [value for value in namespace.values() if isinstance(value, ApiTokens)]
        for tokens in made:
            tokens.close()
        for tokens in made:
            tokens._store.close()


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_every_python_block_of_the_page_runs(
    page: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    offline: None,
    logging_restored: None,
    environ_restored: None,
) -> None:
    monkeypatch.chdir(tmp_path)
    # docs/deployment.md reads the store's URL from APITOKENS_DB: never the caller's.
    monkeypatch.delenv("APITOKENS_DB", raising=False)
    with run_page(page):
        pass


def test_the_leak_scanner_in_tokens_md_checks_the_real_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with run_page(ROOT / "docs" / "tokens.md") as page:
        assert capsys.readouterr().out == "leaked token with id 4fQ2mZ8kLr1b\n"
        assert page["TOKEN_PATTERN"].pattern == TOKEN_PATTERN.pattern
        for prefix in ("apt", "ab", "x9y8z7w6v5"):
            issued = TokenFormat(prefix).issue().value
            assert page["checksum"](issued[:-6]) == issued[-6:]


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_every_fence_names_its_language(page: Path) -> None:
    untagged = [block.line for block in blocks(page) if not block.lang]
    assert not untagged, f"{_ids(page)}: fences without a language at lines {untagged}"


def test_the_pages_have_python_blocks_to_run() -> None:
    # Guards the extraction: a parser that found nothing would pass every page.
    counts = {_ids(p): sum(b.lang == "python" for b in blocks(p)) for p in PAGES}
    assert counts["README.md"] >= 3
    assert counts["docs/token-program.md"] >= 7
    assert sum(counts.values()) >= 19


# -- the examples' docstrings ---------------------------------------------------------


@dataclass(frozen=True)
class Curl:
    """A curl line of a docstring, as a request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None


def _commands(doc: str, program: str) -> list[str]:
    """The docstring's command lines starting with ``program``, continuations joined."""
    text = doc.replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith(program + " ")]


def _curl(line: str, token: str) -> Curl:
    words = shlex.split(line.replace("$TOKEN", token))[1:]
    method, headers, body, url = "GET", {}, None, ""
    while words:
        word = words.pop(0)
        if word == "-H":
            name, _, value = words.pop(0).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "--data":
            body, method = words.pop(0).encode(), "POST" if method == "GET" else method
        elif word == "-X":
            method = words.pop(0)
        else:
            assert not word.startswith("-"), f"curl option {word} is not understood here"
            url = word
    return Curl(method, httpx.URL(url).raw_path.decode(), headers, body)


async def _send_asgi(app: Any, curl: Curl) -> int:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await client.request(
            curl.method, curl.path, headers=curl.headers, content=curl.body
        )
    return response.status_code


def _send(module: Any, curl: Curl) -> int:
    app = module.app
    if hasattr(app, "wsgi_app"):  # Flask
        transport = httpx.WSGITransport(app=app)
        with httpx.Client(transport=transport, base_url="http://127.0.0.1") as client:
            return client.request(
                curl.method, curl.path, headers=curl.headers, content=curl.body
            ).status_code
    return asyncio.run(_send_asgi(app, curl))


@pytest.mark.parametrize("name", ["flask_app", "fastapi_app"])
def test_the_example_docstring_makes_a_token_that_does_what_it_shows(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("APITOKENS_DB", raising=False)
    monkeypatch.delitem(sys.modules, f"examples.{name}", raising=False)
    source = (ROOT / "examples" / f"{name}.py").read_text(encoding="utf-8")
    doc = source.split('"""')[1]
    (create,) = _commands(doc, "apitokens")
    curls = _commands(doc, "curl")
    assert any("--data" in line for line in curls), "the docstring shows no write"
    done = subprocess.run(
        [sys.executable, "-m", "apitokens", *shlex.split(create)[1:]],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    token = TOKEN_PATTERN.search(done.stdout)
    assert token is not None, done.stdout
    module = importlib.import_module(f"examples.{name}")
    try:
        for line in curls:
            assert _send(module, _curl(line, token.group())) == 200, line
    finally:
        module.tokens.close()
        module.tokens._store.close()


def test_the_demo_leaves_no_temp_directory_behind(tmp_path: Path) -> None:
    # The demo's own requests are checked by tests/integration/test_demo.py.
    done = subprocess.run(
        [sys.executable, "examples/demo.py", "--check", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert str(tmp_path) in done.stdout  # it did work under this TMPDIR
    assert list(tmp_path.iterdir()) == []


def test_the_demo_stopped_with_sigterm_leaves_no_temp_directory_behind(tmp_path: Path) -> None:
    """``kill``, ``timeout`` and a container's stop send SIGTERM, not Ctrl-C."""
    demo = subprocess.Popen(
        [sys.executable, "examples/demo.py", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # bounded: the demo prints a few dozen lines, then waits
            if line.startswith("Try the lines above"):
                break
        assert list(tmp_path.iterdir()) != []  # its database is there while it runs
        demo.send_signal(signal.SIGTERM)
        output, _ = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, output
    assert "audit log, newest first" in output
    assert list(tmp_path.iterdir()) == []


# -- links between the pages ------------------------------------------------------------

LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings (outside fenced blocks)."""
    anchors: set[str] = set()
    inside = False
    for line in page.read_text(encoding="utf-8").splitlines():
        fence = FENCE.match(line)
        if fence:
            # Any fence opens a block; inside one, only a bare fence closes it.
            inside = not inside or bool(fence["info"].strip())
        elif not inside and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=_ids)
def test_every_link_to_a_page_or_heading_resolves(page: Path) -> None:
    broken = []
    for match in LINK.finditer(page.read_text(encoding="utf-8")):
        target = match["target"]
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (
            anchor and linked.suffix == ".md" and anchor not in _anchors(linked)
        ):
            broken.append(target)
    assert not broken, f"{_ids(page)}: broken links {broken}"


# -- a claim of docs/security.md about servers ------------------------------------------


async def _status_through(
    app: Any, client: tuple[str, int], headers: list[tuple[bytes, bytes]]
) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/rest/x",
        "raw_path": b"/rest/x",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": client,
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


@pytest.mark.parametrize(("proxy_headers", "status"), [(True, 200), (False, 403)])
def test_uvicorns_default_proxy_headers_let_a_local_peer_choose_its_address(
    proxy_headers: bool, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/security.md: by default uvicorn believes X-Forwarded-For from 127.0.0.1 and
    # ::1 and rewrites the client address before apitokens runs; --no-proxy-headers
    # leaves apitokens the real peer.
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with ApiTokens(MemoryStore(), policy=Policy(protected_paths=["/rest/"])) as tokens:
        token = tokens.create(actor="alice", name="ip", allowed_ips=["203.0.113.0/24"]).secret
        config = uvicorn.Config(tokens.asgi(inner), proxy_headers=proxy_headers)
        assert config.forwarded_allow_ips == "127.0.0.1,::1"
        config.load()
        headers = [
            (b"authorization", f"Bearer {token}".encode()),
            (b"x-forwarded-for", b"203.0.113.9"),
        ]
        got = asyncio.run(_status_through(config.loaded_app, ("127.0.0.1", 50000), headers))
    assert got == status
