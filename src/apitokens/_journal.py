"""The audit journal: every record a request hands the writer, on disk before the answer.

Each process (each :class:`~apitokens._audit.AuditWriter`) appends its records to a
file of its own in the journal directory, one JSON line per record, with one
``write(2)`` per request and no fsync: a process killed with SIGKILL loses
nothing the kernel already has (power loss and a compromised host are out of
scope). The writer still writes from memory, and records in the same store
transaction as the rows how far into its journal it has written (``events``
for audit rows, ``usage`` for the usage columns, which the writer holds a few
seconds). A journal whose owner is gone — its ``flock`` is free — is replayed by
the next writer that opens the store, from those positions, and deleted: no
record lost, none written twice.

What is journaled is what the audit log gets: audit events and uses, never a
secret or a hash (re-hashes are not journaled: a lost one costs a re-hash).

Whatever is replayed lands in the audit log and the tokens' usage, so the
directory and its files are trusted only if nobody but their owner can have
written them (:func:`distrust`): a real directory, not a symbolic link, that
group and others cannot write, owned by this process's user (or, for root,
by the owner of the directory it is in); and regular files, not symbolic
links, owned by the directory's owner, that group and others cannot write.
A directory another user made (in a shared ``/tmp``, say) is refused, so no
journal is created (503) and nothing in it is replayed; one of ours that group
or others could open is tightened to 0700 when a journal is created in it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import json.encoder
import logging
import os
import stat
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

from ._model import Action, AuditEvent, AuthEntry, Outcome, Usage
from .storage import TokenStore

try:
    import fcntl
except ImportError:  # Windows: no flock, so no way to tell a dead journal from a live one
    SUPPORTED = False
else:
    SUPPORTED = True

__all__ = [
    "SUFFIX",
    "SUPPORTED",
    "FilePositions",
    "Journal",
    "Mark",
    "Positions",
    "decode",
    "distrust",
    "encode",
    "replay",
]

log = logging.getLogger("apitokens")

SUFFIX = ".jnl"
# A journal that grows past this is replaced by a new one once its records are written.
ROTATE_BYTES = 16 * 1024 * 1024
# Records replayed per store transaction.
REPLAY_BATCH = 5_000

# Mode bits that let someone other than the owner write (directory or file).
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
# Messages already logged: a refused directory or file is looked at every minute.
_warned: set[str] = set()

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _refuse(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not a journal value")


# One line per record: a flat list of str, int, bool and None, nothing else.
_encode = json.JSONEncoder(separators=(",", ":"), default=_refuse).encode


Mark = tuple[str, int, int | None]
"""``(journal name, events position, usage position or None)``: how far a transaction
writes a journal's records (byte offsets: every record that starts before them)."""


@runtime_checkable
class Positions(Protocol):
    """Where a store keeps how far each journal has been written (SQLiteStore does)."""

    def journal_positions(self) -> dict[str, tuple[int, int]]:
        """Every journal's ``(events, usage)`` positions, by name."""

    def forget_journals(self, names: Sequence[str]) -> None:
        """Drop the positions of journals that no longer exist."""

    def write_journaled(
        self,
        events: Sequence[AuditEvent | AuthEntry],
        usage: Sequence[Usage],
        marks: Sequence[Mark],
    ) -> None:
        """``write(events=..., usage=...)`` and the marks, in one transaction."""


def encode(records: Sequence[object]) -> bytes:
    """The journal lines of ``records`` (events, entries and usages; others are skipped)."""
    lines: list[str] = []
    for record in records:
        if record.__class__ is AuthEntry:
            at, outcome, token_id, user, ip, method, path, reason, used = record
            line = ["a", (at - _EPOCH) // _MICROSECOND, outcome, token_id, user, ip, method,
                    path, reason, used]  # fmt: skip
        elif isinstance(record, AuditEvent):
            line = ["e", (record.at - _EPOCH) // _MICROSECOND, record.action, record.outcome,
                    record.token_id, record.user, record.actor, record.client_ip,
                    record.method, record.path, record.reason]  # fmt: skip
        elif isinstance(record, Usage):
            line = ["u", record.token_id, (record.at - _EPOCH) // _MICROSECOND, record.ip,
                    record.count]  # fmt: skip
        elif isinstance(record, tuple):  # not an AuthEntry: refused, never silently left out
            raise TypeError(f"{type(record).__name__} is not a journal record")
        else:
            continue  # a re-hash: hashes never go to the journal
        lines.append(_encode(line))
    return ("\n".join(lines) + "\n").encode() if lines else b""


def decode(line: bytes) -> AuditEvent | AuthEntry | Usage:
    """The record of one journal line.

    Raises:
        ValueError: not a line :func:`encode` wrote.
    """
    item = json.loads(line)
    kind = item[0]
    if kind == "a":
        _, micros, outcome, token_id, user, ip, method, path, reason, used = item
        at = _EPOCH + timedelta(microseconds=micros)
        return AuthEntry(at, Outcome(outcome), token_id, user, ip, method, path, reason, bool(used))
    if kind == "e":
        _, micros, action, outcome, token_id, user, actor, ip, method, path, reason = item
        return AuditEvent(
            _EPOCH + timedelta(microseconds=micros), Action(action), Outcome(outcome),
            token_id, user, actor, ip, method, path, reason,
        )  # fmt: skip
    if kind == "u":
        _, token_id, micros, ip, count = item
        return Usage(token_id, _EPOCH + timedelta(microseconds=micros), ip, int(count))
    raise ValueError(f"unknown journal record kind {kind!r}")


class Journal:
    """This process's journal file, open for appending and locked while it lives.

    The lock is an ``flock`` on the file: the kernel drops it when the owner
    dies, however it dies, which is how another process tells a dead journal
    from a live one. Not thread-safe: the writer appends under its own lock.
    """

    def __init__(self, directory: Path, name: str, fd: int) -> None:
        self.directory = directory
        self.name = name
        self.path = directory / name
        self.fd = fd
        self.size = 0
        # A write that failed part-way left a line without its end: the next one starts
        # on a line of its own, so only the torn record is unreadable.
        self._torn = False

    @classmethod
    def create(cls, directory: Path) -> Journal:
        """Open a new journal in ``directory`` (made if missing, mode 0700).

        An existing directory must be one :func:`distrust` accepts, except that
        one of ours that group or others can open or write is set to 0700.

        Raises:
            OSError: the directory or the file cannot be made, or the directory
                is not trusted (the message names it and says why).
        """
        for attempt in range(3):
            name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}{SUFFIX}"
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                dir_fd = _open_directory(directory)
                try:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
                    # In the directory just checked, not whatever the path names by now.
                    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
                finally:
                    os.close(dir_fd)
            except FileNotFoundError:  # another process removed the empty directory
                if attempt == 2:
                    raise
                continue
            # Between the open and the lock the file is unlocked: a replayer may take it for
            # a dead process's (empty) journal, lock it and unlink it. Never wait for that
            # lock, and never keep a file no replayer can find: try again with a new name.
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if os.fstat(fd).st_nlink == 0:
                os.close(fd)
                continue
            return cls(directory, name, fd)
        raise OSError(f"could not create and lock a journal in {str(directory)!r}")

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r}, size={self.size})"

    def append(self, data: bytes) -> None:
        """Append ``data`` (whole lines) with one ``write(2)``.

        Raises:
            OSError: the write failed or was short (disk full, file too large);
                the journal is then as it was, or ends in a torn line that
                replay skips.
        """
        if self._torn:
            data = b"\n" + data
        try:
            written = os.write(self.fd, data)
        except OSError:
            self._torn_write(0)
            raise
        if written != len(data):
            self._torn_write(written)
            raise OSError(f"journal write was short ({written} of {len(data)} bytes)")
        self._torn = False
        self.size += written

    def _torn_write(self, written: int) -> None:
        if written == 0:
            return
        try:
            os.ftruncate(self.fd, self.size)  # back to the last whole line
        except OSError:
            self.size += written
            self._torn = True

    def remove(self) -> None:
        """Delete the file (everything in it is written) and close it."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.close()
        with contextlib.suppress(OSError):
            self.directory.rmdir()  # only when empty: other processes' journals stay

    def close(self) -> None:
        """Close the file, keeping it (and its records) for a later replay."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def abandon(self) -> None:
        """In a forked child: drop the parent's file without touching its lock.

        ``flock`` locks belong to the open file, shared with the parent: closing
        our copy keeps the parent's lock (an unlock would drop it).
        """
        self.close()


def _refused(directory: Path, reason: str) -> OSError:
    return OSError(errno.EPERM, f"the journal directory {str(directory)!r} is refused: {reason}")


def _open_directory(directory: Path) -> int:
    """An fd of ``directory`` once it is trusted, after setting one of ours to 0700 if needed.

    Raises:
        OSError: it is not trusted, or cannot be opened.
    """
    before = os.lstat(directory)
    reason = distrust(directory, before, mode=False)
    if reason is not None:
        raise _refused(directory, reason)
    # O_NOFOLLOW: the directory examined, not a symbolic link put there since.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        found = os.fstat(fd)
        if (found.st_dev, found.st_ino) != (before.st_dev, before.st_ino):
            raise _refused(directory, "it was replaced while being checked")
        mode = stat.S_IMODE(found.st_mode)
        if mode & 0o077:
            os.fchmod(fd, 0o700)
            _warn(
                f"apitokens: the journal directory {str(directory)!r} was open to group or"
                f" others (mode {mode:04o}); set to 0700"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def distrust(
    directory: Path, found: os.stat_result | None = None, *, mode: bool = True
) -> str | None:
    """Why ``directory`` is not to be trusted as a journal directory, or ``None`` if it is.

    Trusted: a real directory (``os.lstat``: not a symbolic link) owned by this
    process's effective user, or, when that is root, by the owner of the
    directory it is in (root may replay a service's journals; a directory
    another user made in root's ``/tmp`` is still refused), and not writable by
    group or others.

    Args:
        directory: the journal directory (it must exist).
        found: its ``os.lstat``, if already taken.
        mode: also check the mode (``False``: owner and type only).

    Raises:
        OSError: it cannot be examined (missing, say).
    """
    if found is None:
        found = os.lstat(directory)
    if stat.S_ISLNK(found.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(found.st_mode):
        return "it is not a directory"
    euid = os.geteuid()
    if found.st_uid != euid:
        if euid != 0:
            return f"it is owned by uid {found.st_uid}, not by this process's uid {euid}"
        try:
            # ".." of the directory itself (not a symbolic link): the one it is in.
            parent = os.stat(directory / os.pardir).st_uid
        except OSError as exc:
            return f"the directory it is in cannot be examined ({exc.strerror})"
        if found.st_uid != parent:
            return (
                f"it is owned by uid {found.st_uid}, neither root nor the owner of the"
                f" directory it is in (uid {parent})"
            )
    if mode and found.st_mode & _OTHERS_WRITE:
        return f"group or others can write it (mode {stat.S_IMODE(found.st_mode):04o})"
    return None


def _distrust_file(found: os.stat_result, owner: int) -> str | None:
    """Why a journal file (``found``: its ``os.lstat``) is not to be replayed, or ``None``."""
    if stat.S_ISLNK(found.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISREG(found.st_mode):
        return "it is not a regular file"
    # Root's own files too: root replaying a service's directory may have written there.
    if found.st_uid not in (owner, os.geteuid()):
        return f"it is owned by uid {found.st_uid}, not by the directory's owner (uid {owner})"
    if found.st_mode & _OTHERS_WRITE:
        return f"group or others can write it (mode {stat.S_IMODE(found.st_mode):04o})"
    return None


def _warn(message: str) -> None:
    """Log ``message`` once per process (replay looks again every minute)."""
    if message not in _warned:
        if len(_warned) < 1_000:
            _warned.add(message)
        log.warning("%s", message)


def _dead(path: Path, found: os.stat_result) -> int | None:
    """An fd holding the lock of a journal whose owner is gone, else ``None``.

    ``found`` is the file's ``os.lstat``: the file opened must be that one.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (found.st_dev, found.st_ino):
            os.close(fd)
            return None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Unlinked by the one who replayed it just before we got the lock: done.
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)
            return None
    except OSError:
        os.close(fd)
        return None
    return fd


def _lines(fd: int, start: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` of every whole line from ``start``; a torn last line is skipped."""
    with os.fdopen(os.dup(fd), "rb") as file:
        file.seek(start)
        offset = start
        for line in file:
            if not line.endswith(b"\n"):
                log.warning("apitokens: a journal ends in a torn record; skipped")
                return
            yield offset, line
            offset += len(line)


def replay(directory: Path, store: Positions, *, own: Sequence[str] = ()) -> int:
    """Write into ``store`` the records of every journal in ``directory`` whose owner is gone.

    Each journal is replayed from the positions the store recorded for it, in
    transactions that move those positions with the rows, and then deleted.
    A directory :func:`distrust` refuses is not read at all, and a file that is
    not a regular file owned by the directory's owner and closed to writes by
    group and others is skipped and kept; each is logged once, with why.

    Returns:
        How many records were replayed.

    Raises:
        StorageError: the store failed (what was replayed stays replayed).
    """
    try:
        found: os.stat_result | None = os.lstat(directory)
    except FileNotFoundError:
        found = None
    if found is not None:
        reason = distrust(directory, found)
        if reason is not None:
            _warn(f"apitokens: the audit journals in {str(directory)!r} are not replayed: {reason}")
            return 0
    positions = store.journal_positions()  # before listing: see _forget_gone
    try:
        # Missing when examined: nothing to list (not a directory made since, unchecked).
        names = [p.name for p in directory.iterdir() if p.name.endswith(SUFFIX)] if found else []
    except FileNotFoundError:
        names = []
    gone = [name for name in positions if name not in names and name not in own]
    if gone:
        store.forget_journals(gone)
    total = 0
    for name in names:
        if name in own:
            continue
        assert found is not None
        path = directory / name
        try:
            file = os.lstat(path)
        except FileNotFoundError:  # replayed and deleted by another process just now
            continue
        reason = _distrust_file(file, found.st_uid)
        if reason is not None:
            _warn(f"apitokens: the audit journal {str(path)!r} is not replayed: {reason}")
            continue
        fd = _dead(path, file)
        if fd is None:
            continue
        try:
            events_pos, usage_pos = store.journal_positions().get(name, (0, 0))
            total += _replay_one(fd, name, events_pos, usage_pos, store)
            # Unlinked while we hold the lock, before its positions are dropped: a
            # replayer that opened it already sees it gone (st_nlink) and skips it.
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
        finally:
            os.close(fd)
        store.forget_journals([name])
    return total


def _replay_one(fd: int, name: str, events_pos: int, usage_pos: int, store: Positions) -> int:
    events: list[AuditEvent | AuthEntry] = []
    usage: list[Usage] = []
    count = 0
    end = start = min(events_pos, usage_pos)
    replayed = 0
    for offset, line in _lines(fd, start):
        end = offset + len(line)
        try:
            record = decode(line)
        except (ValueError, TypeError, IndexError, KeyError, OverflowError):
            log.warning("apitokens: unreadable record in journal %s at %d; skipped", name, offset)
            continue
        if isinstance(record, Usage):
            if offset >= usage_pos:
                usage.append(record)
        else:
            if offset >= events_pos:
                events.append(record)
                replayed += 1
            if (
                isinstance(record, AuthEntry)
                and record.used
                and record.token_id is not None
                and offset >= usage_pos
            ):
                usage.append(Usage(record.token_id, record.at, record.client_ip))
        count += 1
        if count >= REPLAY_BATCH:
            store.write_journaled(events, usage, [(name, end, end)])
            events, usage, count = [], [], 0
    if events or usage or end > start:
        store.write_journaled(events, usage, [(name, end, end)])
    if replayed:
        log.warning("apitokens: replayed %d audit events from journal %s", replayed, name)
    return replayed


class FilePositions:
    """:class:`Positions` in small files beside the journals, for any :class:`TokenStore`.

    For a store that cannot record positions in its own transactions: a position is
    written just after the store's transaction, so a process killed between the
    two has that one batch replayed again (at least once, not exactly once).
    """

    def __init__(self, store: TokenStore, directory: Path) -> None:
        self.store = store
        self.directory = directory

    def journal_positions(self) -> dict[str, tuple[int, int]]:
        """See :meth:`Positions.journal_positions`."""
        found: dict[str, tuple[int, int]] = {}
        try:
            paths = list(self.directory.glob(f"*{SUFFIX}.pos"))
        except OSError:
            return found
        for path in paths:
            try:
                events, usage = path.read_text().split()
                found[path.name.removesuffix(".pos")] = (int(events), int(usage))
            except (OSError, ValueError):
                continue
        return found

    def forget_journals(self, names: Sequence[str]) -> None:
        """See :meth:`Positions.forget_journals`."""
        for name in names:
            with contextlib.suppress(OSError):
                (self.directory / f"{name}.pos").unlink()

    def write_journaled(
        self,
        events: Sequence[AuditEvent | AuthEntry],
        usage: Sequence[Usage],
        marks: Sequence[Mark],
    ) -> None:
        """See :meth:`Positions.write_journaled` (here: one after the other)."""
        if events or usage:
            self.store.write(events=[_event(e) for e in events], usage=usage)
        known = self.journal_positions() if any(m[2] is None for m in marks) else {}
        for name, events_pos, usage_pos in marks:
            if usage_pos is None:
                usage_pos = known.get(name, (0, 0))[1]
            path = self.directory / f"{name}.pos"
            temporary = path.with_suffix(".tmp")
            # 0600, as the journals are: only the process's user reads the directory.
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(f"{events_pos} {usage_pos}\n")
            os.replace(temporary, path)


def _event(record: AuditEvent | AuthEntry) -> AuditEvent:
    if isinstance(record, AuditEvent):
        return record
    at, outcome, token_id, user, ip, method, path, reason, _ = record
    return AuditEvent(at, Action.AUTHENTICATE, outcome, token_id, user, None, ip, method, path,
                      reason)  # fmt: skip
