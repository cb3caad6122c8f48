"""The test Django project (``tests/django_project``), set up once per test session.

Django's settings are process-wide: the first test that needs Django sets it up,
with its database in a temp file (removed at exit) that a real server's threads
share. Users are made per test with unique names, so tests need no cleanup.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
from typing import Any

__all__ = ["make_user", "setup"]

_done = False
_numbers = itertools.count()


def setup() -> None:
    """Configure Django with the test project and create its tables (once)."""
    global _done
    if _done:
        return
    import django
    from django.core.management import call_command

    directory = tempfile.mkdtemp(prefix="apitokens-django-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ["APITOKENS_DJANGO_DB"] = os.path.join(directory, "django.sqlite3")
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.django_project.settings"
    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    _done = True


def make_user(prefix: str = "user", *, active: bool = True, password: str = "pw") -> Any:
    """A new Django user with a unique username (``<prefix>-<n>``)."""
    from django.contrib.auth import get_user_model

    name = f"{prefix}-{os.getpid()}-{next(_numbers)}"
    user = get_user_model().objects.create_user(name, password=password)
    if not active:
        user.is_active = False
        user.save()
    return user
