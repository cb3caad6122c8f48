"""Run as another user: ``Policy.run_as_groups`` and ``X-Run-As`` (DESIGN §11, issue 18)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from apitokens import ApiTokens, AuditEvent, MemoryStore, Outcome, Policy, TokenStore
from apitokens.postgres import PostgresStore
from apitokens.storage import SQLiteStore
from tests.support import CHEAP_HASHER, Clock, Monotonic, basic, bearer, get, make_tokens

DIRECTORY = {
    "alice": {"api", "support"},  # may run as others
    "bob": {"api"},
    "carol": {"api"},
    "dave": set(),  # may not use tokens
    "admin": {"admins"},
}


def groups(user: str) -> Iterable[str]:
    return DIRECTORY.get(user, set())


# The store of the test running: every test runs on each store (DESIGN §11's proof).
_STORE: list[TokenStore] = []


@pytest.fixture(autouse=True, params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TokenStore]:
    made: TokenStore
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SQLiteStore(tmp_path / "run-as.db")
    else:
        made = PostgresStore(request.getfixturevalue("postgres_database"))
    _STORE[:] = [made]
    yield made
    _STORE.clear()
    made.close()


def run_as_tokens(ticks: Monotonic | None = None, **policy: object) -> ApiTokens:
    """An ApiTokens on the test's store, with a run-as group and token users."""
    policy.setdefault("run_as_groups", frozenset({"support"}))
    policy.setdefault("token_users", frozenset({"api"}))
    return make_tokens(
        _STORE[0], clock=Clock(), monotonic=ticks or Monotonic(), groups=groups, **policy
    )


def events(tokens: ApiTokens) -> list[AuditEvent]:
    """The authentication events, oldest first."""
    return list(reversed(tokens.audit(limit=100, action="authenticate")))


def run_as(secret: str, user: str) -> list[tuple[str, str]]:
    return [*bearer(secret), ("X-Run-As", user)]


def test_a_member_of_a_run_as_group_acts_as_the_user_and_both_are_audited() -> None:
    with run_as_tokens() as tokens:
        issued = tokens.create(actor="alice", name="support")
        for _ in range(2):  # the second with the credential verified before
            result = tokens.authenticate(get("/x", run_as(issued.secret, "bob")))
            assert (result.authenticated, result.user, result.real_user) == (True, "bob", "alice")
        own = tokens.authenticate(get("/x", bearer(issued.secret)))
        assert (own.user, own.real_user) == ("alice", None)  # without the header: the owner
        found = [(e.outcome, e.user, e.actor, e.reason) for e in events(tokens)]
        assert found == [
            (Outcome.SUCCESS, "bob", "alice", "authenticated"),
            (Outcome.SUCCESS, "bob", "alice", "authenticated"),
            (Outcome.SUCCESS, "alice", None, "authenticated"),
        ]
        assert tokens.get(issued.token.id).use_count == 3


@pytest.mark.parametrize(
    ("policy", "owner", "reason"),
    [
        ({"run_as_groups": frozenset()}, "alice", "X-Run-As sent, but no group may run as"),
        ({}, "bob", "user 'bob' may not run as another user"),
    ],
)
def test_anyone_else_gets_403_never_ignored(
    policy: dict[str, object], owner: str, reason: str
) -> None:
    with run_as_tokens(**policy) as tokens:
        issued = tokens.create(actor=owner, name="t")
        # Verified and hot first: the header must still be checked.
        assert tokens.authenticate(get("/x", bearer(issued.secret))).authenticated
        result = tokens.authenticate(get("/x", run_as(issued.secret, "carol")))
        assert (result.status_code, result.outcome) == (403, Outcome.FORBIDDEN)
        assert json.loads(result.body)["error"] == "insufficient_scope"
        assert result.user is None
        event = events(tokens)[-1]
        assert (event.user, event.actor, event.token_id) == ("carol", owner, issued.token.id)
        assert event.reason.startswith(reason)
        assert tokens.get(issued.token.id).use_count == 1  # a refusal is no use


def test_the_user_acted_as_must_be_allowed_to_use_tokens() -> None:
    with run_as_tokens() as tokens:
        issued = tokens.create(actor="alice", name="support")
        for user in ("dave", "nobody"):
            result = tokens.authenticate(get("/x", run_as(issued.secret, user)))
            assert result.status_code == 403
            assert events(tokens)[-1].reason == f"run-as user {user!r} may not use tokens"


def test_the_user_acted_as_must_pass_the_user_checks() -> None:
    active = {"alice": True, "bob": False}
    ticks = Monotonic()
    with run_as_tokens(ticks) as tokens:
        tokens.check_users(lambda user: active.get(user, False))
        issued = tokens.create(actor="alice", name="support")
        result = tokens.authenticate(get("/x", run_as(issued.secret, "bob")))
        assert result.status_code == 403
        assert events(tokens)[-1].reason == "run-as user 'bob' is unknown or inactive"
        active["bob"] = True
        ticks.advance(1.01)  # the default cache_ttl
        assert tokens.authenticate(get("/x", run_as(issued.secret, "bob"))).user == "bob"


def test_an_unbound_token_cannot_run_as_anyone() -> None:
    with run_as_tokens(allow_unbound_tokens=True, token_admins=frozenset({"admins"})) as tokens:
        issued = tokens.create(actor="admin", unbound=True, name="ci")
        assert issued.token.user is None
        # Even named as a member of a run-as group: the Basic username is the client's word.
        basic_as = [*basic("alice", issued.secret), ("X-Run-As", "bob")]
        result = tokens.authenticate(get("/x", basic_as))
        assert result.status_code == 403
        event = events(tokens)[-1]
        assert event.reason == "an unbound token cannot run as another user"


def test_the_header_without_a_token_is_403_on_protected_paths_only() -> None:
    with run_as_tokens(protected_paths=["/rest/"]) as tokens:
        for headers in ([], [("Authorization", "Basic YWxpY2U6cGFzc3dvcmQ=")]):
            result = tokens.authenticate(get("/rest/x", [*headers, ("X-Run-As", "bob")]))
            assert (result.status_code, result.outcome) == (403, Outcome.FORBIDDEN)
            assert events(tokens)[-1].reason == "X-Run-As sent without a token"
        elsewhere = tokens.authenticate(get("/public/x", [("X-Run-As", "bob")]))
        assert elsewhere.outcome is Outcome.PASS_THROUGH


def test_two_headers_or_a_value_that_is_no_name_are_400() -> None:
    with run_as_tokens() as tokens:
        issued = tokens.create(actor="alice", name="support")
        other = tokens.create(actor="bob", name="b")
        for value in ("", "  ", "bo\x01b", "x" * 257, other.secret):
            result = tokens.authenticate(get("/x", run_as(issued.secret, value)))
            assert result.status_code == 400, value
        twice = [*run_as(issued.secret, "bob"), ("X-Run-As", "carol")]
        assert tokens.authenticate(get("/x", twice)).status_code == 400
        for event in events(tokens):
            assert other.secret not in repr(event)
            assert (event.user, event.actor) == ("alice", None)  # no name was read


def test_the_request_is_still_held_to_the_token_scope_and_rules() -> None:
    with run_as_tokens() as tokens:
        issued = tokens.create(actor="alice", name="support", restrictions=["[GET].*/ok/.*"])
        assert tokens.authenticate(get("/ok/1", run_as(issued.secret, "bob"))).user == "bob"
        result = tokens.authenticate(get("/no/1", run_as(issued.secret, "bob")))
        assert result.status_code == 403
        event = events(tokens)[-1]
        assert (event.user, event.actor) == ("bob", "alice")


def test_the_async_flow_looks_up_an_uncached_user_off_the_loop() -> None:
    with run_as_tokens() as tokens:
        issued = tokens.create(actor="alice", name="support")
        assert tokens.authenticate(get("/x", bearer(issued.secret))).authenticated
        result = asyncio.run(tokens.flow.run_async(get("/x", run_as(issued.secret, "carol")), None))
        assert (result.user, result.real_user) == ("carol", "alice")


def test_the_audit_event_keeps_both_names_in_sqlite(tmp_path: Path) -> None:
    policy = Policy(run_as_groups=frozenset({"support"}), token_users=frozenset({"api"}))
    with ApiTokens(
        SQLiteStore(tmp_path / "t.db"),
        policy=policy,
        groups=groups,
        hasher=CHEAP_HASHER,
        clock=Clock(),
    ) as tokens:
        issued = tokens.create(actor="alice", name="support")
        assert tokens.authenticate(get("/x", run_as(issued.secret, "bob"))).user == "bob"
        [event] = tokens.audit(limit=1, user="bob")
        assert (event.user, event.actor, event.outcome) == ("bob", "alice", Outcome.SUCCESS)
        assert tokens.get(issued.token.id).use_count == 1


def test_run_as_groups_is_a_collection() -> None:
    with pytest.raises(TypeError, match="run_as_groups"):
        Policy(run_as_groups="support")  # type: ignore[arg-type]
    assert Policy(run_as_groups=["a"]).run_as_groups == frozenset({"a"})
