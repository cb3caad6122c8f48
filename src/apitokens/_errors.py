"""Exceptions raised by apitokens.

The whole tree::

    ApiTokensError                  never raised directly; catch it to catch all
    ├── RuleSyntaxError             (also ValueError) a restriction rule does not parse
    ├── PolicyViolation             (also ValueError) the token asked for breaks a policy limit
    ├── PermissionDenied            the acting user lacks the right for this call
    ├── TokenNotFound               (also LookupError) no token has this id
    ├── TokenImmutable              a secure-mode token cannot be edited or revealed
    └── StorageError                the token store failed or cannot be used
        └── SchemaVersionError      the database was written by a newer apitokens

Messages never contain a token's secret.
"""

from __future__ import annotations

__all__ = [
    "ApiTokensError",
    "PermissionDenied",
    "PolicyViolation",
    "RuleSyntaxError",
    "SchemaVersionError",
    "StorageError",
    "TokenImmutable",
    "TokenNotFound",
]


class ApiTokensError(Exception):
    """Root of every apitokens exception; never raised directly."""


class RuleSyntaxError(ApiTokensError, ValueError):
    """A restriction rule does not parse.

    Attributes:
        rule: the rule text as given.
        column: 1-based position in ``rule`` where the problem was found.
        reason: what is wrong, without the position.
    """

    def __init__(self, rule: str, column: int, reason: str) -> None:
        self.rule = rule
        self.column = column
        self.reason = reason
        super().__init__(f"column {column}: {reason}")

    def __reduce__(self) -> tuple[type[RuleSyntaxError], tuple[str, int, str]]:
        return (type(self), (self.rule, self.column, self.reason))


class PolicyViolation(ApiTokensError, ValueError):
    """The token asked for breaks a limit of the policy (lifetime, expiry, unbound)."""


class PermissionDenied(ApiTokensError):
    """The acting user lacks the right this call needs."""


class TokenNotFound(ApiTokensError, LookupError):
    """No token has the given id."""


class TokenImmutable(ApiTokensError):
    """The token is in secure mode: it cannot be edited or revealed, only rotated or revoked."""


class StorageError(ApiTokensError):
    """The token store failed, is unavailable, or holds data it cannot use."""


class SchemaVersionError(StorageError):
    """The database was written by a newer version of apitokens than this one."""
