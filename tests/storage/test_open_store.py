"""open_store(url): which store each string opens, and the strings it refuses.

PostgreSQL strings open a real ``PostgresStore`` on the session's server
(``tests/support/postgres.py``); without the extra is a subprocess that cannot
import psycopg.
"""

from __future__ import annotations

import re
import subprocess
import sys
import traceback
from pathlib import Path
from urllib.parse import quote

import psycopg
import psycopg.conninfo
import pytest

import apitokens
from apitokens import ApiTokens, MemoryStore, SQLiteStore, StorageError, TokenStore, open_store
from apitokens.postgres import PostgresStore
from apitokens.storage._open import locate
from apitokens.testing import NOW, stored
from tests.support import CHEAP_HASHER
from tests.support.postgres import (
    PASSWORD,
    PASSWORD_USER,
    TEST_DATABASE,
    PostgresServer,
    refused_dsns,
)

SECRET = "hunter2-s3cret"
INSTALL = "pip install 'apitokens[postgres]'"


def _ids(store: TokenStore) -> list[str]:
    return [token.id for token in store.list(now=NOW)]


@pytest.mark.parametrize("url", [":memory:", "memory:"])
def test_memory_opens_a_memory_store(url: str) -> None:
    store = open_store(url)
    assert type(store) is MemoryStore


def test_a_path_a_relative_url_and_an_absolute_url_open_one_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = open_store("tokens.db")
    assert type(first) is SQLiteStore
    first.add(stored("a" * 16))
    first.close()
    assert (tmp_path / "tokens.db").is_file()
    for url in (
        "sqlite:///tokens.db",
        f"sqlite:///{tmp_path}/tokens.db",  # an absolute path: four slashes
        str(tmp_path / "tokens.db"),
        "./tokens.db",
    ):
        store = open_store(url)
        try:
            assert type(store) is SQLiteStore
            assert _ids(store) == ["a" * 16], url
        finally:
            store.close()
    path_store = open_store(tmp_path / "tokens.db")  # an os.PathLike is always a path
    try:
        assert _ids(path_store) == ["a" * 16]
    finally:
        path_store.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == ["tokens.db"]


def test_a_sqlite_path_may_hold_a_colon_or_look_like_a_keyword_when_written_as_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for url, name in (("./a:b.sqlite", "a:b.sqlite"), ("./host=x.db", "host=x.db"),
                      ("sqlite:///c:d.db", "c:d.db")):  # fmt: skip
        store = open_store(url)
        store.close()
        assert type(store) is SQLiteStore
        assert (tmp_path / name).is_file(), url


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "SQLite://"])
def test_sqlite_without_a_path_is_a_private_in_memory_database(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(url)
    try:
        assert isinstance(store, SQLiteStore)
        assert store.journal_directory is None  # no file, so nothing beside it
        store.add(stored("b" * 16))
        assert _ids(store) == ["b" * 16]
    finally:
        store.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "no store given"),
        ("   ", "no store given"),
        ("memory:x", "unknown scheme 'memory'"),
        ("memory://", "unknown scheme 'memory'"),
        ("file:tokens.db", "unknown scheme 'file'"),
        ("redis://cache:6379/0", "unknown scheme 'redis'"),
        (f"mysql://app:{SECRET}@db/app", "unknown scheme 'mysql'"),
        (f"mysql:app:{SECRET}@db", "unknown scheme 'mysql'"),
        (f"mysql:host=db password={SECRET}", "unknown scheme 'mysql'"),
        (f"postgresql+psycopg://app:{SECRET}@db/app", "SQLAlchemy driver name"),
        ("sqlite:tokens.db", "sqlite:///relative/path"),
        ("sqlite://host/tokens.db", "sqlite:///relative/path"),
        ("sqlite:///", "sqlite:///relative/path"),
        ("sqlite:///tokens.db?mode=ro", "no query parameters"),
    ],
)
def test_anything_else_is_a_value_error_that_says_why_and_hides_the_password(
    url: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape(says)) as caught:
        open_store(url)
    message = str(caught.value)
    assert SECRET not in message
    if SECRET in url:
        assert "***" in message
    assert list(tmp_path.iterdir()) == []  # nothing made on the way


@pytest.mark.parametrize(
    "url",
    [
        "host=db dbname=app user=app password=hunter2 s3cret",  # a space, unquoted
        "  password = hunter2 s3cret host=db",
        "user=app hunter2-s3cret",  # a word that is no pair
        "host=db dbname=app password='hunter2' s3cret",
    ],
)
def test_a_string_that_starts_like_a_keyword_dsn_but_is_not_one_is_refused_unquoted(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once such a string was a SQLite path: "apitokens --db ... create" made a file named
    # after the password, and the messages quoted it.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="starts like a libpq keyword DSN") as caught:
        open_store(url)
    message = str(caught.value)
    assert "hunter2" not in message
    assert "s3cret" not in message
    assert "password='my secret'" in message  # what to write instead
    assert list(tmp_path.iterdir()) == []  # nothing made on the way


@pytest.mark.parametrize("url", [b"tokens.db", 42, None])
def test_a_url_is_a_str_or_a_path(url: object) -> None:
    with pytest.raises(TypeError, match="a store URL is a str or a path"):
        open_store(url)  # type: ignore[arg-type]


_WITHOUT_PSYCOPG = """
import sys
sys.modules["psycopg"] = None  # as without the postgres extra: importing it fails
from apitokens import open_store
try:
    open_store(sys.argv[1])
except ImportError as error:
    print(error)
    print("".join(__import__("traceback").format_exception(error)), file=sys.stderr)
"""


def test_postgres_without_the_extra_names_the_extra_and_hides_the_password() -> None:
    urls = [
        f"postgresql://app:{SECRET}@db.example/app",
        f"postgres://app:{SECRET}@db.example:5433/app?sslmode=require",
        f"postgresql://db.example/app?password={SECRET}",
        f"host=db.example dbname=app password={SECRET}",
        f"dbname=app password='{SECRET} x'",
    ]
    for url in urls:
        result = subprocess.run(
            [sys.executable, "-c", _WITHOUT_PSYCOPG, url],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert INSTALL in result.stdout, (url, result.stderr)
        assert "***" in result.stdout
        assert SECRET not in result.stdout + result.stderr  # the traceback included


def _url(dsn: str, scheme: str = "postgresql") -> str:
    """The fixture's keyword DSN as a URL: the socket directory and options as parameters."""
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    query = "&".join(f"{key}={quote(str(parts[key]), safe='')}" for key in ("host", "options"))
    return f"{scheme}://{parts['user']}@/{parts['dbname']}?{query}"


def test_postgres_urls_and_keyword_dsns_open_one_working_postgres_store(
    postgres_database: str,
) -> None:
    url = _url(postgres_database)
    forms = [
        postgres_database,
        url,
        _url(postgres_database, "postgres"),
        _url(postgres_database, "PostgreSQL"),  # libpq wants the prefix in lower case
    ]
    names = []
    for number, form in enumerate(forms):
        store = open_store(form)
        try:
            assert type(store) is PostgresStore, form
            with ApiTokens(store, hasher=CHEAP_HASHER, journal=False) as tokens:
                issued = tokens.create(actor="alice", name=f"made through form {number}")
                got = store.get(issued.token.id)
                assert got is not None
                assert got.token.name == f"made through form {number}"
                names = sorted(token.name for token in tokens.list(actor="alice"))
        finally:
            store.close()
    # One database (the fixture's schema) behind every form: each sees what the others made.
    assert names == [f"made through form {number}" for number in range(len(forms))]


def _shown(error: BaseException) -> str:
    """All that a traceback or a logger shows of ``error``, its causes and contexts included."""
    return "".join(traceback.format_exception(error)) + repr(error.args)


WRONG = "Wr0ng-pa55word-7c1e"


def test_the_password_server_checks_passwords(postgres_server: PostgresServer) -> None:
    # What the next test relies on: this role is refused with a wrong password.
    dsn = f"host={postgres_server.directory} dbname={TEST_DATABASE} user={PASSWORD_USER}"
    with psycopg.connect(f"{dsn} password={PASSWORD}") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (PASSWORD_USER,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"{dsn} password={WRONG}")


def test_a_wrong_password_or_no_server_is_a_storage_error_without_the_password(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    said = []
    for dsn in refused_dsns(postgres_server, WRONG):
        with pytest.raises(StorageError) as caught:
            open_store(dsn)
        assert WRONG not in _shown(caught.value), dsn
        said.append(str(caught.value))
    assert WRONG not in caplog.text
    assert sum("password authentication failed" in message for message in said) == 4, said
    assert sum("Connection refused" in message for message in said) == 2, said


@pytest.mark.parametrize(
    ("url", "given"),
    [
        ("postgresql://app:pw@db/app", "postgresql://app:pw@db/app"),
        ("postgres://app@db/app", "postgres://app@db/app"),
        ("PostgreSQL://db/app", "postgresql://db/app"),  # libpq wants the prefix in lower case
        ("host=/run/postgresql dbname=app", "host=/run/postgresql dbname=app"),
        ("  dbname = app  user=me", "  dbname = app  user=me"),
    ],
)
def test_postgres_urls_and_keyword_dsns_go_to_postgres_store_whole(url: str, given: str) -> None:
    location = locate(url)
    assert (location.kind, location.target) == ("postgres", given)


def test_a_location_never_shows_the_password() -> None:
    location = locate(f"postgresql://app:{SECRET}@db/app")
    assert location.kind == "postgres"
    assert SECRET in location.target  # what PostgresStore needs
    assert SECRET not in repr(location)
    assert SECRET not in location.shown


def test_open_store_is_public_and_documented() -> None:
    assert apitokens.open_store is apitokens.storage.open_store
    assert "postgresql://" in (open_store.__doc__ or "")
