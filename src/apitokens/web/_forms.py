"""The pages' forms: what a user typed, read into the arguments of the management API.

Nothing here decides what is allowed: the API does, and its refusals are shown
on the page. These functions only read fields and offer the choices the policy
leaves open, so the form does not invite a refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from apitokens._limits import shown
from apitokens._model import Scope
from apitokens._policy import Policy

from ._http import FormData

__all__ = [
    "GRACE_CHOICES",
    "CreateForm",
    "ExpiryChoice",
    "describe",
    "expiry_choices",
    "lines",
    "optional",
    "parse_credits",
    "parse_date",
    "parse_grace",
]


@dataclass(frozen=True)
class ExpiryChoice:
    """One option of the expiry field."""

    value: str
    label: str
    lifetime: timedelta | None
    """``None``: never expires."""


_EXPIRIES = (7, 30, 60, 90, 180, 365)

GRACE_CHOICES = (
    ("0", "None: the old secret stops working at once"),
    ("600", "10 minutes"),
    ("3600", "1 hour"),
    ("86400", "1 day"),
    ("604800", "7 days"),
)


def expiry_choices(policy: Policy) -> list[ExpiryChoice]:
    """The expiries the policy allows: so many days, the longest allowed, and "never" when
    nothing requires an expiry."""
    longest = policy.max_lifetime
    choices = [
        ExpiryChoice(str(days), f"{days} days", timedelta(days=days))
        for days in _EXPIRIES
        if longest is None or timedelta(days=days) <= longest
    ]
    if longest is not None and all(choice.lifetime != longest for choice in choices):
        label = describe(longest)
        choices.append(ExpiryChoice("longest", f"{label} (the longest allowed)", longest))
    if longest is None and not policy.require_expiry:
        choices.append(ExpiryChoice("never", "Never", None))
    return choices


def describe(span: timedelta) -> str:
    """``"45 days"``, ``"12 hours"``: a lifetime, for a label."""
    if span >= timedelta(days=1):
        days = span // timedelta(days=1)
        return f"{days} day{'' if days == 1 else 's'}"
    hours = max(span // timedelta(hours=1), 0)
    if hours:
        return f"{hours} hour{'' if hours == 1 else 's'}"
    minutes = max(span // timedelta(minutes=1), 1)
    return f"{minutes} minute{'' if minutes == 1 else 's'}"


def lines(text: str) -> list[str]:
    """The non-blank lines of a textarea, stripped (one rule or address a line)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_date(text: str, *, what: str) -> datetime | None:
    """An ``<input type="date">`` value (``YYYY-MM-DD``) as midnight UTC, or ``None`` if blank.

    Raises:
        ValueError: not a date, naming the field.
    """
    text = text.strip()
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a date (YYYY-MM-DD)") from None
    return datetime.combine(day, time(), tzinfo=UTC)


def parse_credits(text: str) -> int | None:
    """The credits field: a whole number, or ``None`` if blank (the API checks its range).

    Raises:
        ValueError: not a whole number.
    """
    text = text.strip()
    if not text:
        return None
    # Too many digits is out of range anyway (and int() of thousands is refused).
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise ValueError(f"Credits: {shown(text)} is not a whole number of uses (1 or more)")
    return int(text)


def optional(text: str) -> str | None:
    """A text field's value, stripped, or ``None`` if blank (a rate limit or refill)."""
    return text.strip() or None


def parse_grace(text: str) -> timedelta:
    """The rotate form's grace period: one of :data:`GRACE_CHOICES`, in seconds."""
    if text not in {value for value, _ in GRACE_CHOICES}:
        raise ValueError("choose a grace period from the list")
    return timedelta(seconds=int(text))


@dataclass(frozen=True)
class CreateForm:
    """The create form's fields, as typed (shown again when the API refuses them)."""

    name: str = ""
    user: str = ""
    expires: str = ""
    expires_on: str = ""
    scope: str = Scope.READ_ONLY.value
    rules: str = ""
    ips: str = ""
    mode: str = "secure"
    unbound: bool = False
    rate_limit: str = ""
    credits: str = ""
    refill: str = ""
    check_method: str = "GET"
    check_path: str = ""
    check_body: str = ""

    @classmethod
    def read(cls, form: FormData) -> CreateForm:
        """The fields of a submitted create form."""
        return cls(
            name=form.get("name"),
            user=form.get("user").strip(),
            expires=form.get("expires"),
            expires_on=form.get("expires_on"),
            scope=form.get("scope", Scope.READ_ONLY.value),
            rules=form.get("rules"),
            ips=form.get("ips"),
            mode=form.get("mode", "secure"),
            unbound=form.get("unbound") == "yes",
            rate_limit=form.get("rate_limit"),
            credits=form.get("credits"),
            refill=form.get("refill"),
            check_method=form.get("check_method", "GET"),
            check_path=form.get("check_path"),
            check_body=form.get("check_body"),
        )

    def arguments(self, actor: str, choices: list[ExpiryChoice]) -> dict[str, object]:
        """The keyword arguments of ``ApiTokens.create`` for this form.

        Args:
            actor: the signed-in user.
            choices: the expiries the form offered (:func:`expiry_choices`).

        Raises:
            ValueError: a field that cannot be read (the API checks the rest).
        """
        if self.scope not in {scope.value for scope in Scope}:
            raise ValueError("choose a scope from the list")
        if self.mode not in ("secure", "standard"):
            raise ValueError("choose secure or standard mode")
        expires_at = parse_date(self.expires_on, what="Expires on")
        expires_in: timedelta | None = None
        if expires_at is None:
            chosen = next((c for c in choices if c.value == self.expires), None)
            if chosen is None:
                raise ValueError("choose an expiry from the list, or a date")
            expires_in = chosen.lifetime
        arguments: dict[str, object] = {
            "actor": actor,
            "name": self.name,
            "scope": Scope(self.scope),
            "expires_in": expires_in,
            "expires_at": expires_at,
            "restrictions": lines(self.rules),
            "allowed_ips": lines(self.ips),
            "secure": self.mode == "secure",
            "rate_limit": optional(self.rate_limit),
            "credits": parse_credits(self.credits),
            "refill": optional(self.refill),
        }
        if self.unbound:
            arguments["unbound"] = True
        elif self.user and self.user != actor:
            arguments["user"] = self.user
        return arguments
