"""The request path decoded once, the same way for the rules and the protected-path check.

``AuthRequest.path`` is the path as the client sent it, still percent-encoded. The rules
match its decoding, and ``Policy.protects`` compares that same decoding with the
protected prefixes: one reading, so a path the rules see under a protected prefix is
protected. What cannot be read safely gets a reason instead; the rules deny with it,
and the protected-path check counts such a path as protected (fail closed).
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote, unquote_to_bytes

__all__ = ["decode_path"]

_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SEPARATOR: Final = re.compile(r"%(?:2[fF]|5[cC])")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def decode_path(raw: object) -> tuple[str, str]:
    """Percent-decode a request path exactly once.

    Args:
        raw: ``AuthRequest.path``, still percent-encoded.

    Repeated slashes are collapsed (``//admin`` is ``/admin``), as most servers and
    frameworks route it (werkzeug, waitress), so the rules match the path the app
    acts on.

    Returns:
        ``(decoded, "")``, or ``("", reason)`` when the path cannot be read safely: not a
        string, a malformed escape or invalid UTF-8, an encoded slash or backslash, a
        backslash, a NUL or control character, a ``.`` or ``..`` segment (``..;x``
        too: some servers drop ``;`` parameters), or an encoding that a second decoding
        would turn into one of these.
    """
    # Most paths are printable with nothing to decode and no segment starting with
    # a dot: every check below passes and the path is its own decoding. Telling that
    # with a few string methods saves the regex scans (every request, twice: the
    # protected-path check and the rules). A dot segment ("." or "..", maybe with
    # ";params") begins at the start or right after a "/", so a path with neither a
    # leading "." nor a "/." has none. A property test compares this with the full checks.
    # (isprintable() is False for every character _unsafe() refuses, lone surrogates too.)
    if (
        isinstance(raw, str)
        and raw.isprintable()
        and "%" not in raw
        and "\\" not in raw
        and ("." not in raw or ("/." not in raw and raw[:1] != "."))
    ):
        return (_collapsed(raw) if "//" in raw else raw), ""
    return _decode(raw)


def _collapsed(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


def _decode(raw: object) -> tuple[str, str]:
    """:func:`decode_path` without its shortcut: the reference the property tests use."""
    if not isinstance(raw, str):
        return "", "path is not a string"
    decoded = raw
    try:
        if "%" in raw:
            if _BAD_ESCAPE.search(raw):
                return "", "path has a malformed percent-escape"
            if _ENCODED_SEPARATOR.search(raw):
                return "", "path contains an encoded slash or backslash"
            decoded = unquote_to_bytes(raw).decode("utf-8")
        elif not raw.isascii():
            raw.encode("utf-8")  # lone surrogates cannot have come from a real request
    except UnicodeError:
        return "", "path is not valid UTF-8"
    reason = _unsafe(decoded)
    if reason:
        return "", reason
    if "%" in decoded:
        # A server behind us that decodes again must not find a separator or ".." either.
        again = unquote(decoded, errors="surrogateescape")
        if again != decoded and (again.count("/") != decoded.count("/") or _unsafe(again)):
            return "", "path is encoded twice to hide a slash, dot segment or control character"
    return _collapsed(decoded), ""


def _unsafe(path: str) -> str:
    if _CONTROL.search(path):
        return "path contains a NUL or control character"
    if "\\" in path:
        return "path contains a backslash"
    # ";" starts path parameters that some servers drop: "/..;x/" is a ".." for them.
    if "." in path and any(part.split(";", 1)[0] in (".", "..") for part in path.split("/")):
        return "path contains a dot segment"
    return ""
