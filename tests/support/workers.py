"""``uvicorn --workers N`` in a subprocess, for the tests of many processes on one store."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

__all__ = ["uvicorn_workers"]

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def uvicorn_workers(
    target: str,
    directory: Path,
    *,
    workers: int,
    env: Mapping[str, str] = {},
    extra: Sequence[str] = (),
    graceful: bool = False,
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Serve ``target`` (``module:app``, its module in ``directory``) on 127.0.0.1.

    Yields the port and the process. The socket is bound before uvicorn starts (its
    workers share it through ``--fd``), so a request waits in the backlog and nothing
    polls. At the end a server still running is killed (``graceful``: SIGTERM first,
    so each worker's lifespan shutdown flushes what it holds).
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    environment = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(directory), str(ROOT / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    log = (directory / "server.log").open("wb")
    fd = sock.fileno()
    command = [sys.executable, "-m", "uvicorn", target, "--fd", str(fd)]
    command += ["--workers", str(workers), "--log-level", "warning", *extra]
    process = subprocess.Popen(
        command,
        cwd=directory,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        pass_fds=[fd],
    )
    sock.close()  # only the server holds it now
    try:
        yield port, process
    finally:
        if process.poll() is None:
            if graceful:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=20)
            if process.poll() is None:
                process.kill()
        process.wait(timeout=20)
        log.close()
