"""The subcommands of ``apitokens`` that work on a database, one function each.

Each takes the open :class:`Session` and the parsed arguments, prints its
result on stdout and returns the exit status. Errors are raised and turned
into one line on stderr by ``apitokens.cli``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ._api import ApiTokens
from ._cli_output import (
    clean,
    event_json,
    events_table,
    format_time,
    json_text,
    token_details,
    token_json,
    tokens_table,
)
from ._cli_values import format_duration, token_id, utcnow
from ._errors import ApiTokensError, RuleSyntaxError, TokenNotFound
from ._model import IssuedToken, Token, TokenStatus
from .rules import RestrictionRule

__all__ = [
    "CommandError",
    "Session",
    "audit",
    "check_rules",
    "create",
    "describe",
    "list_tokens",
    "prune_audit",
    "reveal",
    "revoke",
    "revoke_unused",
    "rotate",
    "show",
    "snippet",
    "warn",
]


class CommandError(Exception):
    """A user error found by the command itself (not by the library)."""


@dataclass(frozen=True)
class Session:
    """What every command works with: the open ApiTokens and who is acting."""

    tokens: ApiTokens
    actor: str


def _print(lines: list[str] | str) -> None:
    print(lines if isinstance(lines, str) else "\n".join(lines))


def describe(token: Token) -> str:
    """``<id> ('<name>', user <user>)``: how every message names a token."""
    owner = "unbound" if token.user is None else f"user {clean(token.user)}"
    return f"{token.id} ('{clean(token.name)}', {owner})"


def _one_time(issued: IssuedToken, what: str) -> list[str]:
    if issued.token.secure:
        note = "shown only this once: copy it now, it cannot be shown again"
    else:
        note = f"standard mode: 'apitokens reveal {issued.token.id}' shows it again"
    return [f"{what} ({note}):", "", issued.secret, ""]


def _token_or_fail(session: Session, ident: str) -> Token:
    token = session.tokens.get(ident)
    if token is None:
        raise TokenNotFound(f"no token '{clean(ident)}'")
    return token


def check_rules(rules: Iterable[str]) -> None:
    """Parse every ``--rule`` before anything is written; name the bad one and its column.

    The library would refuse the rule too, but without saying which option
    held it or where to see it marked.
    """
    for rule in rules:
        try:
            RestrictionRule.parse(rule)
        except RuleSyntaxError as exc:
            raise CommandError(
                f"--rule '{clean(rule)}': column {exc.column}: {clean(exc.reason)}"
                " (see it marked: apitokens rule check RULE GET /)"
            ) from None


def create(session: Session, args: argparse.Namespace) -> int:
    """``create``: make a token, print it once and a snippet."""
    rules: list[str] = args.rules
    check_rules(rules)
    url: str = args.url
    lang: str = args.lang
    issued = session.tokens.create(
        actor=session.actor,
        name=args.name,
        user=args.user,
        unbound=args.unbound,
        scope=args.scope,
        expires_in=args.expires_in,
        expires_at=args.expires_at,
        restrictions=rules,
        allowed_ips=args.ips,
        secure=not args.standard,
    )
    if args.json:
        _print(json_text({"secret": issued.secret, "token": token_json(issued.token)}))
        return 0
    token = issued.token
    expires = format_time(token.expires_at, "never")
    lines = [
        f"Created token {describe(token)}: {token.scope}, expires {expires}, "
        + ("secure mode." if token.secure else "standard mode."),
        "",
        *_one_time(issued, "Your new token"),
    ]
    try:
        snippet = issued.snippet(url, lang)
    except (ApiTokensError, ValueError) as exc:
        lines.append(f"(no {lang} example: {clean(exc)})")
    else:
        lines += [f"Example ({lang}):", "", snippet.rstrip("\n")]
    _print(lines)
    return 0


def list_tokens(session: Session, args: argparse.Namespace) -> int:
    """``list``: an aligned table (or JSON) of tokens, newest first."""
    tokens = session.tokens.list(
        actor=session.actor,
        user=args.user,
        status=args.status,
        unused_since=args.unused_since,
        name=args.name,
        limit=args.limit,
    )
    if args.json:
        _print(json_text([token_json(token) for token in tokens]))
    elif tokens:
        _print(tokens_table(tokens))
    else:
        _print("No tokens.")
    return 0


def show(session: Session, args: argparse.Namespace) -> int:
    """``show ID``: every field of one token."""
    token = _token_or_fail(session, token_id(args.id))
    _print(json_text(token_json(token)) if args.json else token_details(token))
    return 0


def revoke(session: Session, args: argparse.Namespace) -> int:
    """``revoke ID``: revoke at once."""
    ident = token_id(args.id)
    before = session.tokens.get(ident)
    token = session.tokens.revoke(actor=session.actor, token_id=ident)  # audits a refusal
    if before is not None and before.revoked_at is not None:
        _print(f"Token {describe(token)} was already revoked at {format_time(token.revoked_at)}.")
    else:
        _print(f"Revoked token {describe(token)}.")
    return 0


def rotate(session: Session, args: argparse.Namespace) -> int:
    """``rotate ID``: a new secret, printed once; the old one works for ``--grace``."""
    grace: timedelta = args.grace
    issued = session.tokens.rotate(actor=session.actor, token_id=token_id(args.id), grace=grace)
    if args.json:
        _print(json_text({"secret": issued.secret, "token": token_json(issued.token)}))
        return 0
    lines = [f"Rotated token {describe(issued.token)}.", "", *_one_time(issued, "The new token")]
    if grace > timedelta(0):
        until = format_time(utcnow() + grace)
        lines.append(f"The old token keeps working for {format_duration(grace)}, until {until}.")
    else:
        lines.append("The old token no longer works.")
    _print(lines)
    return 0


def reveal(session: Session, args: argparse.Namespace) -> int:
    """``reveal ID``: print a standard-mode token's string."""
    _print(session.tokens.reveal(actor=session.actor, token_id=token_id(args.id)))
    return 0


def snippet(session: Session, args: argparse.Namespace) -> int:
    """``snippet ID``: code that calls the API with a standard-mode token."""
    text = session.tokens.snippet(
        actor=session.actor, token_id=token_id(args.id), url=args.url, lang=args.lang
    )
    _print(text.rstrip("\n"))
    return 0


def revoke_unused(session: Session, args: argparse.Namespace) -> int:
    """``revoke-unused --since``: revoke (or with ``--dry-run`` list) stale active tokens."""
    since: datetime = args.since
    if args.dry_run:
        stale = session.tokens.list(
            actor=session.actor, status=TokenStatus.ACTIVE, unused_since=since
        )
    else:
        stale = session.tokens.revoke_unused(actor=session.actor, since=since)
    if args.json:
        _print(json_text([token_json(token) for token in stale]))
        return 0
    verb = "Would revoke" if args.dry_run else "Revoked"
    plural = "" if len(stale) == 1 else "s"
    summary = f"{verb} {len(stale)} token{plural} not used since {format_time(since)}"
    _print([*tokens_table(stale), "", summary + "."] if stale else summary + ".")
    return 0


def audit(session: Session, args: argparse.Namespace) -> int:
    """``audit``: audit events, newest first, as a table or JSON."""
    events = session.tokens.audit(
        token_id=None if args.token is None else token_id(args.token),
        user=args.user,
        action=args.action,
        outcome=args.outcome,
        since=args.since,
        until=args.until,
        limit=args.limit,
        offset=args.offset,
    )
    if args.json:
        _print(json_text([event_json(event) for event in events]))
    elif events:
        _print(events_table(events))
    else:
        _print("No audit events.")
    return 0


def prune_audit(session: Session, args: argparse.Namespace) -> int:
    """``prune-audit --before``: delete old audit events."""
    before: datetime = args.before
    count = session.tokens.prune_audit(before=before)
    plural = "" if count == 1 else "s"
    _print(f"Deleted {count} audit event{plural} from before {format_time(before)}.")
    return 0


def warn(message: str) -> None:
    """A note on stderr that is not an error."""
    print(f"apitokens: {message}", file=sys.stderr)
