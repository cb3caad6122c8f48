"""Restriction rules (DESIGN §3): the grammar, its canonical form, and matching a request.

``RestrictionRule`` and ``RuleMatch`` are public (re-exported by :mod:`apitokens`);
``RuleSet``, the rules of one token compiled for requests, is what the core uses.
"""

from __future__ import annotations

from apitokens.rules._rule import DEFAULT_RULE_TIMEOUT, RestrictionRule, RuleMatch, RuleSet

__all__ = ["DEFAULT_RULE_TIMEOUT", "RestrictionRule", "RuleMatch", "RuleSet"]
