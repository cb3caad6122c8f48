"""request_from_environ builds, through the fast constructor, what AuthRequest(...) would."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from apitokens import AuthRequest
from apitokens.wsgi import _raw_path, request_from_environ

LATIN1 = st.text(alphabet=st.characters(max_codepoint=255, exclude_categories=["Cs"]), max_size=20)


def reference(environ: dict[str, Any], body: bytes = b"") -> AuthRequest:
    """The adapter as it was before the fast constructor: the public one, header list and all."""
    headers = []
    for key, name in [
        ("HTTP_AUTHORIZATION", "authorization"),
        ("HTTP_X_FORWARDED_FOR", "x-forwarded-for"),
        ("CONTENT_TYPE", "content-type"),
        ("HTTP_X_HTTP_METHOD_OVERRIDE", "x-http-method-override"),
        ("HTTP_X_HTTP_METHOD", "x-http-method"),
        ("HTTP_X_METHOD_OVERRIDE", "x-method-override"),
    ]:
        if environ.get(key) is not None:
            headers.append((name, environ[key]))
    path_info = environ.get("PATH_INFO", "")
    if not path_info.startswith("/"):
        path_info = "/" + path_info  # what frameworks route (gunicorn's "rest/admin")
    app_path = quote(path_info.encode("latin-1", "replace"), safe="/!$&'()*+,;=:@-._~")
    if app_path == _raw_path(environ):
        app_path = ""
    return AuthRequest(
        method=environ.get("REQUEST_METHOD", "GET"),
        path=_raw_path(environ),
        query=environ.get("QUERY_STRING", ""),
        headers=headers,
        client_ip=environ.get("REMOTE_ADDR", ""),
        body=body,
        app_path=app_path,
    )


class Text(str):
    """A str subclass, as some server might hand over: stored as a plain str, like __init__ does."""


HEADER_VALUES = st.one_of(LATIN1, LATIN1.map(Text), st.integers())
ENVIRONS = st.fixed_dictionaries(
    {},
    optional={
        "REQUEST_METHOD": st.sampled_from(["GET", "POST", "get"]),
        "SCRIPT_NAME": st.sampled_from(["", "/app"]),
        "PATH_INFO": LATIN1,
        "QUERY_STRING": LATIN1,
        "REMOTE_ADDR": st.sampled_from(["192.0.2.1", "::1", ""]),
        "RAW_URI": st.sampled_from(
            ["/rest/a%2Fb?x=1", "http://h/rest/x?y", "", "rest/admin", "http:rest/x", "*"]
        ),
        "REQUEST_URI": st.sampled_from(["/re\tst/admin", "/rest/admin#/x"]),
        "HTTP_AUTHORIZATION": HEADER_VALUES,
        "HTTP_X_FORWARDED_FOR": HEADER_VALUES,
        "CONTENT_TYPE": HEADER_VALUES,
        "HTTP_X_HTTP_METHOD_OVERRIDE": HEADER_VALUES,
        "HTTP_HOST": LATIN1,
    },
)


@given(environ=ENVIRONS, body=st.binary(max_size=10))
def test_request_from_environ_is_what_the_public_constructor_builds(
    environ: dict[str, Any], body: bytes
) -> None:
    fast = request_from_environ(environ, body)
    slow = reference(environ, body)
    assert fast == slow
    assert all(type(name) is str and type(value) is str for name, value in fast.headers)


def test_only_the_headers_the_core_reads_in_a_fixed_order() -> None:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/rest/x",
        "QUERY_STRING": "a=1",
        "REMOTE_ADDR": "10.0.0.1",
        "HTTP_X_FORWARDED_FOR": "203.0.113.9, 10.0.0.2",
        "HTTP_AUTHORIZATION": "Bearer apt_x",
        "HTTP_COOKIE": "s=1",
    }
    request = request_from_environ(environ, b"{}")
    assert request == AuthRequest(
        "POST",
        "/rest/x",
        "a=1",
        [("authorization", "Bearer apt_x"), ("x-forwarded-for", "203.0.113.9, 10.0.0.2")],
        "10.0.0.1",
        b"{}",
    )
    assert request_from_environ({"HTTP_X_FORWARDED_FOR": "203.0.113.9"}).headers == (
        ("x-forwarded-for", "203.0.113.9"),
    )
    assert request_from_environ({}).headers == ()
