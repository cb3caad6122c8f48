"""The storage contract suite, shipped: every :class:`~apitokens.TokenStore` passes it.

:class:`StoreContract` is a pytest base class. A backend's test module
subclasses it and provides a ``store`` fixture that yields a fresh, empty store
(and closes it afterwards); the subclass inherits every contract test, the
same ones ``MemoryStore`` and ``SQLiteStore`` pass::

    from collections.abc import Iterator

    import pytest

    from apitokens.testing import StoreContract


    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self) -> Iterator[MyStore]:
            store = MyStore(...)  # fresh and empty
            yield store
            store.close()

The class has no ``Test`` prefix, so pytest collects it only through such a
subclass. For pytest's detailed assertion messages in these tests, call
``pytest.register_assert_rewrite("apitokens.testing")`` in your ``conftest.py``.

The helpers the suite builds its records with are public, for a backend's own
tests: :data:`NOW`, :data:`SECOND`, :data:`DAY`, :func:`secret_hash`,
:func:`stored` and :func:`event`.

This module needs pytest and hypothesis, which apitokens itself does not
install: ``pip install 'apitokens[testing]'``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeGuard

from apitokens._errors import StorageError, TokenNotFound
from apitokens._model import (
    Action,
    AuditEvent,
    Outcome,
    Scope,
    StoredToken,
    Token,
    TokenStatus,
    Usage,
)
from apitokens.storage import CreditSpend, FailureLedger, NoticeLedger, TokenStore, UsageLedger

try:
    import pytest
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError as error:
    raise ImportError(
        f"apitokens.testing needs pytest and hypothesis, which apitokens does not install"
        f" ({error.name} is missing): pip install 'apitokens[testing]'",
        name=error.name,
    ) from error

__all__ = ["DAY", "NOW", "SECOND", "StoreContract", "event", "secret_hash", "stored"]

NOW = datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)
"""The suite's "now": an aware UTC datetime with microseconds, to test their round trip."""
SECOND = timedelta(seconds=1)
DAY = timedelta(days=1)
_PLUS_TWO = timezone(timedelta(hours=2))


def secret_hash(secret: str) -> str:
    """A self-describing hash string, as a Hasher would produce (a store never hashes)."""
    return "$sha256$" + hashlib.sha256(secret.encode()).hexdigest()


def stored(token_id: str, **fields: object) -> StoredToken:
    """A minimal :class:`~apitokens.StoredToken` with id ``token_id``.

    Owned and created by ``alice`` a day before :data:`NOW`, named ``token
    <id>``, with the :func:`secret_hash` of ``secret-of-<id>``. ``fields``
    override :class:`~apitokens.Token` fields (``expires_at=...``) or
    :class:`~apitokens.StoredToken` ones (``revealable=...``).
    """
    outer = {k: fields.pop(k) for k in list(fields) if k in StoredToken.__dataclass_fields__}
    values: dict[str, object] = {
        "name": f"token {token_id}",
        "user": "alice",
        "created_by": "alice",
        "created_at": NOW - DAY,
    }
    values.update(fields)
    outer.setdefault("secret_hash", secret_hash(f"secret-of-{token_id}"))
    return StoredToken(token=Token(id=token_id, **values), **outer)  # type: ignore[arg-type]


def event(at: datetime, **fields: object) -> AuditEvent:
    """An :class:`~apitokens.AuditEvent` at ``at``: by default a successful
    ``authenticate`` of token ``tok`` by ``alice``; ``fields`` override any field."""
    values: dict[str, object] = {
        "action": Action.AUTHENTICATE,
        "outcome": Outcome.SUCCESS,
        "token_id": "tok",
        "user": "alice",
    }
    values.update(fields)
    return AuditEvent(at=at, **values)  # type: ignore[arg-type]


class StoreContract:
    """The contract of :class:`~apitokens.TokenStore`, as pytest tests to inherit.

    A subclass provides a ``store`` fixture that yields a fresh, empty store
    and closes it afterwards (a test may close it first: ``close()`` is
    idempotent). Every test then runs against it: each method's contract
    (``docs/storage.md``), datetimes in and out, errors, a closed store, 8
    threads writing at once and losing nothing, racing adds and revocations,
    and a property test of ``list()`` against a reference model.
    """

    @pytest.fixture
    def store(self) -> TokenStore:
        """Override in the subclass: yield a fresh, empty store, then close it."""
        pytest.fail(f"{type(self).__name__} must define a `store` fixture (see StoreContract)")

    # --- add / get -----------------------------------------------------------

    def test_store_satisfies_the_protocol(self, store: TokenStore) -> None:
        assert isinstance(store, TokenStore)

    def test_roundtrip_of_every_field(self, store: TokenStore) -> None:
        full = stored(
            "full",
            name="CI report ✓",
            user="bob",
            created_by="admin",
            created_at=(NOW - DAY).astimezone(_PLUS_TWO),
            expires_at=NOW + 30 * DAY,
            scope=Scope.READ_WRITE,
            restrictions=("[get].*/rest/api/2/search.*", ".*/rest/x[QueryParam::a==b]"),
            allowed_ips=("203.0.113.0/24", "2001:db8::/32"),
            secure=False,
            last_used_at=NOW - SECOND,
            last_used_ip="203.0.113.7",
            use_count=41,
            secret_hash=secret_hash("current"),
            previous_hash=secret_hash("previous"),
            previous_valid_until=NOW + timedelta(minutes=5),
            revealable="apt_fullAAAAAAAAsecretsecret",
            retired_hashes=(secret_hash("older"), secret_hash("oldest")),
        )
        unbound = stored("unbound", user=None, secure=True, restrictions=(), allowed_ips=())
        store.add(full)
        store.add(unbound)

        got = store.get("full")
        assert got == full
        assert got is not None
        for value in (got.token.created_at, got.token.expires_at, got.previous_valid_until):
            assert value is not None
            assert value.utcoffset() == timedelta(0)
        assert got.token.created_at.microsecond == NOW.microsecond
        assert isinstance(got.token.restrictions, tuple)
        assert isinstance(got.token.scope, Scope)
        assert got.token.status is TokenStatus.ACTIVE

        got_unbound = store.get("unbound")
        assert got_unbound == unbound
        assert got_unbound is not None
        assert got_unbound.token.unbound
        assert got_unbound.revealable is None
        assert got_unbound.previous_hash is None
        assert got_unbound.retired_hashes == ()

    def test_get_unknown_id_is_none(self, store: TokenStore) -> None:
        assert store.get("nope") is None

    def test_get_gives_stored_status_not_clock_status(self, store: TokenStore) -> None:
        store.add(stored("old", expires_at=NOW - 10 * DAY))
        store.add(stored("gone", revoked_at=NOW - DAY, status=TokenStatus.ACTIVE))
        old, gone = store.get("old"), store.get("gone")
        assert old is not None
        assert old.token.status is TokenStatus.ACTIVE
        assert old.token.as_of(NOW).status is TokenStatus.EXPIRED
        assert gone is not None
        assert gone.token.status is TokenStatus.REVOKED

    def test_duplicate_add_is_refused_and_changes_nothing(self, store: TokenStore) -> None:
        first = stored("dup", name="first")
        store.add(first)
        with pytest.raises(StorageError) as info:
            store.add(stored("dup", name="second", secret_hash=secret_hash("other")))
        assert "dup" in str(info.value)
        assert secret_hash("other") not in str(info.value)
        assert store.get("dup") == first

    def test_secure_token_cannot_be_revealable(self, store: TokenStore) -> None:
        with pytest.raises(ValueError, match="secure"):
            store.add(stored("s", secure=True, revealable="apt_plaintext"))
        assert store.get("s") is None

    # --- update ----------------------------------------------------------------

    def test_update_replaces_editable_fields_only(self, store: TokenStore) -> None:
        store.add(stored("t", use_count=3, last_used_at=NOW, last_used_ip="10.0.0.1"))
        store.revoke("t", NOW + SECOND)
        store.update(
            stored(
                "t",
                name="renamed",
                user="mallory",
                created_by="mallory",
                created_at=NOW,
                expires_at=NOW + DAY,
                scope=Scope.READ_WRITE,
                restrictions=("[post].*",),
                allowed_ips=("10.0.0.0/8",),
                secure=False,
                last_used_at=None,
                last_used_ip=None,
                use_count=0,
                revoked_at=None,
                secret_hash=secret_hash("rotated"),
                previous_hash=secret_hash("before"),
                previous_valid_until=NOW + 2 * SECOND,
                revealable="apt_revealable",
                retired_hashes=(secret_hash("older"), secret_hash("oldest")),
            )
        )
        got = store.get("t")
        assert got is not None
        token = got.token
        assert (token.name, token.expires_at, token.scope) == ("renamed", NOW + DAY, "read_write")
        assert (token.restrictions, token.allowed_ips, token.secure) == (
            ("[post].*",),
            ("10.0.0.0/8",),
            False,
        )
        assert (got.secret_hash, got.previous_hash, got.previous_valid_until) == (
            secret_hash("rotated"),
            secret_hash("before"),
            NOW + 2 * SECOND,
        )
        assert got.revealable == "apt_revealable"
        # In order, newest first (reuse detection, DESIGN §11).
        assert got.retired_hashes == (secret_hash("older"), secret_hash("oldest"))
        # Untouched: owner, creation, usage, revocation.
        assert (token.user, token.created_by, token.created_at) == ("alice", "alice", NOW - DAY)
        assert (token.use_count, token.last_used_at, token.last_used_ip) == (3, NOW, "10.0.0.1")
        assert token.revoked_at == NOW + SECOND
        assert token.status is TokenStatus.REVOKED

    def test_update_unknown_id_raises(self, store: TokenStore) -> None:
        with pytest.raises(TokenNotFound):
            store.update(stored("ghost"))
        assert store.get("ghost") is None

    def test_update_without_a_guard_says_it_changed(self, store: TokenStore) -> None:
        store.add(stored("t"))
        assert store.update(stored("t", name="renamed", secret_hash=secret_hash("x"))) is True
        got = store.get("t")
        assert got is not None and (got.token.name, got.secret_hash) == (
            "renamed",
            secret_hash("x"),
        )

    def test_guarded_update_writes_over_the_expected_hash(self, store: TokenStore) -> None:
        original = stored("t", use_count=2)
        store.add(original)
        rotated = stored(
            "t",
            name="rotated",
            use_count=2,
            secret_hash=secret_hash("new"),
            previous_hash=original.secret_hash,
            previous_valid_until=NOW,
            retired_hashes=(secret_hash("older"),),
        )
        assert store.update(rotated, expected_hash=original.secret_hash) is True
        assert store.get("t") == rotated

    def test_guarded_update_over_another_hash_changes_nothing(self, store: TokenStore) -> None:
        # The caller read the record before someone rotated it: writing it back would
        # bring the replaced secret back (an edit racing a rotation).
        rotated = stored(
            "t",
            secret_hash=secret_hash("new"),
            previous_hash=secret_hash("old"),
            previous_valid_until=NOW,
            retired_hashes=(secret_hash("older"),),
        )
        store.add(rotated)
        stale = stored("t", name="renamed", secret_hash=secret_hash("old"))
        assert store.update(stale, expected_hash=secret_hash("old")) is False
        assert store.get("t") == rotated
        # The guard is the stored secret_hash, not previous_hash nor a retired one.
        for hash_ in (secret_hash("older"), secret_hash("nothing")):
            assert store.update(stale, expected_hash=hash_) is False
        assert store.get("t") == rotated

    def test_guarded_update_of_an_unknown_id_raises(self, store: TokenStore) -> None:
        with pytest.raises(TokenNotFound):
            store.update(stored("ghost"), expected_hash=secret_hash("ghost"))
        assert store.get("ghost") is None

    def test_guarded_updates_racing_over_one_hash_let_one_win(self, store: TokenStore) -> None:
        original = stored("t")
        store.add(original)
        tries = [stored("t", secret_hash=secret_hash(f"rotation {i}")) for i in range(8)]
        barrier = threading.Barrier(len(tries))

        def rotate(record: StoredToken) -> bool:
            barrier.wait(timeout=10)
            return store.update(record, expected_hash=original.secret_hash)

        with ThreadPoolExecutor(len(tries)) as pool:
            won = list(pool.map(rotate, tries))
        assert won.count(True) == 1 and won.count(False) == len(tries) - 1
        got = store.get("t")
        assert got is not None and got.secret_hash == tries[won.index(True)].secret_hash

    # --- replace_hash --------------------------------------------------------------

    def test_replace_hash_swaps_only_a_current_hash(self, store: TokenStore) -> None:
        original = stored(
            "t", use_count=2, previous_hash=secret_hash("p"), retired_hashes=(secret_hash("r"),)
        )
        store.add(original)
        assert store.replace_hash("t", old=secret_hash("stale"), new=secret_hash("x")) is False
        assert store.get("t") == original
        assert store.replace_hash("t", old=original.secret_hash, new="$argon2id$new") is True
        assert store.get("t") == dataclasses.replace(original, secret_hash="$argon2id$new")
        # The re-hash raced a rotation and lost: the rotated hash stays.
        assert store.replace_hash("t", old=original.secret_hash, new="$argon2id$x") is False
        assert store.replace_hash("gone", old="a", new="b") is False
        assert store.get("gone") is None

    # --- revoke ------------------------------------------------------------------

    def test_revoke_is_idempotent_and_keeps_first_time(self, store: TokenStore) -> None:
        store.add(stored("t"))
        assert store.revoke("t", NOW) is True
        assert store.revoke("t", NOW + DAY) is False
        got = store.get("t")
        assert got is not None
        assert got.token.revoked_at == NOW
        assert got.token.status is TokenStatus.REVOKED

    def test_revoke_unknown_id_raises(self, store: TokenStore) -> None:
        with pytest.raises(TokenNotFound):
            store.revoke("ghost", NOW)

    # --- list ----------------------------------------------------------------------

    @pytest.fixture
    def statuses(self, store: TokenStore) -> TokenStore:
        store.add(stored("a-forever"))
        store.add(stored("a-future", expires_at=NOW + SECOND))
        store.add(stored("e-now", expires_at=NOW))  # expires_at == now counts as expired
        store.add(stored("e-past", expires_at=NOW - DAY))
        store.add(stored("r-live", revoked_at=NOW - SECOND))
        store.add(stored("r-expired", expires_at=NOW - DAY, revoked_at=NOW - 2 * DAY))
        return store

    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (None, {"a-forever", "a-future", "e-now", "e-past", "r-live", "r-expired"}),
            (TokenStatus.ACTIVE, {"a-forever", "a-future"}),
            ("active", {"a-forever", "a-future"}),
            ("expired", {"e-now", "e-past"}),
            (TokenStatus.REVOKED, {"r-live", "r-expired"}),
        ],
    )
    def test_list_by_status_as_of_now(
        self, statuses: TokenStore, status: str | None, expected: set[str]
    ) -> None:
        found = statuses.list(now=NOW, status=status)
        assert {t.id for t in found} == expected
        for token in found:
            assert type(token) is Token  # never a StoredToken: list() gives no hashes
            assert token.status is token.status_at(NOW)
            if status is not None:
                assert token.status == status

    def test_list_status_moves_with_now(self, statuses: TokenStore) -> None:
        later = NOW + 2 * SECOND
        assert {t.id for t in statuses.list(now=later, status="active")} == {"a-forever"}
        earlier = NOW - 2 * DAY
        assert {t.id for t in statuses.list(now=earlier, status="expired")} == set()

    def test_list_unknown_status_raises(self, store: TokenStore) -> None:
        with pytest.raises(ValueError, match="status"):
            store.list(now=NOW, status="stale")

    def test_list_by_exact_user(self, store: TokenStore) -> None:
        store.add(stored("1", user="alice"))
        store.add(stored("2", user="alice2"))
        store.add(stored("3", user="Alice"))
        store.add(stored("4", user=None))
        assert [t.id for t in store.list(now=NOW, user="alice")] == ["1"]
        assert {t.id for t in store.list(now=NOW)} == {"1", "2", "3", "4"}

    def test_list_unused_since_includes_never_used(self, store: TokenStore) -> None:
        store.add(stored("never"))
        store.add(stored("stale", last_used_at=NOW - DAY, use_count=1))
        store.add(stored("exactly", last_used_at=NOW, use_count=1))
        store.add(stored("fresh", last_used_at=NOW + SECOND, use_count=1))
        store.add(stored("newborn", created_at=NOW + SECOND))
        found = store.list(now=NOW, unused_since=NOW)
        # A token created after the cut-off is not stale, used or not.
        assert {t.id for t in found} == {"never", "stale"}

    def test_list_by_name_substring_ignoring_case(self, store: TokenStore) -> None:
        store.add(stored("1", name="CI Report"))
        store.add(stored("2", name="nightly-report"))
        store.add(stored("3", name="Deploy"))
        store.add(stored("4", name="Straße"))
        store.add(stored("5", name="100%_done"))
        assert {t.id for t in store.list(now=NOW, name="REPORT")} == {"1", "2"}
        assert {t.id for t in store.list(now=NOW, name="ci r")} == {"1"}
        assert {t.id for t in store.list(now=NOW, name="STRASSE")} == {"4"}
        assert {t.id for t in store.list(now=NOW, name="%_")} == {"5"}  # not a LIKE pattern
        assert len(store.list(now=NOW, name="")) == 5

    def test_list_order_and_paging(self, store: TokenStore) -> None:
        # created_at DESC, then id ASC among equal times.
        for token_id, age in [("b", 1), ("a", 1), ("c", 0), ("d", 2), ("e", 1)]:
            store.add(stored(token_id, created_at=NOW - age * DAY))
        assert [t.id for t in store.list(now=NOW)] == ["c", "a", "b", "e", "d"]
        assert [t.id for t in store.list(now=NOW, limit=2)] == ["c", "a"]
        assert [t.id for t in store.list(now=NOW, limit=2, offset=2)] == ["b", "e"]
        assert [t.id for t in store.list(now=NOW, offset=4)] == ["d"]
        assert store.list(now=NOW, offset=10) == []
        assert store.list(now=NOW, limit=0) == []

    def test_list_filters_combine(self, store: TokenStore) -> None:
        store.add(stored("1", user="bob", name="Build", last_used_at=NOW - DAY))
        store.add(stored("2", user="bob", name="build", revoked_at=NOW - DAY))
        store.add(stored("3", user="bob", name="Deploy"))
        store.add(stored("4", user="eve", name="build"))
        store.add(stored("5", user="bob", name="build", last_used_at=NOW))
        found = store.list(now=NOW, user="bob", status="active", name="BUILD", unused_since=NOW)
        assert [t.id for t in found] == ["1"]

    @pytest.mark.parametrize("page", [{"limit": -1}, {"offset": -1}, {"limit": True}])
    def test_list_refuses_bad_pages(self, store: TokenStore, page: dict[str, Any]) -> None:
        with pytest.raises(ValueError, match=r"limit|offset"):
            store.list(now=NOW, **page)

    # --- write: usage --------------------------------------------------------------

    def test_write_folds_usage(self, store: TokenStore) -> None:
        store.add(stored("t"))
        store.write(
            usage=[
                Usage("t", NOW - SECOND, "10.0.0.1"),
                Usage("t", NOW + SECOND, "10.0.0.3", count=5),  # the newest
                Usage("t", NOW, "10.0.0.2", count=2),
            ]
        )
        got = store.get("t")
        assert got is not None
        assert got.token.use_count == 8
        assert got.token.last_used_at == NOW + SECOND
        assert got.token.last_used_ip == "10.0.0.3"

        # An older use counts but moves neither the time nor the IP.
        store.write(usage=[Usage("t", NOW - DAY, "192.0.2.1")])
        got = store.get("t")
        assert got is not None
        assert (got.token.use_count, got.token.last_used_at, got.token.last_used_ip) == (
            9,
            NOW + SECOND,
            "10.0.0.3",
        )

        # A use as new as the stored one is the newest use.
        store.write(usage=[Usage("t", NOW + SECOND, "10.9.9.9")])
        got = store.get("t")
        assert got is not None
        assert (got.token.use_count, got.token.last_used_ip) == (10, "10.9.9.9")

    def test_write_equal_times_later_item_wins(self, store: TokenStore) -> None:
        store.add(stored("t"))
        store.write(usage=[Usage("t", NOW, "10.0.0.1"), Usage("t", NOW, "10.0.0.2")])
        got = store.get("t")
        assert got is not None
        assert got.token.last_used_ip == "10.0.0.2"

    def test_write_ignores_usage_of_unknown_tokens(self, store: TokenStore) -> None:
        store.add(stored("t"))
        store.write(
            events=[event(NOW, token_id="deleted")],
            usage=[Usage("deleted", NOW), Usage("t", NOW, "10.0.0.1")],
        )
        got = store.get("t")
        assert got is not None
        assert got.token.use_count == 1
        assert store.get("deleted") is None
        assert len(store.events()) == 1

    def test_write_is_all_or_nothing(self, store: TokenStore) -> None:
        store.add(stored("t"))
        naive = NOW.replace(tzinfo=None)
        with pytest.raises(ValueError, match="timezone"):
            store.write(
                events=[event(NOW), event(NOW)],
                usage=[Usage("t", NOW), Usage("t", naive)],
            )
        with pytest.raises(ValueError, match="count"):
            store.write(events=[event(NOW)], usage=[Usage("t", NOW, count=-1)])
        assert store.events() == []
        got = store.get("t")
        assert got is not None
        assert got.token.use_count == 0

    def test_empty_write_is_fine(self, store: TokenStore) -> None:
        store.write()
        assert store.events() == []

    # --- events ----------------------------------------------------------------------

    @pytest.fixture
    def audit(self, store: TokenStore) -> list[AuditEvent]:
        log = [
            event(NOW - 3 * SECOND, token_id="t1", user="alice", outcome=Outcome.SUCCESS),
            event(NOW - 2 * SECOND, token_id="t1", user="alice", outcome=Outcome.FAILED),
            event(NOW - 2 * SECOND, token_id="t2", user="bob", outcome=Outcome.FORBIDDEN),
            event(
                NOW - SECOND,
                action=Action.REVOKE,
                token_id="t2",
                user="bob",
                actor="admin",
                outcome=Outcome.SUCCESS,
                reason="left the company",
            ),
            event(
                NOW,
                token_id=None,
                user=None,
                client_ip="198.51.100.9",
                method="POST",
                path="/rest/api/2/issue",
                outcome=Outcome.FAILED,
                reason="unknown token",
            ),
        ]
        store.write(events=log[:2])
        store.write(events=log[2:])
        return log

    def test_events_newest_first_in_insertion_order_on_ties(
        self, store: TokenStore, audit: list[AuditEvent]
    ) -> None:
        assert store.events() == [audit[4], audit[3], audit[2], audit[1], audit[0]]

    def test_events_roundtrip_every_field(self, store: TokenStore) -> None:
        full = AuditEvent(
            at=NOW.astimezone(_PLUS_TWO),
            action=Action.ROTATE,
            outcome=Outcome.FORBIDDEN,
            token_id="t",
            user="u",
            actor="a",
            client_ip="2001:db8::1",
            method="PATCH",
            path="/rest/ü",
            reason="not an admin",
        )
        store.write(events=[full])
        [got] = store.events()
        assert got == full
        assert got.at.utcoffset() == timedelta(0)
        assert isinstance(got.action, Action)
        assert isinstance(got.outcome, Outcome)

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            ({"token_id": "t1"}, [1, 0]),
            ({"user": "bob"}, [3, 2]),
            ({"action": Action.REVOKE}, [3]),
            ({"action": "authenticate"}, [4, 2, 1, 0]),
            ({"outcome": Outcome.FAILED}, [4, 1]),
            ({"outcome": "success"}, [3, 0]),
            ({"since": NOW - 2 * SECOND}, [4, 3, 2, 1]),  # inclusive
            ({"until": NOW - SECOND}, [2, 1, 0]),  # exclusive
            ({"since": NOW - 2 * SECOND, "until": NOW - 2 * SECOND}, []),
            ({"since": (NOW - SECOND).astimezone(_PLUS_TWO)}, [4, 3]),
            ({"user": "bob", "outcome": "success", "action": "revoke"}, [3]),
            ({"token_id": "t1", "since": NOW - 2 * SECOND, "outcome": "failed"}, [1]),
            ({"user": "alice", "outcome": "forbidden"}, []),
            ({"limit": 2}, [4, 3]),
            ({"limit": 2, "offset": 2}, [2, 1]),
            ({"offset": 4}, [0]),
            ({"limit": 0}, []),
            ({"user": "alice", "limit": 1, "offset": 1}, [0]),
        ],
    )
    def test_events_filters(
        self,
        store: TokenStore,
        audit: list[AuditEvent],
        filters: dict[str, object],
        expected: list[int],
    ) -> None:
        assert store.events(**filters) == [audit[i] for i in expected]  # type: ignore[arg-type]

    def test_events_default_limit_is_100(self, store: TokenStore) -> None:
        store.write(events=[event(NOW + i * SECOND) for i in range(150)])
        found = store.events()
        assert len(found) == 100
        assert found[0].at == NOW + 149 * SECOND
        assert len(store.events(limit=1000)) == 150

    @pytest.mark.parametrize(
        "filters",
        [{"action": "login"}, {"outcome": "ok"}, {"limit": -1}, {"offset": -5}],
    )
    def test_events_refuses_bad_filters(
        self, store: TokenStore, filters: dict[str, object]
    ) -> None:
        with pytest.raises(ValueError, match=r"action|outcome|limit|offset"):
            store.events(**filters)  # type: ignore[arg-type]

    def test_prune_events(self, store: TokenStore, audit: list[AuditEvent]) -> None:
        assert store.prune_events(before=NOW - 2 * SECOND) == 1  # strictly older only
        assert store.prune_events(before=NOW - 2 * SECOND) == 0
        assert store.prune_events(before=NOW) == 3
        assert store.events() == [audit[4]]
        assert store.prune_events(before=NOW + DAY) == 1
        assert store.events() == []

    # --- argument checks and lifecycle --------------------------------------------------

    @pytest.mark.parametrize(
        "call",
        [
            pytest.param(lambda s, n: s.add(stored("x", created_at=n)), id="add.created_at"),
            pytest.param(lambda s, n: s.add(stored("x", expires_at=n)), id="add.expires_at"),
            pytest.param(
                lambda s, n: s.add(stored("x", previous_valid_until=n)),
                id="add.previous_valid_until",
            ),
            pytest.param(lambda s, n: s.update(stored("t", expires_at=n)), id="update"),
            pytest.param(lambda s, n: s.revoke("t", n), id="revoke"),
            pytest.param(lambda s, n: s.list(now=n), id="list.now"),
            pytest.param(lambda s, n: s.list(now=NOW, unused_since=n), id="list.unused"),
            pytest.param(lambda s, n: s.write(events=[event(n)]), id="write.event"),
            pytest.param(lambda s, n: s.write(usage=[Usage("t", n)]), id="write.usage"),
            pytest.param(lambda s, n: s.events(since=n), id="events.since"),
            pytest.param(lambda s, n: s.events(until=n), id="events.until"),
            pytest.param(lambda s, n: s.prune_events(before=n), id="prune"),
        ],
    )
    def test_naive_datetimes_are_refused(
        self, store: TokenStore, call: Callable[[TokenStore, datetime], object]
    ) -> None:
        store.add(stored("t"))
        with pytest.raises(ValueError, match="timezone-aware"):
            call(store, NOW.replace(tzinfo=None))
        assert store.get("x") is None
        got = store.get("t")
        assert got is not None
        assert got.token.revoked_at is None
        assert got.token.expires_at is None

    @pytest.mark.parametrize(
        "call",
        [
            pytest.param(lambda s: s.add(stored("new")), id="add"),
            pytest.param(lambda s: s.get("t"), id="get"),
            pytest.param(lambda s: s.update(stored("t")), id="update"),
            pytest.param(lambda s: s.revoke("t", NOW), id="revoke"),
            pytest.param(lambda s: s.replace_hash("t", old="a", new="b"), id="replace_hash"),
            pytest.param(lambda s: s.list(now=NOW), id="list"),
            pytest.param(lambda s: s.write(events=[event(NOW)]), id="write"),
            pytest.param(lambda s: s.write(), id="write.empty"),
            pytest.param(lambda s: s.events(), id="events"),
            pytest.param(lambda s: s.prune_events(before=NOW), id="prune"),
        ],
    )
    def test_closed_store_raises_storage_error(
        self, store: TokenStore, call: Callable[[TokenStore], object]
    ) -> None:
        store.add(stored("t"))
        store.close()
        with pytest.raises(StorageError):
            call(store)
        store.close()  # idempotent

    def test_returned_records_are_not_live(self, store: TokenStore) -> None:
        store.add(stored("t"))
        got = store.get("t")
        listed = store.list(now=NOW)
        assert got is not None
        with pytest.raises(dataclasses.FrozenInstanceError):
            got.token.name = "changed"  # type: ignore[misc]
        listed.clear()
        store.write(usage=[Usage("t", NOW)])
        assert got.token.use_count == 0  # the earlier read did not change under us
        assert len(store.list(now=NOW)) == 1

    # --- concurrency ----------------------------------------------------------------------

    def test_concurrent_writers_lose_nothing(self, store: TokenStore) -> None:
        threads, batches = 8, 200
        store.add(stored("shared"))
        store.add(stored("other"))
        start = threading.Barrier(threads + 3, timeout=60)

        def writer(n: int) -> None:
            start.wait()
            for b in range(batches):
                # Unique times, so exactly one use is the newest overall.
                at = NOW + timedelta(microseconds=n * batches + b)
                store.write(
                    events=[event(at, user=f"w{n}"), event(at, user=f"w{n}", reason=str(b))],
                    usage=[
                        Usage("shared", at, f"10.{n}.{b // 256}.{b % 256}", count=2),
                        Usage("other", at),
                        Usage("never-added", at),
                    ],
                )

        def adder() -> int:
            start.wait()
            added = 0
            for i in range(60):
                store.add(stored(f"new{i:02d}"))
                added += store.revoke(f"new{i:02d}", NOW)
                added += store.revoke(f"new{i:02d}", NOW)  # already revoked: False
            return added

        def reader() -> int:
            start.wait()
            reads = 0
            for _ in range(50):
                reads += len(store.list(now=NOW)) >= 2
                reads += store.get("shared") is not None
            return reads

        with ThreadPoolExecutor(max_workers=threads + 3) as pool:
            writers = [pool.submit(writer, n) for n in range(threads)]
            added = pool.submit(adder)
            readers = [pool.submit(reader) for _ in range(2)]
            for future in writers:
                future.result()
            assert added.result() == 60
            assert [r.result() for r in readers] == [100, 100]

        assert len(store.events(limit=10**6)) == threads * batches * 2
        for n in range(threads):
            assert len(store.events(user=f"w{n}", limit=10**6)) == batches * 2
        shared, other = store.get("shared"), store.get("other")
        assert shared is not None
        assert other is not None
        assert shared.token.use_count == threads * batches * 2
        assert other.token.use_count == threads * batches
        last = threads * batches - 1
        assert shared.token.last_used_at == NOW + timedelta(microseconds=last)
        assert shared.token.last_used_ip == f"10.{threads - 1}.0.{batches - 1}"
        assert len(store.list(now=NOW, status="revoked")) == 60

    def test_concurrent_add_and_revoke_race_exactly_once(self, store: TokenStore) -> None:
        ids = [f"t{i:02d}" for i in range(40)]
        workers = 4
        start = threading.Barrier(workers, timeout=60)

        def race(seed: int) -> tuple[int, int]:
            order = ids[:]
            random.Random(seed).shuffle(order)
            start.wait()
            added = refused = 0
            for token_id in order:
                try:
                    store.add(stored(token_id))
                    added += 1
                except StorageError:
                    refused += 1
            revoked = sum(store.revoke(token_id, NOW) for token_id in reversed(order))
            return added, revoked

        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(race, range(workers)))
        assert sum(added for added, _ in results) == len(ids)
        assert sum(revoked for _, revoked in results) == len(ids)
        assert len(store.list(now=NOW, status="revoked")) == len(ids)

    # --- the optional failure ledger (FailureLedger) ----------------------------------------

    # A store that offers none of it passes these: ApiTokens then throttles per process.
    # Half of it (one method without the other) is a broken store, never "not offered".

    def test_failure_ledger_counts_per_key_within_the_window(self, store: TokenStore) -> None:
        if not _offers_ledger(store):
            return
        minute = timedelta(minutes=1)
        store.record_failures({"198.51.100.7": 2, "2001:db8::/64": 1}, NOW, keep=minute)
        store.record_failures({"198.51.100.7": 1, "none": 0}, NOW + 30 * SECOND, keep=minute)
        assert store.failures_since("198.51.100.7", NOW - minute) == 3
        assert store.failures_since("2001:db8::/64", NOW - minute) == 1
        assert store.failures_since("none", NOW - minute) == 0
        assert store.failures_since("198.51.100.7", NOW + 2 * SECOND) == 1
        # Whole seconds may be counted, towards counting: never less than what is newer.
        assert store.failures_since("198.51.100.7", NOW + 29 * SECOND) >= 1
        assert store.failures_since("198.51.100.7", NOW + 32 * SECOND) == 0
        with pytest.raises(ValueError, match="timezone"):
            store.failures_since("198.51.100.7", NOW.replace(tzinfo=None))
        with pytest.raises(ValueError, match="count"):
            store.record_failures({"k": -1}, NOW, keep=minute)
        with pytest.raises(ValueError, match="timezone"):
            store.record_failures({"k": 1}, NOW.replace(tzinfo=None), keep=minute)
        assert store.failures_since("k", NOW - minute) == 0

    def test_failure_ledger_concurrent_batches_all_count(self, store: TokenStore) -> None:
        if not _offers_ledger(store):
            return
        ledger = store
        workers, batches = 4, 25
        start = threading.Barrier(workers, timeout=60)

        def add(worker: int) -> None:
            start.wait()
            for i in range(batches):
                # The same keys from every worker at once, in different orders.
                keys = ["a", "b", f"w{worker}"]
                random.Random(worker * 1000 + i).shuffle(keys)
                ledger.record_failures(dict.fromkeys(keys, 1), NOW, keep=DAY)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(add, range(workers)))
        assert ledger.failures_since("a", NOW - SECOND) == workers * batches
        assert ledger.failures_since("b", NOW - SECOND) == workers * batches
        assert ledger.failures_since("w2", NOW - SECOND) == batches

    # --- the optional expiry notices (NoticeLedger) ----------------------------------------

    # A store that offers none of it passes these: notify_expiring then refuses to run.

    def test_notice_claimed_once_per_token_expiry_and_threshold(self, store: TokenStore) -> None:
        if not _offers_notices(store):
            return
        token_id, week = f"n-{uuid.uuid4().hex}", timedelta(days=7)
        expires = NOW + 5 * DAY
        assert store.claim_notice(token_id, expires, week, NOW) is True
        assert store.claim_notice(token_id, expires, week, NOW + SECOND) is False
        # Another threshold, another expiry (a new expires_at resets) or token: new notices.
        assert store.claim_notice(token_id, expires, 30 * DAY, NOW) is True
        assert store.claim_notice(token_id, expires + DAY, week, NOW) is True
        assert store.claim_notice(f"{token_id}-2", expires, week, NOW) is True
        # Released (the notice could not be sent): it may be claimed again, once.
        store.release_notice(token_id, expires, week)
        store.release_notice(token_id, expires, timedelta(hours=1))  # never claimed: harmless
        assert store.claim_notice(token_id, expires, week, NOW) is True
        assert store.claim_notice(token_id, expires, week, NOW) is False
        # The same instant in another time zone is the same notice.
        other = expires.astimezone(timezone(timedelta(hours=5)))
        assert store.claim_notice(token_id, other, week, NOW) is False
        with pytest.raises(ValueError, match="timezone"):
            store.claim_notice(token_id, expires.replace(tzinfo=None), week, NOW)
        with pytest.raises(ValueError, match="timezone"):
            store.claim_notice(token_id, expires, week, NOW.replace(tzinfo=None))
        with pytest.raises(ValueError, match="threshold"):
            store.claim_notice(token_id, expires, timedelta(0), NOW)

    def test_notice_claims_of_expiries_long_past_are_forgotten(self, store: TokenStore) -> None:
        if not _offers_notices(store):
            return
        token_id, week = f"n-{uuid.uuid4().hex}", timedelta(days=7)
        old, recent = NOW - 3 * DAY, NOW - timedelta(hours=1)
        assert store.claim_notice(token_id, old, week, old - DAY) is True
        assert store.claim_notice(token_id, recent, week, recent - DAY) is True
        # Kept a day past the expiry, then pruned by any later claim.
        assert store.claim_notice(f"{token_id}-x", NOW + DAY, week, NOW) is True
        assert store.claim_notice(token_id, recent, week, NOW) is False
        assert store.claim_notice(token_id, old, week, NOW) is True

    def test_notice_concurrent_claims_exactly_one_wins(self, store: TokenStore) -> None:
        if not _offers_notices(store):
            return
        ledger = store
        workers, tokens = 4, 20
        base = f"n-{uuid.uuid4().hex}"
        start = threading.Barrier(workers, timeout=60)

        def claim(worker: int) -> list[str]:
            order = [f"{base}-{i}" for i in range(tokens)]
            random.Random(worker).shuffle(order)
            start.wait()
            return [
                token_id
                for token_id in order
                if ledger.claim_notice(token_id, NOW + DAY, timedelta(days=7), NOW)
            ]

        with ThreadPoolExecutor(max_workers=workers) as pool:
            won = [token_id for claimed in pool.map(claim, range(workers)) for token_id in claimed]
        assert sorted(won) == sorted(f"{base}-{i}" for i in range(tokens))

    # --- the optional usage ledger (UsageLedger) --------------------------------------------

    # A store that offers none of it passes these: tokens with a rate limit or credits
    # cannot be created on it (ApiTokens refuses), so it need not keep their fields either.

    def test_limit_fields_roundtrip_through_add_get_update_and_list(
        self, store: TokenStore
    ) -> None:
        offered = _offers_usage(store)  # a bool: `store` stays a TokenStore here
        if not offered:
            return
        limited = stored("lim", rate_limit="100/min", credits=500, refill="50/day")
        store.add(limited)
        store.add(stored("plain"))

        def limits(token: Token) -> tuple[str | None, int | None, str | None]:
            return token.rate_limit, token.credits, token.refill

        def got(token_id: str) -> tuple[str | None, int | None, str | None]:
            found = store.get(token_id)
            assert found is not None
            return limits(found.token)

        assert store.get("lim") == limited
        assert got("lim") == ("100/min", 500, "50/day")
        assert got("plain") == (None, None, None)
        listed = {token.id: limits(token) for token in store.list(now=NOW)}
        assert listed == {"lim": ("100/min", 500, "50/day"), "plain": (None, None, None)}
        # Stored in canonical text, whatever spelling came in.
        store.add(stored("spelled", rate_limit=" 7 / Minute ", credits=3, refill="2/d"))
        assert got("spelled") == ("7/min", 3, "2/day")
        # update() sets, changes and removes them; the other fields stay.
        store.update(stored("plain", rate_limit="5/s"))
        assert got("plain") == ("5/s", None, None)
        store.update(stored("lim", credits=7))
        assert got("lim") == (None, 7, None)
        store.update(stored("lim", rate_limit="1000/h", credits=1_000_000_000, refill="1/s"))
        assert got("lim") == ("1000/h", 1_000_000_000, "1/s")
        assert {t.id: limits(t) for t in store.list(now=NOW, user="alice", name="lim")} == {
            "lim": ("1000/h", 1_000_000_000, "1/s")
        }
        store.update(stored("lim"))
        assert got("lim") == (None, None, None)
        # Malformed limits, and a refill without credits, are refused: nothing written.
        for bad in (
            {"rate_limit": "lots"},
            {"rate_limit": "0/min"},
            {"credits": 0},
            {"credits": True},
            {"refill": "1/day"},
        ):
            with pytest.raises(ValueError, match=r"rate_limit|credits|refill"):
                store.add(stored("bad", **bad))
            assert store.get("bad") is None
            with pytest.raises(ValueError, match=r"rate_limit|credits|refill"):
                store.update(stored("plain", **bad))
            assert got("plain") == ("5/s", None, None)

    def test_usage_ledger_counts_requests_per_window(self, store: TokenStore) -> None:
        if not _offers_usage(store):
            return
        token_id = f"r-{uuid.uuid4().hex}"
        start = 1_773_500_040  # a whole minute, in Unix seconds
        minute = (token_id, 60, start)
        other_token = (f"{token_id}-2", 60, start)
        other_length = (token_id, 1, start)
        next_minute = (token_id, 60, start + 60)
        assert store.count_requests({minute: 2, other_token: 1}, ended_before=start) == {
            minute: 2,
            other_token: 1,
        }
        assert store.count_requests({minute: 3}, ended_before=start) == {minute: 5}
        # A count of 0 only reads; a window never counted is 0; keys are independent.
        assert store.count_requests(
            {minute: 0, other_token: 0, other_length: 0, next_minute: 0}, ended_before=start
        ) == {minute: 5, other_token: 1, other_length: 0, next_minute: 0}
        assert store.count_requests({other_length: 4, next_minute: 1}, ended_before=start) == {
            other_length: 4,
            next_minute: 1,
        }
        assert store.count_requests({minute: 1}, ended_before=start) == {minute: 6}
        # Windows that ended before ended_before are forgotten; one ending at it is kept.
        assert store.count_requests({}, ended_before=start + 60) == {}
        assert store.count_requests(
            {minute: 0, other_length: 0, next_minute: 0, other_token: 0}, ended_before=start
        ) == {minute: 6, other_length: 0, next_minute: 1, other_token: 1}
        # A negative count is refused, and nothing of the batch is written.
        with pytest.raises(ValueError, match="non-negative"):
            store.count_requests({minute: 1, next_minute: -1}, ended_before=start)
        assert store.count_requests({minute: 0, next_minute: 0}, ended_before=start) == {
            minute: 6,
            next_minute: 1,
        }

    def test_usage_ledger_spends_and_refills_credits(self, store: TokenStore) -> None:
        if not _offers_usage(store):
            return
        base = f"c-{uuid.uuid4().hex}"
        once, daily, raised = f"{base}-once", f"{base}-daily", f"{base}-raised"

        def spend(token_id: str, spent: int, credits: int, refill: int, period: int) -> int:
            left = store.spend_credits({token_id: CreditSpend(spent, credits, refill, period)})
            assert set(left) == {token_id}
            return left[token_id]

        # A new balance starts at credits; spends come off it, never below 0.
        assert spend(once, 0, 10, 0, 0) == 10
        assert spend(once, 3, 10, 0, 0) == 7
        assert spend(once, 10, 10, 0, 0) == 0
        assert spend(once, 0, 10, 0, 0) == 0
        # No refill: the period does not matter.
        assert spend(once, 0, 10, 0, 5) == 0
        # Refilled by `refill` for each period since the balance's own, capped at credits.
        assert spend(daily, 8, 10, 3, 100) == 2
        assert spend(daily, 0, 10, 3, 101) == 5
        assert spend(daily, 0, 10, 3, 101) == 5  # the same period: no second refill
        assert spend(daily, 1, 10, 3, 103) == 9  # 5 + 6 = 11, capped at 10, then 1 spent
        assert spend(daily, 0, 10, 3, 104) == 10
        assert spend(daily, 10, 10, 3, 104) == 0
        assert spend(daily, 0, 10, 3, 102) == 0  # an earlier period (a clock behind): nothing
        assert spend(daily, 0, 10, 3, 105) == 3
        # A balance above credits (credits lowered) is not lowered by a refill.
        assert spend(raised, 0, 20, 5, 1) == 20
        assert spend(raised, 0, 10, 5, 2) == 20
        assert spend(raised, 15, 10, 5, 3) == 5
        assert spend(raised, 0, 10, 5, 4) == 10
        # Many tokens in one call, each its own.
        assert store.spend_credits(
            {once: CreditSpend(0, 10, 0, 0), daily: CreditSpend(2, 10, 3, 105)}
        ) == {once: 0, daily: 1}
        # Reset: the balance starts again at credits; resetting an unknown id is harmless.
        store.reset_credits(once)
        store.reset_credits(f"{base}-never")
        assert spend(once, 1, 4, 0, 0) == 3
        # Reset to a number: the balance is written, so a spend sent late on the old,
        # larger credits is taken off it (never bringing the old balance back).
        assert spend(daily, 0, 1000, 3, 106) == 4  # 1 + 3
        store.reset_credits(daily, 5, 106)
        assert spend(daily, 1, 1000, 3, 106) == 4  # not 999 (from the old 1000)
        assert spend(daily, 0, 5, 3, 107) == 5  # refills on, capped at the new credits
        for bad_reset in ((-1, 0), (5, -1)):
            with pytest.raises(ValueError, match="non-negative"):
                store.reset_credits(daily, *bad_reset)
        assert spend(daily, 0, 5, 3, 107) == 5
        # A negative or malformed spend is refused, and nothing of the batch is written.
        for bad in (CreditSpend(-1, 10, 0, 0), CreditSpend(0, -10, 0, 0)):
            with pytest.raises(ValueError, match="non-negative"):
                store.spend_credits({once: CreditSpend(1, 4, 0, 0), daily: bad})
            assert spend(once, 0, 4, 0, 0) == 3
        assert spend(daily, 0, 5, 3, 107) == 5

    def test_usage_ledger_of_a_closed_store_raises_storage_error(self, store: TokenStore) -> None:
        offered = _offers_usage(store)  # a bool: `store` stays a TokenStore here
        if not offered:
            return
        ledger: Any = store
        store.close()
        calls: list[Callable[[], object]] = [
            lambda: ledger.count_requests({("t", 60, 0): 1}, ended_before=0),
            lambda: ledger.count_requests({}, ended_before=0),
            lambda: ledger.spend_credits({"t": CreditSpend(1, 5, 0, 0)}),
            lambda: ledger.spend_credits({}),
            lambda: ledger.reset_credits("t"),
            lambda: ledger.reset_credits("t", 5, 0),
        ]
        for call in calls:
            with pytest.raises(StorageError):
                call()

    def test_usage_ledger_concurrent_counts_and_spends_all_count(self, store: TokenStore) -> None:
        if not _offers_usage(store):
            return
        ledger = store
        workers, batches = 4, 25
        token_id = f"u-{uuid.uuid4().hex}"
        window = (token_id, 60, 1_773_500_040)
        start = threading.Barrier(workers, timeout=60)

        def add(worker: int) -> None:
            start.wait()
            for i in range(batches):
                # The same keys from every worker at once, in different orders.
                keys = [window, (token_id, 1, i), (f"{token_id}-{worker}", 60, 0)]
                random.Random(worker * 1000 + i).shuffle(keys)
                ledger.count_requests(dict.fromkeys(keys, 1), ended_before=0)
                ledger.spend_credits({token_id: CreditSpend(1, 1000, 0, 0)})

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(add, range(workers)))
        totals = ledger.count_requests(
            {window: 0, (token_id, 1, 3): 0, (f"{token_id}-2", 60, 0): 0}, ended_before=0
        )
        assert totals == {
            window: workers * batches,
            (token_id, 1, 3): workers,
            (f"{token_id}-2", 60, 0): batches,
        }
        left = ledger.spend_credits({token_id: CreditSpend(0, 1000, 0, 0)})
        assert left == {token_id: 1000 - workers * batches}

    # --- the filters against a reference model ----------------------------------------------

    # One store serves every example (each owns a fresh user name), and each
    # backend's subclass runs this same function: both health checks are moot.
    @settings(
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(data=st.data())
    def test_list_agrees_with_reference(self, store: TokenStore, data: st.DataObject) -> None:
        owner = f"user-{uuid.uuid4().hex}"
        offsets = st.integers(-3, 3).map(lambda n: NOW + n * SECOND)
        tokens = []
        for i in range(data.draw(st.integers(0, 8), label="count")):
            token = stored(
                f"{owner}-{i}",
                user=owner,
                name=data.draw(st.sampled_from(["Alpha", "alphabet", "Beta", "ALP"])),
                created_at=data.draw(offsets) - DAY,
                expires_at=data.draw(st.none() | offsets),
                revoked_at=data.draw(st.none() | offsets),
                last_used_at=data.draw(st.none() | offsets),
            )
            store.add(token)
            tokens.append(token.token)
        now = data.draw(offsets, label="now")
        status = data.draw(st.sampled_from([None, "active", "expired", "revoked"]))
        unused = data.draw(st.none() | offsets, label="unused_since")
        name = data.draw(st.sampled_from([None, "alp", "BET", "x"]))
        limit = data.draw(st.none() | st.integers(0, 9))
        offset = data.draw(st.integers(0, 9))

        def wanted(t: Token) -> bool:
            state = (
                "revoked"
                if t.revoked_at is not None
                else "expired"
                if t.expires_at is not None and t.expires_at <= now
                else "active"
            )
            return (
                (status is None or state == status)
                and (
                    unused is None
                    or (
                        t.created_at <= unused
                        and (t.last_used_at is None or t.last_used_at < unused)
                    )
                )
                and (name is None or name.casefold() in t.name.casefold())
            )

        expected = sorted((t for t in tokens if wanted(t)), key=lambda t: t.id)
        expected.sort(key=lambda t: t.created_at, reverse=True)
        end = None if limit is None else offset + limit
        found = store.list(
            now=now,
            user=owner,
            status=status,
            unused_since=unused,
            name=name,
            limit=limit,
            offset=offset,
        )
        assert [t.id for t in found] == [t.id for t in expected[offset:end]]


def _offers_notices(store: TokenStore) -> TypeGuard[NoticeLedger]:
    """Whether ``store`` offers the optional NoticeLedger: all of it, or none of it."""
    methods = [callable(getattr(store, name, None)) for name in ("claim_notice", "release_notice")]
    assert all(methods) or not any(methods), (
        f"{type(store).__name__} has only part of NoticeLedger (claim_notice and "
        "release_notice go together)"
    )
    return all(methods)


def _offers_usage(store: TokenStore) -> TypeGuard[UsageLedger]:
    """Whether ``store`` offers the optional UsageLedger: all of it, or none of it."""
    names = ("count_requests", "spend_credits", "reset_credits")
    methods = [callable(getattr(store, name, None)) for name in names]
    assert all(methods) or not any(methods), (
        f"{type(store).__name__} has only part of UsageLedger (count_requests, spend_credits"
        " and reset_credits go together)"
    )
    return all(methods)


def _offers_ledger(store: TokenStore) -> TypeGuard[FailureLedger]:
    """Whether ``store`` offers the optional FailureLedger: all of it, or none of it."""
    methods = [
        callable(getattr(store, name, None)) for name in ("record_failures", "failures_since")
    ]
    assert all(methods) or not any(methods), (
        f"{type(store).__name__} has only part of FailureLedger (record_failures and "
        "failures_since go together)"
    )
    return all(methods)
