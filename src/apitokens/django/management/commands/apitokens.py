"""``python manage.py apitokens ...``: the ``apitokens`` command on the project's instance."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from apitokens._api import ApiTokens
from apitokens.cli import run_on
from apitokens.django._project import get_tokens

# What Django's own launcher reads from anywhere on the line before the command runs.
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


class Command(BaseCommand):
    """The ``apitokens`` command's subcommands, on ``settings.APITOKENS``'s store and policy.

    Everything after ``apitokens`` goes to the command as it is
    (``manage.py apitokens create --name ci``, ``manage.py apitokens --help``);
    its exit status is the command's. From ``call_command`` a status other than
    0 is a ``CommandError`` whose ``returncode`` is that status.
    """

    help = "Manage API tokens: the apitokens command on this project's ApiTokens."

    def run_from_argv(self, argv: list[str]) -> None:
        # Django's own parser would take --help, --version and the like for itself.
        code = _run(_without_django_options(argv[2:]), sys.stdout, sys.stderr, _prog(argv))
        if code:
            raise SystemExit(code)

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> Any:
        """A parser that hands every argument on as given (``call_command`` parses with it)."""
        parser = _PassOn(prog=_prog([prog_name or "manage.py", subcommand]), add_help=False)
        # Keywords call_command may be given, as for any command (never parsed from args).
        for option in ("verbosity", "no_color", "force_color", "skip_checks"):
            parser.add_argument(f"--{option}", help=argparse.SUPPRESS)
        return parser

    def print_help(self, prog_name: str, subcommand: str) -> None:
        """``manage.py help apitokens``: the command's own help."""
        _run(["--help"], sys.stdout, sys.stderr, _prog([prog_name, subcommand]))

    def handle(self, *args: str, **options: Any) -> None:
        # call_command("apitokens", "list", stdout=...): Django's wrappers hold the streams.
        out = getattr(self.stdout, "_out", sys.stdout)
        err = getattr(self.stderr, "_out", sys.stderr)
        code = _run(list(args), out, err, "manage.py apitokens")
        if code:
            raise CommandError(f"apitokens exited with status {code}", returncode=code)


class _PassOn(argparse.ArgumentParser):
    """Takes the arguments as they are, for the ``apitokens`` command's own parser."""

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> argparse.Namespace:
        # Every option BaseCommand.execute reads, at its default.
        return argparse.Namespace(
            args=list(args or ()),
            verbosity=1,
            no_color=False,
            force_color=False,
            skip_checks=True,
        )


def _run(argv: list[str], out: Any, err: Any, prog: str) -> int:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        return run_on(_project_tokens, argv, prog=prog)


def _prog(argv: Sequence[str]) -> str:
    """``manage.py apitokens``, ``django-admin apitokens``, as Django names its programs."""
    program = os.path.basename(argv[0])
    return f"{'python -m django' if program == '__main__.py' else program} {argv[1]}"


def _project_tokens() -> ApiTokens:
    try:
        return get_tokens()
    except ImproperlyConfigured as exc:
        # A user error of the command: one line, exit status 2.
        raise ValueError(str(exc).removeprefix("apitokens: ")) from None


def _without_django_options(argv: list[str]) -> list[str]:
    """``argv`` without ``--settings``/``--pythonpath`` (Django's launcher has used them)."""
    kept: list[str] = []
    words = iter(argv)
    for word in words:
        if word in _DJANGO_OPTIONS:
            next(words, None)
        elif not word.startswith(tuple(option + "=" for option in _DJANGO_OPTIONS)):
            kept.append(word)
    return kept
