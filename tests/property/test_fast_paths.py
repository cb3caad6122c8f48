"""The hot path's shortcuts decide exactly as the full checks they skip.

Each shortcut answers the common case (a plain ASCII path, no trusted proxies, no
recent failures) without the general code; these properties compare the two on inputs
built to sit on both sides of every test the shortcut makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st

from apitokens._policy import Policy
from apitokens._request import AuthRequest
from apitokens._throttle import BUSY, FailureThrottle
from apitokens.rules._match import RequestView, decode_path

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
    view = RequestView(AuthRequest("GET", path), 5.0)
    return view.path, view.path_error


@PROPERTY
@given(paths)
def test_request_view_shortcut_decodes_like_decode_path(path: str) -> None:
    assert _view_path(path) == decode_path(path)


def test_request_view_shortcut_examples() -> None:
    for plain in ["/rest/api/2/issue/JRA-1", "/rest/agile/1.0/board", "/a/.b", "/x;y", ""]:
        assert _view_path(plain) == decode_path(plain) == (plain, "")
    for unsafe in ["/a/../b", "/a/./b", "..", "./x", "/a/..;x/b", "/a\\b", "/a\x7fb", "/a\x00"]:
        assert _view_path(unsafe) == decode_path(unsafe)
        assert _view_path(unsafe)[1] != "", unsafe
    assert _view_path(b"/x") == ("", "path is not a string")  # type: ignore[arg-type]


def _protects_in_full(prefixes: Sequence[str], path: str) -> bool:
    """``Policy.protects`` as it was before its shortcuts: the reference."""
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


@PROPERTY
@given(
    prefixes=st.lists(st.sampled_from(["/", "/rest/", "/a", "/1.0/", "/r%"]), min_size=1),
    path=paths,
)
def test_protects_agrees_with_the_full_checks(prefixes: list[str], path: str) -> None:
    policy = Policy(protected_paths=prefixes)
    assert policy.protects(path) == _protects_in_full(prefixes, path)


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
