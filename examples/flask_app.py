r"""A Flask service whose /rest/ API takes personal access tokens.

Run it from the repository root:

    flask --app examples.flask_app run --port 8000

In another shell, in the same directory, create a token that may read and
comment (the default, read-only, reads and gets 403 on the comment route):

    apitokens create --user alice --name cli --scope read-write

and try it, with the token it printed in $TOKEN:

    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/rest/whoami
    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/rest/api/2/issue/DEMO-1
    curl -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \
        --data '{"body": "hi"}' http://127.0.0.1:8000/rest/api/2/issue/DEMO-1/comment

Both use ``$APITOKENS_DB``, else ``./apitokens.db``.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, abort, request

from apitokens import ApiTokens, Policy, SQLiteStore

tokens = ApiTokens(
    SQLiteStore(os.environ.get("APITOKENS_DB", "apitokens.db")),
    policy=Policy(protected_paths=["/rest/"]),
)

app = Flask(__name__)
# The one line: every request to /rest/ now goes through apitokens.
app.wsgi_app = tokens.wsgi(app.wsgi_app)  # type: ignore[method-assign]


def current_user() -> str:
    """The token's user; the app's own login would be checked here too."""
    user = request.environ.get("REMOTE_USER")
    if user is None:
        abort(401)
    return str(user)


@app.get("/")
def home() -> dict[str, str]:
    """Not under /rest/: apitokens never touches it."""
    return {"hello": "world"}


@app.get("/rest/whoami")
def whoami() -> dict[str, Any]:
    """Who the token acts as."""
    auth = request.environ.get("apitokens.auth")
    return {"user": current_user(), "token": auth.token.id if auth and auth.token else None}


@app.get("/rest/api/2/issue/<key>")
def get_issue(key: str) -> dict[str, str]:
    """Read an issue."""
    return {"key": key, "summary": f"Issue {key}", "reader": current_user()}


@app.post("/rest/api/2/issue/<key>/comment")
def comment(key: str) -> dict[str, Any]:
    """Comment on an issue; the body arrives intact even when a JSON rule read it."""
    return {"key": key, "author": current_user(), "comment": request.get_json()}
