"""Only a journal directory and journal files nobody else can have written are used or replayed.

What is replayed becomes audit rows and token usage, so a directory or file another
user could write (a directory pre-made in a shared /tmp, a forged ``.jnl``) must not be.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from apitokens import ApiTokens, SQLiteStore
from apitokens._journal import Journal, encode, replay
from apitokens.cli import main
from tests.support import CHEAP_HASHER, bearer, get

from .test_journal import entry

NOBODY = 65534
as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="giving a file to another uid (os.chown) needs root"
)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def dead_journal(directory: Path, *paths: str) -> Path:
    """A journal in ``directory`` whose process is gone, holding one record per path."""
    journal = Journal.create(directory)
    records = [entry(i)._replace(path=path) for i, path in enumerate(paths)]
    journal.append(encode(records))
    journal.close()
    return journal.path


def paths(store: SQLiteStore) -> list[str]:
    return sorted(e.path for e in store.events(limit=100) if e.path)


def test_our_open_directory_is_set_to_0700_and_used(tmp_path: Path) -> None:
    directory = tmp_path / "journals"
    directory.mkdir()
    directory.chmod(0o777)  # made by an earlier run with umask 0, or by hand
    journal = dead_journal(directory, "/ours")
    assert mode(directory) == 0o700
    assert mode(journal) == 0o600
    with SQLiteStore(tmp_path / "t.db") as store:
        assert replay(directory, store) == 1
        assert paths(store) == ["/ours"]
    assert not journal.exists()


@as_root
def test_a_directory_another_user_made_is_refused_and_not_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "t.db"
    with ApiTokens(SQLiteStore(db), hasher=CHEAP_HASHER, journal=False) as tokens:
        secret = tokens.create(actor="alice", name="x").secret
    # Another user pre-makes the directory (their own, open to all) and a forged journal.
    directory = tmp_path / "t.db.apitokens-journal"
    directory.mkdir(mode=0o777)
    forged = dead_journal(directory, "/forged")
    for path in (directory, forged):
        os.chown(path, NOBODY, NOBODY)
    directory.chmod(0o777)
    with pytest.raises(OSError, match=rf"{directory}.*owned by uid {NOBODY}"):
        Journal.create(directory)
    with SQLiteStore(db) as store:
        assert replay(directory, store) == 0
        assert paths(store) == []
    assert forged.exists()  # others' files are never deleted
    assert any("not replayed" in r.getMessage() and str(directory) in r.getMessage()
               for r in caplog.records)  # fmt: skip

    # A service on it: no journal, so every token request is refused (503), and the
    # cause is logged once, naming the directory and why.
    caplog.clear()
    with (
        caplog.at_level(logging.ERROR, "apitokens"),
        ApiTokens(SQLiteStore(db), hasher=CHEAP_HASHER) as tokens,
    ):
        for _ in range(3):
            assert tokens.authenticate(get("/rest/x", bearer(secret))).status_code == 503
        tokens.flush(timeout=10)
        assert "/forged" not in [e.path for e in tokens.audit()]
    # (Each 503 also logs its own line, whatever the cause: _api.py.)
    cause = "apitokens: cannot create the audit journal: "
    errors = [r.getMessage() for r in caplog.records if r.getMessage().startswith(cause)]
    assert len(errors) == 1, errors
    assert str(directory) in errors[0] and f"owned by uid {NOBODY}" in errors[0]
    assert forged.exists() and os.lstat(directory).st_uid == NOBODY  # left as found


@as_root
def test_root_replays_a_services_journals(tmp_path: Path) -> None:
    """The directory belongs to the owner of the one it is in: the service's, for root."""
    service = tmp_path / "service"
    service.mkdir()
    directory = service / "t.db.apitokens-journal"
    journal = dead_journal(directory, "/service")
    for path in (service, directory, journal):
        os.chown(path, NOBODY, NOBODY)
    with SQLiteStore(tmp_path / "t.db") as store:
        assert replay(directory, store) == 1
        assert paths(store) == ["/service"]
    assert not journal.exists()


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    journal = dead_journal(real, "/via-link")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(OSError, match="symbolic link"):
        Journal.create(link)
    with SQLiteStore(tmp_path / "t.db") as store:
        assert replay(link, store) == 0
        assert paths(store) == []
    assert journal.exists()


def test_forged_files_are_skipped_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "journals"
    good = dead_journal(directory, "/good")
    elsewhere = dead_journal(tmp_path / "elsewhere", "/through-a-link")
    writable = dead_journal(directory, "/writable")
    writable.chmod(0o666)
    link = directory / "99999-link.jnl"
    link.symlink_to(elsewhere)
    fifo = directory / "99999-fifo.jnl"
    os.mkfifo(fifo, 0o600)  # opened and read, it would block the writer thread for good
    forged = [writable, link, fifo]
    if os.geteuid() == 0:
        foreign = dead_journal(directory, "/foreign")
        os.chown(foreign, NOBODY, NOBODY)
        forged.append(foreign)
    with SQLiteStore(tmp_path / "t.db") as store:
        assert replay(directory, store) == 1
        assert paths(store) == ["/good"]
        assert replay(directory, store) == 0  # looked at again: still skipped
    assert not good.exists()
    assert all(os.path.lexists(path) for path in forged) and elsewhere.exists()
    messages = [r.getMessage() for r in caplog.records if "is not replayed" in r.getMessage()]
    assert len(messages) == len(forged)  # one line each, not one per look
    for path, why in [(writable, "mode 0666"), (link, "symbolic link"), (fifo, "not a regular")]:
        assert any(str(path) in m and why in m for m in messages), (path, messages)


def test_a_directory_others_can_write_is_not_replayed(tmp_path: Path) -> None:
    directory = tmp_path / "journals"
    journal = dead_journal(directory, "/open")
    directory.chmod(0o733)
    with SQLiteStore(tmp_path / "t.db") as store:
        assert replay(directory, store) == 0
    assert journal.exists()


def test_the_command_says_it_does_not_replay_a_refused_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "t.db"
    with ApiTokens(SQLiteStore(db), hasher=CHEAP_HASHER, journal=False) as tokens:
        tokens.create(actor="alice", name="x")
    directory = tmp_path / "t.db.apitokens-journal"
    journal = dead_journal(directory, "/open")
    directory.chmod(0o777)
    assert main(["--db", str(db), "--actor", "admin", "audit", "--json"]) == 0
    err = capsys.readouterr().err
    assert f"not replaying the audit journals in {str(directory)!r}" in err, err
    assert "group or others can write it (mode 0777)" in err, err
    assert journal.exists()
