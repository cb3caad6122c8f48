"""apitokens: personal access tokens for any Python web service.

Users create tokens that stand in for their password; admins decide who may
create what; a token can be narrowed to read-only, to IP ranges, or to exact
method/URL/query/JSON-body patterns; every use is audited; a leaked token is
revoked without touching the password.

    from apitokens import ApiTokens, Policy, SQLiteStore

    tokens = ApiTokens(SQLiteStore("tokens.db"), policy=Policy(protected_paths=["/api/"]))
    app.wsgi_app = tokens.wsgi(app.wsgi_app)      # Flask, Django (WSGI)
    app = tokens.asgi(app)                        # FastAPI, Starlette (ASGI)
"""

import logging as _logging

from ._api import ApiTokens
from ._errors import (
    ApiTokensError,
    PermissionDenied,
    PolicyViolation,
    RuleSyntaxError,
    SchemaVersionError,
    StorageError,
    TokenImmutable,
    TokenNotFound,
)
from ._flow import RequestFlow, Requirement
from ._hashing import Argon2Hasher, Hasher, HmacSha256Hasher
from ._model import (
    Action,
    AuditEvent,
    IssuedToken,
    Outcome,
    Scope,
    StoredToken,
    Token,
    TokenStatus,
    Usage,
)
from ._policy import AuthScheme, Policy
from ._request import AuthRequest
from ._result import AuthResult
from ._tokens import TOKEN_PATTERN
from .rules import RestrictionRule, RuleMatch
from .storage import MemoryStore, SQLiteStore, TokenStore, open_store

__all__ = [
    "TOKEN_PATTERN",
    "Action",
    "ApiTokens",
    "ApiTokensError",
    "Argon2Hasher",
    "AuditEvent",
    "AuthRequest",
    "AuthResult",
    "AuthScheme",
    "Hasher",
    "HmacSha256Hasher",
    "IssuedToken",
    "MemoryStore",
    "Outcome",
    "PermissionDenied",
    "Policy",
    "PolicyViolation",
    "RequestFlow",
    "Requirement",
    "RestrictionRule",
    "RuleMatch",
    "RuleSyntaxError",
    "SQLiteStore",
    "SchemaVersionError",
    "Scope",
    "StorageError",
    "StoredToken",
    "Token",
    "TokenImmutable",
    "TokenNotFound",
    "TokenStatus",
    "TokenStore",
    "Usage",
    "open_store",
]

__version__ = "0.1.0.dev0"

# A library adds no handlers of its own (the application configures logging);
# this only stops Python's last-resort handler printing our records to stderr.
_logging.getLogger("apitokens").addHandler(_logging.NullHandler())
