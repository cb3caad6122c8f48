"""Token storage: the TokenStore protocol, its two built-in backends, and their records.

``MemoryStore`` keeps everything in this process; ``SQLiteStore`` keeps it in
one SQLite file that several processes may share. Write your own backend by
implementing :class:`TokenStore` (it stores and returns :class:`StoredToken`,
folds :class:`Usage` and keeps :class:`~apitokens.AuditEvent`) and subclassing
``apitokens.testing.StoreContract`` in its tests; :class:`EntryWriter` is an
optional faster way in for the audit writer's batches of :class:`AuthEntry`
(see ``docs/storage.md``). :func:`open_store` opens a store named by a string
(a path or a URL), and :func:`redact_dsn` names one without its password.
"""

from __future__ import annotations

from apitokens._model import AuthEntry, StoredToken, Usage
from apitokens.storage._open import open_store, redact_dsn
from apitokens.storage._protocol import (
    ChangeFeed,
    CreditSpend,
    EntryWriter,
    FailureLedger,
    NoticeLedger,
    TokenStore,
    UsageLedger,
)
from apitokens.storage.memory import MemoryStore
from apitokens.storage.sqlite import SQLiteStore

__all__ = [
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
]
