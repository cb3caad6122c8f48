"""Run the ``apitokens`` command against a real SQLite file.

``cli(...)`` runs :func:`apitokens.cli.main` in this process, as the installed
command would run it (its argv, environment, working directory, stdin, stdout and
stderr), because starting an interpreter per call cost most of this directory's
time. ``cli.installed(...)`` runs the installed command in a subprocess, for the
few tests that keep the entry point itself tested.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from apitokens import ApiTokens, AuthRequest, AuthResult, Policy, SQLiteStore
from apitokens.cli import main

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


def _text(stream: io.TextIOWrapper) -> str:
    """What was written to ``stream``, decoded as ``subprocess.run(text=True)`` would."""
    stream.flush()
    raw = stream.buffer
    assert isinstance(raw, io.BytesIO)
    return raw.getvalue().decode().replace("\r\n", "\n").replace("\r", "\n")


def _open_files() -> int:
    """How many file descriptors this process has open (0 where that cannot be told)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc (macOS)
        return 0


@contextlib.contextmanager
def _process_state(env: dict[str, str], cwd: Path) -> Iterator[None]:
    """Give one in-process run ``env`` and ``cwd``; put back all it may change after."""
    environ = dict(os.environ)
    here = os.getcwd()
    logger = logging.getLogger("apitokens")
    handlers = list(logger.handlers)
    threads = threading.active_count()
    fds = _open_files()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(environ)
        # main() adds its quiet handler once per process: take it away again, so later
        # tests (not the command's) see the library's logging as an application would.
        logger.handlers[:] = handlers
    # Every store, ApiTokens and writer thread the command opened is closed by now.
    assert threading.active_count() == threads, threading.enumerate()
    assert _open_files() <= fds  # and every file (SQLite, journal) it opened


class Cli:
    """The command, pointed at one database and acting as ``admin``."""

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
        """Run ``apitokens.cli.main`` in this process with the installed command's argv."""
        out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        given = io.TextIOWrapper(io.BytesIO((stdin or "").encode()), encoding="utf-8")
        streams = (sys.stdin, sys.stdout, sys.stderr)
        # The installed command's stdout is a pipe, so argparse wraps --help at 80 columns;
        # here fd 1 may be a terminal (pytest -s), so say 80 unless the test's env says.
        environ = {"COLUMNS": "80", **self.env, **(env or {})}
        with _process_state(environ, self.cwd):
            sys.stdin, sys.stdout, sys.stderr = given, out, err
            try:
                code = main(self._argv(args, db=db, actor=actor))
            finally:
                sys.stdin, sys.stdout, sys.stderr = streams
        return Result(code, _text(out), _text(err))

    def installed(
        self,
        *args: str,
        db: bool = True,
        actor: str | None = "admin",
        env: dict[str, str] | None = None,
        stdin: str | None = None,
    ) -> Result:
        """Run the installed ``apitokens`` command in a subprocess."""
        done = subprocess.run(
            [str(COMMAND), *self._argv(args, db=db, actor=actor)],
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            input=stdin,
            timeout=60,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def _argv(self, args: tuple[str, ...], *, db: bool, actor: str | None) -> list[str]:
        argv = []
        if db:
            argv += ["--db", str(self.db)]
        if actor is not None:
            argv += ["--actor", actor]
        return [*argv, *args]

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
