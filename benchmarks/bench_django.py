"""Django and DRF: apitokens' per-request overhead vs drf-api-key's and knox's.

One process, one Django project (``benchmarks.django_site``), its WSGI handler called
directly with a prepared environ (no server, no test client), so a case's overhead is
its time per request minus the bare view's, measured in the same rounds:

- a plain Django view, bare and behind ``apitokens.django.TokenMiddleware``;
- one DRF view, bare (no authentication, ``AllowAny``) and with: apitokens'
  ``TokenAuthentication`` and ``HasToken`` (without the middleware, and with it, whose
  decision they reuse); apitokens' ``TokenAuthentication`` alone (the policy protects
  the path); apitokens' ``TokenAuthentication`` and DRF's ``IsAuthenticated`` (which
  loads the Django user); drf-api-key's ``HasAPIKey``; knox's ``TokenAuthentication``
  and ``IsAuthenticated``;
- for scale, ``tokens.authenticate`` of the same request, without Django.

Every case but the bare ones is first shown to refuse a request without a credential.

Each peer's store holds 1,000 keys; Django's database is in-memory SQLite. apitokens'
token is warm, unrestricted, in a ``SQLiteStore`` file with its audit journal (the
default), and every batch of its requests is timed until its audit events and usage
are written (``flush``): drf-api-key and knox write nothing per request.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apitokens import ApiTokens, AuthRequest, HmacSha256Hasher, Policy
from benchmarks.apps import WSGIDriver
from benchmarks.common import (
    BENCH_KEY,
    QUICK,
    Section,
    bulk_store,
    median,
    ratio,
    store_copy,
    us,
    versions,
)

TARGET_RATIO = 40.0
KEYS = 1000
PROTECTED = ["/plain/", "/api/tokens/"]  # the apitokens policy's protected paths
COMMON_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
TOKEN_MIDDLEWARE = [*COMMON_MIDDLEWARE, "apitokens.django.TokenMiddleware"]

PLAIN = "plain Django view, bare"
PLAIN_MW = "plain Django view, apitokens `TokenMiddleware`"
DRF = "DRF view, bare (no authentication, `AllowAny`)"
DRF_OURS = "DRF view, apitokens `TokenAuthentication` + `HasToken`"
DRF_OURS_ANY = "DRF view, apitokens `TokenAuthentication` alone (`AllowAny`, a protected path)"
DRF_OURS_MW = "DRF view, the same behind `TokenMiddleware` (its decision reused)"
DRF_OURS_USER = "DRF view, apitokens `TokenAuthentication` + `IsAuthenticated` (loads the user)"
DRF_APIKEY = "DRF view, drf-api-key `HasAPIKey`"
DRF_KNOX = "DRF view, knox `TokenAuthentication` + `IsAuthenticated`"
CORE = "no Django: apitokens `tokens.authenticate` of the same request, audit written"

SETTINGS: dict[str, Any] = {
    "DEBUG": False,
    "SECRET_KEY": "benchmark-only-not-a-secret",
    "ALLOWED_HOSTS": ["*"],
    "USE_TZ": True,
    "INSTALLED_APPS": [
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "django.contrib.sessions",
        "rest_framework",
        "rest_framework_api_key",
        "knox",
        "apitokens.django",
    ],
    "MIDDLEWARE": COMMON_MIDDLEWARE,
    "ROOT_URLCONF": "benchmarks.django_site",
    # In-memory SQLite, one connection for the whole run: the cheapest database the
    # peers' per-request queries can have.
    "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    "DEFAULT_AUTO_FIELD": "django.db.models.AutoField",
    "PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"],
    "APITOKENS": "benchmarks.django_site.tokens",
    "REST_FRAMEWORK": {
        "DEFAULT_AUTHENTICATION_CLASSES": [],
        "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
        "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    },
}


@dataclass
class Case:
    """One way of serving a request: a handler, a path, a credential."""

    label: str
    baseline: str  # the label of the bare case it is compared with
    call: Callable[[], object]
    driver: WSGIDriver | None  # None: not a request through Django
    ours: bool  # apitokens: flush its audit writer inside the timing
    wall: list[float]
    cpu: list[float]


def setup_django() -> None:
    import django
    from django.conf import settings

    settings.configure(**SETTINGS)
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def handler(middleware: list[str]) -> Any:
    """A WSGI handler with this middleware (Django reads MIDDLEWARE when it is made)."""
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    settings.MIDDLEWARE = middleware
    try:
        return WSGIHandler()
    finally:
        settings.MIDDLEWARE = COMMON_MIDDLEWARE


def peer_credentials(apitokens_owner: str) -> tuple[str, str]:
    """Users and the peers' keys (1,000 each); the benchmark's drf-api-key key and knox token."""
    from django.contrib.auth import get_user_model
    from knox.models import AuthToken  # type: ignore[import-untyped,unused-ignore]
    from rest_framework_api_key.models import APIKey

    users = get_user_model()
    manager: Any = users._default_manager
    manager.create_user(apitokens_owner)
    owner = manager.create_user("knox-bench")
    others = manager.bulk_create(users(username=f"other{i}") for i in range(KEYS - 1))
    for index, other in enumerate(others):
        APIKey.objects.create_key(name=f"other {index}")
        AuthToken.objects.create(user=other)
    _, key = APIKey.objects.create_key(name="bench")
    _, knox_token = AuthToken.objects.create(user=owner)
    assert APIKey.objects.is_valid(key)
    return key, knox_token


def run_rounds(cases: list[Case], tokens: ApiTokens, rounds: int, batch: int) -> None:
    """``rounds`` rounds (after 2 of warm-up): every case one batch per round.

    The order turns by one case each round, so no case always follows the same one.
    Times are per request: wall clock and the process's CPU time (all threads).
    """
    for index in range(rounds + 2):
        shift = index % len(cases)
        for case in cases[shift:] + cases[:shift]:
            call = case.call
            gc.collect()
            gc.disable()
            try:
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(batch):
                    call()
                if case.ours:
                    tokens.flush()
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            finally:
                gc.enable()
            if index >= 2:
                case.wall.append(wall / batch * 1e6)
                case.cpu.append(cpu / batch * 1e6)


def overheads(case: Case, bare: Case, times: str) -> list[float]:
    """Per round: the case's time minus its bare view's (µs per request)."""
    mine, theirs = getattr(case, times), getattr(bare, times)
    return [m - b for m, b in zip(mine, theirs, strict=True)]


def owner_of(tokens: ApiTokens, secret: str) -> tuple[str, str]:
    """The owner and id of the token ``secret`` (before Django's user check is added)."""
    request = AuthRequest(
        "GET", "/api/tokens/item", headers=[("Authorization", f"Bearer {secret}")]
    )
    result = tokens.authenticate(request)
    assert result.authenticated and result.user and result.token, result
    return result.user, result.token.id


def make_cases(tokens: ApiTokens, secret: str, key: str, knox_token: str) -> list[Case]:
    bare, wrapped = handler(COMMON_MIDDLEWARE), handler(TOKEN_MIDDLEWARE)
    ours = f"Bearer {secret}"
    made = []
    for label, baseline, app, target, authorization in (
        (PLAIN, PLAIN, bare, "/plain/item", ours),
        (PLAIN_MW, PLAIN, wrapped, "/plain/item", ours),
        (DRF, DRF, bare, "/api/bare", ours),
        (DRF_OURS, DRF, bare, "/api/tokens/item", ours),
        (DRF_OURS_ANY, DRF, bare, "/api/tokens/any", ours),
        (DRF_OURS_MW, DRF, wrapped, "/api/tokens/item", ours),
        (DRF_OURS_USER, DRF, bare, "/api/tokens/user", ours),
        (DRF_APIKEY, DRF, bare, "/api/apikey", f"Api-Key {key}"),
        (DRF_KNOX, DRF, bare, "/api/knox", f"Token {knox_token}"),
    ):
        driver = WSGIDriver("GET", target, authorization)
        if label != baseline:  # every check refuses a request without a credential
            probe = WSGIDriver("GET", target, "")
            probe.call(app)
            assert set(probe.statuses) <= {"401 Unauthorized", "403 Forbidden"}, (
                label,
                probe.statuses,
            )
        checked = authorization is ours and label != baseline  # apitokens checks it
        made.append(Case(label, baseline, driver.caller(app), driver, checked, [], []))
    # For scale: the core's decision for the same request, without Django.
    request = AuthRequest(
        "GET", "/api/tokens/item", headers=[("Authorization", ours)], client_ip="127.0.0.1"
    )
    made.append(Case(CORE, CORE, lambda: tokens.authenticate(request), None, True, [], []))
    return made


def main() -> None:
    rounds, batch = (5, 300) if QUICK else (15, 1000)
    setup_django()
    from benchmarks import django_site

    bulk = bulk_store(KEYS)
    with tempfile.TemporaryDirectory() as tmp, store_copy(bulk, Path(tmp)) as store:
        policy = Policy(protected_paths=PROTECTED, allow_other_auth=False)  # tokens only
        with ApiTokens(store, policy=policy, hasher=HmacSha256Hasher(BENCH_KEY)) as tokens:
            secret = bulk.secrets[0]
            owner, token_id = owner_of(tokens, secret)
            key, knox_token = peer_credentials(owner)
            django_site.tokens = tokens
            cases = make_cases(tokens, secret, key, knox_token)
            run_rounds(cases, tokens, rounds, batch)
            tokens.flush()
            audited = len(tokens.audit(token_id=token_id, action="authenticate", limit=10**7))
    for case in cases:
        if case.driver is not None:
            assert set(case.driver.statuses) == {"200 OK"}, (case.label, case.driver.statuses)
    checked = sum(case.ours for case in cases) * (rounds + 2) * batch + 1  # + owner_of's
    report(cases, rounds, batch, audited, checked)


def paired_ratio(theirs: list[float], mine: list[float]) -> float:
    """Median of the per-round ratios ``theirs / mine`` (overheads from the same round)."""
    return median([t / m if m > 0 else float("inf") for t, m in zip(theirs, mine, strict=True)])


def report(cases: list[Case], rounds: int, batch: int, audited: int, checked: int) -> None:
    section = Section(
        "django",
        "Django and DRF: apitokens vs drf-api-key and knox",
        intro=(
            f"{versions('Django', 'djangorestframework', 'djangorestframework-api-key')}, "
            f"{versions('django-rest-knox')}. One Django project, its WSGI handler called "
            "in-process with a prepared environ (no server); a plain Django view and one DRF "
            "view (JSON renderer), the DRF view mounted once per way of checking a credential. "
            "Overhead is a case's time per request minus its bare view's, in the same round. "
            "Middleware of every handler: sessions, Django's authentication (plus "
            "`TokenMiddleware` where named). Each peer's store holds 1,000 keys, Django's "
            "database is in-memory SQLite; apitokens' token is warm and unrestricted, in a "
            "`SQLiteStore` file of 1,000 tokens with its audit journal, and its rounds are "
            "timed until their audit events and usage are written. Its policy takes tokens "
            "only on the protected paths (`allow_other_auth=False`): like every other check "
            "here, each apitokens case was first shown to refuse a request without one. "
            f"{rounds} rounds of {batch} requests per case, every case in every round (the "
            "order turning by one each round); medians. Times are CPU time of all threads "
            "unless marked wall."
        ),
    )
    by_label = {case.label: case for case in cases}
    cpu = {c.label: overheads(c, by_label[c.baseline], "cpu") for c in cases}
    wall = {c.label: overheads(c, by_label[c.baseline], "wall") for c in cases}
    rows = []
    for case in cases:
        bare = case.label == case.baseline
        rows.append(
            [
                case.label,
                us(median(case.cpu)),
                "" if bare else us(median(cpu[case.label])),
                "" if bare else us(median(wall[case.label])),
                "" if bare else ratio(paired_ratio(cpu[DRF_APIKEY], cpu[case.label])),
                "" if bare else ratio(paired_ratio(cpu[DRF_KNOX], cpu[case.label])),
            ]
        )
    section.table(
        [
            "case",
            "per request",
            "overhead",
            "overhead, wall",
            "drf-api-key's overhead / this",
            "knox's overhead / this",
        ],
        rows,
    )
    section.notes.append(
        "How the peers check a key, per request (read in their code): drf-api-key's "
        "`HasAPIKey` queries the key by its prefix (`APIKey.objects.get_usable_keys()"
        ".get(prefix=...)`), hashes the presented key with SHA-512 and compares; knox's "
        "`TokenAuthentication` queries the tokens by their first 15 characters with the "
        "user joined, reads all of that user's tokens in a second query (deleting expired "
        "ones), hashes the presented token with SHA-512 and compares. Both hash once per "
        "request (fast, unsalted digests of random keys); their cost is the ORM and the "
        "database. apitokens answers a warm token from memory (a keyed BLAKE2b of the "
        "header value, the record cache, the Django user check cached for `cache_ttl`), "
        "and audits every request, which neither peer does."
    )
    section.notes.append(
        "`IsAuthenticated` behind apitokens' `TokenAuthentication` reads `request.user`, "
        "which apitokens loads lazily: one query for the Django user on each request that "
        "uses it (knox loads it with its token, joined). `HasToken` does not need it."
    )
    section.notes.append(
        f"Authentications audited for the benchmark token: {audited:,} of {checked:,} "
        f"requests apitokens checked ({checked - audited:,} lost)."
    )
    headline = [PLAIN_MW, DRF_OURS, DRF_OURS_MW]
    found = {label: paired_ratio(cpu[DRF_APIKEY], cpu[label]) for label in headline}
    section.verdict(
        f"Django: `TokenMiddleware` and DRF `TokenAuthentication` at least {TARGET_RATIO:.0f}x "
        "cheaper per request than drf-api-key's `HasAPIKey` (overhead over the bare view)",
        f"{ratio(found[PLAIN_MW])} (middleware, plain view), {ratio(found[DRF_OURS])} "
        f"(`TokenAuthentication` + `HasToken`), {ratio(found[DRF_OURS_MW])} (the same behind "
        f"the middleware); overheads {us(median(cpu[PLAIN_MW]))}, "
        f"{us(median(cpu[DRF_OURS]))}, {us(median(cpu[DRF_OURS_MW]))} vs "
        f"{us(median(cpu[DRF_APIKEY]))}",
        min(found.values()) >= TARGET_RATIO,
    )
    section.save()


if __name__ == "__main__":
    main()
