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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

__all__ = ["PostgresServer", "postgres_database", "postgres_server", "refused_dsns"]

OPT_OUT = "APITOKENS_TEST_NO_POSTGRES"
INSTALL = "apt-get install -y --no-install-recommends postgresql"
_RUN_AS = "postgres"
TEST_DATABASE = "apitokens_test"
"""The database whose schemas the tests get (``postgres_database``)."""
PASSWORD_USER = "apitokens_password"
"""A role that must log in with a password (``PASSWORD``); every other role is trusted."""
PASSWORD = "the-right-password"
ADMIN = "apitokens-tests-admin"
"""The ``application_name`` of the fixtures' own connections (a test that kills
connections spares them)."""


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


@dataclass
class PostgresServer:
    """A running throwaway server: its socket directory and how to reach a database."""

    directory: Path
    bin: Path
    _admins: dict[str, Any] = field(default_factory=dict)

    def dsn(self, dbname: str = "postgres") -> str:
        """The DSN of a database on this server (Unix socket, trust authentication)."""
        return f"host={self.directory} dbname={dbname} user=postgres"

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        """Run one statement as the superuser, in ``dbname`` (one connection per database)."""
        import psycopg

        conn = self._admins.get(dbname)
        if conn is None or conn.closed:
            conn = psycopg.connect(self.dsn(dbname), autocommit=True, application_name=ADMIN)
            self._admins[dbname] = conn
        conn.execute(sql)


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
        # The first matching line wins: one role checks its password, for the tests of
        # what a wrong password shows.
        hba = data / "pg_hba.conf"
        hba.write_text(f"local all {PASSWORD_USER} scram-sha-256\n" + hba.read_text())
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
        server = PostgresServer(directory, bin_dir)
        try:
            yield server
        finally:
            for conn in server._admins.values():
                conn.close()
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
        server.execute(f"CREATE DATABASE {TEST_DATABASE} TEMPLATE template0")
        server.execute(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'")
        yield server


_numbers = itertools.count()


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """The DSN of a fresh, empty place for apitokens' tables: a schema of its own.

    A schema, not a database: ``CREATE DATABASE`` and ``DROP DATABASE`` each force a
    checkpoint (about 30 ms apiece once the server has done some work), a schema costs
    a millisecond, and apitokens keeps everything it creates in the first schema of
    the ``search_path``, which the DSN sets. Dropped after the test.
    """
    name = f"test_{os.getpid()}_{next(_numbers)}"
    dsn = postgres_server.dsn(TEST_DATABASE)
    postgres_server.execute(f"CREATE SCHEMA {name}", TEST_DATABASE)
    try:
        yield f"{dsn} options='-c search_path={name}'"
    finally:
        postgres_server.execute(f"DROP SCHEMA {name} CASCADE", TEST_DATABASE)


def refused_dsns(server: PostgresServer, password: str) -> list[str]:
    """DSNs with ``password`` that no connection is made with, as URLs and as keywords.

    Four give it for ``PASSWORD_USER``, whom the server refuses with "password
    authentication failed"; two name a TCP port nothing listens on ("Connection
    refused"); two a socket directory that does not exist.
    """
    socket = quote(str(server.directory), safe="")
    user = f"host={server.directory} dbname={TEST_DATABASE} user={PASSWORD_USER}"
    return [
        f"postgresql://{PASSWORD_USER}:{password}@/{TEST_DATABASE}?host={socket}",
        f"postgresql://{PASSWORD_USER}@/{TEST_DATABASE}?host={socket}&password={password}",
        f"{user} password={password}",
        f"{user} password='{password} x'",
        f"postgresql://app:{password}@127.0.0.1:1/app?connect_timeout=2",
        f"host=127.0.0.1 port=1 dbname=app user=app password={password} connect_timeout=2",
        f"postgres://app:{password}@/app?host=/nonexistent-apitokens",
        f"host=/nonexistent-apitokens dbname=app password={password}",
    ]
