"""Attacks on the Django and DRF integration (issue 16, DESIGN §9), through Django's test
clients and real servers (gunicorn, uvicorn) where the finding needs one.

Each test names what it attacks. A test marked ``xfail(strict=True)`` is a finding not
fixed yet (its reason says what goes wrong and how to fix it): it fails on the code as
it is, and its mark must go with the fix. A test without the mark pins a property the
attack could not break.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.support.django import make_user, setup

setup()  # before DRF's test client is imported: it reads the settings

from django.contrib.auth import get_user_model  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from apitokens import ApiTokens, MemoryStore, Outcome, Policy, Scope, SQLiteStore  # noqa: E402
from tests.django_project.tokens import tokens  # noqa: E402
from tests.integration.test_durability import ROOT, listening  # noqa: E402
from tests.integration.test_hardening import raw_request  # noqa: E402
from tests.support import CHEAP_HASHER  # noqa: E402

JSON_RULE = "[post].*/api/echo[JsonData::project==ABC]"


def bearer(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- 1. a JSON rule reads UTF-8; DRF decodes by the Content-Type's charset -----------------

# UTF-8 (what the rule reads): {"project":"ABC","x":"+ACIALAAi-project+ACIAOgAi-XYZ"}.
# UTF-7 (what DRF's JSONParser reads with charset=utf-7): "+ACIALAAi-" is '","' and
# "+ACIAOgAi-" is '":"', so the string x hides a second "project" key, which wins.
UTF7_SMUGGLED = b'{"project":"ABC","x":"+ACIALAAi-project+ACIAOgAi-XYZ"}'


@pytest.mark.parametrize(
    "parameters",
    [
        "charset=utf-7",
        "charset=UTF7",
        'CHARSET="unicode-1-1-utf-7"',
        "charset = utf-7",
        "charset=utf-8; charset=utf-7",  # Django keeps the last one
        "charset*=UTF-8''utf-7",  # RFC 2231, which Django decodes
        "charset=utf-7;x=y",
    ],
)
def test_a_json_rule_sees_what_drf_parses_whatever_the_charset(parameters: str) -> None:
    """Found (fixed, HIGH): a JsonData clause read every body as UTF-8 whatever its
    charset, while DRF's JSONParser decodes with ``request.encoding``, which Django takes
    from the ``Content-Type``'s charset: with ``utf-7`` the body the rule read as
    project=ABC was project=XYZ in ``request.data``. A charset other than UTF-8 now fails
    the clause (403)."""
    assert json.loads(UTF7_SMUGGLED)["project"] == "ABC"  # what the rule matches
    assert json.loads(codecs.decode(UTF7_SMUGGLED, "utf-7"))["project"] == "XYZ"  # DRF's
    user = make_user("charset")
    issued = tokens.create(
        actor=user.username, name="j", scope=Scope.READ_WRITE, restrictions=[JSON_RULE]
    )
    answer = APIClient().generic(
        "POST",
        "/api/echo",
        UTF7_SMUGGLED,
        content_type=f"application/json; {parameters}",
        **bearer(issued.secret),
    )
    if answer.status_code == 200:  # the view ran: it must act on the body the rule matched
        assert answer.json()["data"]["project"] == "ABC", answer.content
    else:
        assert answer.status_code == 403, answer.content


def test_json_bodies_drf_and_the_rule_read_alike() -> None:
    """Held: what DRF parses and the rule reads agree (duplicate keys, BOM, UTF-16,
    NaN, a form or multipart body, a JSON subtype DRF does not parse)."""
    user = make_user("json")
    issued = tokens.create(
        actor=user.username, name="j", scope=Scope.READ_WRITE, restrictions=[JSON_RULE]
    )
    client = APIClient()
    refused = [
        (b'{"project":"ABC","project":"XYZ"}', "application/json"),  # duplicate key
        (b'\xef\xbb\xbf{"project":"XYZ"}', "application/json; charset=utf-8-sig"),
        ('{"project":"ABC"}'.encode("utf-16"), "application/json; charset=utf-16"),
        (b'{"project":"ABC","n":NaN}', "application/json"),
        (b"project=ABC", "application/x-www-form-urlencoded"),
        (b'{"project":"ABC"}', "text/plain"),
        (b'{"project":"ABC"}', "application/json, application/x-www-form-urlencoded"),
    ]
    for body, content_type in refused:
        answer = client.generic(
            "POST", "/api/echo", body, content_type=content_type, **bearer(issued.secret)
        )
        assert answer.status_code == 403, (body, content_type, answer.content)
    # A +json subtype the rule reads: DRF has no parser for it (415), never other data.
    answer = client.generic(
        "POST",
        "/api/echo",
        b'{"project":"ABC"}',
        content_type="application/vnd.api+json",
        **bearer(issued.secret),
    )
    assert answer.status_code == 415, answer.content


# -- 2. gunicorn believes a client's SCRIPT_NAME header; the rule sees the path as sent ----

SETTINGS = """
from tests.django_project.settings import *  # noqa: F403

APITOKENS = "attack_tokens.tokens"
"""
TOKENS = """
from apitokens import ApiTokens, Policy, SQLiteStore
from tests.support import CHEAP_HASHER

tokens = ApiTokens(
    SQLiteStore({db!r}), hasher=CHEAP_HASHER, policy=Policy(protected_paths=["/api/", "/plain/"])
)
"""
WSGI = """
from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
"""


@pytest.fixture
def gunicorn_django(tmp_path: Path) -> Iterator[tuple[int, ApiTokens]]:
    """The test project under a real gunicorn (sync worker), its tokens in a SQLite file.

    The Django database is the test session's (``APITOKENS_DJANGO_DB``), so users made
    here are the server's users.
    """
    db = tmp_path / "tokens.db"
    (tmp_path / "attack_settings.py").write_text(SETTINGS)
    (tmp_path / "attack_tokens.py").write_text(TOKENS.format(db=str(db)))
    (tmp_path / "attack_wsgi.py").write_text(WSGI)
    ours = ApiTokens(SQLiteStore(db), hasher=CHEAP_HASHER, policy=Policy(protected_paths=["/api/"]))
    sock = listening()
    inherited = os.environ.get("PYTHONPATH", "")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "attack_settings",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(tmp_path), str(ROOT / "src"), str(ROOT), inherited])
        ),
    }
    env.pop("SCRIPT_NAME", None)
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-b",
        f"fd://{sock.fileno()}",
        "--control-socket",
        str(tmp_path / "gunicorn.ctl"),
        "attack_wsgi:application",
    ]
    server = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=[sock.fileno()],
    )
    port = sock.getsockname()[1]
    sock.close()  # only gunicorn holds it now: requests wait in its backlog
    try:
        yield port, ours
    finally:
        server.terminate()
        server.wait(timeout=20)
        ours.close()


def test_a_client_script_name_never_takes_a_token_past_its_rule(
    gunicorn_django: tuple[int, ApiTokens],
) -> None:
    port, ours = gunicorn_django
    user = make_user("gunicorn")
    issued = ours.create(actor=user.username, name="drf-only", restrictions=["[get]/api/drf/.*"])
    auth = {"Authorization": f"Bearer {issued.secret}"}
    status, body = raw_request(port, "/api/drf/token-only", auth, timeout=30)  # starting
    assert status == 200, body
    assert raw_request(port, "/api/whoami", auth)[0] == 403  # outside its rule
    status, body = raw_request(port, "/api/drf/api/whoami", {**auth, "SCRIPT_NAME": "/api/drf"})
    assert user.username.encode() not in body, "the rule saw /api/drf/..., Django /api/whoami"
    assert status in (400, 403), body


# -- 3. FORCE_SCRIPT_NAME under ASGI: Django routes a path the middleware never protects ----


def test_force_script_name_under_asgi_never_unprotects_a_view() -> None:
    """Found (fixed): under ASGI Django strips FORCE_SCRIPT_NAME off ``scope["path"]`` to
    route (``ASGIRequest.path_info``), and the core was given only the path as sent:
    ``/app/plain/whoami`` routes to ``/plain/whoami``, which the policy protects, yet the
    middleware passed it through (a refused token, or with ``allow_other_auth=False`` a
    password, reached the view). ``auth_request()`` now gives Django's routed path as
    the app's path."""
    user = make_user("script")
    issued = tokens.create(actor=user.username, name="ci")
    unknown = tokens.policy.token_format.issue().value

    async def send() -> list[Any]:
        client = AsyncClient()
        return [
            await client.get("/app/plain/whoami", headers={"Authorization": f"Bearer {s}"})
            for s in (issued.secret, unknown)
        ]

    with override_settings(FORCE_SCRIPT_NAME="/app"):
        good, bad = asyncio.run(send())
    assert good.status_code == 200, good.content
    # The view is /plain/whoami's: a token there is checked, the owner is request.user.
    assert good.json()["user"] == user.username, good.content
    assert bad.status_code == 401, bad.content


# -- 4. identity: the owner is a username, and usernames come back ---------------------------


def test_a_deleted_users_token_never_becomes_a_new_users_with_the_name() -> None:
    old = make_user("leaver")
    name, old_pk = old.username, old.pk
    issued = tokens.create(actor=name, name="ci", scope=Scope.READ_WRITE)
    old.delete()  # the token was never revoked
    newcomer = get_user_model().objects.create_user(name, password="x")
    assert newcomer.pk != old_pk
    # The first request naming this owner: nothing about it is cached yet.
    answer = Client().get("/plain/whoami", **bearer(issued.secret))
    assert answer.status_code == 401, answer.content


def test_owner_names_that_only_look_alike_never_match() -> None:
    """Held: the owner is looked up exactly (no case folding, no Unicode normalization, no
    trimming), and a token of an inactive user is refused."""
    client = Client()
    user = make_user("Alike")
    user.is_superuser = True
    user.save()
    for owner in (
        user.username.lower(),
        user.username.upper(),
        f" {user.username}",
        f"{user.username} ",
        user.username.replace("A", "\N{GREEK CAPITAL LETTER ALPHA}"),
        user.username.replace("A", "\N{FULLWIDTH LATIN CAPITAL LETTER A}"),
    ):
        issued = tokens.create(actor=owner, name="alike")
        answer = client.get("/plain/whoami", **bearer(issued.secret))
        assert answer.status_code == 401, (owner, answer.content)


unbound_tokens: ApiTokens | None = None  # settings.APITOKENS in the unbound-token test


def test_an_unbound_token_never_signs_in_as_any_django_user() -> None:
    global unbound_tokens
    unbound_tokens = ApiTokens(
        MemoryStore(),
        policy=Policy(
            protected_paths=["/plain/"], allow_unbound_tokens=True, token_admins={"admins"}
        ),
        groups=lambda user: {"admins"} if user == "ops" else set(),
        hasher=CHEAP_HASHER,
    )
    try:
        admin = make_user("root")
        admin.is_staff = admin.is_superuser = True
        admin.save()
        issued = unbound_tokens.create(actor="ops", name="shared", unbound=True)
        with override_settings(APITOKENS=f"{__name__}.unbound_tokens"):
            answer = Client().get(
                "/plain/whoami", HTTP_AUTHORIZATION=basic(admin.username, issued.secret)
            )
        assert answer.json()["user"] != admin.username, answer.content
    finally:
        unbound_tokens.close()
        unbound_tokens = None


# -- 5. CSRF: a token sent as Basic is a credential the browser sends by itself ------------


def test_a_cross_site_form_post_never_rides_a_browsers_basic_token() -> None:
    user = make_user("browser")
    issued = tokens.create(actor=user.username, name="rw", scope=Scope.READ_WRITE)
    answer = Client(enforce_csrf_checks=True).post(
        "/plain/whoami",
        data="amount=1000&to=mallory",
        content_type="application/x-www-form-urlencoded",
        HTTP_AUTHORIZATION=basic(user.username, issued.secret),
        HTTP_ORIGIN="https://evil.example",
        HTTP_SEC_FETCH_SITE="cross-site",
        HTTP_SEC_FETCH_MODE="navigate",
    )
    assert answer.status_code == 403, answer.content


def test_no_header_a_cross_site_page_can_send_makes_a_session_csrf_exempt() -> None:
    """Held: a session request stays under CSRF with an empty, garbage, password or refused
    Authorization, and a token of another user's never acts with the session's user."""
    victim, other = make_user("victim"), make_user("other")
    client = Client(enforce_csrf_checks=True)
    client.force_login(victim)
    unknown = tokens.policy.token_format.issue().value
    for value in ("", "Bearer", "Basic !!!", basic(victim.username, "pw"), "Token x"):
        answer = client.post("/plain/whoami", data=b"{}", content_type="application/json",
                             HTTP_AUTHORIZATION=value)  # fmt: skip
        assert answer.status_code in (400, 403), (value, answer.content)
        assert victim.username.encode() not in answer.content, value
    refused = client.post("/plain/whoami", data=b"{}", content_type="application/json",
                          **bearer(unknown))  # fmt: skip
    assert refused.status_code == 401
    ro = tokens.create(actor=other.username, name="ro")
    seen = client.get("/plain/whoami", **bearer(ro.secret)).json()
    assert (seen["user"], seen["token"]) == (other.username, ro.token.id)
    write = client.post("/plain/whoami", data=b"{}", content_type="application/json",
                        **bearer(ro.secret))  # fmt: skip
    assert write.status_code == 403 and b"insufficient_scope" in write.content


strict_tokens: ApiTokens | None = None  # settings.APITOKENS in the allow_other_auth test


def test_allow_other_auth_false_leaves_drf_views_outside_the_protected_paths_alone() -> None:
    global strict_tokens
    strict_tokens = ApiTokens(
        MemoryStore(),
        policy=Policy(protected_paths=["/api/"], allow_other_auth=False),
        hasher=CHEAP_HASHER,
    )
    try:
        user = make_user("strict")
        client = APIClient()
        client.force_login(user)
        with override_settings(APITOKENS=f"{__name__}.strict_tokens"):
            protected = client.get("/api/whoami")
            outside = client.get("/drf/from-settings")  # TokenAuthentication, then the session
        assert protected.status_code == 401  # on /api/: tokens only, as configured
        assert (outside.status_code, outside.json().get("user")) == (200, user.username)
    finally:
        strict_tokens.close()
        strict_tokens = None


# -- 6. availability: the user directory failing ---------------------------------------------


def test_a_user_table_that_fails_gives_503_audited() -> None:
    """Held: the Django user check failing (the table gone) is 503, never a pass."""
    from django.db import connection

    user = make_user("dbgone")
    issued = tokens.create(actor=user.username, name="ci")
    client = Client()  # the owner was never checked: nothing is cached about them
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE auth_user RENAME TO auth_user_gone")
    try:
        answers = [client.get(p, **bearer(issued.secret)) for p in ("/plain/whoami", "/api/whoami")]
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE auth_user_gone RENAME TO auth_user")
    assert [a.status_code for a in answers] == [503, 503]
    [event] = tokens.audit(token_id=issued.token.id, limit=1)
    assert event.outcome is Outcome.FAILED
    assert event.reason.startswith("user check failed")


# -- 7. configurations Django allows that undo the integration ------------------------------

MISORDERED = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "apitokens.django.TokenMiddleware",  # before AuthenticationMiddleware, which resets user
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]


def apitokens_checks() -> list[str]:
    """The ids of apitokens' own system checks' messages (``manage.py check``)."""
    from django.core import checks

    return [str(m.id) for m in checks.run_checks() if str(m.id or "").startswith("apitokens")]


def test_a_token_middleware_before_djangos_auth_is_refused_at_startup() -> None:
    """Found (fixed by a system check): with TokenMiddleware before AuthenticationMiddleware,
    the latter resets ``request.user`` to the session's user after the token decided: a
    token of A with B's session cookie was B's request (``request.auth`` A's token, no
    CSRF check), DRF's TokenAuthentication returned that user as the token's, and without
    a session a token request was anonymous. ``manage.py check`` (and ``runserver``) now
    refuse the order: ``apitokens.E001``."""
    assert apitokens_checks() == []  # the test project's order
    owner, other = make_user("owner"), make_user("session")
    issued = tokens.create(actor=owner.username, name="rw", scope=Scope.READ_WRITE)
    with override_settings(MIDDLEWARE=MISORDERED):
        assert apitokens_checks() == ["apitokens.E001"]
    client = APIClient()
    client.force_login(other)
    for path in ("/api/whoami", "/api/needs-token", "/plain/whoami"):  # in order: the owner
        seen = client.get(path, **bearer(issued.secret)).json()
        assert (seen["user"], seen["token"]) == (owner.username, issued.token.id), path


class PasswordRecorder:
    """A Django authentication backend that records the passwords it is asked about (an
    LDAP or SSO backend would send them on to another system)."""

    passwords: ClassVar[list[str]] = []

    def authenticate(self, request: Any, username: Any = None, password: Any = None) -> None:
        if password is not None:
            self.passwords.append(password)

    def get_user(self, user_id: Any) -> None:
        return None


def test_drfs_basic_authentication_before_ours_is_warned_about() -> None:
    """Found (warned by a system check): with DRF's BasicAuthentication before
    TokenAuthentication in ``DEFAULT_AUTHENTICATION_CLASSES``, a token sent as Basic is
    checked as a Django password: the secret goes to every ``AUTHENTICATION_BACKENDS``
    entry (LDAP, SSO) and the request is refused (401), even after TokenMiddleware
    accepted it (reproduced: 401, the backend got the secret). ``manage.py check`` says
    so: ``apitokens.W002``. In the other order the secret never reaches a backend."""
    user = make_user("basic")
    issued = tokens.create(actor=user.username, name="ci")
    backends = [f"{__name__}.PasswordRecorder", "django.contrib.auth.backends.ModelBackend"]
    ours, basic_first = (
        {"DEFAULT_AUTHENTICATION_CLASSES": classes}
        for classes in (
            [
                "apitokens.drf.TokenAuthentication",
                "rest_framework.authentication.BasicAuthentication",
            ],
            [
                "rest_framework.authentication.BasicAuthentication",
                "apitokens.drf.TokenAuthentication",
            ],
        )
    )
    answers = {}
    for name, rest in (("ours", ours), ("basic_first", basic_first)):
        PasswordRecorder.passwords.clear()
        with override_settings(REST_FRAMEWORK=rest, AUTHENTICATION_BACKENDS=backends):
            answer = APIClient().get(
                "/api/drf/from-settings",  # a protected path: TokenMiddleware accepted it first
                HTTP_AUTHORIZATION=basic(user.username, issued.secret),
            )
            # Counted, not shown: a failing assertion never prints the secret.
            answers[name] = (answer.status_code, PasswordRecorder.passwords.count(issued.secret))
            assert apitokens_checks() == ([] if rest is ours else ["apitokens.W002"])
    assert answers["ours"] == (200, 0)


# -- 8. manage.py apitokens ------------------------------------------------------------------


def test_manage_py_options_are_djangos_not_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """Found (fixed): ``manage.py apitokens list --settings=...`` failed ("unrecognized
    arguments"): manage.py applies ``--settings``/``--pythonpath`` wherever they stand and
    leaves them in argv, and the command handed them to the apitokens parser. Held: the
    secret is printed once, on stdout, and never again (list, show)."""
    from apitokens.django.management.commands.apitokens import Command

    user = make_user("cli")
    argv = ["manage.py", "apitokens"]
    settings_module = os.environ["DJANGO_SETTINGS_MODULE"]
    Command().run_from_argv(
        [*argv, "create", "--name", "ci", "--user", user.username, f"--settings={settings_module}"]
    )
    created = capsys.readouterr()
    secret = next(w for w in created.out.split() if tokens.policy.token_format.parse(w))
    assert created.out.count(secret) == 2  # the token, and the curl example that uses it
    assert secret not in created.err
    token_id = tokens.policy.token_format.parse(secret).id  # type: ignore[union-attr]
    for command in (["list"], ["show", token_id], ["list", "--json"]):
        Command().run_from_argv([*argv, "--settings", settings_module, *command, "--pythonpath=."])
        shown = capsys.readouterr()
        assert token_id in shown.out, command
        assert secret not in shown.out + shown.err, command
    with pytest.raises(SystemExit) as exited:
        Command().run_from_argv([*argv, "list", "--", "--settings=x"])  # after --: the command's
    assert exited.value.code != 0
    assert secret not in capsys.readouterr().err


def test_a_body_past_djangos_upload_limit_is_413_under_wsgi_and_asgi() -> None:
    """Held: a JSON rule's body past ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (below the policy's
    ``max_body_bytes``) is 413, audited, never Django's 400 or a 500; the view never runs.
    (The audit reason names ``max_body_bytes``, not Django's smaller limit.)"""
    user = make_user("big")
    issued = tokens.create(
        actor=user.username,
        name="j",
        scope=Scope.READ_WRITE,
        restrictions=["[post].*/plain/whoami[JsonData::project==ABC]"],
    )
    body = json.dumps({"project": "ABC", "pad": "x" * 300}).encode()
    assert len(body) < tokens.policy.max_body_bytes
    auth = {"Authorization": f"Bearer {issued.secret}"}

    async def under_asgi() -> Any:
        return await AsyncClient().post(
            "/plain/whoami", body, content_type="application/json", headers=auth
        )

    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100):
        wsgi = Client().post("/plain/whoami", body, content_type="application/json", headers=auth)
        asgi = asyncio.run(under_asgi())
    for answer in (wsgi, asgi):
        assert answer.status_code == 413, answer.content
        assert answer.json()["error"] == "request_too_large"
    events = tokens.audit(token_id=issued.token.id, action="authenticate")
    assert [e.outcome for e in events] == [Outcome.FORBIDDEN] * 2


def test_a_missing_or_wrong_apitokens_setting_fails_manage_py_check() -> None:
    """The new user's finding: a missing APITOKENS passed ``manage.py check`` and then every
    request (the admin too) answered 500. Now ``apitokens.E003`` at startup."""
    assert "apitokens.E003" not in apitokens_checks()
    for value in (
        None,
        "tests.django_project.nowhere.tokens",
        "tests.django_project.settings.DEBUG",
    ):
        with override_settings(APITOKENS=value):
            assert "apitokens.E003" in apitokens_checks(), value
