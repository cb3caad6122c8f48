"""Restriction rules (DESIGN §3): the grammar, its canonical form, and matching a request.

``RestrictionRule`` and ``RuleMatch`` are public (re-exported by :mod:`apitokens`). The
core uses the rest: ``RuleSet``, a token's rules compiled for requests; ``Deadline``,
the one regex time budget of a request; ``decode_path``, the one reading of a request
path that the rules and ``Policy.protects`` share; ``check_request``, the one reading
of a test request that ``apitokens rule check`` and the token pages' rule tester share.

Modules: ``_syntax`` and ``_regex`` read the grammar, ``_rule`` holds a parsed rule and
its canonical text, ``_match`` matches one rule against a request, ``_combine`` a token's
rules at once, ``_body`` reads a JSON body, ``_path`` decodes the path.
"""

from __future__ import annotations

from apitokens.rules._check import check_request
from apitokens.rules._combine import RuleSet
from apitokens.rules._match import DEFAULT_RULE_TIMEOUT, Deadline, NeedsThreadError, RuleMatch
from apitokens.rules._path import decode_path
from apitokens.rules._rule import RestrictionRule

__all__ = [
    "DEFAULT_RULE_TIMEOUT",
    "Deadline",
    "NeedsThreadError",
    "RestrictionRule",
    "RuleMatch",
    "RuleSet",
    "check_request",
    "decode_path",
]
