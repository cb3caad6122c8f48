"""``apitokens edit``: change a standard-mode token's name, rules, addresses or expiry.

Kept apart from ``_cli_commands`` and ``_cli_parser`` so that each stays small;
``build_parser`` creates the subcommand with the shared options (global
options, ``ID``, ``--json``) and :func:`add_edit_options` adds the rest.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta

from ._cli_commands import CommandError, Session, check_rules, describe
from ._cli_output import clean, format_time, json_text, token_json
from ._cli_values import (
    DURATION_HELP,
    format_duration,
    parse_datetime,
    parse_duration,
    parse_network,
    token_id,
    utcnow,
)
from ._model import Token
from ._validate import UNSET, Unset

__all__ = ["EDIT_DESCRIPTION", "EDIT_SUMMARY", "add_edit_options", "edit"]

EDIT_SUMMARY = "change a token's name, rules, addresses or expiry"
EDIT_DESCRIPTION = (
    "Change a standard-mode token's name, restriction rules, allowed addresses or "
    "expiry; only the options given change, and the next request sees the change. "
    "Secure-mode and revoked tokens cannot be edited: rotate or revoke them instead."
)
_CHANGES = "--name, --rule, --no-rules, --ip, --no-ips, --expires-in, --expires-at or --no-expiry"


def add_edit_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``edit`` to its (already created) subparser."""
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


def _new_expiry(args: argparse.Namespace) -> datetime | Unset | None:
    """The ``expires_at`` to pass: a moment, ``None`` (never) or ``UNSET`` (keep it)."""
    expires_in: timedelta | None = args.expires_in
    expires_at: datetime | None = args.expires_at
    if args.no_expiry:
        return None
    if expires_at is not None:
        return expires_at
    if expires_in is None:
        return UNSET
    if expires_in <= timedelta(0):
        # Counted from now, zero would be "expired already"; say so plainly.
        raise CommandError("--expires-in must be longer than 0s")
    try:
        return utcnow() + expires_in
    except OverflowError:
        raise CommandError(f"--expires-in {format_duration(expires_in)} is too long") from None


def _changes(before: Token | None, token: Token, args: argparse.Namespace) -> list[str]:
    """What the edit changed, in words, from the options given and the stored result."""
    said: list[str] = []
    if args.name is not None:
        old = "" if before is None else f" from '{clean(before.name)}'"
        said.append(f"renamed{old}")
    if args.rules is not None or args.no_rules:
        count = len(token.restrictions)
        said.append("no rules" if count == 0 else f"{count} rule{'' if count == 1 else 's'}")
    if args.ips is not None or args.no_ips:
        ips = ", ".join(clean(ip) for ip in token.allowed_ips)
        said.append(f"usable from {ips}" if ips else "usable from any address")
    if args.no_expiry or args.expires_in is not None or args.expires_at is not None:
        said.append(f"expires {format_time(token.expires_at, 'never')}")
    return said


def edit(session: Session, args: argparse.Namespace) -> int:
    """``edit ID``: change only the fields whose options are given; print the result."""
    name: str | None = args.name
    rules: list[str] | None = [] if args.no_rules else args.rules
    ips: list[str] | None = [] if args.no_ips else args.ips
    expires_at = _new_expiry(args)
    if name is None and rules is None and ips is None and isinstance(expires_at, Unset):
        # A no-op edit would still be audited as one; more likely an option was forgotten.
        raise CommandError(f"nothing to change: give {_CHANGES} (see: apitokens edit --help)")
    if rules:
        check_rules(rules)
    ident = token_id(args.id)
    before = session.tokens.get(ident)  # only for the old name in the message
    token = session.tokens.edit(
        actor=session.actor,
        token_id=ident,
        name=UNSET if name is None else name,
        restrictions=UNSET if rules is None else rules,
        allowed_ips=UNSET if ips is None else ips,
        expires_at=expires_at,
    )
    if args.json:
        print(json_text(token_json(token)))
    else:
        print(f"Edited token {describe(token)}: {', '.join(_changes(before, token, args))}.")
    return 0
