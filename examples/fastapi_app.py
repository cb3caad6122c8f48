r"""A FastAPI service whose /rest/ API takes personal access tokens.

Run it from the repository root (``make demo`` does all of this for you):

    uvicorn examples.fastapi_app:app --host 127.0.0.1 --port 8000 --no-proxy-headers

(``--no-proxy-headers``: uvicorn would otherwise believe any client's
``X-Forwarded-For``, and a token's allowed IPs with it; see docs/security.md.)

In another shell, in the same directory, create a token that may read and
comment (the default, read-only, reads and gets 403 on the comment route):

    apitokens create --user alice --name cli --scope read-write

and try it, with the token it printed in $TOKEN:

    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/rest/whoami
    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/rest/api/2/issue/DEMO-1
    curl -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \
        --data '{"body": "hi"}' http://127.0.0.1:8000/rest/api/2/issue/DEMO-1/comment

Both use ``$APITOKENS_DB``, else ``./apitokens.db``. A route that needs a
token uses ``RequireToken``; with ``render_refusal`` registered for its
``RouteRefused``, every refusal (no token there, a bad token, a forbidden
request) has the ``{"error": ..., "error_description": ...}`` body of
docs/middleware.md.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from apitokens import ApiTokens, AuthResult, Policy, SQLiteStore
from apitokens.starlette import RequireToken, RouteRefused, render_refusal

tokens = ApiTokens(
    SQLiteStore(os.environ.get("APITOKENS_DB", "apitokens.db")),
    # The user "admin" (the demo's admin) may see every token and the audit log.
    policy=Policy(protected_paths=["/rest/"], token_admins=frozenset({"admins"})),
    groups=lambda user: {"admins"} if user == "admin" else set(),
)

api = FastAPI(
    title="Issue tracker (apitokens example)",
    exception_handlers={RouteRefused: render_refusal},
)
Authenticated = Annotated[AuthResult, Depends(RequireToken(tokens))]
CanWrite = Annotated[AuthResult, Depends(RequireToken(tokens, write=True))]


@api.get("/")
def home() -> dict[str, str]:
    """Not under /rest/: apitokens never touches it."""
    return {"hello": "world"}


@api.get("/rest/whoami")
def whoami(auth: Authenticated) -> dict[str, Any]:
    """Who the token acts as."""
    return {"user": auth.user, "token": auth.token.id if auth.token else None}


@api.get("/rest/api/2/issue/{key}")
def get_issue(key: str, auth: Authenticated) -> dict[str, str]:
    """Read an issue."""
    return {"key": key, "summary": f"Issue {key}", "reader": auth.user or ""}


@api.post("/rest/api/2/issue/{key}/comment")
async def comment(key: str, request: Request, auth: CanWrite) -> dict[str, Any]:
    """Comment on an issue; the body arrives intact even when a JSON rule read it."""
    return {"key": key, "author": auth.user, "comment": await request.json()}


# The one line: every request to /rest/ now goes through apitokens.
app = tokens.asgi(api)
