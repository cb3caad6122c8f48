"""The peer: djangorestframework-api-key's key check vs ``tokens.authenticate``.

Same machine, same run. drf-api-key (installed only in the benchmark's virtualenv) runs
with in-memory SQLite Django settings configured here; its check is
``APIKey.objects.is_valid(key)``: a query by prefix and a SHA-512 comparison, on every
call. Ours is ``tokens.authenticate`` for an equivalent unrestricted key (no rules, no
IP list) in a SQLite file, warm: it also queues the audit event and the token's use,
which drf-api-key does not record at all; the time the writer then needs is shown too.
Both stores hold 1,000 keys.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from apitokens import ApiTokens, AuthRequest, HmacSha256Hasher, Policy, SQLiteStore
from benchmarks.common import BENCH_KEY, QUICK, Section, median, per_call_us, ratio, us, versions

TARGET_RATIO = 5.0
KEYS = 1000


def django_check() -> tuple[object, str]:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="benchmark-only",
        USE_TZ=True,
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "rest_framework",
            "rest_framework_api_key",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()
    from django.core.management import call_command
    from rest_framework_api_key.models import APIKey

    call_command("migrate", verbosity=0, interactive=False)
    for index in range(KEYS - 1):
        APIKey.objects.create_key(name=f"other {index}")
    _, key = APIKey.objects.create_key(name="bench")
    assert APIKey.objects.is_valid(key)
    return APIKey.objects, key


def main() -> None:
    rounds, batch = (5, 500) if QUICK else (15, 2000)
    section = Section(
        "peer",
        "Peer: djangorestframework-api-key",
        intro=(
            f"{versions('djangorestframework-api-key', 'djangorestframework', 'Django')}. "
            "`APIKey.objects.is_valid(key)` (in-memory SQLite) vs our `tokens.authenticate` "
            "for an equivalent unrestricted token (SQLite file), both warm, both stores "
            f"holding {KEYS:,} keys. {rounds} interleaved rounds of {batch} calls; medians."
        ),
    )
    manager, key = django_check()
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "peer.db")
        with ApiTokens(store, policy=Policy(), hasher=HmacSha256Hasher(BENCH_KEY)) as tokens:
            for index in range(KEYS - 1):
                tokens.create(actor=f"user{index}", name="other")
            issued = tokens.create(actor="alice", name="bench")
            request = AuthRequest(
                "GET",
                "/api/items",
                headers=[("Authorization", f"Bearer {issued.secret}")],
                client_ip="192.0.2.1",
            )
            assert tokens.authenticate(request).authenticated
            is_valid = manager.is_valid  # type: ignore[attr-defined]
            assert is_valid(key)
            theirs, ours, ours_audit = [], [], []
            for index in range(rounds + 1):
                a = per_call_us(lambda: is_valid(key), batch)
                b = per_call_us(lambda: tokens.authenticate(request), batch)
                c = per_call_us(tokens.flush, 1) / batch
                if index:
                    theirs.append(a)
                    ours.append(b)
                    ours_audit.append(b + c)
        store.close()
    paired = median([t / o for t, o in zip(theirs, ours, strict=True)])
    paired_audit = median([t / o for t, o in zip(theirs, ours_audit, strict=True)])
    section.table(
        ["check", "per call", "drf-api-key / ours"],
        [
            ["drf-api-key `APIKey.objects.is_valid`", us(median(theirs)), ""],
            ["apitokens `tokens.authenticate`", us(median(ours)), ratio(paired)],
            [
                "apitokens, plus writing its audit event and usage",
                us(median(ours_audit)),
                ratio(paired_audit),
            ],
        ],
    )
    section.verdict(
        f"at least {TARGET_RATIO:.0f}x cheaper per request than the drf-api-key check",
        f"{ratio(paired)} for the check; {ratio(paired_audit)} counting our audit write",
        min(paired, paired_audit) >= TARGET_RATIO,
    )
    section.save()


if __name__ == "__main__":
    main()
