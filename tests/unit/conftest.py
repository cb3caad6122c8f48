"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from tests.support import Clock


@pytest.fixture
def clock() -> Clock:
    """A clock the test moves by hand, starting at ``tests.support.START``."""
    return Clock()
