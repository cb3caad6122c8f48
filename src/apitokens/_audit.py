"""The buffered writer: audit events, token usage and re-hashes, batched off the request thread.

Requests hand their records to :meth:`AuditWriter.submit` and go on; one
background thread writes them in batches, each batch one store transaction.
The buffer is bounded: when it is full, ``submit`` waits (backpressure), but
only ``max_wait`` seconds: then it raises :class:`StorageError` and the request
is refused with 503, so a store that cannot be written never hangs requests
and a record is never dropped. ``flush()`` waits until everything submitted
before it is written; ``close()`` flushes and stops the thread, and so does
interpreter exit.

With a journal (``_journal.py``), ``submit`` also appends the records to this
process's journal file before it returns, and each batch records how far into
the journal it wrote in the same store transaction: a process killed with
SIGKILL loses nothing, since the next writer on the store replays the rest. A
forked child gets a writer and a journal of its own (``os.register_at_fork``);
what was pending in the parent at the fork stays the parent's.

Audit events are written with their batch. Token usage (use count, last use)
is folded per token and held for up to ``usage_interval`` seconds across
batches: each token's row is then updated once per interval, not once per
batch, which is most of what a batch costs when many tokens are in use.
``flush()`` and ``close()`` write it at once.

Every deadline (``interval``, ``usage_interval``, ``max_wait``, the next look for dead
journals) is read from the writer's ``monotonic`` clock, which tests inject and move by
hand; the thread's waits themselves are real waits, woken by ``catch_up()``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ._errors import StorageError
from ._journal import ROTATE_BYTES, Journal, Positions, encode, replay
from ._model import Action, AuditEvent, AuthEntry, Usage
from .storage import EntryWriter, TokenStore
from .storage._protocol import offers

__all__ = ["AuditWriter", "AuthEntry", "Record", "Rehash"]

log = logging.getLogger("apitokens")
audit_log = logging.getLogger("apitokens.audit")

# Most tokens whose usage is held at once; more, and it is written with the next batch.
MAX_HELD_TOKENS = 100_000
# Seconds between looks for dead processes' journals (and after a failed replay).
RECOVER_INTERVAL = 60.0
RECOVER_RETRY = 1.0


@dataclass(frozen=True, slots=True)
class Rehash:
    """Replace a token's hash, but only if it is still ``old`` (a rotation wins)."""

    token_id: str
    old: str = field(repr=False)
    new: str = field(repr=False)


Record = AuditEvent | Usage | Rehash | AuthEntry


def _auth_event(entry: AuthEntry) -> AuditEvent:
    """The ``authenticate`` event ``entry`` stands for."""
    at, outcome, token_id, user, ip, method, path, reason, _ = entry
    return AuditEvent(
        at, Action.AUTHENTICATE, outcome, token_id, user, None, ip, method, path, reason
    )


def _log_event(event: AuditEvent) -> None:
    audit_log.info(
        "%s %s token=%s user=%s actor=%s ip=%s %s %s: %s",
        event.action,
        event.outcome,
        event.token_id,
        event.user,
        event.actor,
        event.client_ip,
        event.method or "-",
        event.path or "-",
        event.reason or "-",
        extra={"apitokens_event": event},
    )


class AuditWriter:
    """Writes records to a store in batches from one background thread.

    Args:
        store: where records go.
        max_pending: most records buffered before ``submit`` waits.
        batch_size: most records in one transaction; when two batches or more are
            waiting, up to four times as many.
        interval: longest a record waits before it is written, in seconds.
        usage_interval: longest a token's usage is held before it is written, in
            seconds; the uses within it become one update of the token's row.
        max_wait: longest ``submit`` waits for room in a full buffer, in seconds.
        journal: the directory of the audit journals (``None``: no journal).
        positions: where the store keeps the journals' positions (needed with
            ``journal``).
        monotonic: the clock of every deadline above, in seconds; ``time.monotonic``
            unless a test injects one (then :meth:`catch_up` makes the thread act on it).
    """

    def __init__(
        self,
        store: TokenStore,
        *,
        max_pending: int = 50_000,
        batch_size: int = 5_000,
        interval: float = 0.5,
        usage_interval: float = 5.0,
        max_wait: float = 5.0,
        journal: Path | None = None,
        positions: Positions | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if journal is not None and positions is None:
            raise ValueError("a journal needs a store that keeps its positions")
        self._store = store
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.interval = interval
        self.usage_interval = usage_interval
        self.max_wait = max_wait
        self.journal_directory = journal
        self._positions = positions
        self._monotonic = monotonic
        self._closing = False
        self._entries = _entry_writer(store)
        self._start(recover_in=0.0)
        _WRITERS.add(self)
        # Flush at interpreter exit without keeping the writer alive.
        ref = weakref.ref(self)

        def at_exit() -> None:
            writer = ref()
            if writer is not None:
                writer.close()

        self._atexit = at_exit
        atexit.register(at_exit)

    def _start(self, *, recover_in: float, forked: bool = False) -> None:
        """Fresh state, journal and thread: at creation, and in a forked child."""
        self._pending: deque[Record] = deque()
        # With a journal: the journal's size after each pending record was appended.
        self._marks: deque[int] = deque()
        self._in_flight = 0
        self._flush_requested = False
        # Set by flush() and close() only: held usage must be written too. (A full
        # buffer sets _flush_requested to hurry the writer, but usage may stay held.)
        self._usage_requested = False
        # Usage folded per token, not yet written; only the writer thread touches it.
        self._held: dict[str, _Uses] = {}
        self._held_since: float | None = None  # monotonic time of the oldest held use
        self._held_count = 0  # len(self._held), read under the lock by flush()
        # A plain lock under the condition: submit() (every request) takes it directly,
        # a C-level context manager, not the condition's Python __enter__ over an RLock.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.written = 0
        self._lost = False  # records given up at close: the journal keeps them
        self._journal: Journal | None = None
        self._journal_error: str | None = None
        # Dead journals are looked for in recover_in seconds, then every RECOVER_INTERVAL.
        # flush() waits for the first look when it is at once (not in a forked child).
        self._recovering = self.journal_directory is not None and recover_in == 0
        self._recover_at = self._monotonic() + recover_in
        self._idle = 0  # counts the writer thread's waits with nothing due: see catch_up()
        if self.journal_directory is not None and not forked:
            # At once, so that a directory we cannot write is reported at start. A forked
            # child makes its own at its first record: most children of a process
            # (multiprocessing's, say) never record anything.
            with contextlib.suppress(StorageError):
                self._open_journal()
        self._thread = threading.Thread(target=self._run, name="apitokens-writer", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"AuditWriter(pending={len(self._pending)}, written={self.written})"

    @property
    def pending(self) -> int:
        """Records submitted but not yet written."""
        with self._cond:
            return len(self._pending) + self._in_flight

    @property
    def journal(self) -> Path | None:
        """This process's journal file, if any."""
        journal = self._journal
        return journal.path if journal is not None else None

    def submit(self, records: Sequence[Record], *, block: bool = True) -> bool:
        """Queue ``records`` for writing (and append them to the journal, if any).

        Args:
            records: events, usages and re-hashes, written in order.
            block: wait for room when the buffer is full (the default), at most
                ``max_wait`` seconds; with ``False``, return ``False`` instead of waiting.

        Returns:
            ``True`` once queued; ``False`` only when ``block`` is false and
            the buffer is full.

        Raises:
            StorageError: the writer is closed, the buffer stayed full for
                ``max_wait`` seconds, or the journal cannot be written.
        """
        if not records:
            return True
        data = encode(records) if self.journal_directory is not None else b""
        with self._lock:
            if len(self._pending) + len(records) > self.max_pending and self._pending:
                if not block:
                    return False
                self._wait_for_room(len(records))
            if self._closing:
                raise StorageError("the audit writer is closed")
            if self.journal_directory is not None:
                journal = self._journal
                if journal is None:
                    journal = self._open_journal()
                if data:
                    try:
                        journal.append(data)
                    except OSError as exc:
                        raise StorageError(f"the audit journal cannot be written: {exc}") from None
                if len(records) == 1:
                    self._marks.append(journal.size)
                else:
                    self._marks.extend([journal.size] * len(records))
            self._pending.extend(records)
            if len(self._pending) >= self.batch_size:
                self._cond.notify_all()
        return True

    def _open_journal(self) -> Journal:
        """Create this process's journal (the lock is held, or nothing else runs yet).

        Raises:
            StorageError: it cannot be created. Fail closed: without its journal
                no request is answered (503); the next record tries again.
        """
        assert self.journal_directory is not None
        try:
            journal = Journal.create(self.journal_directory)
        except OSError as exc:
            message = exc.strerror or str(exc)
            if message != self._journal_error:  # once per cause, not once per request
                log.error("apitokens: cannot create the audit journal: %s", message)
            self._journal_error = message
            raise StorageError(f"the audit journal cannot be created: {message}") from None
        self._journal = journal
        self._journal_error = None
        return journal

    def _wait_for_room(self, count: int) -> None:
        """Backpressure, bounded: called with the lock held."""
        deadline = self._monotonic() + self.max_wait
        while len(self._pending) + count > self.max_pending and self._pending:
            if self._closing:
                return
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise StorageError(
                    f"the audit writer is {len(self._pending)} records behind"
                    f" after {self.max_wait:g} s (is the store writable?)"
                )
            self._flush_requested = True
            self._cond.notify_all()
            self._cond.wait(remaining)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted so far is written, held usage included.

        Also waits for the first replay of dead processes' journals.

        Returns:
            ``True`` when all was written, ``False`` on timeout.
        """
        with self._cond:
            self._flush_requested = True
            self._usage_requested = True
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: (
                    not self._pending
                    and not self._in_flight
                    and not self._held_count
                    and not self._recovering
                ),
                timeout=timeout,
            )

    def catch_up(self, timeout: float | None = None) -> bool:
        """Act on the clock's current time: for tests that move an injected ``monotonic``.

        Wakes the writer thread, and every :meth:`submit` waiting for room, to read the
        clock again, then waits until the thread has done whatever is due by now (a
        batch whose ``interval`` is over, usage whose ``usage_interval`` is, a look for
        dead journals) and waits again. Unlike :meth:`flush`, it hurries nothing: usage
        not yet due stays held. With ``timeout=0`` it only wakes them.

        Returns:
            ``True`` once the thread waits again; ``False`` when ``timeout`` ran out
            first (it is still writing, say to a store that keeps failing) or the
            writer is closed.
        """
        with self._cond:
            seen = self._idle
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._idle != seen or self._closing, timeout=timeout)
            return self._idle != seen and not self._closing

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is buffered and stop the thread. Idempotent.

        The journal is deleted when everything in it was written; if not (the
        store failed), it stays for the next writer on the store to replay.
        """
        atexit.unregister(self._atexit)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _take(self) -> tuple[list[Record], bool, _Mark | None] | None:
        """The next batch, whether held usage goes with it, and its mark; ``None``: stop."""
        with self._cond:
            deadline = self._monotonic() + self.interval
            while not self._closing and not self._flush_requested:
                if len(self._pending) >= self.batch_size:
                    break
                now = self._monotonic()
                remaining = deadline - now if self._pending else self.interval
                if self._held_since is not None:
                    remaining = min(remaining, self._held_since + self.usage_interval - now)
                if self.journal_directory is not None:
                    remaining = min(remaining, self._recover_at - now)
                if remaining <= 0:
                    break
                self._idle += 1  # nothing due by the clock now: what catch_up() waits for
                self._cond.notify_all()
                self._cond.wait(remaining)
                if not self._pending:
                    deadline = self._monotonic() + self.interval
            journal = self._journal
            if not self._pending:
                self._flush_requested = False
                with_usage = self._usage_requested or self._closing
                self._usage_requested = False
                if self._held_count:  # held usage due, or asked for: write it alone
                    return [], with_usage, _mark(journal, None)
                self._cond.notify_all()
                return None if self._closing else ([], False, None)
            # Behind (two batches or more waiting): take up to four at once. A batch
            # touches each token's index pages once however many of its rows it holds,
            # so bigger batches write many-token traffic faster, and only when needed.
            limit = self.batch_size
            if len(self._pending) >= 2 * limit:
                limit *= 4
            count = min(len(self._pending), limit)
            retire = False
            if count == len(self._pending):  # the usual case: all of it, copied in C
                batch = list(self._pending)
                self._pending.clear()
                self._marks.clear()
                end = journal.size if journal is not None else 0
                if journal is not None and journal.size >= ROTATE_BYTES:
                    retire = self._rotate()
            else:
                batch = [self._pending.popleft() for _ in range(count)]
                end = 0
                if journal is not None:
                    for _ in range(count):
                        end = self._marks.popleft()
            self._in_flight = count
            with_usage = retire  # a retired journal is done only once its usage is written
            if not self._pending:
                self._flush_requested = False
                # The last batch a flush() waits for: held usage goes with it.
                with_usage = with_usage or self._usage_requested or self._closing
                self._usage_requested = False
            self._cond.notify_all()  # room for blocked submitters
            return batch, with_usage, _mark(journal, end, retire)

    def _rotate(self) -> bool:
        """Start a new journal (the lock is held, nothing pending); ``True`` if done."""
        assert self.journal_directory is not None
        try:
            self._journal = Journal.create(self.journal_directory)
        except OSError:
            log.exception("apitokens: cannot start a new audit journal; keeping the old one")
            return False
        return True

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            batch, with_usage, mark = taken
            if batch or self._held:
                self._write(batch, with_usage=with_usage, mark=mark)
            with self._cond:
                self._in_flight = 0
                self._held_count = len(self._held)
                self._cond.notify_all()
            if self.journal_directory is not None and self._monotonic() >= self._recover_at:
                self._recover()
        self._finish()

    def _recover(self) -> None:
        """Replay the journals of processes that are gone (the writer thread)."""
        assert self.journal_directory is not None and self._positions is not None
        own = [self._journal.name] if self._journal is not None else []
        try:
            replay(self.journal_directory, self._positions, own=own)
        except Exception:
            log.exception("apitokens: replaying dead processes' audit journals failed; retrying")
            self._recover_at = self._monotonic() + RECOVER_RETRY
        else:
            self._recover_at = self._monotonic() + RECOVER_INTERVAL
        # flush() waits for the first look, not for a store that may never recover.
        if self._recovering:
            with self._cond:
                self._recovering = False
                self._cond.notify_all()

    def _finish(self) -> None:
        """At close: delete the journal if all of it is written, else keep it for a replay."""
        with self._cond:  # closed before its first look: no flush() may wait for it
            self._recovering = False
            self._cond.notify_all()
        journal = self._journal
        if journal is None:
            return
        if self._lost or self._pending or self._held:
            journal.close()
            log.error("apitokens: audit journal %s kept for the next writer", journal.path)
            return
        journal.remove()
        assert self._positions is not None
        # A position left behind is dropped by the next replay.
        with contextlib.suppress(Exception):
            self._positions.forget_journals([journal.name])

    def _write(
        self, batch: list[Record], *, with_usage: bool = False, mark: _Mark | None = None
    ) -> None:
        events: list[AuditEvent | AuthEntry] = []  # in batch order
        uses = self._held  # folded per token, across batches until written
        rehashes: list[Rehash] = []
        for record in batch:
            if isinstance(record, AuthEntry):
                events.append(record)
                at, _, token_id, _, ip, _, _, _, used = record
                if used and token_id is not None:
                    seen = uses.get(token_id)
                    if seen is None:
                        uses[token_id] = _Uses(at, ip)
                    else:
                        seen.add(at, ip)
            elif isinstance(record, AuditEvent):
                events.append(record)
            elif isinstance(record, Usage):
                seen = uses.get(record.token_id)
                if seen is None:
                    uses[record.token_id] = _Uses(record.at, record.ip, record.count)
                else:
                    seen.add(record.at, record.ip, record.count)
            else:
                rehashes.append(record)
        usage: list[Usage] = []
        if uses:
            now = self._monotonic()
            if self._held_since is None:  # the first uses held since the last write
                self._held_since = now
            if (
                with_usage
                or len(uses) >= MAX_HELD_TOKENS
                or now - self._held_since >= self.usage_interval
            ):
                usage = [Usage(token_id, u.at, u.ip, u.count) for token_id, u in uses.items()]
        retire = mark is not None and mark.retire
        if not events and not usage and not rehashes and not retire:
            self.written += len(batch)
            return  # usage held, nothing else: no transaction
        entries = self._entries
        as_events: list[AuditEvent] | None = None
        positions = self._positions
        marks = []
        if mark is not None and positions is not None:
            # Usage held across batches is written only with the last of them: its
            # position moves only when it is written (None: keep it).
            usage_pos = mark.end if usage or not uses else None
            marks = [(mark.journal.name, mark.end, usage_pos)]
        elif entries is None:
            as_events = _events(events)
        delay = 0.05
        attempts = 0
        while True:
            attempts += 1
            try:
                if marks:
                    assert positions is not None
                    positions.write_journaled(events, usage, marks)
                elif entries is not None:
                    entries.write_entries(events=events, usage=usage)
                else:
                    self._store.write(events=as_events or [], usage=usage)
                break
            except Exception as exc:
                # Keep the batch and retry: records are never dropped while
                # the process lives. At close, give up after a few tries (the
                # journal, if any, keeps them for the next writer).
                with self._cond:
                    closing = self._closing
                if closing and attempts >= 5:
                    log.error("apitokens: could not write %d audit records at close", len(batch))
                    self._lost = True
                    self._forget_usage()
                    return
                if isinstance(exc, StorageError):
                    # The store is down (a restart, a lost connection): its message says
                    # why, in one line; a traceback of our own retry loop says nothing more.
                    log.error(
                        "apitokens: writing %d audit records failed (%s); retrying in %.1f s",
                        len(batch),
                        exc,
                        delay,
                    )
                else:
                    log.exception(
                        "apitokens: writing %d audit records failed; retrying", len(batch)
                    )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        if usage:
            self._forget_usage()
        if retire:
            assert mark is not None
            mark.journal.remove()  # every record in it written, usage too
        for rehash in rehashes:
            # A lost re-hash costs nothing: the token is re-hashed on its
            # next verification instead. So no retry here.
            try:
                self._store.replace_hash(rehash.token_id, old=rehash.old, new=rehash.new)
            except Exception:
                log.exception("apitokens: re-hashing token %s failed", rehash.token_id)
        self.written += len(batch)
        if audit_log.isEnabledFor(logging.INFO):
            for event in as_events if as_events is not None else _events(events):
                _log_event(event)

    def _forget_usage(self) -> None:
        """Held usage is written (or given up at close): hold none."""
        self._held = {}
        self._held_since = None

    def _after_fork_in_child(self) -> None:
        """A forked child: the parent's records stay the parent's; a writer of its own."""
        journal = self._journal
        if journal is not None:
            journal.abandon()  # the parent's file, and lock, stay the parent's
        if self._closing:
            return
        # Soon, not at once: a gunicorn worker replaces one that died (a timeout's
        # SIGKILL), whose journal it replays; flush() does not wait for that look.
        self._start(recover_in=RECOVER_RETRY, forked=True)


@dataclass(frozen=True, slots=True)
class _Mark:
    """Where a batch ends in its journal; ``retire``: the journal is done after it."""

    journal: Journal
    end: int
    retire: bool = False


def _mark(journal: Journal | None, end: int | None, retire: bool = False) -> _Mark | None:
    if journal is None:
        return None
    return _Mark(journal, journal.size if end is None else end, retire)


_WRITERS: weakref.WeakSet[AuditWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for writer in list(_WRITERS):
        writer._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _entry_writer(store: TokenStore) -> EntryWriter | None:
    """The store, if it offers ``write_entries`` (:class:`~apitokens.storage.EntryWriter`).

    It takes the compact entries as they are, with no :class:`AuditEvent` in between:
    for ``SQLiteStore``, about a third of what the writer itself spends per request.
    Not when a subclass overrides ``write()`` below it (to copy events elsewhere, say):
    that store gets every event through its ``write()``.
    """
    if isinstance(store, EntryWriter) and offers(store, "write_entries"):
        return store
    return None


def _events(records: list[AuditEvent | AuthEntry]) -> list[AuditEvent]:
    """The events of ``records``, entries expanded."""
    return [_auth_event(r) if isinstance(r, AuthEntry) else r for r in records]


class _Uses:
    """Held uses of one token: how many, and the newest (the later one on a tie)."""

    __slots__ = ("at", "count", "ip")

    def __init__(self, at: datetime, ip: str | None, count: int = 1) -> None:
        self.count = count
        self.at = at
        self.ip = ip

    def add(self, at: datetime, ip: str | None, count: int = 1) -> None:
        self.count += count
        try:
            newer = at >= self.at
        except TypeError:  # naive beside aware: the store refuses the batch anyway
            newer = True
        if newer:
            self.at, self.ip = at, ip
