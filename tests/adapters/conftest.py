"""The contract's base class lives outside test modules: have pytest rewrite its asserts."""

import pytest

pytest.register_assert_rewrite("tests.adapters.contract", "tests.adapters.harness")
