"""The public surface is exactly what the docs promise, and sorted (httpx-style)."""

from __future__ import annotations

import types

import apitokens
import apitokens.storage

PUBLIC = {
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
    "Scope",
    "SchemaVersionError",
    "StorageError",
    "StoredToken",
    "Token",
    "TokenImmutable",
    "TokenNotFound",
    "TokenStatus",
    "TokenStore",
    "Usage",
    "open_store",
}


def test_all_is_exactly_the_public_surface() -> None:
    assert set(apitokens.__all__) == PUBLIC
    assert len(apitokens.__all__) == len(PUBLIC)


def test_all_is_sorted() -> None:
    # Constants first, then classes, alphabetically (ruff's RUF022 order).
    assert apitokens.__all__ == sorted(apitokens.__all__, key=lambda n: (not n.isupper(), n))


def test_every_public_name_resolves_and_nothing_else_is_exported() -> None:
    for name in apitokens.__all__:
        assert getattr(apitokens, name) is not None
    # Submodules (storage, wsgi, asgi, starlette, cli) are attributes once imported.
    exported = {
        name
        for name, value in vars(apitokens).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert exported == PUBLIC


def test_errors_form_one_tree_and_bad_input_is_value_error() -> None:
    for name in (
        "RuleSyntaxError",
        "PermissionDenied",
        "TokenNotFound",
        "TokenImmutable",
        "PolicyViolation",
        "StorageError",
        "SchemaVersionError",
    ):
        assert issubclass(getattr(apitokens, name), apitokens.ApiTokensError)
    assert issubclass(apitokens.RuleSyntaxError, ValueError)
    assert issubclass(apitokens.PolicyViolation, ValueError)
    assert issubclass(apitokens.SchemaVersionError, apitokens.StorageError)
    assert not issubclass(apitokens.PermissionDenied, ValueError)


def test_public_names_have_docstrings() -> None:
    for name in apitokens.__all__:
        obj = getattr(apitokens, name)
        if isinstance(obj, type):
            assert obj.__doc__, name


def test_a_backend_author_finds_what_a_store_stores_in_apitokens_storage() -> None:
    assert apitokens.storage.__all__ == sorted(apitokens.storage.__all__)
    assert set(apitokens.storage.__all__) == {
        "AuthEntry",
        "ChangeFeed",
        "CreditSpend",
        "EntryWriter",
        "FailureLedger",
        "MemoryStore",
        "NoticeLedger",
        "SQLiteStore",
        "StoredToken",
        "TokenStore",
        "Usage",
        "UsageLedger",
        "open_store",
        "redact_dsn",
    }
    assert apitokens.storage.StoredToken is apitokens.StoredToken
    assert apitokens.storage.Usage is apitokens.Usage
    for name in apitokens.storage.__all__:
        assert getattr(apitokens.storage, name).__doc__, name
