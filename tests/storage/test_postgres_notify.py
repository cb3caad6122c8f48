"""PostgresStore's change feed (LISTEN/NOTIFY): a change shows in every process within 100 ms.

Two stores on one schema stand for two processes (each has its own pool and its own
listener connection). The monotonic clock of each ``ApiTokens`` is frozen, so no
record cache entry ever expires: what makes a change show is the notice, nothing else.
Latencies are measured on the real clock, up to the moment a subscriber that
subscribed after the ``ApiTokens`` is called (callbacks run in order, on one thread, so
the ``ApiTokens`` has forgotten the record by then). Nothing sleeps or polls.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from apitokens import ApiTokens
from apitokens._model import Usage
from apitokens.postgres import PostgresStore
from apitokens.storage import ChangeFeed
from apitokens.testing import NOW, stored
from tests.support import Clock, Monotonic, bearer, get, make_tokens
from tests.support.postgres import TEST_DATABASE, PostgresServer

LATENCY = 0.1  # seconds: DESIGN §8's bound on PostgreSQL
PASSWORD = "Sekret-pw-of-the-listener"  # trust authentication ignores it; no log may show it


class Heard:
    """A subscriber that records what it is told; a test waits for one thing it expects."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []
        self._changed = threading.Condition()

    def __call__(self, token_id: str | None) -> None:
        with self._changed:
            self.seen.append(token_id)
            self._changed.notify_all()

    def wait_for(self, token_id: str | None, times: int = 1, timeout: float = 10.0) -> None:
        with self._changed:
            told = self._changed.wait_for(lambda: self.seen.count(token_id) >= times, timeout)
            assert told, self.seen


@pytest.fixture
def dsn(postgres_database: str) -> str:
    return f"{postgres_database} password={PASSWORD}"


@pytest.fixture
def two(dsn: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two handles on one schema, as two processes would have."""
    with PostgresStore(dsn, pool_size=2) as serving, PostgresStore(dsn, pool_size=2) as admin:
        yield serving, admin


def _listeners(store: PostgresStore) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "apitokens-pg-listener"]


def test_postgres_store_offers_the_change_feed(dsn: str) -> None:
    with PostgresStore(dsn) as store:
        assert isinstance(store, ChangeFeed)


def test_a_revocation_through_one_process_is_refused_by_another_within_100ms(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    serving_store, admin_store = two
    clock, ticks = Clock(), Monotonic()  # frozen: no cache entry expires
    with (
        make_tokens(serving_store, clock=clock, monotonic=ticks) as serving,
        make_tokens(admin_store, clock=clock, monotonic=ticks) as admin,
    ):
        heard = Heard()
        serving_store.subscribe(heard)
        issued = admin.create(actor="alice", name="ci")
        request = get("/x", bearer(issued.secret))
        assert serving.authenticate(request).authenticated
        assert serving.authenticate(request).authenticated  # warm: cached, and verified
        started = time.perf_counter()
        admin.revoke(actor="alice", token_id=issued.token.id)
        heard.wait_for(issued.token.id)
        latency = time.perf_counter() - started
        refused = serving.authenticate(request)
        assert refused.status_code == 401 and refused.reason == "token revoked"
        assert latency < LATENCY, latency


def test_an_edit_through_one_process_applies_in_another_within_100ms(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    serving_store, admin_store = two
    clock, ticks = Clock(), Monotonic()
    with (
        make_tokens(serving_store, clock=clock, monotonic=ticks) as serving,
        make_tokens(admin_store, clock=clock, monotonic=ticks) as admin,
    ):
        heard = Heard()
        serving_store.subscribe(heard)
        issued = admin.create(actor="alice", name="ci", secure=False)
        request = get("/rest/x", bearer(issued.secret))
        assert serving.authenticate(request).authenticated
        started = time.perf_counter()
        admin.edit(actor="alice", token_id=issued.token.id, restrictions=["[GET]/other"])
        heard.wait_for(issued.token.id)
        latency = time.perf_counter() - started
        assert serving.authenticate(request).status_code == 403
        assert latency < LATENCY, latency


def test_each_change_is_told_once_it_commits(two: tuple[PostgresStore, PostgresStore]) -> None:
    serving, admin = two
    heard = Heard()
    serving.subscribe(heard)
    admin.add(stored("a"))
    admin.add(stored("b"))
    admin.update(stored("a", name="renamed"))
    assert admin.replace_hash("b", old=stored("b").secret_hash, new="new-hash") is True
    assert admin.replace_hash("b", old="not-it", new="other") is False  # no change: no notice
    assert admin.revoke("a", NOW) is True
    assert admin.revoke("a", NOW) is False  # revoked already: no notice
    admin.revoke("b", NOW)
    heard.wait_for("b", times=2)
    assert heard.seen == ["a", "b", "a", "b"]  # add is no change to a cached record


def test_changes_made_by_hand_in_sql_are_told_and_usage_is_not(
    two: tuple[PostgresStore, PostgresStore], dsn: str
) -> None:
    # A trigger sends the notices: an incident's UPDATE or DELETE by a DBA is told too.
    serving, admin = two
    heard = Heard()
    serving.subscribe(heard)
    for token_id in ("a", "b", "c", "last"):
        admin.add(stored(token_id))
    admin.write(usage=[Usage("a", NOW), Usage("b", NOW)])  # a cached record stays good
    with psycopg.connect(dsn, autocommit=True) as dba:
        dba.execute("UPDATE apitokens_tokens SET revoked_at = now() WHERE id = 'a'")
        dba.execute("UPDATE apitokens_tokens SET use_count = 0 WHERE id = 'b'")  # usage only
        dba.execute("DELETE FROM apitokens_tokens WHERE id = 'c'")
        with dba.transaction():
            dba.execute("UPDATE apitokens_tokens SET name = 'x' WHERE id = 'b'")
            dba.execute("UPDATE apitokens_tokens SET name = 'y' WHERE id = 'b'")
        with contextlib.suppress(psycopg.errors.RaiseException), dba.transaction():
            dba.execute("UPDATE apitokens_tokens SET name = 'z' WHERE id = 'last'")
            dba.execute("DO $$ BEGIN RAISE EXCEPTION 'rolled back'; END $$")
        dba.execute("UPDATE apitokens_tokens SET name = 'told' WHERE id = 'last'")
        heard.wait_for("last")
        dba.execute("TRUNCATE apitokens_tokens")
        heard.wait_for(None)
    # One notice per transaction and token; none for usage, none for the rolled back.
    assert heard.seen == ["a", "c", "b", "last", None]


def test_stores_in_other_schemas_are_not_told(
    postgres_server: PostgresServer, two: tuple[PostgresStore, PostgresStore]
) -> None:
    # One channel per schema: the tests' schemas share one database, as tenants might.
    serving, admin = two
    schema = "test_notify_other_" + "x" * 45  # 63 bytes: the channel name is hashed
    postgres_server.execute(f"CREATE SCHEMA {schema}", TEST_DATABASE)
    try:
        other_dsn = f"{postgres_server.dsn(TEST_DATABASE)} options='-c search_path={schema}'"
        with PostgresStore(other_dsn) as other, PostgresStore(other_dsn) as other_admin:
            here, there = Heard(), Heard()
            serving.subscribe(here)
            other.subscribe(there)
            admin.add(stored("t"))
            other_admin.add(stored("t"))
            admin.revoke("t", NOW)
            other_admin.revoke("t", NOW)  # committed after: a shared channel would tell both
            here.wait_for("t")
            there.wait_for("t")
            assert here.seen == ["t"] and there.seen == ["t"]
    finally:
        postgres_server.execute(f"DROP SCHEMA {schema} CASCADE", TEST_DATABASE)


def test_a_dropped_listener_reconnects_and_forgets_everything(
    two: tuple[PostgresStore, PostgresStore], dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    serving_store, admin_store = two
    caplog.set_level(logging.DEBUG)
    clock, ticks = Clock(), Monotonic()
    with (
        make_tokens(serving_store, clock=clock, monotonic=ticks) as serving,
        make_tokens(admin_store, clock=clock, monotonic=ticks) as admin,
    ):
        heard = Heard()
        serving_store.subscribe(heard)
        issued = admin.create(actor="alice", name="ci")
        request = get("/x", bearer(issued.secret))
        assert serving.authenticate(request).authenticated
        # A change no one is told of, as one made while the listener was deaf: with the
        # clock frozen, the record stays cached. (Triggers off for this session: the
        # trigger would tell of a change made in SQL too.)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute(
                "UPDATE apitokens_tokens SET revoked_at = now() WHERE id = %s", (issued.token.id,)
            )
            assert serving.authenticate(request).authenticated
            [(pid,)] = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'apitokens-listener'"
                " AND pid = %s",
                (serving_store._feed._listening.conn.info.backend_pid,),  # type: ignore[union-attr]
            ).fetchall()
            started = time.perf_counter()
            # Waits (up to 5 s) until the backend is gone.
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        heard.wait_for(None)  # reconnected, and told everyone to forget everything
        reconnected = time.perf_counter() - started
        refused = serving.authenticate(request)
        assert refused.status_code == 401 and refused.reason == "token revoked"
        # Listening again: the next change is told as usual.
        second = admin.create(actor="alice", name="second")
        again = get("/x", bearer(second.secret))
        assert serving.authenticate(again).authenticated
        admin.revoke(actor="alice", token_id=second.token.id)
        heard.wait_for(second.token.id)
        assert serving.authenticate(again).status_code == 401
    assert reconnected < 1.0, reconnected
    assert "the change listener lost its connection" in caplog.text
    assert "the change listener reconnected" in caplog.text
    assert PASSWORD not in caplog.text


def test_a_failing_callback_is_logged_and_the_listener_goes_on(
    two: tuple[PostgresStore, PostgresStore], caplog: pytest.LogCaptureFixture
) -> None:
    serving, admin = two

    def broken(token_id: str | None) -> None:
        raise RuntimeError(f"broken subscriber ({token_id})")

    heard = Heard()
    serving.subscribe(broken)
    serving.subscribe(heard)
    admin.add(stored("a"))
    admin.add(stored("b"))
    admin.revoke("a", NOW)
    heard.wait_for("a")
    admin.revoke("b", NOW)
    heard.wait_for("b")
    assert caplog.text.count("RuntimeError: broken subscriber") == 2
    assert len(_listeners(serving)) == 1


def test_unsubscribing_stops_delivery_and_the_last_one_stops_the_thread(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    serving, admin = two
    threads = threading.active_count()
    first, second = Heard(), Heard()
    unsubscribe_first = serving.subscribe(first)
    assert threading.active_count() == threads + 1  # one listener thread per store
    unsubscribe_second = serving.subscribe(second)
    assert threading.active_count() == threads + 1
    admin.add(stored("a"))
    admin.revoke("a", NOW)
    first.wait_for("a")
    unsubscribe_first()
    unsubscribe_first()  # idempotent
    admin.add(stored("b"))
    admin.revoke("b", NOW)
    second.wait_for("b")  # delivered to both in one go, in order: first was not called
    assert first.seen == ["a"]
    unsubscribe_second()
    assert threading.active_count() == threads  # the last one out stopped it
    assert serving.subscribe(first) is not None  # a new subscriber starts it again
    assert threading.active_count() == threads + 1


def test_closing_the_store_or_the_apitokens_stops_the_thread(dsn: str) -> None:
    threads = threading.active_count()
    store = PostgresStore(dsn)
    with ApiTokens(store) as tokens:
        assert tokens is not None
        assert threading.active_count() > threads  # the writer, and the listener
        assert len(_listeners(store)) == 1
    assert _listeners(store) == []  # the ApiTokens was the only subscriber
    store.subscribe(Heard())
    assert len(_listeners(store)) == 1
    store.close()
    assert _listeners(store) == []
    assert threading.active_count() == threads
    with pytest.raises(Exception, match="closed"):
        store.subscribe(Heard())


_FORK = """
import logging, os, queue, sys
from apitokens.postgres import PostgresStore
from apitokens._model import Usage
from apitokens.testing import NOW, stored

logging.basicConfig(level=logging.WARNING)  # to stderr: a fork is no lost connection

store = PostgresStore(sys.argv[1], pool_size=2)
store.add(stored("t"))
store.add(stored("u"))
heard = queue.Queue()
store.subscribe(heard.put)  # the parent's listener runs when the child is forked
ready_r, ready_w = os.pipe()
pid = os.fork()
if pid == 0:
    # The child's own listener; it starts with "anything may have changed".
    assert heard.get(timeout=10) is None
    os.write(ready_w, b"x")
    assert heard.get(timeout=10) == "t"
    sys.exit(0)  # a normal exit: the parent's listener connection is not closed
assert os.read(ready_r, 1) == b"x"
store.revoke("t", NOW)
assert heard.get(timeout=10) == "t"
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
store.revoke("u", NOW)  # the parent still listens on its own connection
assert heard.get(timeout=10) == "u"
assert heard.empty()
store.close()
print("ok")
"""


def test_a_forked_child_listens_on_its_own_connection(postgres_database: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _FORK, postgres_database],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.stdout == "ok\n", result.stderr
    # Every worker forked by gunicorn --preload starts so: no warning that cries wolf.
    assert "the change listener" not in result.stderr, result.stderr


def test_the_pool_and_the_listener_are_named_in_pg_stat_activity(
    postgres_server: PostgresServer, postgres_database: str
) -> None:
    with PostgresStore(postgres_database, pool_size=2) as store:
        unsubscribe = store.subscribe(lambda token_id: None)  # the listener starts
        store.get("nothing")  # a pooled connection in use at least once
        rows = _names(postgres_server)
        unsubscribe()
        assert "apitokens" in rows
        assert "apitokens-listener" in rows
    with PostgresStore(postgres_database + " application_name=billing", pool_size=2) as store:
        store.get("nothing")
        assert "billing" in _names(postgres_server)


def _names(server: PostgresServer) -> set[str]:
    import psycopg

    with psycopg.connect(server.dsn(TEST_DATABASE), autocommit=True) as conn:
        rows = conn.execute("SELECT application_name FROM pg_stat_activity").fetchall()
    return {row[0] for row in rows}
