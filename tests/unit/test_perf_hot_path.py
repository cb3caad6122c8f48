"""The hot path (a credential verified before) keeps every semantic of the full path.

Each test first makes the credential hot (one successful request), then changes
something and checks the next request is decided as the full path decides it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from apitokens import ApiTokens, AuthRequest, AuthResult, MemoryStore, Outcome, Scope, SQLiteStore
from apitokens._auth import Authenticator
from apitokens._cache import HotCredential, TTLCache
from tests.support import Clock, Monotonic, basic, bearer, get, last_event, make_tokens


@pytest.fixture
def tokens(clock: Clock) -> Iterator[ApiTokens]:
    t = make_tokens(clock=clock, protected_paths=["/rest/"])
    yield t
    t.close()


def hot_entries(tokens: ApiTokens) -> list[HotCredential]:
    return list(tokens._authenticator.hot._entries.values())


def test_a_verified_credential_becomes_hot_and_is_decided_alike(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="ci", restrictions=[".*/rest/a/.*"])
    request = get("/rest/a/1", bearer(issued.secret))
    cold = tokens.authenticate(request)
    assert len(hot_entries(tokens)) == 1
    hot = tokens.authenticate(request)
    assert (hot.outcome, hot.user, hot.token, hot.reason, hot.scheme) == (
        cold.outcome,
        cold.user,
        cold.token,
        cold.reason,
        cold.scheme,
    )
    events = tokens.audit()
    assert [(e.outcome, e.token_id, e.user, e.path, e.reason) for e in events[:2]] == [
        (Outcome.SUCCESS, issued.token.id, "alice", "/rest/a/1", "authenticated")
    ] * 2
    forbidden = tokens.authenticate(get("/rest/b/1", bearer(issued.secret)))
    assert (forbidden.status_code, forbidden.token) == (403, cold.token)
    assert "no rule matched" in last_event(tokens).reason
    used = tokens.get(issued.token.id)
    assert used is not None and used.use_count == 2


def test_entries_hold_no_secret(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="ci")
    tokens.authenticate(get("/rest/x", bearer(issued.secret)))
    hot = tokens._authenticator.hot
    assert len(hot) == 1
    (key,) = hot._entries
    assert issued.secret.encode() not in key and len(key) == 32
    assert issued.secret not in repr(hot_entries(tokens))


def test_revocation_in_this_process_is_at_once(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="ci")
    request = get("/rest/x", bearer(issued.secret))
    assert tokens.authenticate(request).authenticated
    tokens.revoke(actor="alice", token_id=issued.token.id)
    assert tokens.authenticate(request).status_code == 401
    assert last_event(tokens).reason == "token revoked"


def test_revocation_in_another_process_within_the_cache_ttl(clock: Clock, tmp_path: Path) -> None:
    # Two handles on one SQLite file, as two processes have: no change feed, the TTL rules.
    ticks = Monotonic()
    with (
        make_tokens(SQLiteStore(str(tmp_path / "t.db")), clock=clock) as other,
        make_tokens(SQLiteStore(str(tmp_path / "t.db")), clock=clock, monotonic=ticks) as here,
    ):
        issued = other.create(actor="alice", name="ci")
        request = get("/x", bearer(issued.secret))
        assert here.authenticate(request).authenticated
        assert here.authenticate(request).authenticated  # hot
        other.revoke(actor="alice", token_id=issued.token.id)
        ticks.advance(0.5)
        # Within cache_ttl (1 s) the record read before stands: docs/token-program.md.
        assert here.authenticate(request).authenticated
        ticks.advance(0.5)
        assert here.authenticate(request).status_code == 401
        assert last_event(here).reason == "token revoked"


def test_expiry_by_the_injected_clock(tokens: ApiTokens, clock: Clock) -> None:
    issued = tokens.create(actor="alice", name="ci", expires_in=timedelta(hours=1))
    request = get("/rest/x", bearer(issued.secret))
    assert tokens.authenticate(request).authenticated
    assert tokens.authenticate(request).authenticated
    clock.advance(hours=1)
    assert tokens.authenticate(request).status_code == 401
    assert last_event(tokens).reason == "token expired"


def test_a_throttled_address_never_refuses_a_verified_credential(clock: Clock) -> None:
    """Others' failures from a shared address (NAT, an untrusted proxy) lock nobody out."""
    with make_tokens(clock=clock, max_failed_attempts=3) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        fresh = tokens.create(actor="bob", name="ci")
        good = get("/x", bearer(issued.secret), ip="198.51.100.7")
        assert tokens.authenticate(good).authenticated
        wrong = tokens.policy.token_format.issue().value  # another id: only the address counts
        for _ in range(3):
            refused = tokens.authenticate(get("/x", bearer(wrong), ip="198.51.100.7"))
            assert refused.status_code == 401
        assert tokens.authenticate(good).authenticated  # hot: verified before
        assert tokens.authenticate(
            get("/y", bearer(issued.secret), ip="198.51.100.7")
        ).authenticated
        # A secret never verified here still waits: that is the hashing the throttle bounds.
        throttled = tokens.authenticate(get("/x", bearer(fresh.secret), ip="198.51.100.7"))
        assert throttled.status_code == 429
        assert last_event(tokens).reason == "too many failed attempts for this client address"


def test_forged_tokens_with_a_known_id_never_lock_its_owner_out(clock: Clock) -> None:
    """Ids are public: ten forgeries from ten addresses must not refuse the real secret."""
    with make_tokens(clock=clock, max_failed_attempts=3) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        good = get("/x", bearer(issued.secret))
        assert tokens.authenticate(good).authenticated
        wrong = tokens.policy.token_format.issue(issued.token.id).value
        for number in range(10):
            forged = tokens.authenticate(get("/x", bearer(wrong), ip=f"203.0.113.{number}"))
            assert forged.status_code in (401, 429)
        assert tokens.authenticate(good).authenticated  # the hot path
        tokens._authenticator.hot._entries.clear()  # the full path, verification cache hit
        assert tokens.authenticate(good).authenticated
        # A process that has not verified the secret yet (a restart, another worker)
        # does not refuse it either: guesses are throttled per address, never per id.
        with make_tokens(tokens._store, clock=clock, max_failed_attempts=3) as fresh:
            for number in range(10):
                forged = fresh.authenticate(get("/x", bearer(wrong), ip=f"203.0.113.{number}"))
                assert forged.status_code == 401
            assert fresh.authenticate(good).authenticated


def test_a_429_does_not_tell_whether_an_id_exists(clock: Clock) -> None:
    with make_tokens(clock=clock, max_failed_attempts=3) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        fmt = tokens.policy.token_format
        existing, unknown = fmt.issue(issued.token.id).value, fmt.issue().value
        for _ in range(3):
            tokens.authenticate(get("/x", bearer(existing), ip="198.51.100.1"))
        answers = {
            tokens.authenticate(get("/x", bearer(guess), ip="198.51.100.2")).status_code
            for guess in (existing, unknown)
        }
        assert answers == {401}


def test_concurrent_guesses_from_one_address_hash_at_most_the_limit(clock: Clock) -> None:
    """The throttle counts an attempt before it hashes: a burst cannot all pass the check."""
    from concurrent.futures import ThreadPoolExecutor

    with make_tokens(clock=clock, max_failed_attempts=5) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        fmt = tokens.policy.token_format
        requests = [  # each its own wrong secret: no verification shared
            get("/x", bearer(fmt.issue(issued.token.id).value), ip="198.51.100.9")
            for _ in range(64)
        ]
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda r: tokens.authenticate(r).status_code, requests))
        # Exactly 5 hashed unless some found every place in line taken (503, uncounted).
        assert 1 <= statuses.count(401) <= 5
        assert statuses.count(401) == 5 or 503 in statuses
        assert set(statuses) <= {401, 429, 503}


def test_an_ipv6_client_counts_by_its_64(clock: Clock) -> None:
    with make_tokens(clock=clock, max_failed_attempts=3) as tokens:
        wrong = tokens.policy.token_format.issue().value
        for host in range(3):
            tokens.authenticate(get("/x", bearer(wrong), ip=f"2001:db8:1:2::{host + 1}"))
        same_64 = tokens.authenticate(get("/x", bearer(wrong), ip="2001:db8:1:2:ffff::9"))
        other_64 = tokens.authenticate(get("/x", bearer(wrong), ip="2001:db8:1:3::1"))
        assert (same_64.status_code, other_64.status_code) == (429, 401)


def test_rotation_grace_ends_by_the_clock(tokens: ApiTokens, clock: Clock) -> None:
    issued = tokens.create(actor="alice", name="ci")
    old = get("/rest/x", bearer(issued.secret))
    assert tokens.authenticate(old).authenticated
    rotated = tokens.rotate(actor="alice", token_id=issued.token.id, grace=timedelta(minutes=5))
    assert tokens.authenticate(old).authenticated  # within the grace
    assert tokens.authenticate(old).authenticated  # hot, bound to the grace
    new = get("/rest/x", bearer(rotated.secret))
    assert tokens.authenticate(new).authenticated
    clock.advance(minutes=5)
    assert tokens.authenticate(new).authenticated
    # The hot entry of the old secret ended with the grace: it is now reuse (DESIGN §11).
    assert tokens.authenticate(old).status_code == 401
    assert last_event(tokens).reason.startswith("reuse_detected")


def test_rotation_without_grace_refuses_the_old_secret_at_once(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="ci")
    old = get("/rest/x", bearer(issued.secret))
    assert tokens.authenticate(old).authenticated
    tokens.rotate(actor="alice", token_id=issued.token.id)
    assert tokens.authenticate(old).status_code == 401
    assert last_event(tokens).reason.startswith("reuse_detected")


def test_clearing_the_verification_cache_voids_hot_entries(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="ci")
    request = get("/rest/x", bearer(issued.secret))
    assert tokens.authenticate(request).authenticated
    verifier = tokens._verifier
    calls: list[str] = []
    verify = verifier.verify

    def counting(token: str, hashed: str):  # type: ignore[no-untyped-def]
        calls.append(hashed)
        return verify(token, hashed)

    verifier.verify = counting  # type: ignore[method-assign]
    assert tokens.authenticate(request).authenticated
    assert calls == []  # hot: no verification
    verifier.cache.clear()
    assert tokens.authenticate(request).authenticated
    assert len(calls) == 1  # verified again


def test_basic_username_is_part_of_the_credential(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="ci")
    assert tokens.authenticate(get("/rest/x", basic("alice", issued.secret))).user == "alice"
    assert tokens.authenticate(get("/rest/x", basic("alice", issued.secret))).user == "alice"
    refused = tokens.authenticate(get("/rest/x", basic("bob", issued.secret)))
    assert refused.status_code == 401
    assert last_event(tokens).reason == "Basic username is not the token's owner"


def test_the_hot_path_reads_the_authorization_header_like_the_full_path(
    tokens: ApiTokens,
) -> None:
    issued = tokens.create(actor="alice", name="ci")
    headers = bearer(issued.secret)
    assert tokens.authenticate(get("/rest/x", headers)).authenticated
    # Any case of the name is the same header, and other headers do not count...
    value = headers[0][1]
    mixed = [("X-Other", "1"), ("AUTHORIZATION", value), ("authorization-x", "y")]
    assert tokens.authenticate(get("/rest/x", mixed)).authenticated
    # ... but the hot value sent twice is still a malformed request.
    twice = tokens.authenticate(get("/rest/x", [*headers, ("authorization", value)]))
    assert (twice.status_code, twice.error) == (400, "invalid_request")
    assert last_event(tokens).reason == "more than one Authorization header"


def test_groups_are_checked_on_the_hot_path(clock: Clock) -> None:
    groups = {"alice": {"api-users"}}
    with make_tokens(
        clock=clock, token_users={"api-users"}, groups=lambda u: groups.get(u, set())
    ) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        request = get("/x", bearer(issued.secret))
        assert tokens.authenticate(request).authenticated
        assert tokens.authenticate(request).authenticated
        groups["alice"] = set()
        tokens._authenticator._groups.clear()
        assert tokens.authenticate(request).status_code == 401
        assert last_event(tokens).reason == "user 'alice' may not use tokens"


def test_scope_ips_and_body_rules_are_checked_on_the_hot_path(tokens: ApiTokens) -> None:
    issued = tokens.create(
        actor="alice",
        name="ci",
        scope=Scope.READ_WRITE,
        allowed_ips=["192.0.2.0/24"],
        restrictions=["[post].*/rest/f[JsonData::a==1]", "[get].*"],
    )
    h = [*bearer(issued.secret), ("Content-Type", "application/json")]
    assert tokens.authenticate(get("/rest/x", h)).authenticated
    assert tokens.authenticate(get("/rest/x", h, ip="198.51.100.1")).status_code == 403
    core = tokens._authenticator
    post = AuthRequest("POST", "/rest/f", headers=h, client_ip="192.0.2.1", body=b'{"a": 1}')
    asks = core.decide(post, body_read=False)
    assert asks.need_body and asks.result.token is not None
    assert tokens.authenticate(post).authenticated
    bad = AuthRequest("POST", "/rest/f", headers=h, client_ip="192.0.2.1", body=b'{"a": 2}')
    assert tokens.authenticate(bad).status_code == 403


def test_non_blocking_hot_decisions_need_no_thread(tokens: ApiTokens) -> None:
    issued = tokens.create(actor="alice", name="ci")
    request = get("/rest/x", bearer(issued.secret))
    core: Authenticator = tokens._authenticator
    assert core.safe_decide(request).result.authenticated
    assert core.safe_decide(request, block=False).result.authenticated


def test_ttl_cache_reads_without_reordering() -> None:
    now = [0.0]
    cache: TTLCache[str, int] = TTLCache(1.0, 2, monotonic=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)  # evicts the entry stored longest ago
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, 2, 3)
    now[0] = 1.0
    assert cache.get("b") is None


def test_verifications_beyond_the_line_get_503_at_once(clock: Clock) -> None:
    """A flood of guesses never holds every thread of the ASGI adapter's shared pool: beyond
    the line, 503 at once (a WSGI request thread, patient, waits for its place instead)."""
    from apitokens import ApiTokens, Policy
    from tests.support import GatedHasher

    gate = threading.Event()
    hasher = GatedHasher(gate)
    started = hasher.started
    with ApiTokens(
        MemoryStore(),
        policy=Policy(),
        hasher=hasher,
        clock=clock,
        max_concurrent_verifications=1,
    ) as tokens:
        issued = tokens.create(actor="alice", name="ci")
        fmt = tokens.policy.token_format
        results: list[int] = []

        core = tokens._authenticator
        line = _SignallingSemaphore(core._admission._in_line._value)  # type: ignore[attr-defined]
        core._admission._in_line = line

        def decided(request: AuthRequest) -> AuthResult:
            # As the ASGI adapter asks from the event loop's shared pool: impatient.
            return core.decide(request, patient=False).result

        def guess(n: int) -> None:  # each its own wrong secret: no shared verification
            request = get("/x", bearer(fmt.issue(issued.token.id).value), ip=f"198.51.100.{n}")
            results.append(decided(request).status_code)

        running = threading.Thread(target=guess, args=(1,))
        running.start()
        assert started.acquire(timeout=10)  # one hashing
        waiting = [threading.Thread(target=guess, args=(n,)) for n in (2, 3)]
        for thread in waiting:
            thread.start()  # two waiting for their place (the line: 1 running + 2)
        for _ in range(3):  # until all three hold their place in line
            assert line.taken.acquire(timeout=10)
        assert line._value == 0  # type: ignore[attr-defined]
        wrong = fmt.issue(issued.token.id).value
        refused = decided(get("/x", bearer(wrong), ip="198.51.100.4"))
        assert refused.status_code == 503
        assert ("Retry-After", "1") in refused.headers
        gate.set()
        running.join(10)
        for thread in waiting:
            thread.join(10)
        assert sorted(results) == [401, 401, 401]


class _SignallingSemaphore(threading.BoundedSemaphore):
    """A bounded semaphore that signals ``taken`` as each place is taken: a test waits for
    threads to reach the line instead of polling."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.taken = threading.Semaphore(0)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        got = super().acquire(blocking, timeout)
        if got:
            self.taken.release()
        return got
