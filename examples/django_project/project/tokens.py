"""The project's ``ApiTokens`` (``settings.APITOKENS``): who may call ``/api/`` and how.

Its tokens live in their own SQLite file beside Django's database. Every request
to ``/api/`` with a token goes through it: a token's owner must be an active
Django user, a read-only token cannot write, and every decision is audited.
"""

from __future__ import annotations

from django.conf import settings

from apitokens import ApiTokens, Policy, SQLiteStore

tokens = ApiTokens(
    SQLiteStore(str(settings.BASE_DIR / "apitokens.sqlite3")),
    policy=Policy(protected_paths=["/api/"]),
)
