"""The hot path's shortcuts decide exactly as the full checks they skip.

Each shortcut answers the common case (a plain path, no recent failures) without the
general code; these properties compare the two on inputs built to sit on both sides of
every test the shortcut makes. The path is read once, by ``decode_path``, for the rules
and for ``Policy.protects``: what the rules see under a protected prefix is protected.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st

from apitokens._policy import Policy
from apitokens._request import AuthRequest
from apitokens._throttle import BUSY, FailureThrottle
from apitokens.rules import Deadline, decode_path
from apitokens.rules._match import RequestView
from apitokens.rules._path import _decode

PROPERTY = settings(max_examples=1000, deadline=None)

# Pieces that sit on both sides of every shortcut test: dots and dot segments, ";"
# parameters, escapes (good, bad, encoded separators and dots), backslashes, control
# characters on either side of the printable range, non-ASCII, lone surrogates.
PATH_PIECES = [
    "/",
    "//",
    "a",
    "rest",
    "1.0",
    ".",
    "..",
    "./",
    "/.",
    "/..",
    ".hidden",
    "..;x",
    ";",
    ";p=1",
    " ",
    "~",
    "%",
    "%2",
    "%41",
    "%2e",
    "%2E%2e",
    "%2f",
    "%5C",
    "%00",
    "%25",
    "%252f",
    "%C3%A9",
    "%ff",
    "\\",
    "\x00",
    "\t",
    "\x1f",
    "\x7f",
    "\x80",
    "\x9f",
    "\xa0",
    "é",
    "\u2028",
    "\ud800",
]
paths = st.lists(st.sampled_from(PATH_PIECES), max_size=8).map("".join) | st.text(max_size=30)


def _view_path(path: str) -> tuple[str, str]:
    view = RequestView(AuthRequest("GET", path), Deadline(5.0))
    return view.path, view.path_error


@PROPERTY
@given(paths)
def test_decode_path_shortcut_decodes_like_the_full_checks(path: str) -> None:
    assert decode_path(path) == _decode(path)
    assert _view_path(path) == decode_path(path)  # the rules see what decode_path gives


def test_decode_path_examples() -> None:
    for plain in ["/rest/api/2/issue/JRA-1", "/rest/agile/1.0/board", "/a/.b", "/x;y", "", "/é"]:
        assert decode_path(plain) == _decode(plain) == (plain, "")
    for unsafe in ["/a/../b", "/a/./b", "..", "./x", "/a/..;x/b", "/a\\b", "/a\x7fb", "/a\x00"]:
        assert decode_path(unsafe) == _decode(unsafe)
        assert decode_path(unsafe)[1] != "", unsafe
    assert decode_path(b"/x") == ("", "path is not a string")
    assert _view_path(b"/x") == ("", "path is not a string")  # type: ignore[arg-type]


def _protects_before(prefixes: Sequence[str], path: str) -> bool:
    """``Policy.protects`` as it was before it shared ``decode_path`` with the rules."""
    decoded = path
    if "%" in decoded:
        decoded = unquote(decoded, errors="replace")
    if "\\" in decoded:
        decoded = decoded.replace("\\", "/")
    while "//" in decoded:
        decoded = decoded.replace("//", "/")
    if "." in decoded and any(segment in (".", "..") for segment in decoded.split("/")):
        return True
    return decoded.startswith(tuple(prefixes))


PREFIXES = ["/", "/rest/", "/a", "/1.0/", "/r%", "/a//b", "/é/"]
prefix_lists = st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=3)
# Paths that start with a prefix as often as not, so both sides of the law are reached.
prefixed_paths = st.tuples(st.sampled_from(["", *PREFIXES]), paths).map("".join)


@PROPERTY
@given(prefixes=prefix_lists, path=prefixed_paths)
def test_a_path_the_rules_see_under_a_protected_prefix_is_protected(
    prefixes: list[str], path: str
) -> None:
    policy = Policy(protected_paths=prefixes)
    seen, problem = _view_path(path)
    if problem:
        assert policy.protects(path)  # the rules refuse it: tokens are checked, fail closed
    elif seen.startswith(tuple(prefixes)):
        assert policy.protects(path)


def _protects_in_full(prefixes: Sequence[str], path: str) -> bool:
    """``Policy.protects`` without its shortcut: ``decode_path``, then the prefixes."""
    decoded, problem = _decode(path)
    if problem:
        return True  # prefix_lists are never empty
    return _collapse(decoded).startswith(tuple(_collapse(prefix) for prefix in prefixes))


def _collapse(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


@PROPERTY
@given(prefixes=prefix_lists, path=prefixed_paths)
def test_protects_agrees_with_the_full_checks(prefixes: list[str], path: str) -> None:
    assert Policy(protected_paths=prefixes).protects(path) == _protects_in_full(prefixes, path)


@PROPERTY
@given(prefixes=prefix_lists, path=prefixed_paths)
def test_protects_protects_at_least_what_it_did_before(prefixes: list[str], path: str) -> None:
    if _protects_before(prefixes, path):
        assert Policy(protected_paths=prefixes).protects(path)


def test_protects_examples() -> None:
    policy = Policy(protected_paths=["/rest/", "/a//b/"])
    for protected in ["/rest/x", "//rest/x", "/%72est/x", "/rest//x", "/a/b/c", "/a//b/c"]:
        assert policy.protects(protected), protected
    for refused in ["/public/../rest/x", "/public/%2e%2e/rest", "/public%2Fx", "/p\\q", "/p\x00"]:
        assert _decode(refused)[1], refused
        assert policy.protects(refused), refused
    for public in ["/public/x", "/restx", "/public/a.b", "/%70ublic"]:
        assert not policy.protects(public), public
    assert not Policy(protected_paths=[]).protects("/a/../b")  # nothing is protected


@PROPERTY
@given(
    limit=st.integers(1, 4),
    steps=st.lists(
        st.tuples(st.sampled_from("ab"), st.sampled_from(["start", "fail", "pass"])),
        max_size=40,
    ),
)
def test_throttle_lets_at_most_limit_attempts_in_a_window(
    limit: int, steps: list[tuple[str, str]]
) -> None:
    """Recorded failures plus attempts in flight never pass ``limit``; 429 means failures."""
    window = 60.0
    throttle = FailureThrottle(limit, window)
    flying: dict[str, list[float]] = {"a": [], "b": []}
    failed: dict[str, list[float]] = {"a": [], "b": []}
    for now, (key, step) in enumerate(steps):
        at = float(now)
        if step == "start":
            answer = throttle.reserve(key, at)
            recent = [t for t in failed[key] if t > at - window]
            if answer == 0:
                flying[key].append(at)
                assert len(recent) + len(flying[key]) <= limit
            elif answer == BUSY:
                assert len(recent) < limit <= len(recent) + len(flying[key])
            else:
                assert len(recent) >= limit  # a 429 only for failures recorded
        elif flying[key]:
            flying[key].pop()
            throttle.settle(key, at, failed=step == "fail")
            if step == "fail":
                failed[key].append(at)
        recent = [t for t in failed[key] if t > at - window]
        assert bool(throttle.retry_after(key, at)) == (len(recent) >= limit)
