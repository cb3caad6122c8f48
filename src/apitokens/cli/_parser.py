"""The ``apitokens`` command line: every subcommand and option, parsed by argparse.

Usage errors are one line on stderr (``apitokens: error: ...``, exit 2), like
every other user error of the command.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from apitokens import Action, Outcome, Scope, TokenStatus, __version__
from apitokens._snippets import LANGUAGES

from ._commands import (
    EXIT_USAGE,
    Command,
    audit,
    create,
    edit,
    expiring,
    list_tokens,
    notify_expiring,
    prune_audit,
    reveal,
    revoke,
    revoke_unused,
    rotate,
    rule_check,
    show,
    snippet,
)
from ._output import one_line
from ._values import (
    DURATION_HELP,
    MOMENT_HELP,
    RATE_HELP,
    parse_credits,
    parse_datetime,
    parse_duration,
    parse_moment,
    parse_network,
    parse_rate_text,
    parse_scope,
    parse_url,
)

__all__ = ["DEFAULT_DB", "build_parser"]

DEFAULT_DB = "apitokens.db"
DEFAULT_URL = "https://example.com/rest/"
EDIT_DESCRIPTION = (
    "Change a standard-mode token's name, restriction rules, allowed addresses, "
    "expiry or limits; only the options given change, and the next request sees the change. "
    "Secure-mode and revoked tokens cannot be edited: rotate or revoke them instead."
)

NOTIFY_DESCRIPTION = (
    "For a cron job: run CMD through the shell once per token and threshold, ever, for "
    "the active tokens whose expiry is within a threshold (only the tightest one when "
    "several are crossed at once; a new expiry resets them). Each notice is recorded in "
    "the database before CMD runs, so runs on several hosts never send one twice. CMD "
    "gets APITOKENS_TOKEN_ID, APITOKENS_TOKEN_OWNER, APITOKENS_TOKEN_NAME, "
    "APITOKENS_TOKEN_EXPIRES_AT, APITOKENS_THRESHOLD (1w) and APITOKENS_THRESHOLD_SECONDS "
    "in its environment (never the secret); its output goes to stderr. A CMD that fails "
    "is tried again by a later run."
)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"apitokens: error: {one_line(message)} (see: {self.prog} --help)\n")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _global_options(parser: argparse._ActionsContainer, *, repeated: bool) -> None:
    # Given again after the subcommand, an option must not reset the one given before it.
    default = argparse.SUPPRESS if repeated else None
    parser.add_argument(
        "--db",
        metavar="DB",
        default=default,
        help="the store: a SQLite file path, sqlite:///PATH or postgresql://... "
        f"(default: $APITOKENS_DB, else ./{DEFAULT_DB}); only `create` makes a missing "
        "SQLite file; memory: is refused (it keeps nothing)",
    )
    parser.add_argument(
        "--actor",
        metavar="NAME",
        default=default,
        help="who is acting, for the audit log and as the default owner (default: login name)",
    )
    parser.add_argument(
        "--prefix",
        metavar="PREFIX",
        default=default,
        help="token prefix, 2-10 of [a-z0-9] (default: $APITOKENS_PREFIX, else apt)",
    )


def _add(
    commands: argparse._SubParsersAction[_Parser],
    name: str,
    command: Command,
    summary: str,
    *,
    token: bool = False,
    json: bool = True,
    description: str | None = None,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary, description=description or summary)
    _global_options(
        parser.add_argument_group("global options (also before COMMAND)"), repeated=True
    )
    if token:
        parser.add_argument("id", metavar="ID", help="the token id (or the whole token string)")
    if json:
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(command=command)
    return parser


def _add_create(commands: argparse._SubParsersAction[_Parser]) -> None:
    parser = _add(
        commands,
        "create",
        create,
        "create a token; prints it once, with a code snippet",
        description="Create a token. It is printed once, with a code snippet that uses it.",
    )
    parser.add_argument("--name", required=True, help="what the token is for, e.g. 'CI report'")
    owner = parser.add_mutually_exclusive_group()
    owner.add_argument("--user", metavar="USER", help="the owner (default: the actor)")
    owner.add_argument(
        "--unbound", action="store_true", help="no owner: any Basic-auth username may use it"
    )
    parser.add_argument(
        "--scope",
        type=parse_scope,
        default=Scope.READ_ONLY,
        metavar="{read-only,read-write}",
        help="read-only: GET, HEAD, OPTIONS (default); read-write: every method",
    )
    expiry = parser.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires-in", type=parse_duration, metavar="DURATION", help=f"lifetime, {DURATION_HELP}"
    )
    expiry.add_argument(
        "--expires-at", type=parse_datetime, metavar="DATE", help="expiry, ISO 8601 (naive: UTC)"
    )
    parser.add_argument(
        "--rule",
        dest="rules",
        action="append",
        default=[],
        metavar="RULE",
        help="a restriction rule; repeat for several (a request must match one)",
    )
    parser.add_argument(
        "--ip",
        dest="ips",
        type=parse_network,
        action="append",
        default=[],
        metavar="CIDR",
        help="an address or network it may be used from; repeat for several",
    )
    parser.add_argument(
        "--standard",
        action="store_true",
        help="standard mode: can be revealed again later (default: secure mode, shown once)",
    )
    parser.add_argument(
        "--rate-limit",
        type=parse_rate_text,
        metavar="RATE",
        help=f"at most so many requests per window ({RATE_HELP}); over it: 429",
    )
    parser.add_argument(
        "--credits",
        type=parse_credits,
        metavar="N",
        help="uses in all; spent: 429 (until a --refill, if any)",
    )
    parser.add_argument(
        "--refill",
        type=parse_rate_text,
        metavar="RATE",
        help="credits given back at the start of each period, never above --credits "
        "(N/s, N/min, N/h or N/day, e.g. 1000/day)",
    )
    _snippet_options(parser)


def _snippet_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        type=parse_url,
        default=DEFAULT_URL,
        help=f"the URL the snippet calls (default: {DEFAULT_URL})",
    )
    parser.add_argument(
        "--lang", choices=LANGUAGES, default="curl", help="snippet language (default: curl)"
    )


def _add_edit(commands: argparse._SubParsersAction[_Parser]) -> None:
    parser = _add(
        commands,
        "edit",
        edit,
        "change a token's name, rules, addresses, expiry or limits",
        token=True,
        description=EDIT_DESCRIPTION,
    )
    parser.add_argument("--name", help="the new name")
    # default=None, not []: "not given" (keep the rules) must differ from "given".
    rules = parser.add_mutually_exclusive_group()
    rules.add_argument(
        "--rule",
        dest="rules",
        action="append",
        metavar="RULE",
        help="a restriction rule; repeat for several. Replaces all the token's rules",
    )
    rules.add_argument(
        "--no-rules", action="store_true", help="remove every rule: any request in scope"
    )
    ips = parser.add_mutually_exclusive_group()
    ips.add_argument(
        "--ip",
        dest="ips",
        type=parse_network,
        action="append",
        metavar="CIDR",
        help="an address or network it may be used from; repeat for several. "
        "Replaces all the token's addresses",
    )
    ips.add_argument("--no-ips", action="store_true", help="remove the limit: any address")
    expiry = parser.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires-in",
        type=parse_duration,
        metavar="DURATION",
        help=f"expire this long from now, {DURATION_HELP}",
    )
    expiry.add_argument(
        "--expires-at", type=parse_datetime, metavar="DATE", help="expiry, ISO 8601 (naive: UTC)"
    )
    expiry.add_argument("--no-expiry", action="store_true", help="remove the expiry")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument(
        "--rate-limit",
        type=parse_rate_text,
        metavar="RATE",
        help=f"at most so many requests per window ({RATE_HELP})",
    )
    rate.add_argument("--no-rate-limit", action="store_true", help="remove the rate limit")
    credits = parser.add_mutually_exclusive_group()
    credits.add_argument(
        "--credits",
        type=parse_credits,
        metavar="N",
        help="uses in all, from now: a new allotment (the credits left become N)",
    )
    credits.add_argument(
        "--no-credits", action="store_true", help="remove the credits (and their refill)"
    )
    refill = parser.add_mutually_exclusive_group()
    refill.add_argument(
        "--refill",
        type=parse_rate_text,
        metavar="RATE",
        help="credits given back at the start of each period, never above the credits "
        "(N/s, N/min, N/h or N/day, e.g. 1000/day)",
    )
    refill.add_argument("--no-refill", action="store_true", help="remove the refill")


def _add_rule_check(commands: argparse._SubParsersAction[_Parser]) -> None:
    # No global options and no database: `rule check` runs offline.
    rule = commands.add_parser(
        "rule",
        help="test restriction rules",
        description="Test restriction rules without a database.",
    )
    actions = rule.add_subparsers(title="commands", metavar="COMMAND", required=True)
    check = actions.add_parser(
        "check",
        help="tell whether a request matches a rule, and if not, which part failed",
        description=(
            "Tell whether a request matches a restriction rule and, when it does not, "
            "which part failed. Exit status: 0 match, 1 no match, 2 the rule does not parse."
        ),
    )
    check.add_argument("rule", metavar="RULE", help="one rule, e.g. '[GET].*/rest/api/2/.*'")
    check.add_argument("method", metavar="METHOD", help="the request's HTTP method, e.g. GET")
    check.add_argument(
        "path",
        metavar="PATH",
        help="the request path as sent (percent-encoded); a '?query' part is split off",
    )
    check.add_argument("--query", metavar="Q", help="the raw query string, without '?'")
    check.add_argument(
        "--json",
        dest="body",
        metavar="BODY",
        help="the JSON request body; @FILE reads it from a file, @- from stdin",
    )
    check.set_defaults(offline=rule_check)


def build_parser(prog: str = "apitokens", *, store_options: bool = True) -> argparse.ArgumentParser:
    """The whole command line, subcommands included.

    Args:
        prog: the program's name in usage lines and errors.
        store_options: offer ``--db`` and ``--prefix`` in the help; without them
            (an application's own store, ``run_on``) they are still parsed, and refused.
    """
    parser = _Parser(
        prog=prog,
        description="Manage personal access tokens and read their audit log.",
        epilog="Exit status: 0 ok, 1 'rule check' found no match, 2 error. See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"apitokens {__version__}")
    _global_options(parser, repeated=False)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    _add_create(commands)

    listing = _add(commands, "list", list_tokens, "list tokens in an aligned table")
    listing.add_argument("--user", help="only this owner's tokens")
    listing.add_argument(
        "--status", choices=[str(status) for status in TokenStatus], help="only these tokens"
    )
    listing.add_argument(
        "--unused-since",
        type=parse_moment,
        metavar="WHEN",
        help=f"only tokens not used since then (never used included); {MOMENT_HELP}",
    )
    listing.add_argument("--name", help="only tokens whose name contains this (any case)")
    listing.add_argument("--limit", type=_count, metavar="N", help="at most this many")

    _add(commands, "show", show, "show every field of one token", token=True)
    _add(commands, "revoke", revoke, "revoke a token at once", token=True, json=False)

    rotating = _add(commands, "rotate", rotate, "give a token a new secret", token=True)
    rotating.add_argument(
        "--grace",
        type=parse_duration,
        default=parse_duration("0s"),
        metavar="DURATION",
        help=f"how long the old secret keeps working (default: 0s); {DURATION_HELP}",
    )

    _add_edit(commands)

    _add(
        commands,
        "reveal",
        reveal,
        "print a standard-mode token again",
        token=True,
        json=False,
    )
    snippets = _add(
        commands,
        "snippet",
        snippet,
        "print code that calls an API with a standard-mode token",
        token=True,
        json=False,
    )
    _snippet_options(snippets)

    unused = _add(commands, "revoke-unused", revoke_unused, "revoke tokens not used lately")
    unused.add_argument(
        "--since",
        type=parse_moment,
        required=True,
        metavar="WHEN",
        help=f"revoke active tokens not used since then; {MOMENT_HELP}",
    )
    unused.add_argument("--dry-run", action="store_true", help="list them, revoke nothing")

    events = _add(commands, "audit", audit, "show audit events, newest first")
    events.add_argument("--token", metavar="ID", help="only this token's events")
    events.add_argument(
        "--user", help="only events about this user: their tokens, and requests run as them"
    )
    events.add_argument("--action", choices=[str(action) for action in Action])
    events.add_argument("--outcome", choices=[str(outcome) for outcome in Outcome])
    events.add_argument(
        "--since", type=parse_moment, metavar="WHEN", help=f"only events since then; {MOMENT_HELP}"
    )
    events.add_argument(
        "--until", type=parse_moment, metavar="WHEN", help="only events before then; same forms"
    )
    events.add_argument(
        "--limit", type=_count, default=100, metavar="N", help="at most this many (default: 100)"
    )
    events.add_argument(
        "--offset", type=_count, default=0, metavar="N", help="skip this many (default: 0)"
    )

    soon = _add(commands, "expiring", expiring, "list active tokens that expire soon")
    soon.add_argument(
        "--within",
        type=parse_duration,
        required=True,
        metavar="DURATION",
        help=f"tokens that expire within this time from now; {DURATION_HELP}",
    )

    notices = _add(
        commands,
        "notify-expiring",
        notify_expiring,
        "run a command once per token and threshold before it expires (for cron)",
        description=NOTIFY_DESCRIPTION,
    )
    notices.add_argument(
        "--exec",
        required=True,
        metavar="CMD",
        help="the shell command to run for each notice due",
    )
    notices.add_argument(
        "--threshold",
        dest="thresholds",
        type=parse_duration,
        action="append",
        metavar="DURATION",
        help="warn this long before expiry; repeat for several (default: 30d and 7d)",
    )
    notices.add_argument(
        "--timeout",
        type=parse_duration,
        default=parse_duration("60s"),
        metavar="DURATION",
        help="stop a command running longer than this; it counts as failed (default: 60s)",
    )

    prune = _add(commands, "prune-audit", prune_audit, "delete old audit events", json=False)
    prune.add_argument(
        "--before",
        type=parse_moment,
        required=True,
        metavar="WHEN",
        help=f"delete the events older than this; {MOMENT_HELP}",
    )

    _add_rule_check(commands)
    if not store_options:
        _hide(parser, {"--db", "--prefix"})
    return parser


def _hide(parser: argparse.ArgumentParser, options: set[str]) -> None:
    """Leave ``options`` out of the help of ``parser`` and of its subcommands."""
    for action in parser._actions:
        if options.intersection(action.option_strings):
            action.help = argparse.SUPPRESS
        elif isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _hide(command, options)
