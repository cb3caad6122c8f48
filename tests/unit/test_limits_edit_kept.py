"""``ApiTokens.edit`` of a limit is kept by the store (DESIGN §11), as every other edit is."""

from __future__ import annotations

from apitokens import ApiTokens, MemoryStore
from tests.support import CHEAP_HASHER
from tests.support.limits import EDIT_NOT_KEPT


@EDIT_NOT_KEPT
def test_an_edited_limit_is_kept() -> None:
    with ApiTokens(MemoryStore(), hasher=CHEAP_HASHER) as tokens:
        token_id = tokens.create(actor="a", name="t", secure=False, credits=5).token.id
        edited = tokens.edit(actor="a", token_id=token_id, credits=9, rate_limit="1/s")
        assert (edited.credits, edited.rate_limit) == (9, "1/s")
        kept = tokens.get(token_id)
        assert kept is not None and (kept.credits, kept.rate_limit) == (9, "1/s")
