"""Attacks on issue 15 (PostgresStore, open_store, LISTEN/NOTIFY, the shared failure ledger).

Through real servers (uvicorn, gunicorn) on a real PostgreSQL. Each test names what it
attacks. A test marked ``xfail(strict=True)`` is a finding not fixed yet: it fails on
the code as it is, and its reason says what goes wrong; one that passes pins a
property the attack could not break.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import os
import random
import select
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import pytest

from apitokens import ApiTokens, Policy, StorageError, open_store
from apitokens.cli import main as cli_main
from apitokens.postgres import PostgresStore
from apitokens.storage._open import locate, redact_dsn
from tests.support.postgres import ADMIN, PASSWORD_USER, TEST_DATABASE, PostgresServer
from tests.support.workers import uvicorn_workers

ROOT = Path(__file__).resolve().parents[2]

# -- helpers -------------------------------------------------------------------------------

APP = """
import os

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from apitokens import ApiTokens, Policy
from apitokens.postgres import PostgresStore


async def whoami(request):
    return PlainTextResponse(str(os.getpid()))


tokens = ApiTokens(
    PostgresStore(os.environ["APITOKENS_DB"], timeout=float(os.environ["STORE_TIMEOUT"])),
    policy=Policy(protected_paths=["/rest/"]),
    cache_ttl=float(os.environ["CACHE_TTL"]),
)
app = tokens.asgi(Starlette(routes=[Route("/rest/pid", whoami)]))
"""


@contextlib.contextmanager
def uvicorn_on(
    dsn: str,
    tmp_path: Path,
    *,
    workers: int = 1,
    cache_ttl: float = 1.0,
    store_timeout: float = 5.0,
    extra: tuple[str, ...] = ("--no-proxy-headers",),
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``uvicorn --workers N`` serving APP on ``dsn``; yields the port and the process."""
    PostgresStore(dsn).close()  # the schema, before the workers start
    (tmp_path / "attack15_app.py").write_text(APP)
    env = {"APITOKENS_DB": dsn, "CACHE_TTL": str(cache_ttl), "STORE_TIMEOUT": str(store_timeout)}
    with uvicorn_workers(
        "attack15_app:app", tmp_path, workers=workers, env=env, extra=extra
    ) as served:
        yield served


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM: every worker's lifespan shutdown flushes its audit writer."""
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def get(port: int, authorization: str | None = None, **headers: str) -> httpx.Response:
    sent = {"Connection": "close", **{k.replace("_", "-"): v for k, v in headers.items()}}
    if authorization is not None:
        sent["Authorization"] = authorization
    return httpx.get(f"http://127.0.0.1:{port}/rest/pid", headers=sent, timeout=30)


def count(dsn: str, sql: str, params: tuple[object, ...] = ()) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def incompressible(n: int) -> str:
    """``n`` characters that PostgreSQL's pglz cannot shrink (random letters and digits)."""
    rng = random.Random(15)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


@contextlib.contextmanager
def issuing(dsn: str) -> Iterator[ApiTokens]:
    """An ApiTokens on its own PostgresStore, both closed at the end (nothing left running)."""
    with PostgresStore(dsn) as store, ApiTokens(store, policy=Policy()) as tokens:
        yield tokens


# -- 1. one request with a long Basic username stalls a worker's audit writer for good ------


def test_a_long_basic_username_never_stalls_the_audit_log(
    postgres_database: str, tmp_path: Path
) -> None:
    with issuing(postgres_database) as tokens:
        issued = tokens.create(actor="alice", name="ci")
    good = f"Bearer {issued.secret}"
    # Unauthenticated, no hash: a string of our format with a wrong checksum, sent as the
    # password of a 4,000-character Basic username (well under 8 kB of header).
    poison = base64.b64encode(f"{incompressible(4000)}:apt_{'x' * 40}".encode()).decode()
    written = (
        "SELECT count(*) FROM apitokens_audit WHERE action = 'authenticate' AND outcome = 'success'"
    )
    with uvicorn_on(postgres_database, tmp_path) as (port, _process):
        assert get(port, f"Basic {poison}").status_code == 401
        for _ in range(5):
            assert get(port, good).status_code == 200
        # The writer sends a batch every 0.5 s: the five are in the store within 3 s.
        # (Not a graceful stop: its flush would wait out the lifespan's 10 s.)
        deadline = time.monotonic() + 3.0
        while count(postgres_database, written) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert count(postgres_database, written) == 5


# -- 2. a store that stops answering (no RST) holds requests forever ------------------------


class FreezableProxy:
    """A TCP proxy on 127.0.0.1 to the server's Unix socket that can stop forwarding.

    Frozen, it keeps every connection open and forwards nothing, either way: what a
    client sees of a network partition, a hung pgbouncer or a stopped database host
    (no RST, no FIN: only silence).
    """

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.socket_path)
            thread = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        with a, b, contextlib.suppress(OSError):  # a peer gone: the pair is done
            while not self.closed.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.05)
                if self.frozen.is_set():
                    continue
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)

    def close(self) -> None:
        self.closed.set()
        for thread in self.threads:
            thread.join(timeout=5)
        self.listener.close()


@contextlib.contextmanager
def proxied(dsn: str) -> Iterator[tuple[FreezableProxy, str]]:
    """A FreezableProxy in front of ``dsn``'s server, and the DSN through it."""
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    proxy = FreezableProxy(f"{parts.pop('host')}/.s.PGSQL.5432")
    try:
        yield proxy, psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port=proxy.port)
    finally:
        proxy.close()


def test_a_silent_store_gives_503_within_seconds_not_a_hang(
    postgres_database: str, tmp_path: Path
) -> None:
    with issuing(postgres_database) as tokens:
        warm = [tokens.create(actor="alice", name=f"warm{i}") for i in range(16)]
        cold = [tokens.create(actor="alice", name=f"cold{i}") for i in range(3)]
    with (
        proxied(postgres_database) as (proxy, through),
        uvicorn_on(through, tmp_path, store_timeout=1.0) as (port, _process),
    ):
        # Parallel first requests: the pool grows to several connections, idle after.
        pool = 0
        while pool < 4:
            assert warm, "the pool never grew to 4 connections"
            batch, warm = warm[:4], warm[4:]
            with concurrent.futures.ThreadPoolExecutor(len(batch)) as clients:
                codes = clients.map(lambda t: get(port, f"Bearer {t.secret}"), batch)
                assert {answer.status_code for answer in codes} <= {200, 503}
            pool = count(
                postgres_database,
                "SELECT count(*) FROM pg_stat_activity WHERE client_port IS NOT NULL"
                " AND application_name <> 'apitokens-listener'",
            )
        proxy.frozen.set()
        answers: list[int | str] = []

        def first_request(secret: str) -> None:
            try:
                answers.append(get_within(port, f"Bearer {secret}", 4.0).status_code)
            except httpx.TimeoutException:
                answers.append("no answer within 4 s")

        threads = [threading.Thread(target=first_request, args=(c.secret,)) for c in cold]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        proxy.frozen.clear()
    # PostgresStore(timeout=1.0): a wait for a connection is 1 s; none may wait forever.
    assert sorted(map(str, answers)) == ["503"] * 3, answers


def get_within(port: int, authorization: str, timeout: float) -> httpx.Response:
    headers = {"Connection": "close", "Authorization": authorization}
    return httpx.get(f"http://127.0.0.1:{port}/rest/pid", headers=headers, timeout=timeout)


# -- 3. one long client address stops a worker sharing its failures, for good ---------------


def test_a_long_forwarded_address_never_stops_the_shared_failure_count(
    postgres_database: str, tmp_path: Path
) -> None:
    with issuing(postgres_database) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        wrong = f"Bearer {tokens.policy.token_format.issue(issued.token.id).value}"
    # uvicorn's defaults (no --no-proxy-headers): a local peer's X-Forwarded-For is the
    # client address, whatever it holds (docs/security.md warns of the choice of address;
    # not that one such request ends the sharing of every address's failures).
    with uvicorn_on(postgres_database, tmp_path, extra=()) as (port, process):
        assert get(port, wrong, x_forwarded_for=incompressible(4000)).status_code == 401
        for _ in range(3):
            assert get(port, wrong, x_forwarded_for="198.51.100.7").status_code == 401
        stop(process)  # close() sends what waits
    shared = count(
        postgres_database,
        "SELECT coalesce(sum(count), 0) FROM apitokens_failures WHERE key = %s",
        ("198.51.100.7",),
    )
    assert shared == 3


# -- 4. a password with a "#" in a URL's query shows its tail -------------------------------


def test_a_hash_sign_in_a_query_password_never_shows_its_tail(
    postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # libpq has no URL fragment: "password=ab#<rest>" is the password "ab#<rest>", and
    # redact_dsn once stopped at the "#", leaving "<rest>" in every message.
    tail = "Tail0fTheSecret9"
    socket_dir = quote(str(postgres_server.directory), safe="")
    url = f"postgresql://{PASSWORD_USER}@/{TEST_DATABASE}?host={socket_dir}&password=ab%23x#{tail}"
    assert psycopg.conninfo.conninfo_to_dict(url)["password"] == f"ab%23x#{tail}".replace(
        "%23", "#"
    )
    assert tail not in redact_dsn(url)
    assert tail not in repr(locate(url))
    with pytest.raises(StorageError) as caught:
        open_store(url)
    assert tail not in "".join(traceback.format_exception(caught.value))
    assert cli_main(["--db", url, "--actor", "admin", "list"]) != 0
    said = capsys.readouterr()
    assert "password authentication failed" in said.err
    assert tail not in said.out + said.err


# -- 5. one host whose clock runs ahead erases every other host's failures ------------------


def test_a_host_with_a_clock_ahead_never_erases_the_others_failures(
    postgres_database: str,
) -> None:
    window = timedelta(minutes=1)
    now = datetime.now(UTC)
    with PostgresStore(postgres_database) as host_a, PostgresStore(postgres_database) as host_b:
        host_a.record_failures({"203.0.113.9": 9}, now, keep=window)
        assert host_a.failures_since("203.0.113.9", now - window) == 9
        # Host B's clock is 90 s ahead; it sends one failure of another address.
        host_b.record_failures({"198.51.100.1": 1}, now + timedelta(seconds=90), keep=window)
        # Host A's view of the guesser it has seen: still 9 within its window.
        assert host_a.failures_since("203.0.113.9", now - window) == 9


# -- 6. gunicorn --preload: workers forked from a master that subscribed --------------------


@contextlib.contextmanager
def gunicorn_on(
    dsn: str, tmp_path: Path, *, workers: int = 4, cache_ttl: float = 60.0
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``gunicorn --preload -w N -k uvicorn.workers.UvicornWorker`` serving APP on ``dsn``."""
    PostgresStore(dsn).close()
    (tmp_path / "attack15_app.py").write_text(APP)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "APITOKENS_DB": dsn,
        "CACHE_TTL": str(cache_ttl),
        "STORE_TIMEOUT": "5",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(tmp_path), str(ROOT / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    log = (tmp_path / "server.log").open("wb")
    command = [sys.executable, "-m", "gunicorn", "attack15_app:app", "--preload"]
    command += ["-k", "uvicorn.workers.UvicornWorker", "-w", str(workers)]
    command += ["-b", f"127.0.0.1:{port}", "--forwarded-allow-ips", "", "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:  # until it listens (gunicorn binds after the master imported the app)
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "gunicorn never listened"
                time.sleep(0.05)
        yield port, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=20)
        log.close()


def test_gunicorn_preload_workers_refuse_a_revoked_token_within_100ms(
    postgres_database: str, tmp_path: Path
) -> None:
    with issuing(postgres_database) as tokens:
        issued = tokens.create(actor="alice", name="ci")
    good = f"Bearer {issued.secret}"
    with gunicorn_on(postgres_database, tmp_path) as (port, process):
        pids: set[str] = set()
        for _ in range(400):
            answer = get(port, good)
            assert answer.status_code == 200, answer.text
            pids.add(answer.text)
            if len(pids) == 4:
                break
        assert len(pids) == 4, pids
        assert (
            cli_main(["--db", postgres_database, "--actor", "admin", "revoke", issued.token.id])
            == 0
        )
        revoked_at = time.monotonic()
        last_success = revoked_at - 1
        refused = 0
        while refused < 40:
            sending = time.monotonic()
            answer = get(port, good)
            if answer.status_code == 200:
                last_success, refused = sending, 0
            else:
                assert answer.status_code == 401, answer.text
                refused += 1
            assert time.monotonic() - revoked_at < 10, "a preloaded worker never heard of it"
        assert last_success - revoked_at < 0.1
        stop(process)


# -- 7. pooled connections the server closed while idle: a good token gets 503 --------------


def test_idle_connections_the_server_ended_never_refuse_a_good_token(
    postgres_database: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    with issuing(postgres_database) as tokens:
        first = tokens.create(actor="alice", name="first")
        later = tokens.create(actor="alice", name="later")
    with uvicorn_on(postgres_database, tmp_path) as (port, process):
        assert get(port, f"Bearer {first.secret}").status_code == 200
        # What idle_session_timeout does to the sessions of the pool (not the listener's,
        # nor the tests' own): the server ends them while they are idle.
        ended = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
            " AND pid <> pg_backend_pid() AND application_name NOT IN (%s, %s)"
        )
        with psycopg.connect(postgres_server.dsn(), autocommit=True) as admin:
            admin.execute(ended, (TEST_DATABASE, "apitokens-listener", ADMIN))
        # A good token whose record this worker has not read yet.
        assert get(port, f"Bearer {later.secret}").status_code == 200
        stop(process)


# -- 8. a revocation written in SQL (an incident, a DBA's UPDATE) tells no one --------------


def test_a_revocation_made_in_sql_reaches_the_workers_within_100ms(
    postgres_database: str, tmp_path: Path
) -> None:
    with issuing(postgres_database) as tokens:
        issued = tokens.create(actor="alice", name="ci")
    good = f"Bearer {issued.secret}"
    with uvicorn_on(postgres_database, tmp_path, cache_ttl=60.0) as (port, process):
        assert get(port, good).status_code == 200
        with psycopg.connect(postgres_database, autocommit=True) as dba:
            dba.execute(
                "UPDATE apitokens_tokens SET revoked_at = now() WHERE id = %s", (issued.token.id,)
            )
        revoked_at = time.monotonic()
        while get(port, good).status_code == 200:
            assert time.monotonic() - revoked_at < 2.0, "still served 2 s after the revoke"
        stop(process)


# -- 9. a connection lost after COMMIT reached the server: the batch is written twice --------


class CommitEater(FreezableProxy):
    """A proxy that, once, lets a COMMIT reach the server and drops the server's answer.

    The server commits; the client sees its connection lost at the commit and cannot
    tell whether the transaction committed (a network blip, a failover at that moment).
    """

    COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # a simple-protocol "COMMIT" message

    def __init__(self, socket_path: str) -> None:
        self.eaten = threading.Event()
        super().__init__(socket_path)

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        committing = False
        with a, b, contextlib.suppress(OSError):
            while not self.closed.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.05)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is a and not self.eaten.is_set() and self.COMMIT in data:
                        committing = True
                    elif sock is b and committing:
                        self.eaten.set()  # the server's answer to COMMIT: never delivered
                        return
                    (b if sock is a else a).sendall(data)


def test_a_batch_whose_commit_answer_is_lost_is_not_written_twice(
    postgres_database: str, tmp_path: Path
) -> None:
    with issuing(postgres_database) as tokens:
        issued = tokens.create(actor="alice", name="ci")
    parts = psycopg.conninfo.conninfo_to_dict(postgres_database)
    proxy = CommitEater(f"{parts['host']}/.s.PGSQL.5432")
    through = psycopg.conninfo.make_conninfo(postgres_database, host="127.0.0.1", port=proxy.port)
    try:
        with uvicorn_on(through, tmp_path) as (port, process):
            for _ in range(5):
                assert get(port, f"Bearer {issued.secret}").status_code == 200
            stop(process)
    finally:
        proxy.close()
    assert proxy.eaten.is_set(), "no COMMIT went through the proxy: nothing was tested"
    rows = count(
        postgres_database,
        "SELECT count(*) FROM apitokens_audit WHERE action = 'authenticate' AND token_id = %s",
        (issued.token.id,),
    )
    used = "SELECT use_count FROM apitokens_tokens WHERE id = %s"
    uses = count(postgres_database, used, (issued.token.id,))
    assert (rows, uses) == (5, 5)


# -- 10. the suppressed context of a StorageError still carries the DSN's password -----------


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def test_no_error_of_a_wrong_password_holds_the_password(postgres_server: PostgresServer) -> None:
    password = "Wr0ng-but-secret-51d2"
    dsn = (
        f"host={postgres_server.directory} dbname={TEST_DATABASE} user={PASSWORD_USER}"
        f" password={password}"
    )
    with pytest.raises(StorageError) as caught:
        open_store(dsn)
    for error in _chain(caught.value):
        assert password not in repr(error)
        assert password not in repr(getattr(error, "pgconn", None))


# -- 11. every worker's listener killed, then a revocation at once --------------------------


def test_a_revocation_right_after_every_listener_was_killed_is_still_honoured(
    postgres_database: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    with issuing(postgres_database) as tokens:
        issued = tokens.create(actor="alice", name="ci")
    good = f"Bearer {issued.secret}"
    with uvicorn_on(postgres_database, tmp_path, workers=4, cache_ttl=60.0) as (port, process):
        pids: set[str] = set()
        for _ in range(400):  # every worker caches the record
            answer = get(port, good)
            assert answer.status_code == 200
            pids.add(answer.text)
            if len(pids) == 4:
                break
        assert len(pids) == 4, pids
        with psycopg.connect(postgres_server.dsn(), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'apitokens-listener' AND datname = %s",
                (TEST_DATABASE,),
            ).fetchone()
        assert killed == (4,)
        # The notice of this revocation may go out while no listener listens: each must
        # forget every record once it listens again.
        revoke = ["--db", postgres_database, "--actor", "admin", "revoke", issued.token.id]
        assert cli_main(revoke) == 0
        revoked_at = time.monotonic()
        last_success, refused = revoked_at - 1, 0
        while refused < 40:
            sending = time.monotonic()
            if get(port, good).status_code == 200:
                last_success, refused = sending, 0
            else:
                refused += 1
            assert time.monotonic() - revoked_at < 10, "a worker served it for 10 s"
        # Reconnecting is at once (then 0.1 s, doubling): well under a second here.
        assert last_success - revoked_at < 1.0
        stop(process)


# -- 12. a libpq keyword DSN that starts with a keyword not on the list is a SQLite path ------


def test_a_keyword_dsn_starting_with_any_libpq_keyword_is_postgres_and_redacted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    secret = "Kw-Secret-Pa55-e3"
    # Nothing listens on port 1: as PostgreSQL it is refused; as a SQLite path it is made.
    dsn = f"channel_binding=prefer host=127.0.0.1 port=1 dbname=app user=app password={secret}"
    assert psycopg.conninfo.conninfo_to_dict(dsn)["password"] == secret  # libpq reads it
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        code = cli_main(["--db", dsn, "--actor", "admin", "create", "--name", "ci"])
    finally:
        os.chdir(cwd)
    said = capsys.readouterr()
    assert secret not in said.out + said.err
    assert list(tmp_path.iterdir()) == []
    assert code != 0
    assert locate(dsn).kind == "postgres"


# -- 13. a migrator that holds the lock and never finishes holds every opener ---------------


def test_opening_while_another_session_holds_the_migration_lock_is_bounded(
    postgres_database: str,
) -> None:
    from apitokens.postgres._sql import _MIGRATION_LOCK

    outcome: list[str] = []

    def open_it() -> None:
        try:
            PostgresStore(postgres_database, timeout=1.0).close()
            outcome.append("opened")
        except StorageError as error:  # one that says why, not only that it failed
            said = "migration lock" in str(error)
            outcome.append("StorageError" if said else f"StorageError: {error}")

    with psycopg.connect(postgres_database, autocommit=True) as migrator:
        migrator.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        opener = threading.Thread(target=open_it)
        opener.start()
        opener.join(timeout=4.0)  # timeout=1.0: a StorageError within a few seconds
        waited_out = outcome[:]
        migrator.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    opener.join()
    assert waited_out == ["StorageError"]


# -- 14. SQL in names, owners, rules and searches stays data ---------------------------------


def test_sql_in_names_owners_rules_and_searches_is_only_data(postgres_database: str) -> None:
    evil = "x'); DROP TABLE apitokens_tokens; --"
    owner = "o\"w'n$$er\\"
    rule = "[GET].*/rest/'$$;--(?:a|b)%_.*"
    with PostgresStore(postgres_database) as store:
        tokens = ApiTokens(
            store,
            policy=Policy(token_admins=frozenset({"admins"})),
            groups=lambda user: {"admins"} if user == "root" else set(),
        )
        with tokens:
            issued = tokens.create(
                actor="root", name=evil, user=owner, restrictions=[rule], allowed_ips=["::1/128"]
            )
            (listed,) = tokens.list(actor="root", user=owner, name="drop table")
            assert (listed.id, listed.name, listed.user) == (issued.token.id, evil, owner)
            assert listed.restrictions == (rule,)
            # strpos, not LIKE: "%" and "_" are plain characters in a name search.
            assert tokens.list(actor="root", name="%") == []
            assert tokens.list(actor="root", name="s%_t") == []
            assert [e.user for e in tokens.audit(user=owner)] == [owner]
    assert count(postgres_database, "SELECT count(*) FROM apitokens_tokens") == 1
