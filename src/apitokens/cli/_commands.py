"""The subcommands of ``apitokens``, one function each.

A database command takes the open :class:`Session` and the parsed arguments,
prints its result on stdout and returns the exit status; ``rule check`` takes
only the arguments, since it opens no database. Errors are raised and turned
into one line on stderr by :func:`apitokens.cli.main`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from apitokens import (
    ApiTokens,
    ApiTokensError,
    IssuedToken,
    RestrictionRule,
    RuleSyntaxError,
    Token,
    TokenNotFound,
    TokenStatus,
)
from apitokens._validate import UNSET, Unset
from apitokens.rules import check_request

from ._output import (
    caret_lines,
    clean,
    event_json,
    events_table,
    format_time,
    json_text,
    limits_text,
    token_details,
    token_json,
    tokens_table,
)
from ._values import format_duration, token_id, utcnow

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_NO_MATCH",
    "EXIT_OK",
    "EXIT_USAGE",
    "Command",
    "CommandError",
    "Session",
    "audit",
    "check_rules",
    "create",
    "describe",
    "edit",
    "expiring",
    "list_tokens",
    "notify_expiring",
    "prune_audit",
    "reveal",
    "revoke",
    "revoke_unused",
    "rotate",
    "rule_check",
    "show",
    "snippet",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_NO_MATCH = 1
"""``rule check``: the request does not match the rule."""
EXIT_USAGE = 2
"""Every user error: a bad option, a rule that does not parse, a library refusal."""
EXIT_INTERRUPTED = 130

_CHANGES = (
    "--name, --rule, --no-rules, --ip, --no-ips, --expires-in, --expires-at, --no-expiry, "
    "--rate-limit, --no-rate-limit, --credits, --no-credits, --refill or --no-refill"
)


class CommandError(Exception):
    """A user error found by the command itself (not by the library)."""


@dataclass(frozen=True)
class Session:
    """What every command works with: the open ApiTokens and who is acting."""

    tokens: ApiTokens
    actor: str


Command = Callable[[Session, argparse.Namespace], int]
"""A database command: the open session and the parsed arguments in, the exit status out."""


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
        rate_limit=args.rate_limit,
        credits=args.credits,
        refill=args.refill,
    )
    if args.json:
        _print(json_text({"secret": issued.secret, "token": token_json(issued.token)}))
        return 0
    token = issued.token
    expires = format_time(token.expires_at, "never")
    limits = limits_text(token)
    lines = [
        f"Created token {describe(token)}: {token.scope}, expires {expires}, "
        + (f"limits {limits}, " if limits else "")
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
    """``show ID``: every field of one token, and its credits left if it has credits."""
    token = _token_or_fail(session, token_id(args.id))
    left = None if token.credits is None else session.tokens.credits_left(token.id)
    if args.json:
        # As `list` shows it, plus the credits left of a token with credits.
        extra = {} if token.credits is None else {"credits_left": left}
        _print(json_text({**token_json(token), **extra}))
    else:
        _print(token_details(token, left))
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


def expiring(session: Session, args: argparse.Namespace) -> int:
    """``expiring --within``: active tokens that expire within that time, soonest first."""
    within: timedelta = args.within
    found = session.tokens.expiring(within=within)
    if args.json:
        _print(json_text([token_json(token) for token in found]))
    elif found:
        _print(tokens_table(found))
    else:
        _print(f"No token expires within {format_duration(within)}.")
    return 0


class _HookFailed(Exception):
    """The ``--exec`` command of ``notify-expiring`` failed for one token."""


def notice_environment(token: Token, threshold: timedelta) -> dict[str, str]:
    """The environment of a ``notify-expiring --exec`` command: never the secret.

    The inherited ``APITOKENS_*`` variables are left out (``APITOKENS_DB`` may hold a
    database password), and the token's own are added.
    """
    assert token.expires_at is not None  # only expiring tokens get notices
    environment = {k: v for k, v in os.environ.items() if not k.startswith("APITOKENS_")}
    environment.update(
        APITOKENS_TOKEN_ID=token.id,
        APITOKENS_TOKEN_OWNER=token.user or "",
        APITOKENS_TOKEN_NAME=token.name,
        APITOKENS_TOKEN_EXPIRES_AT=token.expires_at.isoformat().replace("+00:00", "Z"),
        APITOKENS_THRESHOLD=format_duration(threshold),
        APITOKENS_THRESHOLD_SECONDS=str(int(threshold.total_seconds())),
    )
    return environment


_LONGEST_HOOK_WAIT = 20 * 24 * 3600.0
"""The longest a ``--exec`` command is waited for, in seconds, whatever ``--timeout`` says."""


def _run_hook(
    command: str, environment: dict[str, str], timeout: timedelta
) -> tuple[int, tuple[bytes, bytes]]:
    """Run one ``--exec`` command; its exit status and its output (stdout, stderr).

    It runs in a process group of its own, and on a timeout (or an interrupt) the
    whole group is killed: a notice that counts as failed, and is sent again by a later
    run, must not still be sent by a child the shell left behind (a script's ``mail``).

    Raises:
        subprocess.TimeoutExpired: it ran longer than ``timeout``.
        OSError: it could not be started.
        ValueError: ``environment`` holds a NUL, which no environment can.
    """
    with subprocess.Popen(  # noqa: S602 - the admin's own command; data only in env
        command,
        shell=True,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as process:
        try:
            # poll() takes at most 2**31 - 1 ms (24.8 days); no notice needs more than 20.
            seconds = min(timeout.total_seconds(), _LONGEST_HOOK_WAIT)
            stdout, stderr = process.communicate(timeout=seconds)
        except BaseException:
            # The group's id is the shell's pid (start_new_session): not waited for
            # yet, or still the id of its children's group, so no other group is hit.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            raise
        return process.returncode, (stdout, stderr)


def notify_expiring(session: Session, args: argparse.Namespace) -> int:
    """``notify-expiring --exec CMD``: run CMD once per token and threshold, ever.

    CMD runs through the shell, with the token's fields in its environment (never in
    its command line, so a token's name cannot inject anything) and its output sent
    to stderr. A CMD that fails or runs out of time is not recorded as sent: a later
    run tries it again; the other notices still go, and the exit status is 1.
    """
    command: str = args.exec
    timeout: timedelta = args.timeout
    sent: list[tuple[Token, timedelta]] = []
    failed: list[str] = []

    def hook(token: Token, threshold: timedelta) -> None:
        try:
            returncode, outputs = _run_hook(command, notice_environment(token, threshold), timeout)
        except subprocess.TimeoutExpired:
            status = f"timed out after {format_duration(timeout)}"
        except OSError as exc:
            status = clean(exc.strerror or str(exc))
        except ValueError as exc:  # a NUL in the owner's name: no environment holds it
            status = clean(str(exc))
        else:
            # Its output goes to stderr: stdout is this command's report (or its JSON).
            for output in outputs:
                if output:
                    sys.stderr.write(output.decode(errors="backslashreplace"))
            if returncode == 0:
                sent.append((token, threshold))
                return
            status = f"exit status {returncode}"
        failed.append(f"--exec failed for {describe(token)}: {status}")
        raise _HookFailed(failed[-1])

    thresholds: list[timedelta] = args.thresholds or [timedelta(days=30), timedelta(days=7)]
    # Every failure is in ``failed``, and the notices that went are in ``sent``.
    with contextlib.suppress(_HookFailed):
        session.tokens.notify_expiring(notify=hook, thresholds=thresholds)
    if args.json:
        _print(
            json_text(
                [
                    {"token": token_json(token), "threshold": format_duration(threshold)}
                    for token, threshold in sent
                ]
            )
        )
    else:
        lines = [
            f"Sent the {format_duration(threshold)} notice for {describe(token)}."
            for token, threshold in sent
        ]
        _print(lines or "No notice was due.")
    for message in failed:
        print(f"apitokens: error: {message}; a later run tries again", file=sys.stderr)
    return EXIT_FAILURE if failed else 0


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
    if args.rate_limit is not None or args.no_rate_limit:
        rate = token.rate_limit
        said.append("no rate limit" if rate is None else f"rate limit {clean(rate)}")
    if args.credits is not None or args.no_credits:
        said.append("no credits" if token.credits is None else f"{token.credits} credits")
    if args.refill is not None or args.no_refill or (args.no_credits and before and before.refill):
        said.append("no refill" if token.refill is None else f"refill {clean(token.refill)}")
    return said


@dataclass(frozen=True)
class _Limits:
    """The limits ``edit`` passes: a value, ``None`` (remove it) or ``UNSET`` (keep it)."""

    rate_limit: str | Unset | None = UNSET
    credits: int | Unset | None = UNSET
    refill: str | Unset | None = UNSET

    @property
    def given(self) -> bool:
        return not all(isinstance(value, Unset) for value in vars(self).values())


def _new_limits(args: argparse.Namespace) -> _Limits:
    """The limits to pass to ``edit``: only those whose options were given."""
    if args.no_credits and args.refill is not None:
        raise CommandError("--refill needs credits: give --credits, or leave out --no-credits")
    given = args.rate_limit is not None or args.no_rate_limit
    credits = args.credits is not None or args.no_credits
    # A refill gives back spent credits: with the credits gone it has nothing to give.
    refill = args.refill is not None or args.no_refill or args.no_credits
    return _Limits(
        rate_limit=args.rate_limit if given else UNSET,
        credits=args.credits if credits else UNSET,
        refill=args.refill if refill else UNSET,
    )


def edit(session: Session, args: argparse.Namespace) -> int:
    """``edit ID``: change only the fields whose options are given; print the result."""
    name: str | None = args.name
    rules: list[str] | None = [] if args.no_rules else args.rules
    ips: list[str] | None = [] if args.no_ips else args.ips
    expires_at = _new_expiry(args)
    limits = _new_limits(args)
    unchanged = name is None and rules is None and ips is None and not limits.given
    if unchanged and isinstance(expires_at, Unset):
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
        rate_limit=limits.rate_limit,
        credits=limits.credits,
        refill=limits.refill,
    )
    if args.json:
        _print(json_text(token_json(token)))
    else:
        _print(f"Edited token {describe(token)}: {', '.join(_changes(before, token, args))}.")
    return 0


def _read_body(text: str | None) -> bytes:
    """The ``--json`` body of ``rule check``: the text, ``@FILE`` for a file, ``@-`` for stdin."""
    if text is None:
        return b""
    if text == "@-":
        return sys.stdin.buffer.read()
    if text.startswith("@"):
        try:
            return Path(text[1:]).read_bytes()
        except OSError as exc:
            raise ValueError(f"--json {clean(text)}: {exc.strerror or exc}") from None
    return text.encode("utf-8", "surrogateescape")


def rule_check(args: argparse.Namespace) -> int:
    """``rule check``, offline: exit 0 on a match, 1 on no match, 2 on a syntax error."""
    text: str = args.rule
    method: str = args.method
    path: str = args.path
    query: str | None = args.query
    if query is None:
        path, _, query = path.partition("?")
    body = _read_body(args.body)
    try:
        rule = RestrictionRule.parse(text)
    except RuleSyntaxError as exc:
        lines = caret_lines(text, exc.column)
        lines.append(f"apitokens: error: invalid rule: column {exc.column}: {clean(exc.reason)}")
        print("\n".join(lines), file=sys.stderr)
        return EXIT_USAGE
    # The same reading of the request as the token pages' rule tester (the body is JSON).
    result = check_request(rule, method, path, query=query, body=body)
    shown = clean(method.upper()) + " " + clean(path) + (f"?{clean(query)}" if query else "")
    lines = [f"rule:     {clean(rule)}", f"request:  {shown}"]
    if body:
        lines.append(f"body:     {clean(body.decode('utf-8', 'replace'))}")
    if result.matched:
        lines.append("result:   match (the rule allows this request)")
    else:
        lines.append(f"result:   no match: {clean(result.reason)}")
    _print(lines)
    return EXIT_OK if result.matched else EXIT_NO_MATCH
