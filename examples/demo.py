"""`make demo`: a real service protected by apitokens, with tokens and curl lines to try.

Starts the FastAPI example (examples/fastapi_app.py) under uvicorn on
127.0.0.1:8000 with an embedded SQLite file in a temporary directory (removed
when it stops), creates a read-only token and a restricted one, and prints
curl commands that show 200, 401 and 403. The token pages are mounted at
/settings/tokens behind a demo login (any user name, no password; "admin"
is the token admin).

    python examples/demo.py                 # serve until Ctrl-C
    python examples/demo.py --check         # serve, run the curl lines itself, stop
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from apitokens import Scope
from apitokens.web import TokenPages

PAGES = "/settings/tokens"
LOGIN_FORM = """<!doctype html><title>Sign in to the demo</title>
<form method="post" action="/login">
<p>A demo login: any user name, no password. <b>admin</b> is the token admin.</p>
<label for="user">User name</label> <input id="user" name="user" value="alice">
<button type="submit">Sign in</button>
</form>"""


async def login(request: Request) -> Response:
    """The demo's own login (the host app's, never a token): a name in a signed cookie."""
    if request.method == "GET":
        return HTMLResponse(LOGIN_FORM)
    user = str((await request.form()).get("user", "")).strip()
    if not user:
        return HTMLResponse(LOGIN_FORM, status_code=400)
    request.session["user"] = user
    return RedirectResponse(PAGES + "/", status_code=303)


def signed_in(scope: dict[str, object]) -> str | None:
    """The demo login's user: what TokenPages(current_user=...) is given."""
    session = scope.get("session")
    user = session.get("user") if isinstance(session, dict) else None
    return user if isinstance(user, str) else None


def site(example: ModuleType) -> Starlette:
    """The example's API, the token pages under PAGES, and the demo login."""
    key = os.urandom(32)  # this run only: signs the session cookie and the pages' CSRF tokens
    pages = TokenPages(example.tokens, current_user=signed_in, secret_key=key, login_url="/login")
    return Starlette(
        routes=[
            Route("/login", login, methods=["GET", "POST"]),
            Mount(PAGES, app=pages.asgi()),
            Mount("/", app=example.app),
        ],
        middleware=[Middleware(SessionMiddleware, secret_key=key.hex())],
    )


@dataclass
class Try:
    """One request to show: what it does and what it should get."""

    what: str
    method: str
    path: str
    expect: int
    bearer: str | None = None
    basic: tuple[str, str] | None = None
    body: dict[str, object] | None = None

    def curl(self, base: str) -> str:
        parts = ["curl", "-i"]
        if self.method != "GET":
            parts += ["-X", self.method]
        if self.bearer:
            parts += ["-H", f"Authorization: Bearer {self.bearer}"]
        if self.basic:
            parts += ["-u", f"{self.basic[0]}:{self.basic[1]}"]
        if self.body is not None:
            parts += ["-H", "Content-Type: application/json", "--data", json.dumps(self.body)]
        parts.append(base + self.path)
        return shlex.join(parts)

    def run(self, client: httpx.Client) -> int:
        headers = {"Authorization": f"Bearer {self.bearer}"} if self.bearer else {}
        return client.request(
            self.method, self.path, headers=headers, auth=self.basic, json=self.body
        ).status_code


def check_pages(client: httpx.Client) -> int:
    """The pages: a login first, then alice's list with the demo's tokens; mismatches."""
    failures = 0
    first = client.get(PAGES + "/")
    failures += first.status_code not in (302, 303, 307)
    client.post("/login", data={"user": "alice"})
    page = client.get(PAGES + "/")
    failures += page.status_code != 200 or "demo: read-only report" not in page.text
    print(f"# token pages as alice: {page.status_code}{'' if not failures else '  MISMATCH'}")
    return failures


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # SIGTERM (kill, timeout, a container's stop) ends it the same way as Ctrl-C, so the
    # database of this run is deleted then too.
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", "8000")))
    parser.add_argument("--check", action="store_true", help="run the requests, then stop")
    args = parser.parse_args()
    # The database lives only as long as the demo: nothing is left in the temp dir.
    with tempfile.TemporaryDirectory(prefix="apitokens-demo-") as workdir:
        os.environ["APITOKENS_DB"] = str(Path(workdir) / "tokens.db")
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        example = importlib.import_module("examples.fastapi_app")
        try:
            return serve(args, example, Path(workdir))
        finally:
            example.tokens.close()  # before its directory goes


def serve(args: argparse.Namespace, example: ModuleType, workdir: Path) -> int:
    """Serve the example (database in ``workdir``); show, or check, the tries."""
    tokens = example.tokens

    reader = tokens.create(actor="alice", name="demo: read-only report")
    restricted = tokens.create(
        actor="alice",
        name="demo: comment on DEMO-1 only, public comments only",
        scope=Scope.READ_WRITE,
        restrictions=[
            "[post].*/rest/api/2/issue/DEMO-1/comment[JsonData::visibility==public]",
        ],
    )
    # Credits, not a rate limit: no window can roll over between the tries.
    limited = tokens.create(actor="alice", name="demo: two uses in all", credits=2)
    wrong = tokens.policy.token_format.issue().value
    tries = [
        Try("read-only token, Bearer", "GET", "/rest/api/2/issue/DEMO-1", 200, reader.secret),
        Try("same token, Basic user:token", "GET", "/rest/whoami", 200,
            basic=("alice", reader.secret)),
        Try("no token at all", "GET", "/rest/whoami", 401),
        Try("a token that does not exist", "GET", "/rest/whoami", 401, wrong),
        Try("read-only token cannot POST", "POST", "/rest/api/2/issue/DEMO-1/comment", 403,
            reader.secret, body={"visibility": "public", "body": "hi"}),
        Try("restricted token, allowed request", "POST", "/rest/api/2/issue/DEMO-1/comment",
            200, restricted.secret, body={"visibility": "public", "body": "hi"}),
        Try("restricted token, other issue", "POST", "/rest/api/2/issue/DEMO-2/comment", 403,
            restricted.secret, body={"visibility": "public", "body": "hi"}),
        Try("restricted token, private comment", "POST", "/rest/api/2/issue/DEMO-1/comment",
            403, restricted.secret, body={"visibility": "private", "body": "hi"}),
        Try("token with 2 credits, first use", "GET", "/rest/whoami", 200, limited.secret),
        Try("second use", "GET", "/rest/whoami", 200, limited.secret),
        Try("credits spent: 429 (see RateLimit and RateLimit-Policy with curl -i)", "GET",
            "/rest/whoami", 429, limited.secret),
        Try("outside /rest/: untouched", "GET", "/", 200),
    ]  # fmt: skip

    config = uvicorn.Config(
        site(example),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        proxy_headers=False,  # never believe a client's X-Forwarded-For (docs/security.md)
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            print(
                f"could not start the server on 127.0.0.1:{args.port}"
                " (another port: make demo DEMO_PORT=8001, or --port)",
                file=sys.stderr,
            )
            return 1
        thread.join(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"

    print(f"apitokens demo: FastAPI on {base}, tokens in {workdir / 'tokens.db'}")
    print("(a database of this run only: it is deleted when the demo stops)\n")
    print(f"read-only token for alice:   {reader.secret}")
    print(f"restricted token for alice:  {restricted.secret}")
    print(f"  rule: {restricted.token.restrictions[0]}")
    print(f"token with 2 credits:        {limited.secret}\n")
    print(f"token pages: {base}{PAGES}/ (sign in as alice, or as admin)\n")
    failures = 0
    with httpx.Client(base_url=base) as client:
        for t in tries:
            print(f"# {t.what}: expect {t.expect}")
            print(t.curl(base))
            if args.check:
                got = t.run(client)
                failures += got != t.expect
                print(f"#   -> {got}{'' if got == t.expect else '  MISMATCH'}")
            print()
        if args.check:
            failures += check_pages(client)
    if not args.check:
        with contextlib.suppress(KeyboardInterrupt):
            print("Try the lines above; Ctrl-C stops the server and prints the audit log.")
            thread.join()
    server.should_exit = True
    thread.join(10)
    print("\naudit log, newest first:")
    for event in tokens.audit(limit=20):
        print(f"  {event.at:%H:%M:%S} {event.action:<12} {event.outcome:<9} "
              f"{event.token_id or '-':<12} {event.method or '':<4} {event.path or ''}  "
              f"{event.reason}")  # fmt: skip
    if args.check:
        print("all as expected" if not failures else f"{failures} unexpected", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
