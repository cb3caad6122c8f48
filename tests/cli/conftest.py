"""Run the installed ``apitokens`` command in a subprocess against a real SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from apitokens import ApiTokens, AuthRequest, AuthResult, Policy, SQLiteStore

COMMAND = Path(sys.executable).with_name("apitokens")


@dataclass(frozen=True)
class Result:
    """What one run of the command did."""

    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


class Cli:
    """The installed command, pointed at one database and acting as ``admin``."""

    def __init__(self, db: Path, cwd: Path) -> None:
        self.db = db
        self.cwd = cwd
        # The user's own settings must not leak into the tests.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("APITOKENS_")}

    def __call__(
        self,
        *args: str,
        db: bool = True,
        actor: str | None = "admin",
        env: dict[str, str] | None = None,
        stdin: str | None = None,
    ) -> Result:
        argv = [str(COMMAND)]
        if db:
            argv += ["--db", str(self.db)]
        if actor is not None:
            argv += ["--actor", actor]
        done = subprocess.run(
            [*argv, *args],
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            input=stdin,
            timeout=60,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, **kwargs: Any) -> Result:
        """Run and require exit 0 with nothing on stderr."""
        result = self(*args, **kwargs)
        assert (result.code, result.err) == (0, ""), result
        return result

    def json(self, *args: str) -> Any:
        """Run with ``--json`` and return the parsed output."""
        return json.loads(self.ok(*args, "--json").out)

    def create(self, *args: str) -> tuple[str, str]:
        """Create a token; return (id, secret)."""
        issued = self.json("create", *args)
        return issued["token"]["id"], issued["secret"]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    if not COMMAND.exists():
        pytest.fail(f"{COMMAND} is not installed: run `pip install -e .` (make install)")
    db = tmp_path / "tokens.db"
    cli = Cli(db, tmp_path)
    SQLiteStore(db).close()  # create it now, so no run prints the "created" note

    return cli


def authenticate(
    db: Path,
    secret: str,
    *,
    method: str = "GET",
    path: str = "/rest/api/x",
    client_ip: str = "192.0.2.7",
    prefix: str = "apt",
) -> AuthResult:
    """Authenticate a request with ``secret`` through the library, on the command's database."""
    store = SQLiteStore(db)
    tokens = ApiTokens(store, policy=Policy(token_prefix=prefix))
    try:
        request = AuthRequest(
            method,
            path,
            headers=[("Authorization", f"Bearer {secret}")],
            client_ip=client_ip,
        )
        return tokens.authenticate(request)
    finally:
        tokens.close()
        store.close()
