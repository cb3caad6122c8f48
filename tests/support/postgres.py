"""A real PostgreSQL server for the tests: started once per session, a fresh database per test.

The server is a throwaway cluster in a temp directory (``initdb`` + ``pg_ctl``), reached
through a Unix socket in that directory only (no TCP port, so no clash with a server on
5432), with ``fsync`` off: it lives for one pytest session. PostgreSQL refuses to run as
root, so as root the directory is given to the ``postgres`` user and the programs run as
that user.

A missing PostgreSQL fails the tests that need it, with the package to install: it is
never a silent skip. ``APITOKENS_TEST_NO_POSTGRES=1`` skips them on purpose (for a
contributor's machine; CI never sets it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PostgresServer", "postgres_database", "postgres_server"]

OPT_OUT = "APITOKENS_TEST_NO_POSTGRES"
INSTALL = "apt-get install -y --no-install-recommends postgresql"
_RUN_AS = "postgres"


def _bin_directory() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: Debian's newest version, else ``PATH``."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway server: its socket directory and how to reach a database."""

    directory: Path
    bin: Path

    def dsn(self, dbname: str = "postgres") -> str:
        """The DSN of a database on this server (Unix socket, trust authentication)."""
        return f"host={self.directory} dbname={dbname} user=postgres"

    def admin(self) -> Any:
        """An autocommit connection to the ``postgres`` database (psycopg)."""
        import psycopg

        return psycopg.connect(self.dsn(), autocommit=True)


def _run(argv: list[str], *, as_user: str | None) -> None:
    kwargs: dict[str, Any] = {}
    if as_user is not None:
        entry = pwd.getpwnam(as_user)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        pytest.fail(
            f"{Path(argv[0]).name} failed ({result.returncode}):\n{result.stdout}{result.stderr}",
            pytrace=False,
        )


@contextlib.contextmanager
def running_server() -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL server; stop it and remove its directory at the end."""
    bin_dir = _bin_directory()
    if bin_dir is None:
        pytest.fail(
            f"PostgreSQL is not installed (no initdb/pg_ctl): {INSTALL}"
            f" (or set {OPT_OUT}=1 to skip the PostgreSQL tests on purpose)",
            pytrace=False,
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail(
            "psycopg is not installed: pip install -e '.[dev]' (or '.[postgres]')",
            pytrace=False,
        )
    as_user = _RUN_AS if os.geteuid() == 0 else None
    # Short: a Unix socket path is at most 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="apitokens-pg-", dir="/tmp"))
    try:
        if as_user is not None:
            entry = pwd.getpwnam(as_user)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        data = directory / "data"
        _run(
            [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            as_user=as_user,
        )  # fmt: skip
        # Socket only; no durability (the server lives for one session); room for the
        # pools of the concurrency tests.
        options = (
            f"-k {directory} -h '' -c fsync=off -c synchronous_commit=off"
            " -c full_page_writes=off -c max_connections=200"
        )
        _run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(directory / "log"),
             "-o", options, "start"],
            as_user=as_user,
        )  # fmt: skip
        try:
            yield PostgresServer(directory, bin_dir)
        finally:
            _run(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                as_user=as_user,
            )  # fmt: skip
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (started on first use)."""
    if os.environ.get(OPT_OUT) == "1":
        pytest.skip(f"{OPT_OUT}=1: the PostgreSQL tests are skipped on purpose")
    with running_server() as server:
        yield server


_numbers = itertools.count()


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """The DSN of a fresh, empty database, dropped after the test."""
    name = f"test_{os.getpid()}_{next(_numbers)}"
    with postgres_server.admin() as admin:
        # template0: nothing a test added to template1 leaks in. FILE_COPY: one copy of
        # the files, faster than WAL-logging every page with fsync off.
        admin.execute(f"CREATE DATABASE {name} TEMPLATE template0 STRATEGY FILE_COPY")
    try:
        yield postgres_server.dsn(name)
    finally:
        with postgres_server.admin() as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
