"""examples/django_project runs as its README says: every command line of the README,
in order, on a copy of the project, with ``runserver`` serving on 127.0.0.1, and every
curl line getting the status its comment gives.

Two changes to what a reader types, both for the test's sake: ``runserver`` is told
``127.0.0.1:0 --noreload`` (a free port, which it prints once it is bound; no reloader
process), and the curl lines go to that port.
"""

from __future__ import annotations

import base64
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from apitokens import TOKEN_PATTERN
from tests.support.django_example import EXAMPLE, copy_example, environment

README = EXAMPLE / "README.md"
SHELL_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.M | re.S)
STATUS = re.compile(r"\s+# -> (\d{3})$")
KEEPS = re.compile(r"\s+# ([A-Z_]+)=apt_…$")
BANNER = re.compile(r"Starting development server at http://127\.0\.0\.1:(\d+)/")


def readme_lines() -> list[str]:
    """The command lines of the README's ``sh`` blocks, in order."""
    text = README.read_text(encoding="utf-8")
    return [
        line
        for block in SHELL_BLOCK.findall(text)
        for line in block.splitlines()
        if line.strip() and not line.startswith("#")
    ]


@dataclass
class Shell:
    """The reader's shell: the project directory and the variables set so far."""

    project: Path
    variables: dict[str, str]

    def words(self, line: str) -> list[str]:
        for name, value in self.variables.items():
            line = line.replace(f"${name}", value)
        assert "$" not in line.replace("'$", ""), f"an unset variable in: {line}"
        return shlex.split(line)

    def manage(self, line: str) -> subprocess.CompletedProcess[str]:
        words = self.words(line)
        env = environment()
        while "=" in words[0]:  # NAME=value before the command
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        assert words[:2] == ["python", "manage.py"], line
        return subprocess.run(
            [sys.executable, *words[1:]],
            cwd=self.project,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@contextmanager
def runserver(shell: Shell, line: str) -> Iterator[int]:
    """Serve the project as ``line`` says, on a free port of 127.0.0.1; yield the port."""
    words = shell.words(line)
    assert words == ["python", "manage.py", "runserver"], line
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "127.0.0.1:0", "--noreload"],
        cwd=shell.project,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    drain = None
    try:
        assert server.stdout is not None
        port = None
        for printed in server.stdout:  # Django prints the banner once the socket is bound
            output.append(printed)
            found = BANNER.search(printed)
            if found:
                port = int(found.group(1))
                break
        assert port is not None, "".join(output)
        # Keep reading its request log, so a full pipe never stops the server.
        drain = threading.Thread(target=output.extend, args=(server.stdout,), daemon=True)
        drain.start()
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if drain is not None:
            drain.join(timeout=20)  # the server is gone: its end of the pipe is closed
        if server.stdout is not None:
            server.stdout.close()


def curl(shell: Shell, line: str, port: int) -> httpx.Response:
    """Send the request a README curl line describes."""
    words = shell.words(line.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
    assert words[0] == "curl", line
    words.pop(0)
    method, headers, body, url = "GET", {}, None, ""
    while words:
        word = words.pop(0)
        if word == "-H":
            name, _, value = words.pop(0).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-u":
            headers["Authorization"] = "Basic " + base64.b64encode(words.pop(0).encode()).decode()
        elif word == "--data":
            body, method = words.pop(0).encode(), "POST"
        else:
            assert not word.startswith("-"), f"curl option {word} is not understood here"
            url = word
    return httpx.request(method, url, headers=headers, content=body, timeout=30)


def test_the_example_project_runs_as_its_readme_says(tmp_path: Path) -> None:
    shell = Shell(copy_example(tmp_path), {})
    lines = readme_lines()
    # The install and the cd are the reader's; the test has this tree on its path.
    assert lines[:2] == ["pip install -e '.[drf]'", "cd examples/django_project"]
    lines = lines[2:]
    serve = next(i for i, line in enumerate(lines) if "runserver" in line)
    for line in lines[:serve]:
        keeps = KEEPS.search(line)
        done = shell.manage(line[: keeps.start()] if keeps else line)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        if keeps:
            token = TOKEN_PATTERN.search(done.stdout)
            assert token is not None, done.stdout
            shell.variables[keeps.group(1)] = token.group()
    assert set(shell.variables) == {"TOKEN", "EXPORT"}

    answers: list[httpx.Response] = []
    printed: dict[str, str] = {}
    with runserver(shell, lines[serve]) as port:
        for line in lines[serve + 1 :]:
            if not line.startswith("curl "):
                done = shell.manage(line)
                assert done.returncode == 0, f"{line}\n{done.stderr}"
                printed[line] = done.stdout
                continue
            status = STATUS.search(line)
            assert status is not None, f"no '# -> STATUS' on: {line}"
            answer = curl(shell, line[: status.start()], port)
            assert answer.status_code == int(status.group(1)), (line, answer.text)
            answers.append(answer)

    # What the README says happened.
    whoami, created, listed, export = answers[:4]
    assert whoami.json()["user"] == "alice" and whoami.json()["scope"] == "read_write"
    assert created.json()["text"] == "first note"
    assert [note["text"] for note in listed.json()] == ["first note"]
    assert export.text.splitlines()[1].endswith(",first note")
    assert answers[4].json()["error"] == "insufficient_scope"  # the rule
    assert answers[8].headers["Location"].startswith("/api-auth/login/")
    (audit,) = [out for line, out in printed.items() if " audit " in line]
    assert audit.count("forbidden") == 2, audit
    final = shell.manage("python manage.py apitokens list --status revoked")
    assert re.search(r"\sexport\s+alice\s", final.stdout), final.stdout
