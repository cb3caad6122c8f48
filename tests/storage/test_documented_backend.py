"""The custom backend docs/storage.md shows passes the contract, run here as the page has it.

The page's "Writing your own backend" section holds one python block: a store written
from the public API and its ``StoreContract`` subclass. The block runs here, and the
subclass it defines is this module's ``TestDictStore``, so pytest runs every contract
test against the page's store: a page whose store breaks the contract fails here.
"""

from __future__ import annotations

import re
from typing import Any

from apitokens.storage import TokenStore
from apitokens.testing import StoreContract
from tests.unit.test_docs import ROOT, blocks

PAGE = ROOT / "docs" / "storage.md"
HEADING = "## Writing your own backend"


def _example() -> tuple[int, str]:
    """The fence line and code of the section's one python block."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    start = lines.index(HEADING) + 1  # the heading's line number
    end = next((n for n in range(start, len(lines)) if lines[n].startswith("## ")), len(lines))
    found = [b for b in blocks(PAGE) if b.lang == "python" and start < b.line <= end]
    assert len(found) == 1, f"{HEADING!r} shows {len(found)} python blocks, not one"
    return found[0].line, found[0].code


LINE, CODE = _example()
example: dict[str, Any] = {"__name__": __name__}
# Padded so that a failure's traceback names the line of the page itself.
exec(compile("\n" * LINE + CODE, str(PAGE), "exec", dont_inherit=True), example)  # noqa: S102
TestDictStore = example["TestDictStore"]


def test_the_example_subclasses_the_contract_from_the_public_api_only() -> None:
    assert issubclass(TestDictStore, StoreContract)
    assert TestDictStore is not StoreContract
    assert isinstance(example["DictStore"](), TokenStore)
    imported = set(re.findall(r"^(?:from|import) (apitokens[\w.]*)", CODE, re.MULTILINE))
    assert imported == {"apitokens", "apitokens.testing"}
