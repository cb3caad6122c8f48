"""The ``apitokens`` command: manage tokens and read the audit log from the shell.

    apitokens --db tokens.db create --name "CI report" --expires-in 30d
    apitokens list --status active
    apitokens rule check '[GET].*/rest/.*' POST /rest/api/2/issue

The command acts as the admin who runs it: it opens ``--db`` (a SQLite path or any
URL :func:`apitokens.open_store` takes but an in-memory one; default ``$APITOKENS_DB``,
else ``./apitokens.db``; only ``create`` makes a missing SQLite file or apitokens'
tables in a PostgreSQL database) with a policy that makes the acting user
(``--actor``, default the login name) a token admin.
Exit status: 0 success, 1 ``rule check`` found no match, 2 a user error (one
line on stderr, ``apitokens: error: ...``, never a traceback).
See ``docs/cli.md`` for the reference.

The package, by concern: ``_parser`` (the command line), ``_commands`` (one
function per subcommand), ``_values`` (durations, dates, scopes, ids given as
options), ``_output`` (safe text, tables, JSON); this module opens the
database as the admin who runs the command and turns every error into one line
and an exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from apitokens import ApiTokens, ApiTokensError, Policy, RuleSyntaxError, TokenStore
from apitokens._journal import SUPPORTED as JOURNALS_SUPPORTED
from apitokens._journal import FilePositions, Positions, distrust, replay
from apitokens.storage._open import Location, locate, open_location, postgres_schema_version

from ._commands import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Command,
    CommandError,
    Session,
    create,
)
from ._output import one_line, warn
from ._parser import DEFAULT_DB, build_parser

__all__ = ["ADMIN_GROUP", "build_parser", "main", "run_on"]

ADMIN_GROUP = "apitokens-cli"
"""The group the command puts every user in, and makes the token admins."""
_QUIET = logging.NullHandler()


def _actor(args: argparse.Namespace) -> str:
    actor: str | None = args.actor
    if actor is None:
        try:
            actor = getpass.getuser()
        except Exception:  # KeyError, OSError: no login name in this environment
            raise CommandError("cannot tell who you are; pass --actor NAME") from None
    if not actor.strip():
        raise CommandError("--actor must not be empty")
    return actor


def _location(args: argparse.Namespace) -> Location:
    location = locate(args.db or os.environ.get("APITOKENS_DB") or DEFAULT_DB)
    if location.in_memory:
        # Every command would work on a store that is gone when it exits: `create` would
        # print a token no service can ever check.
        raise CommandError(
            f"database {location.shown!r} is in memory and keeps nothing after the command"
            " exits; give a SQLite path or a postgresql:// URL"
        )
    if location.kind == "sqlite":
        path = Path(location.target)
        if path.is_dir():
            raise CommandError(f"database {location.shown!r} is a directory, not a file")
        if not path.parent.is_dir():
            raise CommandError(
                f"database {location.shown!r}: directory {str(path.parent)!r} does not exist"
            )
    return location


def _open(location: Location, command: Command) -> TokenStore:
    """Open the store; a new SQLite file or apitokens' PostgreSQL tables only for ``create``.

    Only ``create`` makes a database: ``list`` or ``audit`` on a mistyped path or
    database (or with APITOKENS_DB unset in this shell) would print "nothing" from an
    empty new one, and on PostgreSQL would leave apitokens' tables in a database that
    was never meant for them.
    """
    try:
        if location.kind == "sqlite" and not Path(location.target).exists():
            if command is not create:
                raise CommandError(
                    f"no database at {location.shown!r} (check --db or APITOKENS_DB;"
                    " `apitokens create` makes a new one)"
                )
            store = open_location(location)
            warn(f"created a new database {location.shown!r}")
            return store
        # PostgresStore creates its tables on opening: look first, over a connection of
        # our own, whether they are there.
        if location.kind == "postgres" and postgres_schema_version(location) == 0:
            if command is not create:
                raise CommandError(
                    f"no apitokens tables in PostgreSQL database {location.shown!r} (check"
                    " --db or APITOKENS_DB; `apitokens create` makes them)"
                )
            store = open_location(location)
            warn(f"created the apitokens tables in PostgreSQL database {location.shown!r}")
            return store
        return open_location(location)
    except ImportError as exc:  # the postgres extra is not installed: the message says so
        raise CommandError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    offline: Callable[[argparse.Namespace], int] | None = getattr(args, "offline", None)
    if offline is not None:
        return offline(args)
    command: Command = args.command
    prefix = args.prefix or os.environ.get("APITOKENS_PREFIX") or "apt"
    policy = Policy(
        token_admins=frozenset({ADMIN_GROUP}), allow_unbound_tokens=True, token_prefix=prefix
    )
    actor = _actor(args)
    store = _open(_location(args), command)
    try:
        # No journal: the command writes its few records before it exits, and a journal
        # directory made by an admin's shell (root, say) could be one the service's own
        # user cannot write, which would refuse every token request with 503.
        tokens = ApiTokens(store, policy=policy, groups=lambda _user: {ADMIN_GROUP}, journal=False)
        _replay_dead_journals(store)
        try:
            return command(Session(tokens, actor), args)
        finally:
            tokens.close()
    finally:
        store.close()


def _replay_dead_journals(store: TokenStore) -> None:
    """Write what dead service processes journaled, so `audit` and `show` see every use.

    Only for a store with a journal directory (a SQLite file), only journals whose
    process is gone (their lock is free) and that this user can open; a live
    service's own are left to it.
    """
    directory: Path | None = getattr(store, "journal_directory", None)
    if not JOURNALS_SUPPORTED or directory is None or not directory.is_dir():
        return
    try:
        # Said here: the library's own log lines do not reach the command's stderr.
        refused = distrust(directory)
        if refused is not None:
            warn(f"not replaying the audit journals in {str(directory)!r}: {refused}")
            return
        # Where the positions are, as ApiTokens keeps them for this store.
        positions = store if isinstance(store, Positions) else FilePositions(store, directory)
        replayed = replay(directory, positions)
    except Exception as exc:  # the command's own work goes on; the service replays later
        warn(f"could not replay the audit journals in {str(directory)!r}: {one_line(str(exc))}")
        return
    if replayed:
        warn(f"replayed {replayed} audit events from the journals of stopped processes")
    with contextlib.suppress(OSError):
        directory.rmdir()  # only when empty: a live process's journal keeps it


def _message(exc: Exception) -> str:
    if isinstance(exc, RuleSyntaxError):
        return f"invalid rule '{one_line(exc.rule)}': column {exc.column}: {one_line(exc.reason)}"
    return one_line(exc) or type(exc).__name__


def _tolerant_streams() -> None:
    # A name or path that the terminal's encoding cannot show must not crash the command.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    return _main(argv, _run, build_parser())


def run_on(
    tokens: ApiTokens | Callable[[], ApiTokens], argv: Sequence[str], *, prog: str = "apitokens"
) -> int:
    """Run the command's subcommands on an application's own ``ApiTokens``; the exit status.

    What ``python manage.py apitokens ...`` runs: the same subcommands, options and
    output as the ``apitokens`` command, on ``tokens``' store, hasher and policy, with
    the acting user (``--actor``, default the login name) a token admin, as the
    command makes them, and every other user in the groups ``tokens`` gives them.
    ``--db`` and ``--prefix`` are refused: ``tokens`` names both. The command sees
    what ``tokens`` has recorded (it is flushed first), and what the command
    changed shows at once in ``tokens`` (its cached records are dropped).

    Args:
        tokens: the application's instance, or a function that returns it, called
            only when a subcommand needs it (not for ``--help`` or ``rule check``);
            a ``ValueError`` it raises is a user error (one line, exit status 2).
        argv: the arguments, without the program's name.
        prog: the program's name in usage lines and errors (``manage.py apitokens``).
    """
    return _main(
        argv,
        lambda args: _run_on(tokens, args),
        build_parser(prog, store_options=False),
    )


def _run_on(given: ApiTokens | Callable[[], ApiTokens], args: argparse.Namespace) -> int:
    offline: Callable[[argparse.Namespace], int] | None = getattr(args, "offline", None)
    if offline is not None:
        return offline(args)
    if args.db or args.prefix:
        raise CommandError("--db and --prefix are the application's here (its ApiTokens)")
    actor = _actor(args)
    tokens = given if isinstance(given, ApiTokens) else given()
    # What the application's instance answered in this process (call_command, a shell)
    # is in the store before the command reads it: `audit`, the usage `list` shows.
    tokens.flush()
    their_groups = tokens._manager.groups

    def groups(user: str) -> set[str]:
        # The actor is a token admin; owners keep the application's groups, so its
        # token_users still decides who may hold a token.
        if user != actor:
            return set(their_groups(user))
        found = {ADMIN_GROUP}
        # The login name running the command is seldom one of the application's users.
        with contextlib.suppress(Exception):
            found |= their_groups(user)
        return found

    policy = replace(tokens.policy, token_admins=tokens.policy.token_admins | {ADMIN_GROUP})
    admin = ApiTokens(
        tokens._store,
        policy=policy,
        groups=groups,
        hasher=tokens._verifier.hashers,
        journal=False,  # as the command: its few records are written before it returns
    )
    command: Command = args.command
    try:
        return command(Session(admin, actor), args)
    finally:
        admin.close()
        # A store without a change feed (SQLite) tells no other instance of a revocation:
        # in this process (call_command, a shell) the application's sees it at once.
        tokens._authenticator.changed(None)


def _main(
    argv: Sequence[str] | None,
    run: Callable[[argparse.Namespace], int],
    parser: argparse.ArgumentParser,
) -> int:
    _tolerant_streams()
    # The command reports what it did itself; the library's log records (audit
    # events, the prune notice) are for applications' log pipelines, not stderr.
    logging.getLogger("apitokens").addHandler(_QUIET)  # once: adding it again is a no-op
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        return EXIT_USAGE
    try:
        return run(args)
    except (ApiTokensError, CommandError, ValueError) as exc:
        print(f"apitokens: error: {_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`apitokens list | head`): stop quietly, and keep
        # the interpreter from complaining while it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
