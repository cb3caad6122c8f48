"""The project's ApiTokens (``settings.APITOKENS``): a MemoryStore and the cheap hasher."""

from __future__ import annotations

from apitokens import ApiTokens, MemoryStore, Policy
from tests.support import CHEAP_HASHER

tokens = ApiTokens(
    MemoryStore(),
    policy=Policy(protected_paths=["/api/", "/plain/"], max_body_bytes=1024),
    hasher=CHEAP_HASHER,
)
