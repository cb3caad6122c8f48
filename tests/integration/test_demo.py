"""`make demo` works as the README says: the demo's own --check runs its curl lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_serves_and_every_curl_line_gets_what_it_promises() -> None:
    done = subprocess.run(
        [sys.executable, "examples/demo.py", "--check", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all as expected" in done.stderr
    outcomes = [line.split("-> ")[1] for line in done.stdout.splitlines() if "#   -> " in line]
    assert sorted(set(outcomes)) == ["200", "401", "403", "429"]
    assert "curl -i -H 'Authorization: Bearer apt_" in done.stdout
    assert "authenticate" in done.stdout  # the audit log it prints at the end
