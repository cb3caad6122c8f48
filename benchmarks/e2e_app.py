"""The app uvicorn serves in the end-to-end benchmark: bare, or wrapped by ``tokens.asgi``.

``create()`` is a uvicorn factory; it reads ``BENCH_E2E_MODE`` (``bare`` or ``wrapped``)
and ``BENCH_E2E_DB`` (the SQLite file, holding the token the load generator sends).
"""

from __future__ import annotations

import os

from apitokens import ApiTokens, Policy, SQLiteStore
from benchmarks.apps import ASGIApp, bare_asgi


def create() -> ASGIApp:
    if os.environ.get("BENCH_E2E_MODE", "bare") == "bare":
        return bare_asgi
    store = SQLiteStore(os.environ["BENCH_E2E_DB"])
    tokens = ApiTokens(store, policy=Policy(protected_paths=["/rest/"]))
    return tokens.asgi(bare_asgi)
