"""``--db`` and ``APITOKENS_DB`` take what ``apitokens.open_store`` takes.

SQLite paths and ``sqlite:///`` URLs name one file; an in-memory store is refused
(it would be gone when the command exits); a PostgreSQL URL goes to
``apitokens.postgres`` — missing here, as without the extra, or a stand-in that
records its DSN until ``PostgresStore`` and this branch meet. No password reaches
the output.
"""

from __future__ import annotations

import sys
import types

import pytest

from apitokens import MemoryStore

from .conftest import Cli

SECRET = "hunter2-s3cret"


def test_a_sqlite_url_names_the_same_file_as_its_path(cli: Cli) -> None:
    token_id, _ = cli.create("--name", "by path")
    absolute = f"sqlite:///{cli.db}"  # cli.db is absolute: sqlite:////tmp/...
    relative = f"sqlite:///{cli.db.name}"  # the command runs in cli.db's directory
    for url in (absolute, relative):
        listed = cli.ok("--db", url, "list", "--json", db=False).out
        assert token_id in listed, url
    by_env = cli.ok("list", db=False, env={"APITOKENS_DB": absolute}).out
    assert "by path" in by_env
    assert sorted(p.name for p in cli.cwd.iterdir() if p.suffix == ".db") == [cli.db.name]


def test_only_create_makes_a_missing_sqlite_file_given_as_a_url(cli: Cli) -> None:
    result = cli("--db", "sqlite:///typo.db", "list", db=False)
    assert (result.code, result.out) == (2, "")
    assert result.err.startswith("apitokens: error: no database at 'sqlite:///typo.db' ")
    assert not (cli.cwd / "typo.db").exists()
    made = cli("--db", "sqlite:///new.db", "create", "--name", "first", db=False)
    assert made.code == 0
    assert made.err == "apitokens: created a new database 'sqlite:///new.db'\n"
    assert (cli.cwd / "new.db").is_file()


@pytest.mark.parametrize("url", ["memory:", ":memory:", "sqlite://", "sqlite:///:memory:"])
@pytest.mark.parametrize("given", ["option", "environment"])
def test_an_in_memory_store_is_refused_as_it_keeps_nothing(cli: Cli, url: str, given: str) -> None:
    for command in (["create", "--name", "lost"], ["list"]):
        if given == "option":
            result = cli("--db", url, *command, db=False)
        else:
            result = cli(*command, db=False, env={"APITOKENS_DB": url})
        assert (result.code, result.out) == (2, ""), result
        assert result.err == (
            f"apitokens: error: database {url!r} is in memory and keeps nothing after the"
            " command exits; give a SQLite path or a postgresql:// URL\n"
        )
    assert sorted(p.name for p in cli.cwd.iterdir()) == [cli.db.name]


def test_rule_check_opens_no_store_so_any_db_is_fine(cli: Cli) -> None:
    result = cli("rule", "check", "[GET].*", "GET", "/x", db=False, env={"APITOKENS_DB": "memory:"})
    assert result.code == 0, result


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"mysql://admin:{SECRET}@db/tokens", "unknown scheme 'mysql'"),
        ("sqlite:tokens.db", "a SQLite URL is sqlite:///relative/path"),
        (f"postgresql+psycopg://admin:{SECRET}@db/tokens", "SQLAlchemy driver name"),
    ],
)
def test_a_db_no_store_takes_is_one_line_without_the_password(
    cli: Cli, url: str, says: str
) -> None:
    result = cli("--db", url, "list", db=False)
    assert (result.code, result.out) == (2, ""), result
    assert result.err.startswith("apitokens: error: cannot open a store from ")
    assert says in result.err
    assert len(result.err.splitlines()) == 1
    assert SECRET not in result.err


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://admin:{SECRET}@127.0.0.1/tokens",
        f"host=127.0.0.1 dbname=tokens password={SECRET}",
    ],
)
def test_postgres_without_the_extra_says_what_to_install(
    cli: Cli, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "apitokens.postgres", None)  # as without the extra
    for result in (
        cli("--db", url, "list", db=False),
        cli("list", db=False, env={"APITOKENS_DB": url}),
    ):
        assert (result.code, result.out) == (2, ""), result
        assert "pip install 'apitokens[postgres]'" in result.err
        assert "***" in result.err
        assert SECRET not in result.err
        assert len(result.err.splitlines()) == 1


class _Kept(MemoryStore):
    """A MemoryStore that outlives ``close()``, so that two runs of the command share it."""

    def close(self) -> None:
        pass


class _SharedStore:
    """Stands in for PostgresStore until the branches meet: one store for every run."""

    shared = _Kept()
    dsns: list[str] = []  # noqa: RUF012 - read by the test that sets it

    def __new__(cls, dsn: str) -> MemoryStore:  # type: ignore[misc]
        cls.dsns.append(dsn)
        return cls.shared


def test_a_postgres_url_reaches_postgres_store_and_the_command_works_on_it(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("apitokens.postgres")
    module.PostgresStore = _SharedStore  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "apitokens.postgres", module)
    _SharedStore.shared, _SharedStore.dsns = _Kept(), []
    url = f"postgresql://admin:{SECRET}@127.0.0.1/tokens"
    made = cli("--db", url, "create", "--name", "in postgres", db=False)
    assert made.code == 0, made
    assert made.err == ""  # no "created a new database": that is for a SQLite file
    listed = cli.ok("list", db=False, env={"APITOKENS_DB": url})
    assert "in postgres" in listed.out
    assert _SharedStore.dsns == [url, url]  # whole, password included, for the driver
    assert SECRET not in made.out + listed.out
    # No journal directory beside a server's store: nothing to replay, nothing made.
    assert sorted(p.name for p in cli.cwd.iterdir()) == [cli.db.name]
