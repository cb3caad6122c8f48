"""PostgresStore: a TokenStore in PostgreSQL, shared by every process and host that uses it.

Needs the ``postgres`` extra (psycopg 3 and psycopg-pool)::

    pip install 'apitokens[postgres]'

    from apitokens.postgres import PostgresStore
    store = PostgresStore("postgresql://apitokens@db.internal/app")

The tables are prefixed ``apitokens_`` (they usually live beside the application's
own). The schema is versioned as SQLite's is (``apitokens_schema`` lists the applied
versions) and migrated when a store opens, under a session advisory lock, so many
workers starting at once migrate once. Every change to a token is announced
(NOTIFY) to every process listening on the store's channel, so that each forgets its
cached record at once (``subscribe``). See ``docs/storage.md``.
"""

from __future__ import annotations

# First: without the extra, importing any part of the package says what to install.
try:
    import psycopg  # noqa: F401
    import psycopg_pool  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "apitokens.postgres needs psycopg 3 and psycopg-pool, which apitokens does not"
        f" install by itself ({error.name} is missing): pip install 'apitokens[postgres]'",
        name=error.name,
    ) from error

from apitokens.postgres._migrate import schema_version
from apitokens.postgres._sql import LATEST_VERSION, MIGRATIONS
from apitokens.postgres._store import PostgresStore

__all__ = ["LATEST_VERSION", "MIGRATIONS", "PostgresStore", "schema_version"]
