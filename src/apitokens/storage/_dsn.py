"""Naming a database without its password: :func:`redact_dsn`.

Its own module because both ``open_store`` and the PostgreSQL store show DSNs.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["redact_dsn"]

_MASK = "***"

# Also without "//": "mysql:user:secret@host" is no URL, and still loses its password.
_URL_HEAD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:(?://)?")
# libpq's keyword form: "key = value" pairs apart by whitespace; a value is quoted '...'
# (backslash escapes; unterminated: to the end; what is glued after the closing quote,
# as in 'it's', counts too) or bare up to whitespace (backslash escapes too). See
# libpq's "Connection Strings".
_VALUE = (
    r"(?:'(?:[^'\\]|\\.)*(?:'(?:[^\s\\]|\\.)*|\\?\Z)"  # quoted
    r"|(?:[^\s'\\]|\\.)(?:[^\s\\]|\\.)*\\?"  # bare
    r"|\\?)"  # empty
)
# "password", and "sslpassword" (the client key's): any key that ends so is hidden.
_KEYWORD_PASSWORD = re.compile(rf"([A-Za-z0-9_]*password\s*=\s*){_VALUE}", re.S | re.I)
# No "#": libpq has no fragment, so "password=a#b" is the password "a#b", hidden whole.
_QUERY_PAIR = re.compile(r"([?&])([^=&]*)=([^&]*)")


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***``, safe for messages, logs and reprs.

    A URL (``postgresql://user:secret@host/db`` becomes
    ``postgresql://user:***@host/db``) loses the password of its user
    information, percent-encoded or not, and the value of a ``password=`` query
    parameter; a libpq keyword string (``host=h password='s e c'``) loses the
    value of its ``password`` keyword. ``sslpassword`` (any key that ends in
    ``password``) is hidden too. Where a URL is ambiguous (an ``@`` after
    the host) more is hidden, never less. Anything else (a SQLite path) is
    returned as it is.
    """
    head = _URL_HEAD.match(dsn)
    if head is None:
        return _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + _MASK, dsn)
    rest = dsn[head.end() :]
    # The last "@", not the first: a password with a raw "@", "/" or "?" in it is still
    # all before the last one (it may hide the host of an odd URL, never show a secret).
    at = rest.rfind("@")
    if at != -1:
        colon = rest.find(":", 0, at)
        if colon != -1:
            rest = rest[: colon + 1] + _MASK + rest[at:]
    # Keywords before any "?" too: "mysql:host=db password=x" is no URL, and still hides x.
    before, mark, query = rest.partition("?")
    before = _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + _MASK, before)
    return head.group() + before + _QUERY_PAIR.sub(_redact_query_pair, mark + query)


def _redact_query_pair(match: re.Match[str]) -> str:
    separator, key, _value = match.groups()
    if not unquote(key).strip().lower().endswith("password"):
        return match.group()
    return f"{separator}{key}={_MASK}"
