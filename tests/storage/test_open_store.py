"""open_store(url): which store each string opens, and the strings it refuses.

PostgreSQL is not on this branch yet: ``apitokens.postgres`` is made missing (as
without the extra) or replaced by a stand-in that records its DSN, to test the
dispatch only. The tests against a real server come with ``PostgresStore``.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

import apitokens
from apitokens import MemoryStore, SQLiteStore, TokenStore, open_store
from apitokens.storage._open import locate
from apitokens.testing import NOW, stored

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


@pytest.mark.parametrize("url", [b"tokens.db", 42, None])
def test_a_url_is_a_str_or_a_path(url: object) -> None:
    with pytest.raises(TypeError, match="a store URL is a str or a path"):
        open_store(url)  # type: ignore[arg-type]


@pytest.fixture
def no_postgres_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import apitokens.postgres`` fail, as it does without the extra."""
    monkeypatch.setitem(sys.modules, "apitokens.postgres", None)


@pytest.mark.usefixtures("no_postgres_extra")
@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SECRET}@db.example/app",
        f"postgres://app:{SECRET}@db.example:5433/app?sslmode=require",
        f"postgresql://db.example/app?password={SECRET}",
        f"host=db.example dbname=app password={SECRET}",
        f"dbname=app password='{SECRET} x'",
    ],
)
def test_postgres_without_the_extra_names_the_extra_and_hides_the_password(url: str) -> None:
    with pytest.raises(ImportError) as caught:
        open_store(url)
    message = str(caught.value)
    assert INSTALL in message
    assert SECRET not in message
    assert "***" in message


class _Recorded(MemoryStore):
    """Stands in for PostgresStore until the branches meet: records the DSN it got."""

    dsns: list[str] = []  # noqa: RUF012 - one list for the test that reads it

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsns.append(dsn)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    module = types.ModuleType("apitokens.postgres")
    module.PostgresStore = _Recorded  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "apitokens.postgres", module)
    _Recorded.dsns = []
    return _Recorded.dsns


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
def test_postgres_urls_and_keyword_dsns_go_to_postgres_store_whole(
    url: str, given: str, recorded: list[str]
) -> None:
    store = open_store(url)
    assert type(store) is _Recorded
    assert recorded == [given]


def test_a_location_never_shows_the_password() -> None:
    location = locate(f"postgresql://app:{SECRET}@db/app")
    assert location.kind == "postgres"
    assert SECRET in location.target  # what PostgresStore needs
    assert SECRET not in repr(location)
    assert SECRET not in location.shown


def test_open_store_is_public_and_documented() -> None:
    assert apitokens.open_store is apitokens.storage.open_store
    assert "postgresql://" in (open_store.__doc__ or "")
