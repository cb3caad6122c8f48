"""Management calls and the policy, on both stores: every rule refuses and is audited."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from apitokens import (
    ApiTokens,
    MemoryStore,
    Outcome,
    PermissionDenied,
    PolicyViolation,
    RuleSyntaxError,
    Scope,
    SQLiteStore,
    TokenImmutable,
    TokenNotFound,
    TokenStore,
)
from tests.support import Clock, basic, bearer, get, make_tokens

GROUPS = {
    "root": {"admins", "staff"},
    "alice": {"staff"},
    "bob": {"staff"},
    "mallory": set(),
}


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TokenStore]:
    s: TokenStore = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "t.db")
    yield s
    s.close()


def tokens_for(store: TokenStore, clock: Clock, **policy: object) -> ApiTokens:
    policy.setdefault("token_admins", {"admins"})
    return make_tokens(store, clock=clock, groups=lambda u: GROUPS.get(u, set()), **policy)


@pytest.fixture
def tokens(store: TokenStore, clock: Clock) -> Iterator[ApiTokens]:
    with tokens_for(store, clock) as t:
        yield t


def refusals(tokens: ApiTokens) -> list[tuple[str, str]]:
    return [(e.action, e.reason) for e in tokens.audit(outcome=Outcome.FORBIDDEN)]


# -- create and the policy ------------------------------------------------------------


def test_create_defaults(tokens: ApiTokens, clock: Clock) -> None:
    issued = tokens.create(actor="alice", name="  CI report ")
    token = issued.token
    assert (token.name, token.user, token.created_by, token.created_at) == (
        "CI report",
        "alice",
        "alice",
        clock.now,
    )
    assert (token.scope, token.secure, token.expires_at, token.status) == (
        Scope.READ_ONLY,
        True,
        None,
        "active",
    )
    assert tokens.get(token.id) == token
    event = tokens.audit(action="create")[0]
    assert (event.outcome, event.actor, event.user, event.token_id) == (
        Outcome.SUCCESS,
        "alice",
        "alice",
        token.id,
    )


def test_create_normalizes_rules_and_addresses(tokens: ApiTokens) -> None:
    token = tokens.create(
        actor="alice",
        name="x",
        restrictions=["[get,head].*/rest/.*"],
        allowed_ips=["203.0.113.7", "2001:db8::/32", "10.1.2.3/8"],
    ).token
    assert token.restrictions == ("[GET,HEAD].*/rest/.*",)
    assert token.allowed_ips == ("203.0.113.7/32", "2001:db8::/32", "10.0.0.0/8")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": ""}, ValueError),
        ({"name": "x" * 201}, ValueError),
        ({"name": "a\nb"}, ValueError),
        ({"name": "x", "restrictions": ["[bogus].*"]}, RuleSyntaxError),
        ({"name": "x", "restrictions": ".*"}, TypeError),
        ({"name": "x", "allowed_ips": ["300.1.1.1"]}, ValueError),
        ({"name": "x", "expires_in": timedelta(0)}, ValueError),
        ({"name": "x", "scope": "admin"}, ValueError),
        ({"name": "x", "user": "bob", "unbound": True}, ValueError),
    ],
)
def test_create_refuses_bad_input_and_stores_nothing(
    tokens: ApiTokens, kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        tokens.create(actor="alice", **kwargs)  # type: ignore[arg-type]
    assert tokens.list(actor="root") == []


def test_expiry_in_the_past_and_naive_are_refused(tokens: ApiTokens, clock: Clock) -> None:
    with pytest.raises(ValueError, match="past"):
        tokens.create(actor="alice", name="x", expires_at=clock.now - timedelta(seconds=1))
    with pytest.raises(ValueError, match="timezone-aware"):
        tokens.create(actor="alice", name="x", expires_at=clock.now.replace(tzinfo=None))
    with pytest.raises(ValueError, match="not both"):
        tokens.create(
            actor="alice",
            name="x",
            expires_in=timedelta(days=1),
            expires_at=clock.now + timedelta(days=1),
        )


def test_token_creators(store: TokenStore, clock: Clock) -> None:
    with tokens_for(store, clock, token_creators={"staff"}) as tokens:
        tokens.create(actor="alice", name="ok")
        with pytest.raises(PermissionDenied, match="token_creators"):
            tokens.create(actor="mallory", name="nope")
        assert refusals(tokens) == [("create", "'mallory' is not in token_creators")]


def test_only_admins_create_for_others(tokens: ApiTokens) -> None:
    with pytest.raises(PermissionDenied, match="other users"):
        tokens.create(actor="alice", name="x", user="bob")
    issued = tokens.create(actor="root", name="for bob", user="bob")
    assert (issued.token.user, issued.token.created_by) == ("bob", "root")


def test_read_only_for_users(store: TokenStore, clock: Clock) -> None:
    with tokens_for(store, clock, read_only_for_users=True) as tokens:
        with pytest.raises(PermissionDenied, match="READ_WRITE"):
            tokens.create(actor="alice", name="x", scope=Scope.READ_WRITE)
        tokens.create(actor="alice", name="ro")
        rw = tokens.create(actor="root", name="rw", user="alice", scope="read_write")
        assert rw.token.scope is Scope.READ_WRITE


def test_unbound_tokens_need_the_policy_and_an_admin(store: TokenStore, clock: Clock) -> None:
    with (
        tokens_for(store, clock) as tokens,
        pytest.raises(PolicyViolation, match="allow_unbound_tokens"),
    ):
        tokens.create(actor="root", name="x", unbound=True)
    with tokens_for(store, clock, allow_unbound_tokens=True) as tokens:
        with pytest.raises(PermissionDenied, match="unbound"):
            tokens.create(actor="alice", name="x", unbound=True)
        issued = tokens.create(actor="root", name="shared", unbound=True)
        assert issued.token.user is None
        assert issued.basic_user == "USERNAME"


def test_max_lifetime_and_require_expiry(store: TokenStore, clock: Clock) -> None:
    with tokens_for(store, clock, max_lifetime=timedelta(days=30)) as tokens:
        with pytest.raises(PolicyViolation, match="max_lifetime"):
            tokens.create(actor="alice", name="x", expires_in=timedelta(days=31))
        with pytest.raises(PolicyViolation, match="max_lifetime"):
            tokens.create(actor="alice", name="x")  # no expiry is an infinite lifetime
        assert tokens.create(actor="alice", name="x", expires_in=timedelta(days=30)).token
    with tokens_for(store, clock, require_expiry=True) as tokens:
        with pytest.raises(PolicyViolation, match="require_expiry"):
            tokens.create(actor="alice", name="x")
        tokens.create(actor="alice", name="x", expires_in=timedelta(days=3650))


def test_owner_must_be_allowed_to_use_tokens(store: TokenStore, clock: Clock) -> None:
    with (
        tokens_for(store, clock, token_users={"staff"}) as tokens,
        pytest.raises(PolicyViolation, match="token_users"),
    ):
        tokens.create(actor="root", name="x", user="mallory")


# -- who sees and touches what ----------------------------------------------------------


def test_list_filters_and_visibility(tokens: ApiTokens, clock: Clock) -> None:
    a1 = tokens.create(actor="alice", name="CI report")
    clock.advance(seconds=1)
    a2 = tokens.create(actor="alice", name="deploy", expires_in=timedelta(days=1))
    clock.advance(seconds=1)
    b1 = tokens.create(actor="bob", name="bob's")
    assert [t.id for t in tokens.list(actor="alice")] == [a2.token.id, a1.token.id]
    assert [t.id for t in tokens.list(actor="root")] == [b1.token.id, a2.token.id, a1.token.id]
    assert [t.id for t in tokens.list(actor="root", user="bob")] == [b1.token.id]
    with pytest.raises(PermissionDenied):
        tokens.list(actor="alice", user="bob")
    assert [t.id for t in tokens.list(actor="alice", name="REPORT")] == [a1.token.id]
    clock.advance(days=2)
    assert [t.id for t in tokens.list(actor="alice", status="expired")] == [a2.token.id]
    tokens.revoke(actor="alice", token_id=a1.token.id)
    assert [t.id for t in tokens.list(actor="alice", status="revoked")] == [a1.token.id]
    assert tokens.list(actor="alice", status="active") == []
    with pytest.raises(ValueError, match="status"):
        tokens.list(actor="alice", status="bogus")


def test_non_admins_cannot_touch_others_tokens(tokens: ApiTokens) -> None:
    bobs = tokens.create(actor="bob", name="b").token.id
    calls = [
        lambda: tokens.revoke(actor="alice", token_id=bobs),
        lambda: tokens.rotate(actor="alice", token_id=bobs),
        lambda: tokens.edit(actor="alice", token_id=bobs, name="mine"),
        lambda: tokens.reveal(actor="alice", token_id=bobs),
    ]
    for call in calls:
        with pytest.raises(PermissionDenied):
            call()
    assert [a for a, _ in refusals(tokens)] == ["reveal", "edit", "rotate", "revoke"]
    assert tokens.get(bobs) is not None
    assert tokens.get(bobs).status == "active"  # type: ignore[union-attr]


def test_unknown_ids(tokens: ApiTokens) -> None:
    with pytest.raises(TokenNotFound):
        tokens.revoke(actor="root", token_id="nope")
    assert tokens.get("nope") is None


def test_admin_revokes_anything_and_it_takes_effect_at_once(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="x")
    request = get("/x", bearer(issued.secret))
    assert tokens.authenticate(request).authenticated
    revoked = tokens.revoke(actor="root", token_id=issued.token.id)
    assert revoked.status == "revoked"
    assert tokens.authenticate(request).status_code == 401
    again = tokens.revoke(actor="root", token_id=issued.token.id)
    assert again.revoked_at == revoked.revoked_at
    assert [e.reason for e in tokens.audit(action="revoke")] == ["already revoked", "revoked"]


# -- secure and standard mode ---------------------------------------------------------------


def test_secure_tokens_cannot_be_edited_or_revealed(tokens: ApiTokens) -> None:
    token_id = tokens.create(actor="alice", name="x").token.id
    with pytest.raises(TokenImmutable, match="secure mode"):
        tokens.edit(actor="alice", token_id=token_id, name="y")
    with pytest.raises(TokenImmutable):
        tokens.reveal(actor="alice", token_id=token_id)
    with pytest.raises(TokenImmutable):
        tokens.snippet(actor="alice", token_id=token_id, url="https://x.example/")
    assert tokens.get(token_id).name == "x"  # type: ignore[union-attr]
    assert [a for a, _ in refusals(tokens)] == ["reveal", "reveal", "edit"]


def test_standard_tokens_reveal_and_edit(tokens: ApiTokens, clock: Clock) -> None:
    issued = tokens.create(actor="alice", name="x", secure=False, scope=Scope.READ_WRITE)
    token_id = issued.token.id
    assert tokens.reveal(actor="alice", token_id=token_id) == issued.secret
    h = bearer(issued.secret)
    assert tokens.authenticate(get("/rest/a", h)).authenticated
    edited = tokens.edit(
        actor="alice",
        token_id=token_id,
        name="renamed",
        restrictions=[".*/rest/b"],
        allowed_ips=["192.0.2.0/24"],
        expires_at=clock.now + timedelta(days=1),
    )
    assert (edited.name, edited.restrictions, edited.allowed_ips) == (
        "renamed",
        (".*/rest/b",),
        ("192.0.2.0/24",),
    )
    # The next request sees the change, despite the caches.
    assert tokens.authenticate(get("/rest/a", h)).status_code == 403
    assert tokens.authenticate(get("/rest/b", h)).authenticated
    assert tokens.authenticate(get("/rest/b", h, ip="198.51.100.1")).status_code == 403
    clock.advance(days=1)
    assert tokens.authenticate(get("/rest/b", h)).status_code == 401
    unchanged = tokens.edit(actor="alice", token_id=token_id, expires_at=None)
    assert (unchanged.name, unchanged.expires_at) == ("renamed", None)
    reasons = [e.reason for e in tokens.audit(action="edit")]
    assert reasons == ["changed expires_at", "changed allowed_ips, expires_at, name, restrictions"]
    assert tokens.audit(action="reveal")[0].outcome is Outcome.SUCCESS


def test_edit_keeps_the_policy(store: TokenStore, clock: Clock) -> None:
    with tokens_for(store, clock, max_lifetime=timedelta(days=10)) as tokens:
        token = tokens.create(
            actor="alice", name="x", secure=False, expires_in=timedelta(days=5)
        ).token
        clock.advance(days=4)
        with pytest.raises(PolicyViolation, match="max_lifetime"):
            # 7 days from now is 11 days after creation.
            tokens.edit(actor="alice", token_id=token.id, expires_at=clock.now + timedelta(days=7))
        with pytest.raises(PolicyViolation):
            tokens.edit(actor="alice", token_id=token.id, expires_at=None)
        with pytest.raises(RuleSyntaxError):
            tokens.edit(actor="alice", token_id=token.id, restrictions=["[nope]x"])
        assert tokens.get(token.id) == token.as_of(clock.now)


def test_revoked_tokens_are_immutable(tokens: ApiTokens) -> None:
    token_id = tokens.create(actor="alice", name="x", secure=False).token.id
    tokens.revoke(actor="alice", token_id=token_id)
    for call in (
        lambda: tokens.edit(actor="alice", token_id=token_id, name="y"),
        lambda: tokens.reveal(actor="alice", token_id=token_id),
        lambda: tokens.rotate(actor="alice", token_id=token_id),
    ):
        with pytest.raises(TokenImmutable, match="revoked"):
            call()


# -- rotation ---------------------------------------------------------------------------------


def test_rotate_without_grace(tokens: ApiTokens) -> None:
    old = tokens.create(actor="alice", name="x", restrictions=[".*/rest/.*"])
    assert tokens.authenticate(get("/rest/a", bearer(old.secret))).authenticated
    new = tokens.rotate(actor="alice", token_id=old.token.id)
    assert new.token.id == old.token.id
    assert new.token.restrictions == old.token.restrictions
    assert new.secret != old.secret
    assert tokens.authenticate(get("/rest/a", bearer(new.secret))).authenticated
    used = tokens.get(old.token.id)
    assert used is not None
    assert used.use_count == 2  # history kept
    # The old secret presented again is reuse (DESIGN §11): refused, and the token revoked.
    assert tokens.authenticate(get("/rest/a", bearer(old.secret))).status_code == 401
    assert tokens.authenticate(get("/rest/a", bearer(new.secret))).status_code == 401


def test_rotate_without_grace_old_secret_just_refused_without_reuse_detection(
    store: TokenStore, clock: Clock
) -> None:
    with tokens_for(store, clock, revoke_on_reuse=False) as tokens:
        old = tokens.create(actor="alice", name="x")
        new = tokens.rotate(actor="alice", token_id=old.token.id)
        assert tokens.authenticate(get("/rest/a", bearer(old.secret))).status_code == 401
        assert tokens.authenticate(get("/rest/a", bearer(new.secret))).authenticated


def test_rotate_with_grace(tokens: ApiTokens, clock: Clock) -> None:
    old = tokens.create(actor="alice", name="x")
    new = tokens.rotate(actor="alice", token_id=old.token.id, grace=timedelta(minutes=10))
    assert tokens.authenticate(get("/x", bearer(old.secret))).authenticated
    assert tokens.authenticate(get("/x", bearer(new.secret))).authenticated
    clock.advance(minutes=10)
    assert tokens.authenticate(get("/x", bearer(new.secret))).authenticated
    # After the grace the old secret is reuse: refused, and the token revoked.
    assert tokens.authenticate(get("/x", bearer(old.secret))).status_code == 401
    assert tokens.authenticate(get("/x", bearer(new.secret))).status_code == 401
    with pytest.raises(ValueError, match="grace"):
        tokens.rotate(actor="alice", token_id=old.token.id, grace=timedelta(seconds=-1))


def test_a_second_rotation_ends_the_first_grace(store: TokenStore, clock: Clock) -> None:
    with tokens_for(store, clock, revoke_on_reuse=False) as tokens:
        old = tokens.create(actor="alice", name="x")
        new = tokens.rotate(actor="alice", token_id=old.token.id, grace=timedelta(minutes=10))
        newer = tokens.rotate(actor="alice", token_id=old.token.id, grace=timedelta(hours=1))
        assert tokens.authenticate(get("/x", bearer(new.secret))).authenticated
        assert tokens.authenticate(get("/x", bearer(old.secret))).status_code == 401
        assert tokens.authenticate(get("/x", bearer(newer.secret))).authenticated


def test_rotate_standard_token_reveals_the_new_secret(tokens: ApiTokens) -> None:
    old = tokens.create(actor="alice", name="x", secure=False)
    new = tokens.rotate(actor="alice", token_id=old.token.id)
    assert tokens.reveal(actor="alice", token_id=old.token.id) == new.secret


# -- hygiene ------------------------------------------------------------------------------------


def test_revoke_unused(tokens: ApiTokens, clock: Clock) -> None:
    used = tokens.create(actor="alice", name="used")
    never = tokens.create(actor="alice", name="never")
    bobs = tokens.create(actor="bob", name="bob never")
    clock.advance(days=100)
    fresh = tokens.create(actor="alice", name="created after the cut-off")
    assert tokens.authenticate(get("/x", bearer(used.secret))).authenticated
    since = clock.now - timedelta(days=90)
    mine = tokens.revoke_unused(actor="alice", since=since)
    assert [t.id for t in mine] == [never.token.id]
    assert all(t.status == "revoked" for t in mine)
    assert tokens.get(bobs.token.id).status == "active"  # type: ignore[union-attr]
    assert tokens.get(fresh.token.id).status == "active"  # type: ignore[union-attr]
    swept = tokens.revoke_unused(actor="root", since=since)
    assert [t.id for t in swept] == [bobs.token.id]
    reasons = [e.reason for e in tokens.audit(action="revoke")]
    assert len(reasons) == 2
    assert all(r.startswith("revoked: unused since") for r in reasons)


def test_prune_audit(tokens: ApiTokens, clock: Clock) -> None:
    tokens.create(actor="alice", name="old")
    clock.advance(days=10)
    tokens.create(actor="alice", name="new")
    assert tokens.prune_audit(before=clock.now - timedelta(days=1)) == 1
    assert [e.reason for e in tokens.audit()] == ["created 'new'"]


def test_audit_queries(tokens: ApiTokens, clock: Clock) -> None:
    issued = tokens.create(actor="alice", name="x")
    start = clock.now
    for _ in range(3):
        clock.advance(seconds=1)
        tokens.authenticate(get("/x", bearer(issued.secret)))
    tokens.authenticate(get("/x", basic("bob", issued.secret)))
    assert len(tokens.audit(token_id=issued.token.id)) == 5
    assert len(tokens.audit(action="authenticate", outcome="success")) == 3
    assert len(tokens.audit(outcome=Outcome.FAILED)) == 1
    assert len(tokens.audit(since=start + timedelta(seconds=2))) == 3
    page = tokens.audit(action="authenticate", limit=2, offset=1)
    assert [e.at for e in page] == [clock.now, clock.now - timedelta(seconds=1)]


# -- snippets -------------------------------------------------------------------------------------


def test_snippets(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="x", secure=False)
    url = "https://jira.example.com/rest/api/2/myself"
    curl = issued.snippet(url)
    assert curl == f"curl -H 'Authorization: Bearer {issued.secret}' {url}"
    python = issued.snippet(url, "python")
    assert f'"Bearer {issued.secret}"' in python
    assert python.startswith("import httpx")
    compile(python, "<snippet>", "exec")
    js = issued.snippet(url, "javascript")
    assert f'Authorization: "Bearer {issued.secret}"' in js
    later = tokens.snippet(actor="alice", token_id=issued.token.id, url=url, lang="curl")
    assert later == curl
    with pytest.raises(ValueError, match="language"):
        issued.snippet(url, "cobol")
    with pytest.raises(ValueError, match="http"):
        issued.snippet("javascript:alert(1)")


def test_snippet_uses_basic_when_bearer_is_off(store: TokenStore, clock: Clock) -> None:
    with tokens_for(store, clock, auth_schemes="basic") as tokens:
        issued = tokens.create(actor="alice", name="x")
        assert issued.snippet("https://x.example/") == (
            f"curl -u alice:{issued.secret} https://x.example/"
        )


def test_events_reach_the_stdlib_logger(
    tokens: ApiTokens, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="apitokens.audit")
    issued = tokens.create(actor="alice", name="x")
    tokens.authenticate(get("/x", bearer(issued.secret)))
    tokens.flush()
    events = [r.apitokens_event for r in caplog.records if r.name == "apitokens.audit"]
    assert [(e.action, e.outcome) for e in events] == [
        ("create", Outcome.SUCCESS),
        ("authenticate", Outcome.SUCCESS),
    ]
    assert issued.secret not in caplog.text
    assert issued.token.id in caplog.text


def test_a_whole_token_given_as_id_is_used_for_its_id_and_never_echoed(
    tokens: ApiTokens, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="apitokens.audit")
    issued = tokens.create(actor="alice", name="leaked")
    revoked = tokens.revoke(actor="alice", token_id=issued.secret)  # pasted as found
    assert (revoked.id, revoked.status) == (issued.token.id, "revoked")
    # A secret-looking string that is no token of ours is not repeated anywhere.
    other = tokens.policy.token_format.issue().value
    with pytest.raises(TokenNotFound) as raised:
        tokens.revoke(actor="alice", token_id=other)
    assert other not in str(raised.value)
    with pytest.raises(TokenNotFound):
        tokens.revoke(actor="alice", token_id=other[:-1] + "x")  # bad checksum
    events = tokens.audit()
    text = repr(events) + caplog.text
    assert other not in text
    assert other[:-1] not in text
    assert issued.secret not in text
    with pytest.raises(TokenNotFound, match="'AAAAAAAAAAAA'"):
        tokens.revoke(actor="alice", token_id="AAAAAAAAAAAA")
    assert tokens.audit(limit=1)[0].token_id == "AAAAAAAAAAAA"


def test_too_many_rules_are_refused(tokens: ApiTokens) -> None:
    with pytest.raises(ValueError, match="at most 1000"):
        tokens.create(actor="alice", name="x", restrictions=[f".*/r{i}" for i in range(1001)])
    token = tokens.create(actor="alice", name="x", restrictions=[f".*/r{i}" for i in range(1000)])
    assert len(token.token.restrictions) == 1000
