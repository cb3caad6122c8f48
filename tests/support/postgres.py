"""A real PostgreSQL server for the tests: started once per session, a fresh schema per test.

The server itself is ``tests/support/pgserver.py`` (shared with the benchmarks). A
missing PostgreSQL fails the tests that need it, with the package to install: it is
never a silent skip. ``APITOKENS_TEST_NO_POSTGRES=1`` skips them on purpose (for a
contributor's machine; CI never sets it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.support.pgserver import (
    ADMIN,
    OPT_OUT,
    PASSWORD_USER,
    PostgresServer,
    ServerUnavailable,
)
from tests.support.pgserver import running_server as _running_server

__all__ = [
    "ADMIN",
    "OPT_OUT",
    "PASSWORD",
    "PASSWORD_USER",
    "PostgresServer",
    "postgres_database",
    "postgres_server",
    "refused_dsns",
    "running_server",
]

TEST_DATABASE = "apitokens_test"
"""The database whose schemas the tests get (``postgres_database``)."""
PASSWORD = "the-right-password"


@contextlib.contextmanager
def running_server() -> Iterator[PostgresServer]:
    """The throwaway server; a machine that cannot run one fails the test, naming why."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(_running_server())
        except ServerUnavailable as error:
            pytest.fail(str(error), pytrace=False)
        yield server


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
