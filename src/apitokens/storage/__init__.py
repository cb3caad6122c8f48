"""Token storage: the TokenStore protocol and its two built-in backends.

``MemoryStore`` keeps everything in this process; ``SQLiteStore`` keeps it in
one SQLite file that several processes may share. Write your own backend by
implementing :class:`TokenStore` and running ``tests/storage/contract.py``
against it (see ``docs/storage.md``).
"""

from __future__ import annotations

from apitokens.storage._protocol import TokenStore
from apitokens.storage.memory import MemoryStore
from apitokens.storage.sqlite import SQLiteStore

__all__ = ["MemoryStore", "SQLiteStore", "TokenStore"]
