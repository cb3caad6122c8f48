"""Hashers, the verification cache and the verifier that ties them together."""

from __future__ import annotations

import threading

import argon2
import pytest

from apitokens._hashing import (
    Argon2Hasher,
    Hasher,
    HmacSha256Hasher,
    SecretVerifier,
    VerificationCache,
)
from apitokens._tokens import TokenFormat

CHEAP = Argon2Hasher.from_parameters(argon2.profiles.CHEAPEST)
KEY = b"k" * 32
FMT = TokenFormat()


def token() -> str:
    return FMT.issue().value


@pytest.mark.parametrize("hasher", [CHEAP, HmacSha256Hasher(KEY)], ids=["argon2", "hmac"])
def test_hash_verifies_only_its_token(hasher: Hasher) -> None:
    t, other = token(), token()
    hashed = hasher.hash(t)
    assert t not in hashed
    assert hasher.identifies(hashed)
    assert hasher.verify(hashed, t)
    assert not hasher.verify(hashed, other)
    assert not hasher.verify("garbage", t)
    assert not hasher.needs_rehash(hashed)


def test_hash_strings_are_self_describing() -> None:
    t = token()
    assert CHEAP.hash(t).startswith("$argon2id$")
    assert HmacSha256Hasher(KEY).hash(t).startswith("$hmac-sha256$k=")
    assert not CHEAP.identifies(HmacSha256Hasher(KEY).hash(t))
    assert not HmacSha256Hasher(KEY).identifies(CHEAP.hash(t))


def test_default_argon2_parameters_are_owasp_minimum() -> None:
    hashed = Argon2Hasher().hash(token())
    assert "$m=19456,t=2,p=1$" in hashed


def test_argon2_needs_rehash_when_parameters_change() -> None:
    hashed = CHEAP.hash(token())
    assert Argon2Hasher().needs_rehash(hashed)
    assert not CHEAP.needs_rehash(hashed)


def test_hmac_key_must_be_long() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        HmacSha256Hasher(b"short")


def test_hmac_with_another_key_does_not_verify() -> None:
    t = token()
    hashed = HmacSha256Hasher(KEY).hash(t)
    other = HmacSha256Hasher(b"o" * 32)
    assert not other.identifies(hashed)
    assert not other.verify(hashed, t)
    assert other.needs_rehash(hashed)


def test_reprs_hold_no_key_or_secret() -> None:
    h = HmacSha256Hasher(KEY)
    assert "kkkk" not in repr(h)
    assert "time_cost=2" in repr(Argon2Hasher())


def test_cache_is_bound_to_the_stored_hash() -> None:
    cache = VerificationCache(maxsize=10)
    t = token()
    cache.add(t, "$hash-one")
    assert cache.contains(t, "$hash-one")
    assert not cache.contains(t, "$hash-two")  # rotated or re-hashed
    assert not cache.contains(token(), "$hash-one")


def test_cache_never_holds_the_token() -> None:
    cache = VerificationCache()
    t = token()
    cache.add(t, "$h")
    assert all(t.encode() not in key and t != value for key, value in cache._entries.items())


def test_cache_is_lru_bounded() -> None:
    cache = VerificationCache(maxsize=3)
    tokens = [token() for _ in range(4)]
    for t in tokens[:3]:
        cache.add(t, "$h")
    assert cache.contains(tokens[0], "$h")  # now most recently used
    cache.add(tokens[3], "$h")
    assert len(cache) == 3
    assert not cache.contains(tokens[1], "$h")  # least recently used went
    assert cache.contains(tokens[0], "$h")
    assert cache.contains(tokens[3], "$h")


def test_cache_of_size_zero_keeps_nothing() -> None:
    cache = VerificationCache(maxsize=0)
    t = token()
    cache.add(t, "$h")
    assert not cache.contains(t, "$h")
    with pytest.raises(ValueError, match="maxsize"):
        VerificationCache(maxsize=-1)


class CountingHasher:
    """A real hasher wrapper that counts verifications."""

    def __init__(self, inner: Hasher) -> None:
        self.inner = inner
        self.verifications = 0

    def hash(self, token: str) -> str:
        return self.inner.hash(token)

    def identifies(self, hashed: str) -> bool:
        return self.inner.identifies(hashed)

    def verify(self, hashed: str, token: str) -> bool:
        self.verifications += 1
        return self.inner.verify(hashed, token)

    def needs_rehash(self, hashed: str) -> bool:
        return self.inner.needs_rehash(hashed)


def test_verifier_caches_successes_not_failures() -> None:
    counting = CountingHasher(CHEAP)
    verifier = SecretVerifier(counting)
    t = token()
    hashed = verifier.hash(t)
    assert verifier.verify(t, hashed).ok
    assert verifier.verify(t, hashed).ok
    assert counting.verifications == 1
    wrong = token()
    assert not verifier.verify(wrong, hashed).ok
    assert not verifier.verify(wrong, hashed).ok
    assert counting.verifications == 3


def test_verifier_rehashes_when_the_default_changes() -> None:
    t = token()
    old_hash = CHEAP.hash(t)
    verifier = SecretVerifier([HmacSha256Hasher(KEY)])  # argon2 still verifies
    result = verifier.verify(t, old_hash)
    assert result.ok
    assert result.rehash is not None
    assert result.rehash.startswith("$hmac-sha256$")
    assert verifier.verify(t, result.rehash) == type(result)(ok=True, rehash=None)


def test_verifier_rehashes_with_new_argon2_parameters() -> None:
    t = token()
    old_hash = CHEAP.hash(t)
    verifier = SecretVerifier(Argon2Hasher(time_cost=1, memory_cost=1024))
    result = verifier.verify(t, old_hash)
    assert result.ok
    assert result.rehash is not None
    assert "$m=1024,t=1,p=1$" in result.rehash


def test_verifier_key_rotation_old_keys_verify() -> None:
    t = token()
    old = HmacSha256Hasher(b"o" * 32)
    new = HmacSha256Hasher(KEY)
    verifier = SecretVerifier([new, old])
    result = verifier.verify(t, old.hash(t))
    assert result.ok
    assert result.rehash == new.hash(t)
    assert not SecretVerifier(new).verify(t, old.hash(t)).ok


def test_verifier_refuses_unknown_hash_kinds() -> None:
    verifier = SecretVerifier(CHEAP)
    assert not verifier.verify(token(), "$bcrypt$whatever").ok
    assert not verifier.verify(token(), "").ok
    with pytest.raises(ValueError, match="at least one"):
        SecretVerifier([])


def test_verifier_is_thread_safe() -> None:
    verifier = SecretVerifier(HmacSha256Hasher(KEY), cache=VerificationCache(maxsize=50))
    tokens = [token() for _ in range(100)]
    hashes = [verifier.hash(t) for t in tokens]
    failures: list[int] = []

    def work(offset: int) -> None:
        for i in range(500):
            j = (i + offset) % len(tokens)
            if not verifier.verify(tokens[j], hashes[j]).ok:
                failures.append(j)
            if verifier.verify(tokens[j], hashes[(j + 1) % len(tokens)]).ok:
                failures.append(-j)

    threads = [threading.Thread(target=work, args=(k * 7,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []
    assert len(verifier.cache) <= 50
