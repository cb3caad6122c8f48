"""``python manage.py apitokens ...``: the ``apitokens`` command on the project's instance."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apitokens.cli import run_on
from apitokens.django._project import get_tokens

# manage.py applies these anywhere on its command line before it runs a command (and
# leaves them in argv): they are Django's, not the apitokens command's.
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


def _without_django_options(argv: list[str]) -> list[str]:
    """``argv`` less ``--settings``/``--pythonpath`` (``--x=V`` or ``--x V``) before ``--``."""
    kept: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg == "--":
            kept.append(arg)
            kept.extend(rest)
        elif arg in _DJANGO_OPTIONS:
            next(rest, None)  # its value
        elif not arg.startswith(tuple(f"{option}=" for option in _DJANGO_OPTIONS)):
            kept.append(arg)
    return kept


class Command(BaseCommand):
    """The ``apitokens`` command's subcommands, on ``settings.APITOKENS``'s store and policy.

    Everything after ``apitokens`` goes to the command as it is
    (``manage.py apitokens create --name ci``, ``manage.py apitokens --help``);
    its exit status is the command's.
    """

    help = "Manage API tokens: the apitokens command on this project's ApiTokens."

    def run_from_argv(self, argv: list[str]) -> None:
        # Django's own parser would take --help, --version and the like for itself.
        code = self._run(_without_django_options(argv[2:]), sys.stdout, sys.stderr)
        if code:
            raise SystemExit(code)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER)

    def handle(self, *args: str, **options: Any) -> None:
        # call_command("apitokens", "list", stdout=...): Django's wrappers hold the streams.
        out = getattr(self.stdout, "_out", sys.stdout)
        err = getattr(self.stderr, "_out", sys.stderr)
        code = self._run(list(args), out, err)
        if code:
            raise CommandError(f"apitokens exited with status {code}", returncode=code)

    @staticmethod
    def _run(argv: list[str], out: Any, err: Any) -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return run_on(get_tokens(), argv)
