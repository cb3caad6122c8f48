"""``--db`` and ``APITOKENS_DB`` take what ``apitokens.open_store`` takes.

SQLite paths and ``sqlite:///`` URLs name one file; an in-memory store is refused
(it would be gone when the command exits); a PostgreSQL URL or keyword DSN opens a
``PostgresStore`` on the session's server (``tests/support/postgres.py``), and
only ``create`` makes apitokens' tables there. No password reaches the output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import quote

import psycopg
import psycopg.conninfo
import pytest

from apitokens import ApiTokens, AuthRequest
from apitokens.postgres import PostgresStore
from apitokens.storage import redact_dsn
from tests.support import CHEAP_HASHER, Monotonic, bearer
from tests.support.postgres import PostgresServer, refused_dsns

from .conftest import Cli, Result

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


def test_a_keyword_dsn_with_an_unquoted_space_makes_no_sqlite_file(cli: Cli) -> None:
    # Once this was a SQLite path: "create" made a file named after the DSN, password
    # included, put the token there, and said so on stderr.
    url = "host=127.0.0.1 dbname=tokens password=hunter2 s3cret"
    before = sorted(cli.cwd.iterdir())
    result = cli("--db", url, "create", "--name", "lost", db=False)
    assert (result.code, result.out) == (2, ""), result
    assert "starts like a libpq keyword DSN" in result.err
    assert "hunter2" not in result.err
    assert "s3cret" not in result.err
    assert sorted(cli.cwd.iterdir()) == before


_WITHOUT_PSYCOPG = """
import sys
sys.modules["psycopg"] = None  # as without the postgres extra: importing it fails
from apitokens.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://admin:{SECRET}@127.0.0.1/tokens",
        f"host=127.0.0.1 dbname=tokens password={SECRET}",
    ],
)
def test_postgres_without_the_extra_says_what_to_install(cli: Cli, url: str) -> None:
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _WITHOUT_PSYCOPG, "--actor", "admin", *args],
            capture_output=True,
            text=True,
            cwd=cli.cwd,
            env={**cli.env, **(env or {})},
            timeout=60,
            check=False,
        )

    for result in (run("--db", url, "list"), run("list", env={"APITOKENS_DB": url})):
        assert (result.returncode, result.stdout) == (2, ""), result
        assert "pip install 'apitokens[postgres]'" in result.stderr
        assert "***" in result.stderr
        assert SECRET not in result.stderr
        assert len(result.stderr.splitlines()) == 1


def _tables(dsn: str) -> bool:
    """Whether apitokens' tables are in the fixture's schema."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('apitokens_tokens') IS NOT NULL").fetchone()
    return row is not None and bool(row[0])


def _as_url(dsn: str) -> str:
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    query = "&".join(f"{key}={quote(str(parts[key]), safe='')}" for key in ("host", "options"))
    return f"postgresql://{parts['user']}@/{parts['dbname']}?{query}"


@pytest.mark.parametrize("form", ["keywords", "url"])
@pytest.mark.parametrize("given", ["option", "environment"])
def test_create_list_revoke_audit_on_postgres(
    cli: Cli, postgres_database: str, form: str, given: str
) -> None:
    dsn = postgres_database if form == "keywords" else _as_url(postgres_database)

    def run(*args: str) -> Result:
        if given == "option":
            return cli("--db", dsn, *args, db=False)
        return cli(*args, db=False, env={"APITOKENS_DB": dsn})

    shown = redact_dsn(dsn)
    # Only create makes apitokens' tables: list on a database without them says so.
    for command in (["list"], ["audit"], ["revoke", "apt_x"]):
        refused = run(*command)
        assert (refused.code, refused.out) == (2, ""), refused
        assert refused.err == (
            f"apitokens: error: no apitokens tables in PostgreSQL database {shown!r} (check"
            " --db or APITOKENS_DB; `apitokens create` makes them)\n"
        )
    assert not _tables(postgres_database)

    made = run("create", "--name", "in postgres", "--json")
    assert made.code == 0, made
    assert made.err == f"apitokens: created the apitokens tables in PostgreSQL database {shown!r}\n"
    assert _tables(postgres_database)
    issued = json.loads(made.out)
    token_id, secret = issued["token"]["id"], issued["secret"]
    second = run("create", "--name", "second", "--json")
    assert (second.code, second.err) == (0, ""), second  # the tables are there now

    listed = run("list", "--json")
    assert listed.code == 0, listed
    assert sorted(t["name"] for t in json.loads(listed.out)) == ["in postgres", "second"]
    ticks = Monotonic()
    with (
        PostgresStore(postgres_database) as store,
        ApiTokens(store, hasher=CHEAP_HASHER, journal=False, monotonic=ticks) as tokens,
    ):
        request = AuthRequest("GET", "/rest/x", headers=bearer(secret))
        assert tokens.authenticate(request).status_code == 200
        revoked = run("revoke", token_id)
        assert revoked.out == f"Revoked token {token_id} ('in postgres', user admin).\n"
        ticks.advance(1.5)  # past the record cache's TTL: the CLI's revoke is read again
        assert tokens.authenticate(request).status_code == 401

    audit = run("audit", "--json", "--token", token_id)
    assert audit.code == 0, audit
    assert [(e["action"], e["outcome"]) for e in json.loads(audit.out)] == [
        ("authenticate", "failed"),
        ("revoke", "success"),
        ("authenticate", "success"),
        ("create", "success"),
    ]
    # No journal directory beside a server's store: nothing to replay, nothing made.
    assert sorted(p.name for p in cli.cwd.iterdir()) == [cli.db.name]


@pytest.mark.parametrize("command", [["list"], ["create", "--name", "x"]])
def test_a_wrong_password_or_no_server_is_one_line_without_the_password(
    cli: Cli, postgres_server: PostgresServer, command: list[str]
) -> None:
    for dsn in refused_dsns(postgres_server, SECRET):
        for result in (
            cli("--db", dsn, *command, db=False),
            cli(*command, db=False, env={"APITOKENS_DB": dsn}),
        ):
            assert (result.code, result.out) == (2, ""), (dsn, result)
            assert result.err.startswith("apitokens: error: cannot read PostgreSQL database '")
            assert len(result.err.splitlines()) == 1, result.err
            assert SECRET not in result.err, result.err
            assert "***" in result.err
