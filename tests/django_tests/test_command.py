"""``manage.py apitokens``: the CLI's own code (``apitokens.cli.run_on``) on the project's
ApiTokens, through ``call_command`` and as a real ``python manage.py`` (DESIGN §9)."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client, override_settings

from apitokens import TOKEN_PATTERN, Action, Outcome, TokenStatus
from tests.django_project.tokens import tokens
from tests.support.django import make_user
from tests.support.django_example import copy_example, manage


def command(*args: str, **options: object) -> tuple[int, str, str]:
    """``call_command("apitokens", *args)``: the exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("apitokens", *args, stdout=out, stderr=err, **options)
    except CommandError as error:
        return error.returncode, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def secret_in(output: str) -> str:
    found = TOKEN_PATTERN.search(output)
    assert found is not None, output
    return found.group()


def bearer(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


# -- call_command, on the test project (a MemoryStore) ---------------------------------


def test_a_created_token_is_the_owners_on_the_projects_api() -> None:
    user = make_user("cmd")
    code, out, err = command("--actor", "root", "create", "--name", "ci", "--user", user.username,
                             "--scope", "read-write")  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith("Created token ")
    secret = secret_in(out)
    client = Client(enforce_csrf_checks=True)
    for path in ("/plain/whoami", "/api/needs-write"):
        answer = client.post(path, data=b"{}", content_type="application/json", **bearer(secret))
        assert answer.status_code == 200, answer.content
        assert answer.json()["user"] == user.username
    (event,) = tokens.audit(action=Action.CREATE, user=user.username)
    assert (event.actor, event.outcome) == ("root", Outcome.SUCCESS)


def test_list_revoke_and_audit() -> None:
    user = make_user("cmd")
    _, out, _ = command("--actor", "root", "create", "--name", "old", "--user", user.username,
                        "--json")  # fmt: skip
    issued = json.loads(out)
    token_id = issued["token"]["id"]
    code, out, err = command("list", "--user", user.username, "--actor", "root")
    assert (code, err) == (0, "")
    assert re.search(rf"^{token_id}\s+old\s+{re.escape(user.username)}\s", out, re.M), out
    assert command("--actor", "root", "revoke", token_id)[0] == 0
    # Refused at once, though the project's instance had nothing to tell it.
    answer = Client().get("/plain/whoami", **bearer(issued["secret"]))
    assert answer.status_code == 401
    code, out, err = command("--actor", "root", "audit", "--token", token_id, "--json")
    assert (code, err) == (0, "")
    events = json.loads(out)
    assert [e["action"] for e in events] == ["authenticate", "revoke", "create"]
    assert [e["outcome"] for e in events] == ["failed", "success", "success"]
    revoked = tokens.get(token_id)
    assert revoked is not None and revoked.status_at(datetime.now(UTC)) is TokenStatus.REVOKED


def test_limits_set_by_the_command_hold_on_the_projects_api() -> None:
    user = make_user("cmd")
    code, out, err = command("--actor", "root", "create", "--name", "metered", "--user",
                             user.username, "--credits", "1", "--rate-limit", "100/min",
                             "--json")  # fmt: skip
    assert (code, err) == (0, "")
    issued = json.loads(out)
    assert (issued["token"]["credits"], issued["token"]["rate_limit"]) == (1, "100/min")
    client = Client()
    assert client.get("/plain/whoami", **bearer(issued["secret"])).status_code == 200
    spent = client.get("/plain/whoami", **bearer(issued["secret"]))
    assert spent.status_code == 429
    assert spent["RateLimit-Policy"] == '"credits";q=1'
    code, out, _ = command("--actor", "root", "show", issued["token"]["id"], "--json")
    assert (code, json.loads(out)["credits_left"]) == (0, 0)
    code, _, err = command("--actor", "root", "create", "--name", "x", "--rate-limit", "fast")
    assert code == 2 and "argument --rate-limit: rate 'fast' is not of the form" in err


def test_help_is_the_commands_own_and_options_may_come_first() -> None:
    code, out, err = command("--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: manage.py apitokens [-h] [--version] [--actor NAME] COMMAND")
    assert "--db" not in out
    code, out, _ = command("--version")
    assert (code, out.split()[0]) == (0, "apitokens")
    assert command("--actor", "root", "list", verbosity=0)[0] == 0


def test_rule_check_exit_statuses() -> None:
    assert command("rule", "check", "[get].*/api/.*", "GET", "/api/notes/")[0] == 0
    code, out, err = command("rule", "check", "[get].*/api/.*", "POST", "/api/notes/")
    assert (code, err) == (1, "")
    assert "no match: method POST not in [GET]" in out
    code, _, err = command("rule", "check", "[get", "GET", "/")
    assert code == 2
    # The rule with a caret under the column, then the one error line.
    assert err.splitlines()[-1].startswith("apitokens: error: invalid rule: column 1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--actor", "root", "revoke", "AAAAAAAAAAAA"), "no token 'AAAAAAAAAAAA'"),
        (("--db", "x.db", "list"), "--db and --prefix are the application's here"),
        (("lst",), "invalid choice: 'lst'"),
        (("--actor", "root", "create", "--name", "x", "--expires-in", "soon"), "--expires-in"),
    ],
)
def test_an_error_is_one_line_and_exit_status_2(args: tuple[str, ...], message: str) -> None:
    code, out, err = command(*args)
    assert (code, out) == (2, "")
    assert err.startswith("apitokens: error: ") and err.count("\n") == 1, err
    assert message in err


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "set APITOKENS to the dotted path of your ApiTokens instance"),
        ("tests.django_project.nothing.tokens", "APITOKENS = 'tests.django_project.nothing"),
        ("tests.django_project.settings.SECRET_KEY", "names a str, not an ApiTokens"),
    ],
)
def test_a_wrong_apitokens_setting_is_one_line(setting: str, message: str) -> None:
    with override_settings(APITOKENS=setting):
        code, out, err = command("--actor", "root", "list")
        assert command("rule", "check", "[get].*", "GET", "/")[0] == 0  # needs no instance
    assert (code, out) == (2, "")
    assert err.startswith("apitokens: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not err.startswith("apitokens: error: apitokens:")


# -- python manage.py apitokens, on the example project (a SQLite file) ----------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example project, migrated, with the Django user alice."""
    directory = copy_example(tmp_path_factory.mktemp("example"))
    (directory / "project" / "broken.py").write_text(
        "from project.settings import *  # noqa: F403\nAPITOKENS = 'project.missing.tokens'\n"
    )
    for args in (("migrate", "-v0"), ("shell", "-c", MAKE_ALICE)):
        done = manage(directory, *args)
        assert done.returncode == 0, done.stderr
    return directory


MAKE_ALICE = "from django.contrib.auth.models import User; User.objects.create_user('alice')"

# The project's own stack (middleware, DRF, the Django user) in a manage.py process of its own.
WHOAMI = """
import json, sys
from django.test import Client
answer = Client(HTTP_HOST="127.0.0.1").get(
    "/api/whoami/", HTTP_AUTHORIZATION="Bearer " + sys.stdin.read().strip()
)
print(json.dumps({"status": answer.status_code, "body": answer.json()}))
"""


def test_manage_py_apitokens_runs_the_command_on_the_projects_store(project: Path) -> None:
    done = manage(project, "apitokens", "--actor", "admin", "create", "--user", "alice",
                  "--name", "ci", "--url", "http://127.0.0.1:8000/api/notes/")  # fmt: skip
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    secret = secret_in(done.stdout)
    assert f"curl -H 'Authorization: Bearer {secret}' http://127.0.0.1:8000/api/notes/" in (
        done.stdout
    )
    token_id = secret.split("_")[1][:12]
    # The token works on the project's API, as alice.
    seen = whoami(project, secret)
    assert seen == {
        "status": 200,
        "body": {"user": "alice", "token": token_id, "scope": "read_only"},
    }
    listed = manage(project, "apitokens", "list", "--json")
    assert [(t["id"], t["user"], t["use_count"]) for t in json.loads(listed.stdout)] == [
        (token_id, "alice", 1)
    ]
    assert manage(project, "apitokens", "--actor", "admin", "revoke", token_id).returncode == 0
    audit = manage(project, "apitokens", "audit", "--token", token_id, "--json")
    assert [(e["action"], e["actor"] or e["user"]) for e in json.loads(audit.stdout)] == [
        ("revoke", "admin"),
        ("authenticate", "alice"),
        ("create", "admin"),
    ]
    assert whoami(project, secret)["status"] == 401


def whoami(project: Path, secret: str) -> dict[str, object]:
    """GET /api/whoami/ with ``secret`` through the project's Django, in a process of its own."""
    done = manage(project, "shell", "-v0", "-c", WHOAMI, input=secret)
    assert done.returncode == 0, done.stderr
    seen: dict[str, object] = json.loads(done.stdout)
    return seen


def test_manage_py_apitokens_help_errors_and_exit_statuses(project: Path) -> None:
    for args in (("apitokens", "--help"), ("help", "apitokens")):
        done = manage(project, *args)
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout.startswith("usage: manage.py apitokens [-h] [--version] [--actor NAME]")
        assert "revoke-unused" in done.stdout
    done = manage(project, "apitokens", "rule", "check", "[get].*/api/.*", "POST", "/api/notes/")
    assert (done.returncode, done.stderr) == (1, "")
    for args, message in [
        (("apitokens",), "the following arguments are required: COMMAND"),
        (("apitokens", "--actor", "admin", "revoke", "nope"), "no token with that id"),
        (("apitokens", "--settings", "project.broken", "list"), "APITOKENS = 'project.missing"),
        (("apitokens", "list", "--settings=project.broken"), "No module named 'project.missing'"),
    ]:
        done = manage(project, *args)
        assert (done.returncode, done.stdout) == (2, ""), done
        assert done.stderr.startswith("apitokens: error: "), done.stderr
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
