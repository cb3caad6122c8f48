"""A FastAPI service whose /rest/ API takes personal access tokens.

Run it:   uvicorn examples.fastapi_app:app --host 127.0.0.1 --port 8000
Create a token in Python (``examples/demo.py`` does it for you):
    tokens.create(actor="alice", name="cli").secret
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from apitokens import ApiTokens, AuthResult, Policy, SQLiteStore
from apitokens.starlette import RequireToken

tokens = ApiTokens(
    SQLiteStore(os.environ.get("APITOKENS_DB", "apitokens.db")),
    policy=Policy(protected_paths=["/rest/"]),
)

api = FastAPI(title="Issue tracker (apitokens example)")
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
