"""Token strings: generation, parsing, checksum, the published pattern."""

from __future__ import annotations

import string
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apitokens._tokens import (
    BASE62,
    CHECKSUM_LENGTH,
    ID_LENGTH,
    SECRET_LENGTH,
    TOKEN_PATTERN,
    TokenFormat,
    checksum,
)

FMT = TokenFormat()


def test_issued_token_has_the_documented_shape() -> None:
    issued = FMT.issue()
    prefix, _, body = issued.value.partition("_")
    assert prefix == "apt"
    assert len(body) == ID_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH == 50
    assert set(body) <= set(BASE62)
    assert body[:ID_LENGTH] == issued.id
    assert TOKEN_PATTERN.fullmatch(issued.value)


def test_checksum_is_base62_crc32_most_significant_first() -> None:
    head = "apt_" + "A" * 44
    number = zlib.crc32(head.encode())
    digits = ""
    while number:
        number, r = divmod(number, 62)
        digits = BASE62[r] + digits
    assert checksum(head) == digits.rjust(6, "0")
    assert checksum("") == "000000"  # crc32 of nothing is 0: all padding


def test_base62_alphabet_is_digits_upper_lower() -> None:
    assert BASE62 == string.digits + string.ascii_uppercase + string.ascii_lowercase


def test_issue_keeps_a_given_id_and_changes_the_secret() -> None:
    first = FMT.issue()
    second = FMT.issue(first.id)
    assert second.id == first.id
    assert second.value != first.value
    assert FMT.parse(second.value) == second


@pytest.mark.parametrize("bad_id", ["short", "x" * 13, "abc-def-ghij", "é" * 12])
def test_issue_refuses_malformed_ids(bad_id: str) -> None:
    with pytest.raises(ValueError, match="12 base62"):
        FMT.issue(bad_id)


def test_parse_round_trips_many_tokens() -> None:
    for _ in range(200):
        issued = FMT.issue()
        assert FMT.parse(issued.value) == issued


def test_parse_rejects_every_single_character_change() -> None:
    value = FMT.issue().value
    start = len("apt_")
    for i in range(start, len(value)):
        for replacement in ("0", "z"):
            if value[i] == replacement:
                continue
            mutated = value[:i] + replacement + value[i + 1 :]
            # CRC32 detects every single-character change.
            assert FMT.parse(mutated) is None, (i, replacement)


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "apt_",
        "apt",
        "xyz_" + "0" * 50,
        "apt_" + "0" * 49,
        "apt_" + "0" * 51,
        "apt_" + "!" * 50,
        "APT_" + "0" * 50,
        "apt_" + "0" * 44 + "\u0660" * 6,  # Arabic-Indic digits are not base62
    ],
)
def test_parse_rejects_malformed(candidate: str) -> None:
    assert FMT.parse(candidate) is None


def test_is_ours_is_a_prefix_check() -> None:
    assert FMT.is_ours("apt_anything")
    assert not FMT.is_ours("hunter2")
    assert not FMT.is_ours("apt-xxx")
    assert TokenFormat("ci").is_ours("ci_x")


@pytest.mark.parametrize("prefix", ["a", "abcdefghijk", "ABC", "a_b", "", "ab-c"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        TokenFormat(prefix)


def test_custom_prefix() -> None:
    fmt = TokenFormat("corp9")
    issued = fmt.issue()
    assert issued.value.startswith("corp9_")
    assert fmt.parse(issued.value) == issued
    assert FMT.parse(issued.value) is None
    assert TOKEN_PATTERN.fullmatch(issued.value)


def test_secret_is_not_in_repr() -> None:
    issued = FMT.issue()
    assert issued.value not in repr(issued)
    assert issued.value[len("apt_") + ID_LENGTH :] not in repr(issued)


def test_token_pattern_finds_tokens_in_text() -> None:
    token = FMT.issue().value
    text = f'config = {{"password": "{token}"}}\nexport TOKEN={token}\n'
    assert TOKEN_PATTERN.findall(text) == [token, token]
    assert TOKEN_PATTERN.search("apt_" + "0" * 49) is None


def test_secrets_differ() -> None:
    values = {FMT.issue().value for _ in range(1000)}
    assert len(values) == 1000


@given(st.text(max_size=80))
def test_parse_never_raises_and_accepts_only_checksummed(candidate: str) -> None:
    parsed = FMT.parse(candidate)
    if parsed is not None:
        assert checksum(candidate[:-6]) == candidate[-6:]
        assert parsed.value == candidate


@given(st.text(alphabet=BASE62, min_size=50, max_size=50))
def test_random_bodies_almost_never_pass(body: str) -> None:
    candidate = "apt_" + body
    parsed = FMT.parse(candidate)
    # Only a body whose last 6 chars happen to equal its CRC passes.
    assert (parsed is not None) == (checksum(candidate[:-6]) == body[-6:])
