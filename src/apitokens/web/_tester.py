"""The rule tester beside the rules field: would this request pass, and if not, why.

Each rule is read and matched by the same code as ``apitokens rule check``
(:func:`apitokens.rules.check_request`), so the page and the command always agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from apitokens._errors import RuleSyntaxError
from apitokens._model import Scope
from apitokens.rules import DEFAULT_RULE_TIMEOUT, Deadline, RestrictionRule, check_request

from ._forms import lines

__all__ = ["RuleVerdict", "TesterResult", "run_tester"]

_MAX_RULES = 100
"""Rules the tester reads at once: it answers as a user types, so it stays cheap."""
_MAX_BODY = 64 * 1024
"""The largest test body: each rule reads it again, and a tester body is typed by hand."""


@dataclass(frozen=True)
class RuleVerdict:
    """One rule's answer: matched, or why not; or where it does not parse."""

    rule: str
    matched: bool
    reason: str = ""
    column: int | None = None


@dataclass(frozen=True)
class TesterResult:
    """The tester's answer for all the rules of a token."""

    allowed: bool
    summary: str
    rules: tuple[RuleVerdict, ...]

    def as_json(self) -> dict[str, object]:
        """The JSON body of the tester's endpoint."""
        return {
            "allowed": self.allowed,
            "summary": self.summary,
            "rules": [asdict(verdict) for verdict in self.rules],
        }


def _verdict(text: str, method: str, path: str, body: bytes, deadline: Deadline) -> RuleVerdict:
    try:
        rule = RestrictionRule.parse(text)
    except RuleSyntaxError as exc:
        return RuleVerdict(
            text, False, f"does not parse: column {exc.column}: {exc.reason}", exc.column
        )
    found = check_request(rule, method, path, body=body, timeout=deadline)
    return RuleVerdict(str(rule), found.matched, found.reason)


def run_tester(
    rules: str,
    method: str,
    path: str,
    *,
    body: str = "",
    scope: str = "",
    timeout: float = DEFAULT_RULE_TIMEOUT,
) -> TesterResult:
    """Test a request against the rules typed in the create form (one a line).

    Args:
        rules: the rules field's text.
        method: the test request's method.
        path: its path, with an optional ``?query``.
        body: its JSON body, if any.
        scope: the scope chosen in the form (``""``: not taken into account).
        timeout: the regex budget of the whole test request, for all its rules
            together, as the API gives a request (``Policy.rule_timeout``).
    """
    method = method.strip().upper() or "GET"
    path = path.strip() or "/"
    texts = lines(rules)[:_MAX_RULES]
    raw = body.encode("utf-8")
    if len(raw) > _MAX_BODY:
        return TesterResult(False, f"The test body is over {_MAX_BODY // 1024} KiB", ())
    deadline = Deadline(timeout)  # one budget for every rule, as a request has
    verdicts = tuple(_verdict(text, method, path, raw, deadline) for text in texts)
    bad = [v for v in verdicts if v.column is not None]
    in_scope = scope not in {s.value for s in Scope} or Scope(scope).allows(method)
    if bad:
        summary = f"{len(bad)} rule{'s' if len(bad) > 1 else ''} do not parse: fix them first"
        if len(bad) == 1:
            summary = "A rule does not parse: fix it first"
        return TesterResult(False, summary, verdicts)
    if not in_scope:
        return TesterResult(
            False, f"Refused: the read-only scope does not allow {method}", verdicts
        )
    if not verdicts:
        return TesterResult(
            True, "Allowed: no rules, so every request within the scope passes", verdicts
        )
    matched = next((v for v in verdicts if v.matched), None)
    if matched is not None:
        return TesterResult(True, f"Allowed by the rule {matched.rule}", verdicts)
    return TesterResult(False, "Refused: no rule matches this request", verdicts)
