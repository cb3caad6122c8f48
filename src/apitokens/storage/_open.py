"""open_store(url): one string names a store (configuration files, APITOKENS_DB, ``--db``).

The forms (docs/storage.md, "Opening a store from a URL"):

    :memory:  memory:                     MemoryStore()
    tokens.db  /abs/tokens.db  ./x:y.db   SQLiteStore(path)
    sqlite:///rel.db  sqlite:////abs.db   SQLiteStore("rel.db"), SQLiteStore("/abs.db")
    sqlite://  sqlite:///:memory:         SQLiteStore(":memory:")
    postgresql://...  postgres://...      apitokens.postgres.PostgresStore(url)
    host=... dbname=... (libpq keywords)  apitokens.postgres.PostgresStore(dsn)

Anything else with a scheme (``mysql://``, ``file:``) and the empty string are a
ValueError. :func:`redact_dsn` is how every message, log line and repr names a
store: a DSN's password never leaves this process in text.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from apitokens._errors import StorageError
from apitokens.storage._protocol import TokenStore
from apitokens.storage.memory import MemoryStore
from apitokens.storage.sqlite import SQLiteStore

__all__ = [
    "Location",
    "locate",
    "open_location",
    "open_store",
    "postgres_schema_version",
    "redact_dsn",
]

POSTGRES_EXTRA = "pip install 'apitokens[postgres]'"
_FORMS = "a SQLite path, sqlite:///path, postgresql://... or memory:"
_MASK = "***"

# Two or more characters: "C:\tokens.db" is a Windows path, not a URL with scheme "c".
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")
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
_KEYWORD_DSN = re.compile(
    rf"\s*([A-Za-z_]+)\s*=\s*{_VALUE}(?:\s+[A-Za-z_]+\s*=\s*{_VALUE})*\s*", re.S
)
# "password", and "sslpassword" (the client key's): any key that ends so is hidden.
_KEYWORD_PASSWORD = re.compile(rf"([A-Za-z0-9_]*password\s*=\s*){_VALUE}", re.S | re.I)
# No "#": libpq has no fragment, so "password=a#b" is the password "a#b", hidden whole.
_QUERY_PAIR = re.compile(r"([?&])([^=&]*)=([^&]*)")
# The connection keywords a libpq keyword DSN starts with in practice; a SQLite file
# named like one is still reachable as "./host=x" or "sqlite:///host=x".
_LIBPQ_KEYWORDS = frozenset(
    {
        "application_name",
        "connect_timeout",
        "dbname",
        "host",
        "hostaddr",
        "options",
        "passfile",
        "password",
        "port",
        "service",
        "sslmode",
        "target_session_attrs",
        "user",
    }
)


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


@dataclass(frozen=True, slots=True)
class Location:
    """Where a store is, as :func:`locate` read it from a string.

    Attributes:
        kind: ``"memory"`` (a MemoryStore), ``"sqlite"`` or ``"postgres"``.
        target: the SQLite path (``":memory:"`` for a private in-memory database)
            or the DSN handed to ``PostgresStore``; it may hold a password.
        shown: the string as given, redacted: how messages name the store.
    """

    kind: Literal["memory", "sqlite", "postgres"]
    target: str
    shown: str

    @property
    def in_memory(self) -> bool:
        """Whether the store keeps nothing once it is closed."""
        return self.kind == "memory" or (self.kind == "sqlite" and self.target == ":memory:")

    def __repr__(self) -> str:
        return f"Location(kind={self.kind!r}, shown={self.shown!r})"


def locate(url: str | os.PathLike[str]) -> Location:
    """Read which store ``url`` names, without opening it (see :func:`open_store`).

    Raises:
        TypeError: ``url`` is neither a string nor a path.
        ValueError: ``url`` is empty or names no store this function knows.
    """
    if not isinstance(url, str):
        if isinstance(url, os.PathLike):
            path = os.fspath(url)
            if isinstance(path, str):
                return _sqlite_path(path)
        raise TypeError(f"a store URL is a str or a path, not {type(url).__name__}")
    shown = redact_dsn(url)
    if not url.strip():
        raise ValueError(f"no store given (an empty string): give {_FORMS}")
    if url in (":memory:", "memory:"):
        return Location("memory", url, shown)
    if _is_keyword_dsn(url):
        return Location("postgres", url, shown)
    scheme = _SCHEME.match(url)
    if scheme is None:
        return _sqlite_path(url)
    name = scheme.group(1).lower()
    if name == "sqlite":
        return _sqlite_url(url[scheme.end() :], shown)
    if name in ("postgresql", "postgres"):
        # libpq compares the URI prefix case-sensitively.
        return Location("postgres", name + url[scheme.end() - 1 :], shown)
    hint = ""
    if name.startswith(("postgresql+", "postgres+")):
        hint = " (a SQLAlchemy driver name: write postgresql://...)"
    raise ValueError(
        f"cannot open a store from {shown!r}: unknown scheme {name!r}{hint}; give {_FORMS}"
    )


def _sqlite_path(path: str) -> Location:
    if not path.strip():
        raise ValueError(f"no store given (an empty path): give {_FORMS}")
    return Location("sqlite", path, path)


def _sqlite_url(rest: str, shown: str) -> Location:
    # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute.db, and no
    # path (sqlite://) or :memory: for an in-memory database.
    if rest == "//" or rest == "///:memory:":
        return Location("sqlite", ":memory:", shown)
    if not rest.startswith("///") or rest == "///":
        raise ValueError(
            f"cannot open a store from {shown!r}: a SQLite URL is sqlite:///relative/path, "
            "sqlite:////absolute/path or sqlite:// (in memory)"
        )
    path = rest[3:]
    if "?" in path:
        raise ValueError(
            f"cannot open a store from {shown!r}: a SQLite URL takes no query parameters"
        )
    return Location("sqlite", path, shown)


def _is_keyword_dsn(text: str) -> bool:
    """Whether ``text`` is wholly libpq ``key=value`` pairs, the first a connection keyword."""
    pairs = _KEYWORD_DSN.fullmatch(text)
    return pairs is not None and pairs.group(1) in _LIBPQ_KEYWORDS


def open_location(location: Location) -> TokenStore:
    """Open the store ``location`` names (see :func:`open_store`)."""
    if location.kind == "memory":
        return MemoryStore()
    if location.kind == "sqlite":
        return SQLiteStore(location.target)
    try:
        # Imported here: psycopg is an optional extra, and SQLite users never load it.
        from apitokens.postgres import PostgresStore
    except ImportError as exc:
        raise _without_extra(location, exc) from exc
    return PostgresStore(location.target)


def postgres_schema_version(location: Location) -> int:
    """The apitokens schema version of the PostgreSQL database ``location`` names; 0: none.

    Reads it over one connection of its own and changes nothing, where opening a
    ``PostgresStore`` creates or upgrades the schema.

    Raises:
        ImportError: the ``postgres`` extra is not installed.
        StorageError: the server cannot be reached or refuses the connection (the
            message holds no password).
    """
    try:
        import psycopg

        from apitokens.postgres import _described, _safe_message, _version
    except ImportError as exc:
        raise _without_extra(location, exc) from exc
    _shown, password = _described(location.target)
    try:
        with psycopg.connect(location.target, autocommit=True, connect_timeout=5) as conn:
            return _version(conn)
    except psycopg.Error as exc:
        message = _safe_message(exc, password)
    # Raised here, not in the except block: no __context__ holds psycopg's own text.
    raise StorageError(f"cannot read PostgreSQL database {location.shown!r}: {message}")


def _without_extra(location: Location, exc: ImportError) -> ImportError:
    return ImportError(
        f"cannot open {location.shown!r}: PostgreSQL needs the postgres extra ({POSTGRES_EXTRA})",
        name=exc.name,
    )


def open_store(url: str | os.PathLike[str]) -> TokenStore:
    """Open the store that ``url`` names.

    Args:
        url: ``":memory:"`` or ``"memory:"`` for a :class:`~apitokens.MemoryStore`;
            a SQLite path (``tokens.db``, ``/var/lib/app/tokens.db``, any
            ``os.PathLike``), or SQLAlchemy's ``sqlite:///relative.db`` /
            ``sqlite:////absolute.db`` (``sqlite://`` or ``sqlite:///:memory:``
            for a private in-memory SQLite database), for a
            :class:`~apitokens.SQLiteStore`; ``postgresql://...``,
            ``postgres://...`` or a libpq keyword string (``host=db dbname=app``)
            for ``apitokens.postgres.PostgresStore``. A SQLite path that starts
            like a URL (``a:b.db``) or a libpq keyword (``host=x.db``) is written
            ``./a:b.db`` or ``sqlite:///a:b.db``.

    Returns:
        The open store; the caller closes it (``store.close()``).

    Raises:
        ValueError: ``url`` is empty, or its scheme is not one of the above.
        ImportError: a PostgreSQL URL without the ``postgres`` extra installed
            (the message says ``pip install 'apitokens[postgres]'``).
        StorageError: the store's own errors on opening (see each store).

    No message names a URL's password: see :func:`redact_dsn`.
    """
    return open_location(locate(url))
