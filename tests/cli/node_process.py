"""A real `hashex node up` process for CLI tests, and the command run as a unit runs it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil

HASHEX = [sys.executable, "-m", "services.cli.main"]


def hashex(*args: str | Path, stdin_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HASHEX, *map(str, args)],
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
        input=stdin_text,
    )


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and str(pgdata) in " ".join(cmdline):
            found.append(process)
    return found


class NodeProcess:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.process = subprocess.Popen(
            [*HASHEX, "node", "up", "--data-dir", str(data_dir)],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        self.log: list[str] = []
        for line in self.process.stderr:
            self.log.append(line)
            if "Ctrl-C to stop" in line:  # printed once the address files are written
                return
        raise AssertionError("node exited before serving:\n" + "".join(self.log))

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        _, rest = self.process.communicate(timeout=60)
        self.log.append(rest)
        return self.process.returncode
