"""Counting the uses of tokens with a rate limit or credits (DESIGN §11).

Exact within a process: every decision about a token is taken under one lock, on the
count of this process's own admissions plus what the store said of everyone's. Across
processes the store (:class:`~apitokens.storage.UsageLedger`) adds the counts up:

- what this process admits is sent in batches, at most every ``FLUSH_INTERVAL``
  seconds, and each send reads the totals back;
- a decision on a count read more than ``STALE_AFTER`` seconds ago (or for a window
  or refill period not read yet) first sends and reads that token's count, on the
  request's thread (on an event loop: :class:`WouldBlock`, and a worker thread does it).

So a process decides on all of its own admissions plus everyone's count as of at most
``STALE_AFTER`` seconds ago, which holds what the others admitted until
``FLUSH_INTERVAL`` before that read: a limit overshoots by at most what the other
processes admitted within the last second, and never when one process serves the
token. A store that cannot be read fails the decision closed (``StorageError``: 503),
once the count it last gave is stale; counts not yet sent are kept and sent again (a
write whose answer was lost after it committed is counted twice: towards refusing).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from ._errors import StorageError
from ._limits import Limits, Over, over_credits, over_rate
from ._model import Token
from .storage import CreditSpend, UsageLedger

__all__ = ["FLUSH_INTERVAL", "STALE_AFTER", "Meter", "WouldBlockMeter"]

log = logging.getLogger("apitokens")

FLUSH_INTERVAL = 0.2
"""Most seconds between an admission and its send to the store."""
STALE_AFTER = 0.8
"""A count read longer ago than this is read again before a decision.

With ``FLUSH_INTERVAL``, the bound on how late a process sees another's admission:
sent within 0.2 s, read within 0.8 s of that — one second (plus a write's duration).
"""
# Most windows and balances kept; beyond it those read longest ago (and with nothing
# left to send) are dropped, to be read again when needed.
MAX_ENTRIES = 100_000
# The tables are pruned when a new count would make them this large (then at twice
# what is left): the sending thread prunes only after it sent something, and a
# process that admits nothing (every request over its limit, or the store down)
# would otherwise keep a window for every second a per-second limit was asked about.
PRUNE_AT = 1024
# Seconds a window (or refill period) is kept after it ended: a decision reads the clock
# when it starts, and may count a use in that window after a hash's wait and a store's
# round trip; a count dropped under it meanwhile would make it fail (503).
PRUNE_GRACE = 60


class WouldBlockMeter(Exception):
    """The decision needs the store (a count to read) and the caller may not block."""


class _Count:
    """One token's count in one window (rate), or its credit balance (credits).

    ``known`` is the store's total (rate: requests so far; credits: left) as of
    ``read_at``; ``sending`` were admitted here and are being sent; ``unsent`` were
    admitted here since.
    """

    __slots__ = ("known", "limits", "read_at", "sending", "unsent")

    def __init__(self, limits: Limits) -> None:
        self.known = 0
        self.sending = 0
        self.unsent = 0
        self.read_at = -math.inf
        self.limits = limits  # the token's limits when last counted (credits: what to send)


_K = TypeVar("_K")
# Every meter of this process: a forked child starts each afresh (the parent's counts
# are the parent's to send, and its sending thread does not exist in the child).
_METERS: weakref.WeakSet[Meter] = weakref.WeakSet()


def _after_fork() -> None:
    for meter in list(_METERS):
        meter._start()


os.register_at_fork(after_in_child=_after_fork)
# (token id, window length, window start)
_WindowKey = tuple[str, int, int]
# (token id, refill period: 0 without refill)
_BalanceKey = tuple[str, int]


class _Fast(NamedTuple):
    """A token's counts as of its last decision, good until ``until`` (Unix seconds)."""

    limits: Limits
    since: float  # the start of its window and refill period, whichever is later
    until: float  # the end of its window or refill period, whichever comes first
    cap: int  # the rate limit's count (0 without one)
    window: _WindowKey | None
    rate: _Count | None
    balance: _BalanceKey | None
    credit: _Count | None


class Meter:
    """This process's counts of limited tokens' uses. Thread-safe.

    Args:
        ledger: the store's usage ledger.
        clock: Unix seconds (windows that ended are dropped by it).
        monotonic: the clock of ``flush_interval`` and ``stale_after``.
    """

    def __init__(
        self,
        ledger: UsageLedger,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        flush_interval: float = FLUSH_INTERVAL,
        stale_after: float = STALE_AFTER,
    ) -> None:
        self.ledger = ledger
        self.flush_interval = flush_interval
        self.stale_after = stale_after
        self._clock = clock
        self._monotonic = monotonic
        self._start()
        # Send what is left when the interpreter exits (a gunicorn worker stopped or
        # recycled): uses admitted in the last interval would otherwise never reach the
        # store, and their credits would come back. Without keeping the meter alive.
        ref = weakref.ref(self)

        def at_exit() -> None:
            meter = ref()
            if meter is not None:
                meter.close()

        self._atexit = at_exit
        atexit.register(at_exit)

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._send_lock = threading.Lock()  # one send at a time: totals never go back
        self._windows: dict[_WindowKey, _Count] = {}
        self._balances: dict[_BalanceKey, _Count] = {}
        self._dirty = False
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failed = False
        self._failures = 0  # exchanges that failed: a waiting request need not try again
        # Per token: the counts of its last decision, while its window and period last.
        self._fast: dict[str, _Fast] = {}
        self._prune_at = PRUNE_AT
        _METERS.add(self)

    # -- the decision ---------------------------------------------------------------

    def take(self, limits: Limits, now: float, block: bool = True) -> Over | None:
        """Admit one use of the token at ``now`` (Unix seconds), or say which limit it is over.

        Raises:
            WouldBlockMeter: not ``block``, and a count must be read from the store.
            StorageError: the store could not be read (fail closed).
        """
        # The warm path: the same limits as the last decision, within the same window
        # and refill period, so the same counts (one dict read, no keys to build).
        fast = self._fast.get(limits.token_id)
        if fast is not None and fast.limits is limits and fast.since <= now < fast.until:
            rate, credit = fast.rate, fast.credit
            with self._lock:
                mono = self._monotonic()
                stale = self.stale_after
                # Still the entry (a prune or reset between the read and the lock may
                # have dropped its counts: a use counted on those would never be sent).
                if (
                    self._fast.get(limits.token_id) is fast
                    and (rate is None or mono - rate.read_at < stale)
                    and (credit is None or mono - credit.read_at < stale)
                ):
                    # Under the limits: counted here, as _admit would (no call: every use).
                    if (credit is None or credit.known - credit.sending - credit.unsent > 0) and (
                        rate is None or rate.known + rate.sending + rate.unsent < fast.cap
                    ):
                        if rate is not None:
                            rate.unsent += 1
                        if credit is not None:
                            credit.unsent += 1
                        if not self._dirty:
                            self._wake_sender()
                        return None
                    return self._admit(limits, now, fast.window, rate, fast.balance, credit)
        window, balance = _keys(limits, now)
        for attempt in (0, 1):
            with self._lock:
                rate = self._windows.get(window) if window is not None else None
                credit = self._balances.get(balance) if balance is not None else None
                mono = self._monotonic()
                stale = self.stale_after
                fresh = (window is None or (rate is not None and mono - rate.read_at < stale)) and (
                    balance is None
                    or (
                        credit is not None
                        and mono - credit.read_at < stale
                        and (credit.limits is limits or credit.limits == limits)
                    )
                )
                if fresh or attempt == 1:
                    if (window is None or rate is not None) and (
                        balance is None or credit is not None
                    ):
                        since, until = _span(limits, now)
                        cap = limits.rate.count if limits.rate is not None else 0
                        self._fast[limits.token_id] = _Fast(
                            limits, since, until, cap, window, rate, balance, credit
                        )
                    return self._admit(limits, now, window, rate, balance, credit)
            if not block:
                raise WouldBlockMeter
            self._sync(limits, window, balance, only_if_stale=True)
        raise AssertionError("unreachable")  # pragma: no cover

    def _admit(
        self,
        limits: Limits,
        now: float,
        window: _WindowKey | None,
        rate: _Count | None,
        balance: _BalanceKey | None,
        credit: _Count | None,
    ) -> Over | None:
        """Decide under the lock on the counts as they are; count the use if admitted.

        Credits first: spent credits without a refill never come back, so a client is
        told so (no ``Retry-After``) rather than to wait for the rate limit's window.
        """
        if balance is not None:
            if credit is None:
                raise StorageError("the usage ledger could not be read")
            credit.limits = limits
            if credit.known - credit.sending - credit.unsent <= 0:
                return over_credits(limits, now)
        if window is not None:
            if rate is None:  # not read (the store failed): unknown, so refused
                raise StorageError("the usage ledger could not be read")
            assert limits.rate is not None
            if rate.known + rate.sending + rate.unsent >= limits.rate.count:
                return over_rate(limits, now, window[2])
        if rate is not None:
            rate.unsent += 1
        if credit is not None:
            credit.unsent += 1
        if not self._dirty:
            self._wake_sender()
        return None

    def _wake_sender(self) -> None:
        """There is something to send: wake the sending thread (started the first time)."""
        self._dirty = True
        self._wake.notify()
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="apitokens-meter", daemon=True)
            self._thread.start()

    def credits_left(self, limits: Limits, now: float) -> int | None:
        """The token's credits left at ``now`` (``None``: no credits).

        As a decision sees them: this process's count when it was read from the store
        less than ``stale_after`` ago, else read now.

        Raises:
            StorageError: the store could not be read.
        """
        _, balance = _keys(limits, now)
        if balance is None:
            return None
        self._sync(limits, None, balance, only_if_stale=True)
        with self._lock:
            credit = self._balances.get(balance)
            if credit is None:
                raise StorageError("the usage ledger could not be read")
            return max(0, credit.known - credit.sending - credit.unsent)

    # -- sending and reading --------------------------------------------------------

    def _sync(
        self,
        limits: Limits,
        window: _WindowKey | None,
        balance: _BalanceKey | None,
        *,
        only_if_stale: bool = False,
    ) -> None:
        """Send one token's counts and read its totals, now (a decision waits for it).

        ``only_if_stale``: not if another thread read them while this one waited its
        turn (the requests that find a count stale at once would each make a round trip
        to the store, one after the other, however many they are).
        """
        with self._lock:
            new = (window is not None and window not in self._windows) or (
                balance is not None and balance not in self._balances
            )
            if new and len(self._windows) + len(self._balances) >= self._prune_at:
                self._prune_locked(self._clock())
            if window is not None:
                self._windows.setdefault(window, _Count(limits))
            if balance is not None:
                self._balances.setdefault(balance, _Count(limits)).limits = limits
            windows = {window} if window else set()
            # Every balance of the token: uses of the period before, not sent yet, are
            # taken off before the refill of the new one is read (exact at the boundary).
            balances = {k for k in self._balances if k[0] == limits.token_id} if balance else set()
            failures = self._failures
        with self._send_lock:
            if only_if_stale and self._fresh(limits, window, balance):
                return
            if only_if_stale and self._failures != failures:
                # The store failed while this request waited its turn: answer now (503)
                # rather than each waiting request trying, one after the other.
                raise StorageError("the usage ledger could not be read")
            error = self._exchange(windows, balances)
        self._report(error, raise_=True)

    def _fresh(
        self, limits: Limits, window: _WindowKey | None, balance: _BalanceKey | None
    ) -> bool:
        """Whether the token's counts were read less than ``stale_after`` ago."""
        with self._lock:
            mono = self._monotonic()
            stale = self.stale_after
            if window is not None:
                rate = self._windows.get(window)
                if rate is None or mono - rate.read_at >= stale:
                    return False
            if balance is not None:
                credit = self._balances.get(balance)
                if credit is None or mono - credit.read_at >= stale or credit.limits != limits:
                    return False
            return True

    def _send(
        self,
        windows: set[_WindowKey] | None,
        balances: set[_BalanceKey] | None,
        *,
        raise_: bool,
    ) -> None:
        """Send what was admitted (only these keys, or all when ``None``) and read totals.

        Requests and credits are two writes; each one's counts are kept to be sent
        again only if that write failed, so nothing is counted twice.
        """
        with self._send_lock:
            error = self._exchange(windows, balances)
        self._report(error, raise_=raise_)

    def _exchange(
        self, windows: set[_WindowKey] | None, balances: set[_BalanceKey] | None
    ) -> Exception | None:
        """:meth:`_send`'s writes and reads, ``_send_lock`` held: the error, if one failed."""
        with self._lock:
            counts = _take(self._windows, windows)
            spends = _take(self._balances, balances)
            started = self._monotonic()
        error: Exception | None = None
        try:
            if counts:
                # None counted here is older; a decision that read its clock before a
                # long wait may still count in a window ended PRUNE_GRACE ago.
                ended = min(start for _, _, start in counts) - PRUNE_GRACE
                totals = self.ledger.count_requests(counts, ended_before=ended)
                with self._lock:
                    _settle(self._windows, counts, totals, started, rate=True)
        except Exception as exc:
            error = exc
            with self._lock:
                _give_back(self._windows, counts)
                self._failed_to_send(any(counts.values()))
        try:
            with self._lock:
                batches = self._spends(spends)
            for wanted, keys in batches:
                left = self.ledger.spend_credits(wanted)
                by_key = {key: left[key[0]] for key in keys if key[0] in left}
                with self._lock:
                    _settle(self._balances, keys, by_key, started, rate=False)
                for key in keys:
                    del spends[key]  # sent: never given back
        except Exception as exc:
            error = error or exc
            with self._lock:
                _give_back(self._balances, spends)
                self._failed_to_send(any(spends.values()))
        return error

    def _failed_to_send(self, kept: bool) -> None:
        """An exchange failed (``_lock`` held): count it, and send what it kept again."""
        self._failures += 1
        if kept and not self._dirty:
            self._wake_sender()  # the sending thread tries again after its interval

    def _report(self, error: Exception | None, *, raise_: bool) -> None:
        """Raise a send's error (``raise_``), or log the first of a run and the recovery."""
        if error is not None:
            if raise_:
                if isinstance(error, StorageError):
                    raise error
                raise StorageError(f"usage ledger: {type(error).__name__}") from error
            if not self._failed:
                self._failed = True
                log.warning(
                    "apitokens: the store's usage ledger could not be written; the counts"
                    " are kept and sent again, and limited tokens get 503 once their"
                    " counts are older than %.1f s",
                    self.stale_after,
                    exc_info=error,
                )
        elif self._failed and not raise_:
            self._failed = False
            log.warning("apitokens: the store's usage ledger can be written again")

    def _run(self) -> None:
        """The sending thread: waits for admissions, sends them at most every interval."""
        while True:
            with self._lock:
                while not self._dirty and not self._closed:
                    self._wake.wait()
                if self._closed and not self._dirty:
                    return
                self._dirty = False
                closing = self._closed
            self._send(None, None, raise_=False)
            self._prune(self._clock())
            if closing:
                return
            time.sleep(self.flush_interval)

    def _prune(self, now: float) -> None:
        """Drop windows that ended and, beyond ``MAX_ENTRIES``, counts read longest ago."""
        with self._lock:
            self._prune_locked(now)

    def _prune_locked(self, now: float) -> None:
        """:meth:`_prune`, the lock held; balances of refill periods that ended go too."""
        ended = [
            k for k, c in self._windows.items() if k[1] + k[2] + PRUNE_GRACE < now and _idle(c)
        ]
        for key in ended:
            del self._windows[key]
        past = [k for k, c in self._balances.items() if _period_ended(k, c, now) and _idle(c)]
        for balance in past:
            del self._balances[balance]
        if ended or past or _trim(self._windows) or _trim(self._balances):
            self._fast.clear()  # none may hold a count no longer in the tables
        self._prune_at = max(PRUNE_AT, 2 * (len(self._windows) + len(self._balances)))

    def _spends(
        self, spends: dict[_BalanceKey, int]
    ) -> list[tuple[dict[str, CreditSpend], dict[_BalanceKey, int]]]:
        """The ledger's spends, in batches of one per token: a token's uses of an earlier
        refill period go in an earlier batch, so they are taken off before the refill of
        the next period is added (as they happened)."""
        batches: list[tuple[dict[str, CreditSpend], dict[_BalanceKey, int]]] = []
        for key in sorted(spends, key=lambda k: k[1]):
            token_id, period = key
            limits = self._balances[key].limits
            assert limits.credits is not None
            refill = 0 if limits.refill is None else limits.refill.count
            spend = CreditSpend(spends[key], limits.credits, refill, period)
            batch = next((b for b in batches if token_id not in b[0]), None)
            if batch is None:
                batch = ({}, {})
                batches.append(batch)
            batch[0][token_id] = spend
            batch[1][key] = spends[key]
        return batches

    def reset_credits(self, token: Token, now: float) -> None:
        """Start ``token``'s credits again from its (new) ``credits``, after an edit.

        Uses admitted before are sent first, so they are not taken off the new allotment.
        The new balance is written (not forgotten), so a use another process sends late,
        counted on the old limits, is taken off it: it never brings the old one back.

        Raises:
            StorageError: the store failed.
        """
        token_id = token.id
        limits = Limits.of(token)
        credits = limits.credits if limits is not None else None
        period = 0
        if limits is not None and limits.refill is not None:
            period = int(now // limits.refill.seconds)
        self.flush()
        with self._send_lock:
            self.ledger.reset_credits(token_id, credits, period)
            with self._lock:
                for key in [key for key in self._balances if key[0] == token_id]:
                    del self._balances[key]
                self._fast.pop(token_id, None)

    def refund(self, limits: Limits, now: float) -> None:
        """Give back one use admitted at about ``now``: the request was refused after all.

        For a route's own requirement, checked after the decision. The use is taken off
        what this process counts; if it was sent to the store already, the store keeps
        it (towards refusing) while this process counts it as given back.
        """
        window, balance = _keys(limits, now)
        with self._lock:
            rate = self._windows.get(window) if window is not None else None
            credit = self._balances.get(balance) if balance is not None else None
            for count in (rate, credit):
                if count is not None:
                    count.unsent -= 1

    def forget(self, token_id: str) -> None:
        """Read the token's counts again before the next decision (it changed)."""
        with self._lock:
            for window, count in self._windows.items():
                if window[0] == token_id:
                    count.read_at = -math.inf
            for balance, count in self._balances.items():
                if balance[0] == token_id:
                    count.read_at = -math.inf

    def flush(self) -> None:
        """Send every count not sent yet, now (a failure is logged; the counts are kept)."""
        self._send(None, None, raise_=False)

    def close(self) -> None:
        """Send what is left and stop the sending thread."""
        atexit.unregister(self._atexit)
        with self._lock:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        # What a failed send kept, or what came after the thread's last send: sent now.
        self._send(None, None, raise_=False)


def _take(table: dict[_K, _Count], keys: set[_K] | None) -> dict[_K, int]:
    """Move the unsent counts of ``keys`` (or of every key with some) to sending.

    A negative ``unsent`` (uses given back after they were sent: :meth:`Meter.refund`)
    is never sent; it stays, so this process counts them as given back.
    """
    taken = {}
    for key, count in table.items():
        n = max(count.unsent, 0)
        if (key in keys) if keys is not None else n:
            taken[key] = n
            count.sending, count.unsent = count.sending + n, count.unsent - n
    return taken


def _give_back(table: dict[_K, _Count], taken: dict[_K, int]) -> None:
    """A send failed: what it carried is unsent again."""
    for key, n in taken.items():
        count = table.get(key)
        if count is not None:
            count.sending, count.unsent = count.sending - n, count.unsent + n


def _settle(
    table: dict[_K, _Count], taken: dict[_K, int], totals: dict[_K, int], at: float, *, rate: bool
) -> None:
    """A send succeeded: the store's totals (which include what it carried) are known."""
    for key, n in taken.items():
        count = table.get(key)
        if count is None:
            continue
        count.sending -= n
        if key in totals:
            count.known = totals[key]
            count.read_at = at
        else:  # not answered: assume ours landed, and read again before the next decision
            count.known = count.known + n if rate else max(0, count.known - n)
            count.read_at = -math.inf


def _period_ended(key: _BalanceKey, count: _Count, now: float) -> bool:
    """Whether the balance's refill period ended (one without refill never does)."""
    refill = count.limits.refill
    return key[1] != 0 and refill is not None and (key[1] + 1) * refill.seconds + PRUNE_GRACE <= now


def _idle(count: _Count) -> bool:
    return count.unsent <= 0 and count.sending == 0


def _trim(table: dict[_K, _Count]) -> bool:
    """Beyond ``MAX_ENTRIES``, drop the counts read longest ago with nothing to send."""
    excess = len(table) - MAX_ENTRIES
    if excess <= 0:
        return False
    # Never read yet: a request is about to read it (a sync waiting for its turn).
    idle = sorted(
        (key for key, c in table.items() if _idle(c) and c.read_at != -math.inf),
        key=lambda k: table[k].read_at,
    )
    for key in idle[:excess]:
        del table[key]
    return True


def _span(limits: Limits, now: float) -> tuple[float, float]:
    """From when until when the token's window and refill period (those it has) both last."""
    since, until = -math.inf, math.inf
    for rate in (limits.rate, limits.refill if limits.credits is not None else None):
        if rate is not None:
            start = now // rate.seconds * rate.seconds
            since, until = max(since, start), min(until, start + rate.seconds)
    return since, until


def _keys(limits: Limits, now: float) -> tuple[_WindowKey | None, _BalanceKey | None]:
    window = None
    if limits.rate is not None:
        seconds = limits.rate.seconds
        window = (limits.token_id, seconds, int(now // seconds) * seconds)
    balance = None
    if limits.credits is not None:
        period = 0 if limits.refill is None else int(now // limits.refill.seconds)
        balance = (limits.token_id, period)
    return window, balance
