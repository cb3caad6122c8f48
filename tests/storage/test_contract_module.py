"""``apitokens.testing`` ships the contract suite; without pytest it says what to install."""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

import pytest

import apitokens.testing

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("missing", ["pytest", "hypothesis"])
def test_importing_it_without_pytest_or_hypothesis_says_what_to_install(
    missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "apitokens.testing")
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    with pytest.raises(ImportError) as info:
        importlib.import_module("apitokens.testing")
    message = str(info.value)
    assert f"({missing} is missing)" in message
    assert "pip install 'apitokens[testing]'" in message


def test_the_testing_extra_installs_what_it_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {req.split(">")[0] for req in project["optional-dependencies"]["testing"]}
    assert names == {"pytest", "hypothesis"}
    assert not {"pytest", "hypothesis"} & {r.split(">")[0] for r in project["dependencies"]}


def test_the_suite_is_collected_only_through_a_subclass_and_documented() -> None:
    contract = apitokens.testing.StoreContract
    assert not contract.__name__.startswith("Test")
    assert apitokens.testing.__all__ == sorted(apitokens.testing.__all__)
    for name in ("StoreContract", "event", "secret_hash", "stored"):
        assert getattr(apitokens.testing, name).__doc__, name


def test_half_a_failure_ledger_fails_the_contract() -> None:
    from apitokens import MemoryStore

    class HalfLedger(MemoryStore):
        def record_failures(self, counts: object, at: object, *, keep: object) -> None:
            pass

    contract = apitokens.testing.StoreContract()
    with pytest.raises(AssertionError, match="only part of FailureLedger"):
        contract.test_failure_ledger_counts_per_key_within_the_window(HalfLedger())
    # A store that offers none of it passes (it throttles per process).
    contract.test_failure_ledger_counts_per_key_within_the_window(MemoryStore())
