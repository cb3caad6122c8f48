"""Per-process caches on the hot path: token records (short TTL), users' groups, and
credentials already verified."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from ._errors import RuleSyntaxError
from ._limits import Limits
from ._model import StoredToken
from ._policy import IPNetwork, parse_networks
from ._result import AuthResult
from .rules import RuleSet

__all__ = ["CompiledToken", "HotCredential", "HotCredentials", "TTLCache", "TokenCache"]

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """A thread-safe cache whose entries expire ``ttl`` seconds after they were stored.

    Reads take no lock (a dict read is atomic under the GIL) and do not reorder: when
    full, the entry stored longest ago is evicted first. With a TTL, a live entry is
    one stored within the last ``ttl`` seconds, so that is close to least recently used.
    Seconds are read from ``monotonic`` (``time.monotonic`` unless a test injects one).
    """

    def __init__(
        self, ttl: float, maxsize: int, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.maxsize = maxsize
        self._timer = monotonic
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """Return the live value for ``key``, or ``None``."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._timer():
            return None  # a stale entry stays until replaced or evicted
        return entry[1]

    def put(self, key: K, value: V, *, since: float | None = None) -> None:
        """Store ``value`` for ``ttl`` seconds from now, or from ``since``.

        ``since``: when the value was read (``monotonic`` seconds), for a value
        that may have changed at its source from then on: its age counts from the
        start of the read, not from its end.
        """
        if self.ttl <= 0 or self.maxsize <= 0:
            return
        with self._lock:
            start = self._timer() if since is None else since
            self._entries[key] = (start + self.ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        """Forget ``key`` (a change made in this process takes effect at once)."""
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class CompiledToken:
    """A stored token with its rules and networks compiled, ready for requests.

    ``problem`` is set when the stored restrictions, addresses or limits cannot
    be compiled (say, written by a newer version): such a token allows nothing.
    ``limits`` is the token's rate limit and credits, if it has any.
    """

    stored: StoredToken
    rules: RuleSet | None
    networks: tuple[IPNetwork, ...]
    problem: str = ""
    limits: Limits | None = None


class TokenCache:
    """Token records by id for ``ttl`` seconds, compiled once.

    Rule sets are also kept by their text, so refreshing a record after its
    TTL does not re-compile unchanged rules. The TTL runs on ``monotonic``.
    """

    def __init__(
        self,
        ttl: float = 1.0,
        maxsize: int = 100_000,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.records: TTLCache[str, CompiledToken] = TTLCache(ttl, maxsize, monotonic=monotonic)
        # get(token_id): the cached compiled token, or None if absent or stale. Bound
        # straight to the record cache's get: one call less on every request.
        self.get: Callable[[str], CompiledToken | None] = self.records.get
        self._rulesets: OrderedDict[tuple[str, ...], RuleSet] = OrderedDict()
        self._lock = threading.Lock()
        self._max_rulesets = 10_000
        self._generation = 0

    @property
    def generation(self) -> int:
        """Counts :meth:`discard` and :meth:`clear` calls; read it before reading the store."""
        return self._generation

    def put(
        self, stored: StoredToken, generation: int | None = None, *, since: float | None = None
    ) -> CompiledToken:
        """Compile ``stored`` and cache it.

        Args:
            stored: the record as read from the store.
            generation: :attr:`generation` as it was before the read. If a
                change was made in this process since (a revocation racing
                this read), the record may be stale and is not cached.
            since: when the read began (``monotonic`` seconds): the record's TTL
                runs from then, so a change made elsewhere during a slow read shows
                within the TTL of the change, not of the read's end.
        """
        compiled = self.compile(stored)
        with self._lock:
            if generation is None or generation == self._generation:
                self.records.put(stored.token.id, compiled, since=since)
        return compiled

    def discard(self, token_id: str) -> None:
        """Drop ``token_id`` so the next request reads the store."""
        with self._lock:
            self._generation += 1
            self.records.discard(token_id)

    def clear(self) -> None:
        """Drop every record (a store may have missed changes) as :meth:`discard` does."""
        with self._lock:
            self._generation += 1
            self.records.clear()

    def compile(self, stored: StoredToken) -> CompiledToken:
        """Compile a stored token's rules and allowed addresses, fail closed."""
        token = stored.token
        try:
            networks = parse_networks(token.allowed_ips)
        except ValueError as exc:
            return CompiledToken(stored, None, (), f"stored allowed_ips unusable: {exc}")
        try:
            limits = Limits.of(token)
        except ValueError as exc:
            return CompiledToken(stored, None, (), f"stored limit unusable: {exc}")
        if not token.restrictions:
            return CompiledToken(stored, None, networks, limits=limits)
        key = token.restrictions
        with self._lock:
            rules = self._rulesets.get(key)
            if rules is not None:
                self._rulesets.move_to_end(key)
        if rules is None:
            try:
                rules = RuleSet.parse(key)
            except RuleSyntaxError as exc:
                return CompiledToken(stored, None, networks, f"stored rule unusable: {exc}")
            with self._lock:
                self._rulesets[key] = rules
                while len(self._rulesets) > self._max_rulesets:
                    self._rulesets.popitem(last=False)
        return CompiledToken(stored, rules, networks, limits=limits)


@dataclass(frozen=True, slots=True)
class HotCredential:
    """A credential (one ``Authorization`` value) verified in this process.

    It stands for "this value was checked against this record": it counts only while
    the record cache holds exactly :attr:`compiled` (a TTL refresh, a discard after a
    revocation or rotation in this process, all replace it), and within :attr:`until`.

    Attributes:
        compiled: the record the secret was verified against.
        user: the user a request with this value acts as.
        until: the end of the rotation grace when the secret matched the hash of the
            secret a rotation replaced; ``None`` when it matched the current one.
        epoch: the verification cache's epoch when the secret was verified.
        result: the success result, shared by every request this entry allows.
    """

    compiled: CompiledToken
    user: str
    until: datetime | None
    epoch: int
    result: AuthResult


class HotCredentials:
    """Verified credentials by the keyed fingerprint of their ``Authorization`` value.

    Reads take no lock; writes do. When full, the entry stored longest ago goes.
    """

    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[bytes, HotCredential] = OrderedDict()
        self._lock = threading.Lock()
        # get(fingerprint): the entry, or None. The dict's own get, no Python frame
        # (per request); _entries is never replaced, only cleared.
        self.get: Callable[[bytes], HotCredential | None] = self._entries.get

    def put(self, fingerprint: bytes, entry: HotCredential) -> None:
        """Remember ``entry`` for ``fingerprint``."""
        if self.maxsize <= 0:
            return
        with self._lock:
            self._entries[fingerprint] = entry
            self._entries.move_to_end(fingerprint)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def discard(self, fingerprint: bytes) -> None:
        """Forget the entry for ``fingerprint``."""
        with self._lock:
            self._entries.pop(fingerprint, None)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
