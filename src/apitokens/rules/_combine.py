"""One regex call for many rules: the URL regexes of clause-free rules, combined per method.

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
from collections.abc import Sequence
from typing import Final, final

import regex

from apitokens.rules._bound import max_unclocked_length
from apitokens.rules._syntax import METHODS, ParsedRule

__all__ = ["CombinedMatcher", "combinable"]

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

# A pattern and the longest text it is matched against without the clock (_rules_bound).
Bounded = tuple[regex.Pattern[str], int]


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
        built: dict[tuple[int, ...], tuple[Bounded, ...]] = {}
        self._by_method: dict[str, tuple[Bounded, ...]] = {}
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

    def patterns(self, method: str) -> tuple[Bounded, ...]:
        """The combined patterns for ``method`` (upper-case); ``()`` if no rule allows it.

        Each with the longest text it is matched against without the clock.
        """
        found = self._by_method.get(method)
        return self._by_method[_OTHER] if found is None else found


def _build(chosen: list[ParsedRule]) -> tuple[Bounded, ...]:
    patterns: list[Bounded] = []
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


def _compile(rules: list[ParsedRule]) -> list[Bounded]:
    """One pattern for ``rules``; their own patterns if there is one rule or joining fails."""
    own = [(rule.url_pattern, rule.url_unclocked) for rule in rules]
    if len(rules) == 1:
        return own
    try:
        joined = "|".join(f"(?:{rule.url})" for rule in rules)
        combined = regex.compile(joined, regex.VERSION0)
    except (regex.error, RecursionError, MemoryError, OverflowError):  # pragma: no cover
        return own
    if combined.flags != _PLAIN_FLAGS:  # pragma: no cover - combinable() excludes this
        return own
    return [(combined, max_unclocked_length(joined))]
