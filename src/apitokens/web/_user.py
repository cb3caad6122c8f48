"""A user's page: their tokens, the create form, and the calls on one token.

Every action is a call of the management API with the signed-in user as the
actor, so the API decides what is allowed and audits it with its actor. A new
secret is shown once, in the body of the response to the POST that made it
(``no-store``): never in a URL, a redirect or a log line.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, TypedDict

from apitokens._errors import ApiTokensError
from apitokens._model import IssuedToken, Scope, Token, TokenStatus
from apitokens._snippets import LANGUAGES, render_snippet
from apitokens._validate import UNSET, Unset

from ._forms import (
    GRACE_CHOICES,
    CreateForm,
    describe,
    expiry_choices,
    lines,
    optional,
    parse_credits,
    parse_date,
    parse_grace,
)
from ._http import FormData, Response
from ._tester import TesterResult, run_tester
from ._visit import PageError, Visit, is_token_id, message_of, status_of

__all__ = [
    "FormPage",
    "back_to",
    "confirm_revoke",
    "confirm_rotate",
    "create",
    "edit",
    "edit_form",
    "form_values",
    "index",
    "notice",
    "reveal",
    "revoke",
    "rotate",
]

_DONE = {
    "created": "Token {id} was created.",
    "revoked": "Token {id} was revoked: it no longer works.",
    "edited": "Token {id} was changed.",
}

_LABELS = {"curl": "curl", "python": "Python", "javascript": "JavaScript"}


def back_to(visit: Visit, where: str, **query: str) -> Response:
    """303 to the user's page, or the admin's when the form came from there."""
    path = "/admin" if where == "admin" and visit.admin else "/"
    pairs = "&".join(f"{key}={value}" for key, value in query.items())
    return Response.redirect(visit.request.url(path + (f"?{pairs}" if pairs else "")))


def notice(visit: Visit) -> str:
    """The line saying what the action before the redirect did (an id, never a secret)."""
    args = visit.request.args
    done, token_id = args.get("done"), args.get("token")
    if done not in _DONE or not is_token_id(token_id):
        return ""
    # Said only when true: a crafted link must not tell a user that a live token of
    # theirs was revoked (bait for a phishing mail), nor name someone else's token.
    token = visit.tokens.get(token_id)
    if token is None or (token.user != visit.user and not visit.admin):
        return ""
    if done == "revoked" and token.status != "revoked":
        return ""
    return _DONE[done].format(id=token_id)


def form_values(visit: Visit, form: CreateForm) -> dict[str, Any]:
    """What the create form shows: the choices the policy leaves open, and what was typed."""
    policy = visit.tokens.policy
    choices = expiry_choices(policy)
    if not form.expires:
        default = next((c for c in choices if c.value == "30"), choices[-1] if choices else None)
        form = CreateForm(**{**form.__dict__, "expires": default.value if default else ""})
    read_write = not policy.read_only_for_users or visit.admin
    groups = visit.tokens._manager.groups(visit.user)
    return {
        "may_create": policy.may_create_tokens(groups),
        "unbound_allowed": policy.allow_unbound_tokens and visit.admin,
        "form": form,
        "expiries": choices,
        "scopes": [Scope.READ_ONLY] + ([Scope.READ_WRITE] if read_write else []),
        "longest": None if policy.max_lifetime is None else describe(policy.max_lifetime),
    }


def index(
    visit: Visit,
    form: CreateForm | None = None,
    *,
    status: int = 200,
    error: str = "",
    tester: TesterResult | None = None,
) -> Response:
    """The user's tokens, newest first (revoked and expired too), and the create form."""
    tokens = visit.tokens.list(actor=visit.user, user=visit.user)
    return visit.page(
        "user.html",
        status,
        tokens=tokens,
        credits_left=visit.credits_left(tokens),
        notice=notice(visit),
        error=error,
        tester=tester,
        active="user",
        **form_values(visit, form or CreateForm()),
    )


def _secret_page(visit: Visit, issued: IssuedToken, what: str, back: str) -> Response:
    url = visit.api_url(visit.request)
    snippets = [
        (lang, _LABELS[lang], render_snippet(issued.secret, url, lang, user=issued.basic_user))
        for lang in LANGUAGES
    ]
    return visit.page(
        "secret.html",
        secret=issued.secret,
        token=issued.token,
        what=what,
        snippets=snippets,
        back=back,
        active="",
    )


class FormPage(Protocol):
    """The page that shows the create form again, with what was typed and why it failed."""

    def __call__(
        self, visit: Visit, form: CreateForm | None = None, *, status: int = 200, error: str = ""
    ) -> Response: ...


def create(visit: Visit, again: FormPage | None = None) -> Response:
    """Create a token and show it once; or, with the rule tester's button, only test the rules.

    Args:
        visit: the request.
        again: the page to show the form on again when the API refuses (the
            user's page by default; the admin's for its form).
    """
    form = CreateForm.read(visit.request.form)
    if visit.request.form.get("action") == "check":
        tester = run_tester(
            form.rules,
            form.check_method,
            form.check_path,
            body=form.check_body,
            scope=form.scope,
            timeout=visit.tokens.policy.rule_timeout,
        )
        return index(visit, form, tester=tester)
    try:
        arguments = form.arguments(visit.user, expiry_choices(visit.tokens.policy))
        issued = visit.tokens.create(**arguments)  # type: ignore[arg-type]
    except (ApiTokensError, ValueError) as exc:
        return (again or index)(visit, form, status=status_of(exc), error=message_of(exc))
    back = "admin" if visit.request.form.get("back") == "admin" else "user"
    return _secret_page(visit, issued, "created", back)


def confirm_revoke(visit: Visit, token_id: str) -> Response:
    """Ask before revoking (a page of its own: works without JavaScript)."""
    token = visit.token(token_id)
    return visit.page("revoke.html", token=token, back=visit.request.args.get("back"), active="")


def revoke(visit: Visit, token_id: str) -> Response:
    """Revoke the token, then back to the list (POST-redirect-GET)."""
    try:
        token = visit.tokens.revoke(actor=visit.user, token_id=token_id)
    except (ApiTokensError, ValueError) as exc:
        raise visit.refused(exc) from None
    return back_to(visit, visit.request.form.get("back"), done="revoked", token=token.id)


def confirm_rotate(visit: Visit, token_id: str) -> Response:
    """Ask for the grace period before rotating."""
    token = visit.token(token_id)
    if token.status is TokenStatus.REVOKED:
        raise PageError(409, "A revoked token cannot be rotated.")
    return visit.page(
        "rotate.html",
        token=token,
        graces=GRACE_CHOICES,
        back=visit.request.args.get("back"),
        active="",
    )


def rotate(visit: Visit, token_id: str) -> Response:
    """Give the token a new secret and show it once."""
    form = visit.request.form
    try:
        grace = parse_grace(form.get("grace", "0"))
        issued = visit.tokens.rotate(actor=visit.user, token_id=token_id, grace=grace)
    except (ApiTokensError, ValueError) as exc:
        raise visit.refused(exc) from None
    return _secret_page(
        visit, issued, "rotated", "admin" if form.get("back") == "admin" else "user"
    )


def reveal(visit: Visit, token_id: str) -> Response:
    """Show a standard-mode token's secret again (audited as a reveal)."""
    try:
        secret = visit.tokens.reveal(actor=visit.user, token_id=token_id)
    except (ApiTokensError, ValueError) as exc:
        raise visit.refused(exc) from None
    token = visit.token(token_id)
    # The username Basic needs, as the API names it for the snippets of a new token.
    bearer = visit.tokens.policy.auth_schemes.bearer and token.user is not None
    issued = IssuedToken(secret, token, None if bearer else token.user or "USERNAME")
    back = "admin" if visit.request.form.get("back") == "admin" else "user"
    return _secret_page(visit, issued, "revealed", back)


def _edit_page(
    visit: Visit, token: Token, values: dict[str, str], status: int = 200, error: str = ""
) -> Response:
    return visit.page(
        "edit.html",
        status,
        token=token,
        values=values,
        error=error,
        active="",
        credits_left=visit.credits_left([token]),
    )


def edit_form(visit: Visit, token_id: str) -> Response:
    """The edit form of a standard-mode token."""
    token = visit.token(token_id)
    if token.secure or token.status is TokenStatus.REVOKED:
        raise PageError(409, "Only an unrevoked standard-mode token can be edited.")
    values = {
        "name": token.name,
        "rules": "\n".join(token.restrictions),
        "ips": "\n".join(token.allowed_ips),
        "expires_on": token.expires_at.date().isoformat() if token.expires_at else "",
        "rate_limit": token.rate_limit or "",
        "credits": "" if token.credits is None else str(token.credits),
        "refill": token.refill or "",
        "back": visit.request.args.get("back"),
    }
    return _edit_page(visit, token, values)


class _Limits(TypedDict, total=False):
    rate_limit: str | None
    credits: int | None
    refill: str | None


def _limits(form: FormData, token: Token | None) -> _Limits:
    """The limits the edit form changes: an empty field removes one; the same credits as
    now keep the credits left (given to ``edit``, credits start a new allotment). A field
    the form did not send (a page from before limits were on it) keeps its limit."""
    limits = _Limits()
    if "rate_limit" in form:
        limits["rate_limit"] = optional(form.get("rate_limit"))
    if "credits" in form:
        credits = parse_credits(form.get("credits"))
        if token is None or credits != token.credits:
            limits["credits"] = credits
    if "refill" in form:
        limits["refill"] = optional(form.get("refill"))
    return limits


def edit(visit: Visit, token_id: str) -> Response:
    """Change a standard-mode token's name, rules, addresses, expiry and limits."""
    form = visit.request.form
    fields = ("name", "rules", "ips", "expires_on", "rate_limit", "credits", "refill", "back")
    values = {key: form.get(key) for key in fields}
    try:
        # Read without the pages' own check: the API decides (and audits) who may edit.
        current = visit.tokens.get(token_id) if is_token_id(token_id) else None
        day = parse_date(values["expires_on"], what="Expires on")
        # An empty date removes the expiry (the API refuses it if the policy must have one);
        # the day the token already expires on keeps its expiry to the second.
        expires_at: datetime | Unset | None = day
        if current is not None:
            shown = current.expires_at.date() if current.expires_at is not None else None
            if (day.date() if day is not None else None) == shown:
                expires_at = UNSET
        token = visit.tokens.edit(
            actor=visit.user,
            token_id=token_id,
            name=values["name"],
            restrictions=lines(values["rules"]),
            allowed_ips=lines(values["ips"]),
            expires_at=expires_at,
            **_limits(form, current),
        )
    except (ApiTokensError, ValueError) as exc:
        refusal = visit.refused(exc)
        if refusal.status in (403, 404):
            raise refusal from None
        return _edit_page(visit, visit.token(token_id), values, refusal.status, refusal.message)
    return back_to(visit, values["back"], done="edited", token=token.id)
