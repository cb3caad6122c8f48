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

from apitokens.storage._dsn import _VALUE, redact_dsn
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

# Two or more characters: "C:\tokens.db" is a Windows path, not a URL with scheme "c".
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")
_KEYWORD_DSN = re.compile(
    rf"\s*([A-Za-z_]+)\s*=\s*{_VALUE}(?:\s+[A-Za-z_]+\s*=\s*{_VALUE})*\s*", re.S
)
_KEYWORD_HEAD = re.compile(r"\s*([A-Za-z_]+)\s*=")
# The connection keywords a libpq keyword DSN starts with in practice; a SQLite file
# named like one is still reachable as "./host=x" or "sqlite:///host=x".
_LIBPQ_KEYWORDS = frozenset(
    {
        # Every keyword of libpq's "Parameter Key Words" (PostgreSQL 17), so a keyword
        # DSN is one whatever it starts with, and its password is always hidden.
        "application_name", "channel_binding", "client_encoding", "connect_timeout",
        "dbname", "fallback_application_name", "gssdelegation", "gssencmode", "gsslib",
        "host", "hostaddr", "keepalives", "keepalives_count", "keepalives_idle",
        "keepalives_interval", "krbsrvname", "load_balance_hosts", "options", "passfile",
        "password", "port", "replication", "require_auth", "requirepeer", "requiressl",
        "service", "ssl_max_protocol_version", "ssl_min_protocol_version", "sslcert",
        "sslcertmode", "sslcompression", "sslcrl", "sslcrldir", "sslkey", "sslmode",
        "sslnegotiation", "sslpassword", "sslrootcert", "sslsni", "target_session_attrs",
        "tcp_user_timeout", "user",
    }
)  # fmt: skip


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
    if _starts_like_keyword_dsn(url):
        # Not quoted: an unquoted value with a space ("password=my secret") would show
        # part of the password, and taken as a SQLite path it would become a file name.
        raise ValueError(
            "cannot open a store from a string that starts like a libpq keyword DSN "
            "(host=... dbname=...) but is not wholly key=value pairs (not shown: it may "
            "hold a password): quote a value that holds a space or a quote "
            "(password='my secret'); a SQLite file named so is written ./name"
        )
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


def _starts_like_keyword_dsn(text: str) -> bool:
    """Whether ``text`` begins with a libpq connection keyword and ``=``."""
    head = _KEYWORD_HEAD.match(text)
    return head is not None and head.group(1) in _LIBPQ_KEYWORDS


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
        from apitokens.postgres import schema_version
    except ImportError as exc:
        raise _without_extra(location, exc) from exc
    return schema_version(location.target)


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
