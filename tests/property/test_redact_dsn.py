"""redact_dsn() laws: a DSN's password never survives, and everything else does.

The DSNs are built from parts, so the expected redaction is known exactly: the
password (any text: raw, percent-encoded, libpq-quoted with spaces, quotes and
backslashes) becomes ``***`` and every other character is kept.
"""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from apitokens.storage import redact_dsn

SCHEMES = st.sampled_from(["postgresql", "postgres", "Postgres", "mysql", "sqlite"])
# The parts around a password hold no "@": an "@" after the host makes redact_dsn hide
# more than the password (tested below), never less.
USERS = st.text("abcdefghijklmnopqrstuvwxyzABC0123456789._-%", max_size=12)
HOSTS = st.lists(
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,15}(:[0-9]{1,5})?", fullmatch=True), min_size=1, max_size=3
).map(",".join)
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
VALUES = st.text("abcdefghijklmnopqrstuvwxyz0123456789%._-/:", max_size=12)
# Keys that only look like a secret's keep their values ("sslpassword" is one: hidden).
KEYS = st.one_of(
    NAMES, st.sampled_from(["passfile", "password_file", "passwords", "pass", "user"])
).filter(lambda key: not key.lower().endswith("password"))
SECRET_KEYS = st.sampled_from(["password", "sslpassword", "PASSWORD"])
# Any text at all, the URL's and libpq's special characters often: "@", ":", "/", "?",
# "#", "&", "=", "%", quotes, backslashes, spaces, non-ASCII, controls (no lone
# surrogates: no password a client can type or send is one).
PASSWORDS = st.text(
    st.one_of(st.sampled_from("@:/?#&=%'\\\" \t\n"), st.characters(exclude_categories=["Cs"])),
    min_size=1,
    max_size=24,
)


def _query(pairs: list[tuple[str, str]]) -> str:
    return "?" + "&".join(f"{key}={value}" for key, value in pairs) if pairs else ""


@given(
    SCHEMES,
    USERS,
    PASSWORDS,
    st.booleans(),
    HOSTS,
    NAMES,
    st.lists(st.tuples(KEYS, VALUES), max_size=3),
)
def test_a_urls_password_becomes_stars_and_the_rest_stays(
    scheme: str,
    user: str,
    password: str,
    encoded: bool,
    hosts: str,
    database: str,
    query: list[tuple[str, str]],
) -> None:
    secret = quote(password, safe="") if encoded else password
    rest = f"{hosts}/{database}{_query(query)}"
    redacted = redact_dsn(f"{scheme}://{user}:{secret}@{rest}")
    assert redacted == f"{scheme}://{user}:***@{rest}"


@given(
    PASSWORDS,
    st.sampled_from(["password", "Password", "pass%77ord", "sslpassword"]),
    st.lists(st.tuples(KEYS, VALUES), max_size=3),
    st.lists(st.tuples(KEYS, VALUES), max_size=3),
)
def test_a_password_query_parameter_becomes_stars_and_the_rest_stays(
    password: str,
    key: str,
    before: list[tuple[str, str]],
    after: list[tuple[str, str]],
) -> None:
    secret = quote(password, safe="")
    query = _query([*before, (key, secret), *after])
    expected = _query([*before, (key, "***"), *after])
    assert redact_dsn(f"postgresql://db.example/app{query}") == (
        f"postgresql://db.example/app{expected}"
    )


def _libpq_quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _libpq_bare(value: str) -> str:
    escaped = "".join("\\" + c if c.isspace() or c == "\\" else c for c in value)
    return "\\" + escaped if escaped.startswith("'") else escaped


@given(
    PASSWORDS,
    SECRET_KEYS,
    st.booleans(),
    st.lists(st.tuples(KEYS, VALUES.filter(bool)), max_size=3),
    st.lists(st.tuples(KEYS, VALUES.filter(bool)), max_size=3),
    st.sampled_from([" ", "  ", "\t", "\n "]),
    st.sampled_from(["=", " = ", "= "]),
)
def test_a_keyword_dsns_password_becomes_stars_and_the_rest_stays(
    password: str,
    key: str,
    quoted: bool,
    before: list[tuple[str, str]],
    after: list[tuple[str, str]],
    space: str,
    equals: str,
) -> None:
    value = _libpq_quoted(password) if quoted else _libpq_bare(password)
    pairs = [f"{key}={v}" for key, v in before]
    tail = [f"{key}={v}" for key, v in after]
    dsn = space.join([*pairs, f"{key}{equals}{value}", *tail])
    expected = space.join([*pairs, f"{key}{equals}***", *tail])
    assert redact_dsn(dsn) == expected


@given(PASSWORDS)
def test_an_unterminated_quoted_password_is_hidden_to_the_end(password: str) -> None:
    unterminated = _libpq_quoted(password)[:-1]
    assert redact_dsn(f"host=db password={unterminated}") == "host=db password=***"


def test_a_quote_inside_an_unescaped_password_does_not_show_its_end() -> None:
    assert redact_dsn("host=db password='it's' port=5") == "host=db password=*** port=5"


@given(st.text(max_size=60))
def test_any_text_redacts_without_error_and_redacting_twice_changes_nothing(text: str) -> None:
    once = redact_dsn(text)
    assert redact_dsn(once) == once


@given(st.text(max_size=60).filter(lambda t: ":" not in t and "password" not in t.lower()))
def test_a_path_is_kept_as_it_is(path: str) -> None:
    assert redact_dsn(path) == path


def test_an_at_sign_after_the_host_hides_more_never_less() -> None:
    redacted = redact_dsn("postgresql://app:hunter2@db/app?application_name=a@b")
    assert "hunter2" not in redacted
    assert redacted.startswith("postgresql://app:***@")
