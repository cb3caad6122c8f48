"""Admission: who may run an uncached hash verification now (DESIGN §4, throttling).

A hash verification is the one costly step of a decision, and the one a guesser
can make us pay for. Three bounds hold it, in this order:

- the client address's failure throttle: ``max_failed_attempts`` failures within
  the window, and the address is refused (429) until the oldest leaves it; its
  attempts still in flight count, so a burst cannot overshoot (503 meanwhile);
  on a store that shares failures (``_ledger.py``), the failures every process
  sharing it has made count too, checked once the attempt has a place to hash
  (so the store is read at most once per hash, and an address refused by this
  process's own count costs no read);
- the places to hash: ``max_concurrent_verifications`` run at once; a patient
  caller (a WSGI server's own request thread) waits for a place up to ``wait``
  seconds;
- the line: an impatient caller (a thread of the pool the event loop shares)
  takes a place in a line a few longer than the places to hash, and beyond it
  gets 503 at once, so a flood of guesses never holds every thread of the pool
  while good requests queue behind it.

And one verification per ``Authorization`` value at a time: concurrent requests
with the same value (a client's parallel first requests) wait for the one in
flight and share its answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from ._addresses import throttle_key
from ._ledger import SharedFailures
from ._throttle import BUSY, FailureThrottle

__all__ = ["Admission", "Flight", "Refusal", "Ticket"]

# Verifications that may wait for a place in line beside those running.
WAITING = 2


class Refusal(NamedTuple):
    """Not admitted: the status (429 or 503), the reason, and ``Retry-After`` seconds."""

    status: int
    reason: str
    retry_after: int


class Ticket(NamedTuple):
    """An admitted verification, to end with :meth:`Admission.done`."""

    key: str  # the throttle's key for the client address
    started: float  # the monotonic clock's reading when it was admitted
    in_line: bool  # holds a place in line too (an impatient caller)


@dataclass(slots=True)
class Flight:
    """One verification of an ``Authorization`` value, which others with it wait for."""

    done: threading.Event = field(default_factory=threading.Event)
    wrong: bool = False  # the secret was hashed and did not match


class Admission:
    """The bounds on hash verifications of one :class:`Authenticator`. Thread-safe.

    Args:
        max_failed_attempts: failures an address may have within ``window``.
        window: seconds, by ``monotonic`` (a wall-clock jump must neither lock
            an address out nor free it).
        places: verifications running at once.
        wait: seconds a caller waits for a place (or for a flight it follows).
        monotonic: the clock of the throttle's window.
        shared: the failures of every process on the store (``None``: count alone).
    """

    def __init__(
        self,
        max_failed_attempts: int,
        window: float,
        places: int,
        wait: float,
        monotonic: Callable[[], float],
        shared: SharedFailures | None = None,
    ) -> None:
        # Per client address only: a throttle per token id would let anyone who knows an
        # id (ids are public) refuse its owner, and tell by its 429 whether an id exists.
        self.throttle = FailureThrottle(max_failed_attempts, window)
        self._hashing = threading.BoundedSemaphore(places)
        # A few wait, not as many again: the line must stay shorter than the server's
        # thread pool (asyncio's default has CPUs + 4 threads).
        self._in_line = threading.BoundedSemaphore(places + WAITING)
        self._flights: dict[bytes, Flight] = {}
        self._flights_lock = threading.Lock()
        self._wait = wait
        self._monotonic = monotonic
        self.shared = shared

    def admit(self, client_ip: str, *, patient: bool) -> Ticket | Refusal:
        """Let one verification start (holding a place to hash), or refuse it."""
        key = throttle_key(client_ip)
        started = self._monotonic()
        wait = self.throttle.reserve(key, started)
        if wait == BUSY:
            return Refusal(503, "too many verifications in flight for this client address", 1)
        if wait:
            return Refusal(429, "too many failed attempts for this client address", wait)
        reason = ""
        in_line = not patient
        if in_line and not self._in_line.acquire(blocking=False):
            reason = "too many hash verifications waiting"
        elif not self._hashing.acquire(timeout=self._wait):
            if in_line:
                self._in_line.release()
            reason = "too many hash verifications in progress"
        if reason:
            self.throttle.settle(key, started, failed=False)  # not tried: not counted
            return Refusal(503, reason, 1)
        if self.shared is not None:
            # Asked with a place to hash in hand: the reads are bounded as the hashes are
            # (one costs about 1% of a hash), and come as late as can be: the freshest count.
            refused = self._check_shared(self.shared, key, started)
            if refused is not None:
                self._hashing.release()
                if in_line:
                    self._in_line.release()
                return refused
        return Ticket(key, started, in_line)

    def _check_shared(self, shared: SharedFailures, key: str, started: float) -> Refusal | None:
        """The failures of every process on the store: ``None`` when they let this one go."""
        # Unknown (the store failed): this process's own count, checked already, is the bound.
        failures = shared.count(key)
        wait = 0 if failures is None else self.throttle.check_shared(key, failures)
        if not wait:
            return None
        self.throttle.settle(key, started, failed=False)  # not tried: not counted
        if wait == BUSY:
            return Refusal(503, "too many verifications in flight for this client address", 1)
        return Refusal(429, "too many failed attempts for this client address", wait)

    def done(self, ticket: Ticket, *, failed: bool) -> None:
        """End an admitted verification; a failed one counts for its address."""
        self.throttle.settle(ticket.key, ticket.started, failed=failed)
        if failed and self.shared is not None:
            self.shared.add(ticket.key)
        self._hashing.release()
        if ticket.in_line:
            self._in_line.release()

    def board(self, fingerprint: bytes) -> tuple[Flight, bool]:
        """The flight verifying this value, and whether the caller leads it (then lands it)."""
        with self._flights_lock:
            flight = self._flights.get(fingerprint)
            if flight is not None:
                return flight, False
            self._flights[fingerprint] = flight = Flight()
            return flight, True

    def land(self, fingerprint: bytes, flight: Flight, *, wrong: bool) -> None:
        """End a flight its leader verified (``wrong``: the secret did not match)."""
        flight.wrong = wrong
        with self._flights_lock:
            del self._flights[fingerprint]
        flight.done.set()

    def follow(self, flight: Flight, *, patient: bool) -> bool:
        """Wait for a flight another caller leads; ``False``: no place in line to wait in.

        An impatient caller holds a place in line meanwhile (never outside the
        bound on waiting threads).
        """
        if patient:
            flight.done.wait(self._wait)
            return True
        if not self._in_line.acquire(blocking=False):
            return False
        try:
            flight.done.wait(self._wait)
        finally:
            self._in_line.release()
        return True
