"""Schema version 3: the index of audit outcomes holds only the rows that are not successes."""

from __future__ import annotations

from pathlib import Path

import pytest

from apitokens._model import Outcome
from apitokens.storage import SQLiteStore, _migrations, _queries
from apitokens.storage._filters import EventQuery
from apitokens.storage._schema import to_micros
from apitokens.testing import NOW, SECOND, event

from .raw import raw


def plan(path: Path, outcome: Outcome) -> str:
    sql, params = _queries.select_events(EventQuery.from_arguments(outcome=outcome))
    with raw(path) as conn:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    return " ".join(str(row) for row in rows)


def index_sql(path: Path) -> str:
    with raw(path) as conn:
        row = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'audit_by_outcome'"
        ).fetchone()
    return str(row[0])


def test_the_index_of_outcomes_leaves_successes_out(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SQLiteStore(path).close()
    assert "WHERE outcome != 'success'" in index_sql(path)


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.FORBIDDEN, Outcome.PASS_THROUGH])
def test_searches_for_other_outcomes_use_it(tmp_path: Path, outcome: Outcome) -> None:
    path = tmp_path / "new.db"
    SQLiteStore(path).close()
    assert "audit_by_outcome" in plan(path, outcome)


def test_a_search_for_successes_walks_the_time_index(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SQLiteStore(path).close()
    found = plan(path, Outcome.SUCCESS)
    assert "audit_by_at" in found
    assert "TEMP B-TREE" not in found  # no sort of every row


def test_a_version_2_file_upgrades_and_finds_every_outcome(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    outcomes = [Outcome.SUCCESS, Outcome.FAILED, Outcome.FORBIDDEN, Outcome.SUCCESS]
    with raw(path) as conn:
        for statement in (*_migrations.MIGRATIONS[0], *_migrations.MIGRATIONS[1]):
            conn.execute(statement)
        for index, outcome in enumerate(outcomes):
            conn.execute(
                "INSERT INTO audit (at, action, outcome, token_id, user, reason)"
                " VALUES (?, 'authenticate', ?, 'tok', 'alice', '')",
                (to_micros(NOW + index * SECOND), outcome.value),
            )
        conn.execute("PRAGMA user_version = 2")
    assert "WHERE" not in index_sql(path)
    with SQLiteStore(path) as store:
        store.write(events=[event(NOW + 9 * SECOND, outcome=Outcome.FAILED)])
        for outcome in Outcome:
            found = store.events(outcome=outcome)
            expected = [NOW + i * SECOND for i, o in enumerate(outcomes) if o is outcome]
            if outcome is Outcome.FAILED:
                expected.append(NOW + 9 * SECOND)
            assert [e.at for e in found] == expected[::-1]
    assert "WHERE outcome != 'success'" in index_sql(path)
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == _migrations.LATEST_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
