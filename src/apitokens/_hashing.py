"""Hashing token secrets: argon2id (default) and keyed SHA-256, plus the verification cache.

Hash strings are self-describing (``$argon2id$...``, ``$hmac-sha256$...``), so
one store may hold both kinds; :class:`SecretVerifier` hashes with the first
hasher it is given, verifies with whichever one recognises a hash, and reports
when a hash should be replaced (on the next successful verification) because
the default changed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = [
    "Argon2Hasher",
    "Hasher",
    "HmacSha256Hasher",
    "SecretVerifier",
    "Verification",
    "VerificationCache",
]


@runtime_checkable
class Hasher(Protocol):
    """Turns a token string into a storable, self-describing hash and checks it."""

    def hash(self, token: str) -> str:
        """Return a new hash string for ``token``."""
        ...

    def identifies(self, hashed: str) -> bool:
        """Return whether ``hashed`` is of this hasher's kind (it can verify it)."""
        ...

    def verify(self, hashed: str, token: str) -> bool:
        """Return whether ``token`` matches ``hashed``; ``False`` for a malformed hash."""
        ...

    def needs_rehash(self, hashed: str) -> bool:
        """Return whether ``hashed`` was made with other parameters than this hasher's."""
        ...


class Argon2Hasher:
    """argon2id via argon2-cffi.

    The defaults are OWASP's argon2id minimum (t=2, m=19 MiB, p=1), about
    55 ms a verification on a 2-core machine: slow for an attacker holding the
    database, affordable because a verified token is then served from the
    :class:`VerificationCache`. See ``docs/hashing.md``.

    Args:
        time_cost: iterations.
        memory_cost: KiB of memory.
        parallelism: lanes.
    """

    PREFIX: Final = "$argon2"

    def __init__(self, *, time_cost: int = 2, memory_cost: int = 19_456, parallelism: int = 1):
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism
        )

    @classmethod
    def from_parameters(cls, parameters: argon2.Parameters) -> Argon2Hasher:
        """Build a hasher from argon2-cffi parameters, e.g. ``argon2.profiles.CHEAPEST`` (tests)."""
        hasher = cls()
        hasher._hasher = argon2.PasswordHasher.from_parameters(parameters)
        return hasher

    def __repr__(self) -> str:
        h = self._hasher
        return (
            f"Argon2Hasher(time_cost={h.time_cost}, memory_cost={h.memory_cost}, "
            f"parallelism={h.parallelism})"
        )

    def hash(self, token: str) -> str:
        """Return an argon2id hash string (``$argon2id$v=19$m=...``) of ``token``."""
        return self._hasher.hash(token)

    def identifies(self, hashed: str) -> bool:
        """Return whether ``hashed`` is an argon2 hash string."""
        return hashed.startswith(self.PREFIX)

    def verify(self, hashed: str, token: str) -> bool:
        """Return whether ``token`` matches the argon2 hash ``hashed``."""
        try:
            return self._hasher.verify(hashed, token)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, hashed: str) -> bool:
        """Return whether ``hashed`` used other argon2 parameters than ours."""
        try:
            return self._hasher.check_needs_rehash(hashed)
        except (InvalidHashError, ValueError):
            return True


class HmacSha256Hasher:
    """Keyed SHA-256 (HMAC-SHA-256 with a server-side key), about a microsecond.

    A token secret has ~190 bits of entropy, so unlike a password it cannot be
    guessed from its hash by brute force; the key (a "pepper" kept outside the
    database) adds that a stolen database alone does not even allow checking a
    guess. Hash strings name a key id, so a key change is detected and the
    hash is replaced on next use while the old hasher is still configured.

    Args:
        key: at least 32 random bytes, e.g. ``secrets.token_bytes(32)``, kept
            in your secret store, not in the token database.

    Raises:
        ValueError: the key is shorter than 32 bytes.
    """

    PREFIX: Final = "$hmac-sha256$"

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < 32:
            raise ValueError("HmacSha256Hasher needs a key of at least 32 bytes")
        self._key = key
        # A key id lets us tell hashes made with another key apart without
        # revealing the key: it is a hash of the key, truncated.
        self.key_id = hashlib.sha256(b"apitokens-key-id\x00" + key).hexdigest()[:12]
        self._head = f"{self.PREFIX}k={self.key_id}$"

    def __repr__(self) -> str:
        return f"HmacSha256Hasher(key_id={self.key_id!r})"

    def _digest(self, token: str) -> str:
        mac = hmac.new(self._key, token.encode("utf-8"), hashlib.sha256).digest()
        return base64.b64encode(mac).decode("ascii").rstrip("=")

    def hash(self, token: str) -> str:
        """Return ``$hmac-sha256$k=<key id>$<base64 digest>`` for ``token``."""
        return self._head + self._digest(token)

    def identifies(self, hashed: str) -> bool:
        """Return whether ``hashed`` is a keyed SHA-256 hash made with this key."""
        return hashed.startswith(self._head)

    def verify(self, hashed: str, token: str) -> bool:
        """Return whether ``token`` matches ``hashed``; ``False`` if made with another key."""
        if not hashed.startswith(self._head):
            return False
        expected = hashed[len(self._head) :]
        return hmac.compare_digest(
            expected.encode("ascii", "replace"), self._digest(token).encode()
        )

    def needs_rehash(self, hashed: str) -> bool:
        """Return whether ``hashed`` was made with another key."""
        return not hashed.startswith(self._head)


class VerificationCache:
    """A bounded LRU of tokens verified in this process.

    Keyed by a keyed BLAKE2b of the whole token (never the token itself; the
    key is random per process), and bound to the stored hash string: after a
    rotation or a re-hash the stored hash differs and the entry no longer
    counts. Only successful verifications are cached, so a wrong secret always
    pays the full hash.

    Args:
        maxsize: most entries kept; the least recently used is evicted.
    """

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self.maxsize = maxsize
        self._key = secrets.token_bytes(32)
        # Keyed hashers to copy: copying one is three times cheaper than keying a new one.
        self._token_hasher = hashlib.blake2b(key=self._key, digest_size=32)
        self._header_hasher = hashlib.blake2b(
            key=self._key, digest_size=32, person=b"authorization"
        )
        self._entries: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"VerificationCache(maxsize={self.maxsize}, size={len(self._entries)})"

    @property
    def epoch(self) -> int:
        """Counts :meth:`clear` calls: what was derived from the cache before is void."""
        return self._epoch

    def _fingerprint(self, token: str) -> bytes:
        hasher = self._token_hasher.copy()
        hasher.update(token.encode("utf-8"))
        return hasher.digest()

    def header_fingerprint(self, value: str) -> bytes:
        """Return a keyed BLAKE2b of an ``Authorization`` header value (never the value).

        The key is this cache's random per-process key, personalised so a header's
        fingerprint can never equal a token's. The authenticator keys its entries for
        credentials already verified by this (see ``Authenticator``).
        """
        hasher = self._header_hasher.copy()
        try:
            data = value.encode()  # the same bytes, a little faster than with an error handler
        except UnicodeEncodeError:
            data = value.encode("utf-8", "surrogatepass")
        hasher.update(data)
        return hasher.digest()

    def contains(self, token: str, hashed: str) -> bool:
        """Return whether ``token`` was verified against exactly ``hashed``."""
        fingerprint = self._fingerprint(token)
        with self._lock:
            cached = self._entries.get(fingerprint)
            if cached is None:
                return False
            self._entries.move_to_end(fingerprint)
        return hmac.compare_digest(cached.encode(), hashed.encode())

    def add(self, token: str, hashed: str) -> None:
        """Remember that ``token`` verified against ``hashed``."""
        if self.maxsize == 0:
            return
        fingerprint = self._fingerprint(token)
        with self._lock:
            self._entries[fingerprint] = hashed
            self._entries.move_to_end(fingerprint)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry, and void what was derived from them (:attr:`epoch`)."""
        with self._lock:
            self._epoch += 1
            self._entries.clear()


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of :meth:`SecretVerifier.verify`.

    Attributes:
        ok: the token matches the hash.
        rehash: a replacement hash made with the current default, when the
            stored one should be replaced; ``None`` otherwise.
    """

    ok: bool
    rehash: str | None = None


class SecretVerifier:
    """Hashes with the newest hasher, verifies with all, caches successes.

    Args:
        hashers: one hasher, or several: the first hashes new secrets, every
            one verifies hashes of its kind (itsdangerous-style key rotation).
            Default ``Argon2Hasher()``. An argon2 hasher is always available
            for verifying, since argon2 hashes carry their own parameters.
        cache: the verification cache; a 10,000-entry one by default.
    """

    def __init__(
        self,
        hashers: Hasher | Sequence[Hasher] | None = None,
        *,
        cache: VerificationCache | None = None,
    ) -> None:
        if hashers is None:
            chain: list[Hasher] = [Argon2Hasher()]
        elif isinstance(hashers, Hasher):
            chain = [hashers]
        else:
            chain = list(hashers)
        if not chain:
            raise ValueError("at least one hasher is needed")
        if not any(isinstance(h, Argon2Hasher) for h in chain):
            chain.append(Argon2Hasher())
        self.primary: Hasher = chain[0]
        self.hashers: tuple[Hasher, ...] = tuple(chain)
        self.cache = cache if cache is not None else VerificationCache()

    def __repr__(self) -> str:
        return f"SecretVerifier(hashers={list(self.hashers)!r})"

    def hash(self, token: str) -> str:
        """Return a hash of ``token`` made by the primary hasher."""
        return self.primary.hash(token)

    def cached(self, token: str, hashed: str) -> bool:
        """Return whether ``token`` was already verified against ``hashed`` (no hashing)."""
        return self.cache.contains(token, hashed)

    def verify(self, token: str, hashed: str) -> Verification:
        """Check ``token`` against the stored ``hashed``, using the cache first.

        Returns:
            ``Verification(ok, rehash)``; ``rehash`` is set when the hash was
            made by a hasher other than the primary or with old parameters.
        """
        if self.cache.contains(token, hashed):
            return Verification(ok=True)
        hasher = next((h for h in self.hashers if h.identifies(hashed)), None)
        if hasher is None or not hasher.verify(hashed, token):
            return Verification(ok=False)
        rehash = None
        if not self.primary.identifies(hashed) or self.primary.needs_rehash(hashed):
            rehash = self.primary.hash(token)
            self.cache.add(token, rehash)
        else:
            self.cache.add(token, hashed)
        return Verification(ok=True, rehash=rehash)
