"""The package: its public names, the extra it needs, its settings checked up front."""

from __future__ import annotations

import subprocess
import sys

import pytest

import apitokens.web
from apitokens import ApiTokens, MemoryStore
from apitokens.web import TokenPages


def test_the_public_names() -> None:
    assert apitokens.web.__all__ == sorted(apitokens.web.__all__)
    assert set(apitokens.web.__all__) == {"Request", "Response", "TokenPages"}


def test_without_jinja2_the_import_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['jinja2'] = None\n"
        "try:\n    import apitokens.web\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'apitokens[web]'" in out
    assert "Jinja2" in out


def test_a_short_secret_key_is_refused() -> None:
    with ApiTokens(MemoryStore()) as tokens:
        with pytest.raises(ValueError, match="at least 16 bytes"):
            TokenPages(tokens, current_user=lambda _n: None, secret_key="short")
        with pytest.raises(ValueError, match="page_size"):
            TokenPages(tokens, current_user=lambda _n: None, secret_key="k" * 16, page_size=0)
