"""The example Django project (``examples/django_project``), copied and run as its README says.

Each test works on its own copy (the project keeps its two SQLite files beside
``manage.py``), with this tree's ``src`` first on the path and none of the test
session's own Django settings in the environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["EXAMPLE", "copy_example", "environment", "manage"]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django_project"


def copy_example(directory: Path) -> Path:
    """A fresh copy of the example project in ``directory``/django_project."""
    target = directory / "django_project"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3*"))
    return target


def environment(**extra: str) -> dict[str, str]:
    """The environment of a ``python manage.py`` run: this tree's apitokens, no test settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "APITOKENS_"))
    }
    paths = [str(ROOT / "src"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "80"  # argparse wraps --help the same on every terminal
    return {**env, **extra}


def manage(
    project: Path,
    *args: str,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``python manage.py ARGS`` in ``project``; its status, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=env if env is not None else environment(),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
