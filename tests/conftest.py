"""Shared test configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# A real PostgreSQL server for the tests that ask for one (tests/support/postgres.py).
from tests.support.postgres import postgres_database, postgres_server  # noqa: F401

# The shipped storage contract suite: pytest's assertion messages in its tests too.
pytest.register_assert_rewrite("apitokens.testing")

# CI and local runs use the same floor of 200 examples per property; no
# deadline, because shared 2-core machines are noisy and speed is measured in
# benchmarks, not tests.
settings.register_profile(
    "default",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Leave no temp directory behind (``make test``), not even pytest's empty per-user one.

    ``tmp_path_retention_policy = "none"`` removes every test's directory; what is left
    is ``pytest-of-<user>``. ``rmdir`` removes it only while it is empty, so a pytest run
    that started beside this one keeps its own.
    """
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    if basetemp is None or getattr(factory, "_given_basetemp", None) is not None:
        return
    for directory in (Path(basetemp), Path(basetemp).parent):
        try:
            directory.rmdir()
        except FileNotFoundError:
            continue  # already removed by pytest
        except OSError:
            return  # not empty (another run, or a kept directory): leave it
