"""The rules of one token (``RuleSet``), and the one regex call that tries many of them.

A request is allowed when any rule matches. For a rule without QueryParam or JsonData
clauses, "matches" is "the method is allowed and the URL regex fullmatches the path", so
for one method the rules that allow it can be tried all at once: ``(?:u1)|(?:u2)|...``
fullmatches the path exactly when one of ``u1``, ``u2``, ... does. That turns a hundred
regex calls (each paying the ``regex`` module's call and timeout set-up, a clock read)
into one.

The equivalence holds for ordinary regexes; some constructs behave differently inside a
bigger pattern, and a rule using any of them is left out of the combination and matched
on its own (:func:`combinable`):

- inline flags such as ``(?i)`` (the ``regex`` module applies them from where they stand
  on, so one rule's flag could reach into the next alternative), and any rule whose
  compiled flags differ from the plain ones;
- backreferences and named groups (``\\1``, ``(?P=n)``, ``\\g<n>``, ``(?P<n>...)``):
  group numbers and names change when patterns are joined;
- recursion, subroutine calls and conditionals (``(?R)``, ``(?1)``, ``(?&n)``,
  ``(?(1)...)``), branch resets, comments, ``\\K``, backtracking verbs such as
  ``(*PRUNE)`` and ``(*SKIP)`` (they act across alternatives), and fuzzy constraints.

The test for these is deliberately coarse: it reads the source text without parsing it,
so an escaped look-alike (``\\(?P``) is also refused. Refusing costs only speed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, final

import regex

from apitokens._errors import RuleSyntaxError
from apitokens._request import AuthRequest, shown_method
from apitokens.rules._body import json_media_type_problem
from apitokens.rules._match import (
    AT_PATH,
    BUDGET_EXCEEDED,
    DEFAULT_RULE_TIMEOUT,
    MATCHED,
    BudgetExceededError,
    Deadline,
    RequestView,
    RuleMatch,
    failure,
    method_failure,
    path_reason,
)
from apitokens.rules._rule import RestrictionRule
from apitokens.rules._syntax import METHODS, ParsedRule

__all__ = ["CombinedMatcher", "RuleSet", "combinable"]

# A combined pattern holds at most this many rules, or this much source (counted repeats
# weigh what they expand to); more rules make several patterns, still few calls.
MAX_ALTERNATIVES: Final = 256
MAX_WEIGHT: Final = 65_536

_PLAIN_FLAGS: Final = regex.compile("", regex.VERSION0).flags
_UNSAFE: Final = re.compile(
    r"""
      \(\?[a-zA-Z^-]+\)             # a global or positional inline flag: (?i) (?-i) (?V0)
    | \(\?[a-zA-Z]*-                # turning a flag off
    | \(\?P                         # named group, named backreference, named call
    | \(\?<(?![=!])                 # named group (?<name>...)
    | \(\?'                         # named group (?'name'...)
    | \(\?[&R0-9+(|#]               # call, recursion, conditional, branch reset, comment
    | \(\*                          # backtracking verbs (*PRUNE) (*SKIP) (*FAIL)
    | \\[1-9gkK]                    # backreferences, \K
    | \{[^}]*[a-zA-Z][^}]*\}        # fuzzy constraints {e<=1}, {1i+1d<3}
    """,
    re.VERBOSE,
)
_COUNTS: Final = re.compile(r"\{([0-9]{1,6})")
_OTHER: Final = ""  # key for methods outside METHODS: only rules without a method list


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules of one token, compiled once: a request is allowed if any rule matches.

    An empty rule set allows every request. The URL regexes of rules without clauses
    are also joined, per method, into one pattern (:class:`CombinedMatcher`), so a request
    costs about one regex call however many such rules the token has.

    Attributes:
        rules: the rules, in order.
        needs_body: whether any rule has a JsonData clause, i.e. whether the
            request body must be read before matching.
    """

    rules: tuple[RestrictionRule, ...] = ()
    needs_body: bool = field(init=False)
    _combined: CombinedMatcher = field(init=False, repr=False, compare=False)
    _individual: tuple[tuple[int, ParsedRule], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rules = tuple(self.rules)
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "needs_body", any(rule.json for rule in rules))
        parsed = [(index, rule._parsed) for index, rule in enumerate(rules)]
        combined = [(index, rule) for index, rule in parsed if combinable(rule)]
        individual = tuple((index, rule) for index, rule in parsed if not combinable(rule))
        object.__setattr__(self, "_combined", CombinedMatcher(combined))
        object.__setattr__(self, "_individual", individual)

    def __reduce__(self) -> tuple[type[RuleSet], tuple[tuple[RestrictionRule, ...]]]:
        return (type(self), (self.rules,))

    @classmethod
    def parse(cls, lines: Iterable[str]) -> RuleSet:
        """Parse one rule per item; blank and whitespace-only items are skipped.

        Args:
            lines: the rules. A single ``str`` is read as text with one rule per line.

        Returns:
            The compiled rule set.

        Raises:
            RuleSyntaxError: an item is not a valid rule. ``.reason`` starts with
                ``"rule N: "`` (N counts items from 1, blank ones included) and
                ``.column`` is relative to that item.
        """
        items = lines.splitlines() if isinstance(lines, str) else lines
        rules: list[RestrictionRule] = []
        for number, line in enumerate(items, 1):
            if isinstance(line, str) and not line.strip():
                continue
            try:
                rules.append(RestrictionRule.parse(line))
            except RuleSyntaxError as exc:
                raise RuleSyntaxError(
                    exc.rule, exc.column, f"rule {number}: {exc.reason}"
                ) from None
        return cls(tuple(rules))

    def reads_body(self, request: AuthRequest) -> bool:
        """Whether matching ``request`` reads its body.

        True when a rule has a JsonData clause (:attr:`needs_body`) and the request's
        ``Content-Type`` is JSON. Otherwise every JsonData clause fails on the
        ``Content-Type`` alone, whatever the body: it need not be read, nor held to
        ``max_body_bytes``.
        """
        return self.needs_body and not json_media_type_problem(request.headers)

    def match(
        self,
        request: AuthRequest,
        *,
        timeout: float | Deadline = DEFAULT_RULE_TIMEOUT,
        overrides: Sequence[str] = (),
    ) -> RuleMatch:
        """Decide whether any rule allows ``request``; never raises for any request.

        The request is decoded once for all rules (its query and body parsed, each
        JSON value formatted, at most once), and every regex match runs with the
        ``regex`` module's timeout, within one budget.

        Args:
            request: the request; ``path`` still percent-encoded, ``body`` read if
                :attr:`needs_body`.
            timeout: seconds all regex matching of this call may take together, or a
                :class:`Deadline` shared with other calls; running out denies.
            overrides: methods the request must be allowed as too (its method-override
                headers), each matched on the same reading, within the same budget.

        Returns:
            ``RuleMatch(True, "")`` if a rule matches (or there are none) for the
            method and every override; otherwise the reason of the rule that got
            furthest, e.g. ``"no rule matched; rule 2: query parameter 'x' is missing"``
            (with ``" (as method override DELETE)"`` when an override failed).

        Raises:
            NeedsThreadError: a match needs more than a slice of time and the
                deadline is ``on_loop``: decide again on a worker thread.
        """
        if not self.rules:
            return MATCHED
        deadline = timeout if isinstance(timeout, Deadline) else Deadline(timeout)
        view = RequestView(request, deadline)
        if view.path_error:
            return RuleMatch(False, view.path_error)
        found = self._match(view)
        for method in overrides:
            if not found:
                break
            view.method = method.upper() if method.isascii() else ""
            found = self._match(view)
            if not found:
                shown = shown_method(method)
                return RuleMatch(False, f"{found.reason} (as method override {shown})")
        return found

    def _match(self, view: RequestView) -> RuleMatch:
        try:
            for pattern in self._combined.patterns(view.method):
                if view.fullmatch(pattern, view.path):
                    return MATCHED
            failures: dict[int, tuple[int, str]] = {}  # made only once a match failed
            for index, rule in self._individual:
                found = failure(rule, view)
                if found is None:
                    return MATCHED
                failures[index] = found
        except BudgetExceededError:
            return RuleMatch(False, BUDGET_EXCEEDED)
        # Denied. A combined rule failed on its method or, since its method was tried
        # and nothing matched, on its path: say which without matching again.
        for index, rule in self._combined.rules:
            failures[index] = method_failure(rule, view) or (AT_PATH, path_reason(rule))
        best: tuple[int, int, str] | None = None
        for index in range(len(self.rules)):
            reached, why = failures[index]
            if best is None or reached > best[0]:
                best = (reached, index + 1, why)
        assert best is not None
        return RuleMatch(False, f"no rule matched; rule {best[1]}: {best[2]}")


def combinable(rule: ParsedRule) -> bool:
    """Whether ``rule`` may be tried as one alternative of a combined pattern."""
    if rule.query or rule.json:
        return False
    if rule.url_pattern.flags != _PLAIN_FLAGS:
        return False
    return _UNSAFE.search(rule.url) is None


@final
class CombinedMatcher:
    """The combined URL patterns of some clause-free rules, built for every method up front.

    Built when the rule set is, never during a request: compiling a large joined
    pattern takes long enough to spend a request's regex budget, and on the ASGI
    event loop it would stall every other request.

    Args:
        rules: ``(index, rule)`` pairs, every rule :func:`combinable`, in rule order.
    """

    __slots__ = ("_by_method", "rules")

    def __init__(self, rules: Sequence[tuple[int, ParsedRule]]) -> None:
        self.rules = tuple(rules)
        built: dict[tuple[int, ...], tuple[regex.Pattern[str], ...]] = {}
        self._by_method: dict[str, tuple[regex.Pattern[str], ...]] = {}
        for method in (*METHODS, _OTHER):
            chosen = [
                (index, rule)
                for index, rule in self.rules
                if not rule.methods or (method and method in rule.methods)
            ]
            # Methods that select the same rules share one build.
            key = tuple(index for index, _ in chosen)
            if key not in built:
                built[key] = _build([rule for _, rule in chosen])
            self._by_method[method] = built[key]

    def patterns(self, method: str) -> tuple[regex.Pattern[str], ...]:
        """The combined patterns for ``method`` (upper-case); ``()`` if no rule allows it."""
        found = self._by_method.get(method)
        return self._by_method[_OTHER] if found is None else found


def _build(chosen: list[ParsedRule]) -> tuple[regex.Pattern[str], ...]:
    patterns: list[regex.Pattern[str]] = []
    chunk: list[ParsedRule] = []
    size = 0
    for rule in chosen:
        weight = _weight(rule.url)
        if chunk and (len(chunk) >= MAX_ALTERNATIVES or size + weight > MAX_WEIGHT):
            patterns += _compile(chunk)
            chunk, size = [], 0
        chunk.append(rule)
        size += weight
    if chunk:
        patterns += _compile(chunk)
    return tuple(patterns)


def _weight(source: str) -> int:
    """A rough size of the compiled pattern: its length plus the copies counted repeats make."""
    return len(source) + sum(int(count) for count in _COUNTS.findall(source))


def _compile(rules: list[ParsedRule]) -> list[regex.Pattern[str]]:
    """One pattern for ``rules``; their own patterns if there is one rule or joining fails."""
    own = [rule.url_pattern for rule in rules]
    if len(rules) == 1:
        return own
    try:
        joined = "|".join(f"(?:{rule.url})" for rule in rules)
        combined = regex.compile(joined, regex.VERSION0)
    except (regex.error, RecursionError, MemoryError, OverflowError):  # pragma: no cover
        return own
    if combined.flags != _PLAIN_FLAGS:  # pragma: no cover - combinable() excludes this
        return own
    return [combined]
