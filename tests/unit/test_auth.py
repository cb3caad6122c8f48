"""The decision (DESIGN §4) through ApiTokens.authenticate, on a real MemoryStore."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest

from apitokens import (
    ApiTokens,
    AuthRequest,
    AuthScheme,
    HmacSha256Hasher,
    MemoryStore,
    Outcome,
    Scope,
    StorageError,
)
from apitokens._model import StoredToken
from tests.support import (
    CHEAP_HASHER,
    Clock,
    Monotonic,
    basic,
    bearer,
    get,
    last_event,
    make_tokens,
)


@pytest.fixture
def tokens(clock: Clock) -> Iterator[ApiTokens]:
    t = make_tokens(clock=clock, protected_paths=["/rest/"])
    yield t
    t.close()


def test_unprotected_paths_pass_untouched(tokens: ApiTokens) -> None:
    result = tokens.authenticate(get("/login", bearer("apt_garbage")))
    assert result.outcome is Outcome.PASS_THROUGH
    assert tokens.audit() == []  # pass-through is not audited


def test_bearer_token_succeeds_and_is_audited(tokens: ApiTokens, clock: Clock) -> None:
    issued = tokens.create(actor="alice", name="ci")
    result = tokens.authenticate(get("/rest/api/x", bearer(issued.secret)))
    assert result.outcome is Outcome.SUCCESS
    assert result.status_code == 200
    assert result.user == "alice"
    assert result.token is not None and result.token.id == issued.token.id
    event = last_event(tokens)
    assert (event.action, event.outcome, event.token_id, event.user) == (
        "authenticate",
        Outcome.SUCCESS,
        issued.token.id,
        "alice",
    )
    assert (event.method, event.path, event.client_ip) == ("GET", "/rest/api/x", "192.0.2.1")
    used = tokens.get(issued.token.id)
    assert used is not None
    assert (used.use_count, used.last_used_at, used.last_used_ip) == (1, clock.now, "192.0.2.1")


def test_basic_needs_the_owner_as_username(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="ci")
    assert tokens.authenticate(get("/rest/x", basic("alice", issued.secret))).user == "alice"
    wrong = tokens.authenticate(get("/rest/x", basic("bob", issued.secret)))
    assert (wrong.status_code, wrong.error) == (401, "invalid_token")
    assert "owner" in last_event(tokens).reason


def test_foreign_credentials_pass_through(tokens: ApiTokens) -> None:
    for headers in (basic("alice", "hunter2"), bearer("someone-elses-jwt"), []):
        result = tokens.authenticate(get("/rest/x", headers))
        assert result.outcome is Outcome.PASS_THROUGH
    assert tokens.audit() == []


def test_passwords_off_for_the_api(clock: Clock) -> None:
    with make_tokens(clock=clock, allow_other_auth=False) as tokens:
        refused = tokens.authenticate(get("/x", basic("alice", "hunter2")))
        assert refused.status_code == 401
        none = tokens.authenticate(get("/x"))
        assert none.status_code == 401
        challenges = [v for k, v in none.headers if k == "WWW-Authenticate"]
        # No credentials: the Bearer challenge carries no error (RFC 6750 §3.1).
        assert challenges == ['Bearer realm="api"', 'Basic realm="api", charset="UTF-8"']


@pytest.mark.parametrize(
    "secret",
    ["apt_" + "0" * 50, "apt_short", "apt_" + "!" * 50],
    ids=["bad-checksum", "short", "alphabet"],
)
def test_malformed_tokens_are_refused_without_store_access(clock: Clock, secret: str) -> None:
    class CountingStore(MemoryStore):
        gets = 0

        def get(self, token_id: str) -> StoredToken | None:
            CountingStore.gets += 1
            return super().get(token_id)

    with make_tokens(CountingStore(), clock=clock) as tokens:
        result = tokens.authenticate(get("/x", bearer(secret)))
        assert result.status_code == 401
        assert CountingStore.gets == 0
        assert last_event(tokens).reason == "malformed token or wrong checksum"


def test_unknown_and_wrong_secret_look_the_same_to_the_client(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="ci")
    unknown = tokens.policy.token_format.issue().value
    wrong = tokens.policy.token_format.issue(issued.token.id).value
    a = tokens.authenticate(get("/rest/x", bearer(unknown)))
    b = tokens.authenticate(get("/rest/x", bearer(wrong)))
    assert (a.status_code, a.headers, a.body) == (b.status_code, b.headers, b.body)
    reasons = [e.reason for e in tokens.audit()]
    assert reasons == ["wrong secret", "unknown token id", "created 'ci'"]


def test_expired_and_revoked(tokens: ApiTokens, clock: Clock) -> None:
    issued = tokens.create(actor="alice", name="ci", expires_in=timedelta(days=1))
    request = get("/rest/x", bearer(issued.secret))
    assert tokens.authenticate(request).authenticated
    clock.advance(days=1)
    assert tokens.authenticate(request).status_code == 401
    assert last_event(tokens).reason == "token expired"

    other = tokens.create(actor="alice", name="two")
    request = get("/rest/x", bearer(other.secret))
    assert tokens.authenticate(request).authenticated
    tokens.revoke(actor="alice", token_id=other.token.id)
    assert tokens.authenticate(request).status_code == 401  # at once, despite caches
    assert last_event(tokens).reason == "token revoked"


def test_read_only_scope(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="ci")
    for method in ("GET", "HEAD", "OPTIONS", "get"):
        request = AuthRequest(method, "/rest/x", headers=bearer(issued.secret))
        assert tokens.authenticate(request).authenticated
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        result = tokens.authenticate(AuthRequest(method, "/rest/x", headers=bearer(issued.secret)))
        assert (result.status_code, result.error, result.outcome) == (
            403,
            "insufficient_scope",
            Outcome.FORBIDDEN,
        )
    writer = tokens.create(actor="alice", name="rw", scope=Scope.READ_WRITE)
    post = AuthRequest("POST", "/rest/x", headers=bearer(writer.secret))
    assert tokens.authenticate(post).authenticated


def test_allowed_ips_v4_and_v6(tokens: ApiTokens) -> None:
    issued = tokens.create(
        actor="alice", name="ci", allowed_ips=["203.0.113.0/24", "2001:db8::/32"]
    )
    h = bearer(issued.secret)
    assert tokens.authenticate(get("/rest/x", h, ip="203.0.113.9")).authenticated
    assert tokens.authenticate(get("/rest/x", h, ip="2001:db8::1")).authenticated
    assert tokens.authenticate(get("/rest/x", h, ip="::ffff:203.0.113.9")).authenticated
    for ip in ("198.51.100.1", "2001:db9::1", "", "not-an-ip"):
        assert tokens.authenticate(get("/rest/x", h, ip=ip)).status_code == 403


def test_forwarded_for_only_from_trusted_proxies(clock: Clock) -> None:
    with make_tokens(clock=clock, trusted_proxies=["10.0.0.0/8"]) as tokens:
        issued = tokens.create(actor="alice", name="ci", allowed_ips=["203.0.113.7"])
        h = bearer(issued.secret)
        # Through the proxy: the right-most address that is not a proxy.
        via = [*h, ("X-Forwarded-For", "6.6.6.6, 203.0.113.7, 10.0.0.2")]
        assert tokens.authenticate(get("/x", via, ip="10.0.0.1")).authenticated
        # Spoofed header from an untrusted peer is ignored.
        spoof = [*h, ("X-Forwarded-For", "203.0.113.7")]
        assert tokens.authenticate(get("/x", spoof, ip="198.51.100.1")).status_code == 403
        # A client cannot hide behind a left-most spoofed entry.
        left = [*h, ("X-Forwarded-For", "203.0.113.7, 198.51.100.1")]
        assert tokens.authenticate(get("/x", left, ip="10.0.0.1")).status_code == 403


def test_restriction_rules_and_json_body(tokens: ApiTokens) -> None:
    issued = tokens.create(
        actor="alice",
        name="filters",
        scope=Scope.READ_WRITE,
        restrictions=["[post].*/rest/api/2/filter[JsonData::editable==false]"],
    )
    h = [*bearer(issued.secret), ("Content-Type", "application/json")]
    ok = AuthRequest("POST", "/rest/api/2/filter", headers=h, body=b'{"editable": false}')
    assert tokens.authenticate(ok).authenticated
    bad = AuthRequest("POST", "/rest/api/2/filter", headers=h, body=b'{"editable": true}')
    assert tokens.authenticate(bad).status_code == 403
    elsewhere = AuthRequest("POST", "/rest/api/2/issue", headers=h, body=b'{"editable": false}')
    assert tokens.authenticate(elsewhere).status_code == 403
    big = AuthRequest("POST", "/rest/api/2/filter", headers=h, body=b" " * (1_048_577))
    too_large = tokens.authenticate(big)
    assert (too_large.status_code, too_large.outcome) == (413, Outcome.FORBIDDEN)


def test_the_core_asks_for_the_body_only_when_a_json_rule_needs_it(tokens: ApiTokens) -> None:
    plain = tokens.create(actor="alice", name="a", restrictions=[".*/rest/.*"])
    jsonrule = tokens.create(actor="alice", name="b", restrictions=[".*[JsonData::a==1]"])
    core = tokens._authenticator
    as_json = ("Content-Type", "application/json")
    assert not core.decide(get("/rest/x", bearer(plain.secret)), body_read=False).need_body
    assert core.decide(
        get("/rest/x", [*bearer(jsonrule.secret), as_json]), body_read=False
    ).need_body
    # A body not declared JSON fails the clause unread: no body asked for, 403 at once.
    form = ("Content-Type", "application/x-www-form-urlencoded")
    refused = core.decide(get("/rest/x", [*bearer(jsonrule.secret), form]), body_read=False)
    assert not refused.need_body and refused.result.status_code == 403


def test_failed_attempts_are_throttled_before_hashing(clock: Clock) -> None:
    ticks = Monotonic()
    with make_tokens(clock=clock, monotonic=ticks, max_failed_attempts=3) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        wrong = tokens.policy.token_format.issue(issued.token.id).value
        for _ in range(3):
            assert (
                tokens.authenticate(get("/x", bearer(wrong), ip="198.51.100.7")).status_code == 401
            )
        throttled = tokens.authenticate(get("/x", bearer(issued.secret), ip="198.51.100.7"))
        assert throttled.status_code == 429
        assert ("Retry-After", "60") in throttled.headers
        assert last_event(tokens).reason == "too many failed attempts for this client address"
        # Per address only: another address is not refused because of this one's guesses.
        assert tokens.authenticate(get("/x", bearer(wrong), ip="203.0.113.1")).status_code == 401
        ticks.advance(59.5)
        later = tokens.authenticate(get("/x", bearer(issued.secret), ip="198.51.100.7"))
        assert later.status_code == 429 and ("Retry-After", "1") in later.headers
        ticks.advance(0.5)  # the oldest failure leaves the window
        assert tokens.authenticate(
            get("/x", bearer(issued.secret), ip="198.51.100.7")
        ).authenticated


def test_a_wall_clock_jump_neither_locks_out_nor_frees_an_address(clock: Clock) -> None:
    """The failure window is a duration: it runs on the monotonic clock, not the wall's."""
    ticks = Monotonic()
    with make_tokens(clock=clock, monotonic=ticks, max_failed_attempts=3) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        wrong = tokens.policy.token_format.issue(issued.token.id).value
        good = get("/x", bearer(issued.secret), ip="198.51.100.7")
        for _ in range(3):
            refused = tokens.authenticate(get("/x", bearer(wrong), ip="198.51.100.7"))
            assert refused.status_code == 401
        clock.advance(hours=1)  # the wall clock set forward: the address is not freed
        assert tokens.authenticate(good).status_code == 429
        clock.advance(hours=-2)  # set back: the lock does not grow an hour longer
        ticks.advance(60)
        assert tokens.authenticate(good).authenticated


def test_schemes_can_be_turned_off(clock: Clock) -> None:
    with make_tokens(clock=clock, auth_schemes=AuthScheme.BEARER) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        refused = tokens.authenticate(get("/x", basic("alice", issued.secret)))
        assert refused.status_code == 401  # a token over a disabled scheme never passes
        assert [v for k, v in refused.headers if k == "WWW-Authenticate"] == [
            'Bearer realm="api", error="invalid_token", '
            'error_description="The access token is missing, invalid, expired or revoked."'
        ]
    with make_tokens(clock=clock, auth_schemes="basic") as tokens:
        issued = tokens.create(actor="alice", name="ci")
        assert tokens.authenticate(get("/x", bearer(issued.secret))).status_code == 401
        assert tokens.authenticate(get("/x", basic("alice", issued.secret))).authenticated


def test_unbound_tokens(clock: Clock) -> None:
    groups = {"root": {"admins"}}
    with make_tokens(
        clock=clock,
        allow_unbound_tokens=True,
        token_admins={"admins"},
        groups=lambda u: groups.get(u, set()),
    ) as tokens:
        issued = tokens.create(actor="root", name="shared", unbound=True)
        assert tokens.authenticate(get("/x", basic("carol", issued.secret))).user == "carol"
        assert tokens.authenticate(get("/x", bearer(issued.secret))).status_code == 401
        assert last_event(tokens).reason == "unbound token sent with Bearer"
        assert tokens.authenticate(get("/x", basic("", issued.secret))).status_code == 401


def test_owner_no_longer_allowed_to_use_tokens(clock: Clock) -> None:
    groups = {"alice": {"api-users"}}
    with make_tokens(
        clock=clock, token_users={"api-users"}, groups=lambda u: groups.get(u, set())
    ) as tokens:
        tokens._authenticator._groups.ttl = 0  # see the directory change at once
        issued = tokens.create(actor="alice", name="ci")
        assert tokens.authenticate(get("/x", bearer(issued.secret))).authenticated
        groups["alice"] = set()
        assert tokens.authenticate(get("/x", bearer(issued.secret))).status_code == 401


def test_store_failure_is_503_never_a_pass(clock: Clock) -> None:
    class BrokenStore(MemoryStore):
        broken = False

        def get(self, token_id: str) -> StoredToken | None:
            if self.broken:
                raise StorageError("disk on fire")
            return super().get(token_id)

    store = BrokenStore()
    with make_tokens(store, clock=clock) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        store.broken = True
        result = tokens.authenticate(get("/x", bearer(issued.secret)))
        assert (result.status_code, result.outcome) == (503, Outcome.FAILED)
        assert json.loads(result.body)["error"] == "temporarily_unavailable"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([("Authorization", "Bearer a"), ("Authorization", "Bearer b")], "more than one"),
        ([("Authorization", "Basic !!!")], "base64"),
        ([("Authorization", "Basic YWxpY2U=")], "user:password"),  # "alice", no colon
        ([("Authorization", "Bearer")], "one printable"),
        ([("Authorization", "Bearer a b")], "one printable"),
        ([("Authorization", "Basic " + "A" * 9000)], "too long"),
        ([("Authorization", "Basic //79")], "UTF-8"),
    ],
)
def test_malformed_headers_are_400(
    tokens: ApiTokens, headers: list[tuple[str, str]], reason: str
) -> None:
    result = tokens.authenticate(get("/rest/x", headers))
    assert (result.status_code, result.error) == (400, "invalid_request")
    assert json.loads(result.body) == {
        "error": "invalid_request",
        "error_description": "The request is malformed (its Authorization header or its target).",
    }
    assert reason in last_event(tokens).reason


def test_secret_never_reaches_the_audit_log_or_reprs(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="ci")
    results = [
        tokens.authenticate(get("/rest/x", bearer(issued.secret))),
        tokens.authenticate(get("/rest/x", basic("bob", issued.secret))),
    ]
    text = repr(tokens.audit()) + repr(results) + repr(issued) + str(issued)
    assert issued.secret not in text
    assert issued.secret[-38:] not in text


def test_rehash_when_the_hasher_changes(clock: Clock) -> None:
    store = MemoryStore()
    with make_tokens(store, clock=clock) as old:
        issued = old.create(actor="alice", name="ci")
    stored = store.get(issued.token.id)
    assert stored is not None and stored.secret_hash.startswith("$argon2id$")
    new = ApiTokens(store, hasher=[HmacSha256Hasher(b"k" * 32), CHEAP_HASHER], clock=clock)
    with new:
        assert new.authenticate(get("/x", bearer(issued.secret))).authenticated
        new.flush()
        rehashed = store.get(issued.token.id)
        assert rehashed is not None and rehashed.secret_hash.startswith("$hmac-sha256$")
        new._authenticator.tokens.discard(issued.token.id)
        new._verifier.cache.clear()
        assert new.authenticate(get("/x", bearer(issued.secret))).authenticated


def test_a_record_cached_after_a_slow_read_expires_a_ttl_after_the_read_began(
    clock: Clock,
) -> None:
    """A revocation committed during a slow read shows within the TTL of the change."""
    ticks = Monotonic()

    class SlowStore(MemoryStore):
        reads = 0

        def get(self, token_id: str) -> StoredToken | None:
            self.reads += 1
            ticks.advance(0.5)  # the read takes half the TTL
            return super().get(token_id)

    store = SlowStore()
    with make_tokens(store, clock=clock, monotonic=ticks) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        tokens._authenticator.tokens.clear()
        assert tokens.authenticate(get("/x", bearer(issued.secret))).authenticated
        assert store.reads == 1
        ticks.advance(0.6)  # 1.1 s after the read began, 0.6 s after it ended
        assert tokens.authenticate(get("/x", bearer(issued.secret))).authenticated
        assert store.reads == 2  # read again: the record was older than the TTL
