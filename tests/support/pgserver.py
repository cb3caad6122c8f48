"""A throwaway PostgreSQL server, for the tests and the benchmarks (no pytest here).

The server is a cluster in a temp directory (``initdb`` + ``pg_ctl``), reached through a
Unix socket in that directory only (no TCP port, so no clash with a server on 5432),
with ``fsync`` off: it lives for one test session or one benchmark run. PostgreSQL
refuses to run as root, so as root the directory is given to the ``postgres`` user and
the programs run as that user. What cannot start raises ``ServerUnavailable`` with the
package to install.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ADMIN", "INSTALL", "OPT_OUT", "PostgresServer", "ServerUnavailable", "running_server"]

OPT_OUT = "APITOKENS_TEST_NO_POSTGRES"
INSTALL = "apt-get install -y --no-install-recommends postgresql"
_RUN_AS = "postgres"
ADMIN = "apitokens-tests-admin"
"""The ``application_name`` of the fixtures' own connections (a test that kills
connections spares them)."""
PASSWORD_USER = "apitokens_password"
"""A role that must log in with a password (created by the tests); every other role is
trusted."""


class ServerUnavailable(RuntimeError):
    """PostgreSQL or psycopg is missing, or the server would not start."""


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
        raise ServerUnavailable(
            f"{Path(argv[0]).name} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )


@contextlib.contextmanager
def running_server() -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL server; stop it and remove its directory at the end."""
    bin_dir = _bin_directory()
    if bin_dir is None:
        raise ServerUnavailable(
            f"PostgreSQL is not installed (no initdb/pg_ctl): {INSTALL}"
            f" (or set {OPT_OUT}=1 to skip the PostgreSQL tests on purpose)"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ServerUnavailable(
            "psycopg is not installed: pip install -e '.[dev]' (or '.[postgres]')"
        ) from None
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
