"""The admin's page (``token_admins``): every token, revoke unused, the audit log, the policy."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timedelta
from urllib.parse import urlencode

from apitokens._errors import ApiTokensError
from apitokens._model import Action, Outcome, TokenStatus

from ._forms import CreateForm, parse_date
from ._http import FormData, Response
from ._user import back_to, form_values, notice
from ._visit import PageError, Visit, message_of, status_of

__all__ = ["audit", "confirm_unused", "policy", "revoke_unused", "tokens"]

_STATUSES = [status.value for status in TokenStatus]
_ACTIONS = [action.value for action in Action]
_OUTCOMES = [outcome.value for outcome in Outcome if outcome is not Outcome.PASS_THROUGH]


def _digits(text: str) -> bool:
    # str.isdigit() also says yes to "²" and other digits int() cannot read (a 500).
    return text.isascii() and text.isdigit()


def _page_number(args: FormData) -> int:
    text = args.get("page", "1")
    return int(text) if _digits(text) and 0 < int(text) <= 100_000 else 1


def _choice(value: str, allowed: list[str]) -> str | None:
    return value if value in allowed else None


def _date(args: FormData, name: str, what: str) -> datetime | None:
    try:
        return parse_date(args.get(name), what=what)
    except ValueError as exc:
        raise PageError(400, f"{exc}.") from None


def _query(args: FormData, names: tuple[str, ...], page: int) -> str:
    """The query string of another page of the same filters (for the paging links)."""
    pairs = [(name, args.get(name)) for name in names if args.get(name)]
    return urlencode([*pairs, ("page", str(page))])


def tokens(
    visit: Visit, form: CreateForm | None = None, *, status: int = 200, error: str = ""
) -> Response:
    """Every token, filtered by user, status and "unused since", a page at a time."""
    args = visit.request.args
    size = visit.page_size
    page = _page_number(args)
    user = args.get("user").strip() or None
    state = _choice(args.get("status"), _STATUSES)
    unused = _date(args, "unused_since", "Unused since")
    found = visit.tokens.list(
        actor=visit.user,
        user=user,
        status=state,
        unused_since=unused,
        limit=size + 1,
        offset=(page - 1) * size,
    )
    names = ("user", "status", "unused_since")
    return visit.page(
        "admin_tokens.html",
        status,
        tokens=found[:size],
        credits_left=visit.credits_left(found[:size]),
        filters={name: args.get(name) for name in names},
        statuses=_STATUSES,
        page=page,
        previous=_query(args, names, page - 1) if page > 1 else "",
        next=_query(args, names, page + 1) if len(found) > size else "",
        notice=_notice(visit),
        error=error,
        tester=None,
        active="admin",
        **form_values(visit, form or CreateForm()),
    )


def _notice(visit: Visit) -> str:
    count = visit.request.args.get("revoked_unused")
    if _digits(count):
        return f"Revoked {count} unused token{'' if count == '1' else 's'}."
    return notice(visit)


def _since(visit: Visit, form: FormData) -> datetime:
    days = form.get("days", "90")
    if not _digits(days) or not 0 < int(days) <= 36_600:
        raise PageError(400, "Give the number of days as a whole number, 1 or more.")
    return visit.now - timedelta(days=int(days))


def confirm_unused(visit: Visit) -> Response:
    """Show which active tokens are unused for so many days, before revoking them."""
    days = visit.request.args.get("days", "90")
    since = _since(visit, visit.request.args)
    stale = visit.tokens.list(actor=visit.user, status="active", unused_since=since)
    return visit.page(
        "unused.html",
        tokens=stale,
        credits_left=visit.credits_left(stale),
        days=int(days),
        since=since,
        active="admin",
    )


def revoke_unused(visit: Visit) -> Response:
    """Revoke every active token unused since then (each revocation audited)."""
    since = _since(visit, visit.request.form)
    try:
        revoked = visit.tokens.revoke_unused(actor=visit.user, since=since)
    except (ApiTokensError, ValueError) as exc:
        raise PageError(status_of(exc), message_of(exc)) from None
    return back_to(visit, "admin", revoked_unused=str(len(revoked)))


def audit(visit: Visit) -> Response:
    """The audit log, newest first, filtered by token, user, action, outcome and time."""
    args = visit.request.args
    names = ("token", "user", "action", "outcome", "since", "until")
    pasted = args.get("token").strip()
    token_format = visit.tokens.policy.token_format
    if pasted and token_format.contains(pasted):
        # A whole token pasted in the filter: never echo it (field, links); its id is
        # what the filter needs, at a URL without the secret.
        parsed = token_format.parse(pasted)
        query = {name: args.get(name) for name in names if args.get(name)}
        query["token"] = parsed.id if parsed is not None else ""
        return Response.redirect(visit.request.url("/admin/audit?" + urlencode(query)))
    size = visit.page_size
    page = _page_number(args)
    until = _date(args, "until", "Until")
    events = visit.tokens.audit(
        token_id=args.get("token").strip() or None,
        user=args.get("user").strip() or None,
        action=_choice(args.get("action"), _ACTIONS),
        outcome=_choice(args.get("outcome"), _OUTCOMES),
        since=_date(args, "since", "Since"),
        # The day after "until"; none after the last day a datetime holds (an overflow).
        until=None if until is None or until.date() == date.max else until + timedelta(days=1),
        limit=size + 1,
        offset=(page - 1) * size,
    )
    return visit.page(
        "admin_audit.html",
        events=events[:size],
        filters={name: args.get(name) for name in names},
        actions=_ACTIONS,
        outcomes=_OUTCOMES,
        page=page,
        previous=_query(args, names, page - 1) if page > 1 else "",
        next=_query(args, names, page + 1) if len(events) > size else "",
        active="audit",
    )


def policy(visit: Visit) -> Response:
    """The policy in force, read-only."""
    fields = [
        (field.name, _shown(getattr(visit.tokens.policy, field.name), field.name))
        for field in dataclasses.fields(visit.tokens.policy)
        if not field.name.startswith("_")
    ]
    return visit.page("admin_policy.html", fields=fields, active="policy")


def _shown(value: object, name: str) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, timedelta):
        return _span(value)
    if name == "rule_timeout" and isinstance(value, (int, float)):
        return f"{value:g} seconds"
    if isinstance(value, (frozenset, set, tuple, list)):
        return ", ".join(sorted(str(item) for item in value)) or "none"
    return str(value)


def _span(span: timedelta) -> str:
    """``"365 days"``, ``"90 seconds"``: exact, in the largest unit that divides it."""
    seconds = span.total_seconds()
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        if seconds and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds:g} seconds"
