"""How the demo runs `hashex`: each command in a subprocess, printed as an operator would type
it with its output shown (or read quietly), and the demo's one way of waiting for something the
nodes do in their own time: poll with a deadline, then fail the demo saying what never came."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Pause between two polls of the nodes.
POLL_INTERVAL_S = 0.5


def hashex(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "services.cli.main", *map(str, args)]
    print("\n$ hashex " + shlex.join(map(str, args)), flush=True)
    done = subprocess.run(command, text=True, capture_output=True, check=False)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    if check and done.returncode not in (0, 1):
        raise SystemExit(f"demo failed: hashex {args[0]} exited {done.returncode}")
    return done


def quiet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """A command whose output the demo reads rather than shows."""
    command = [sys.executable, "-m", "services.cli.main", *map(str, args)]
    return subprocess.run(command, text=True, capture_output=True, check=False)


def wait_until(check: Callable[[], str | None], timeout_s: float, failure: str) -> None:
    """Poll `check` until it returns None (done); it otherwise says what is still missing, which
    the demo's failure names after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (missing := check()) is not None:
        if time.monotonic() > deadline:
            raise SystemExit(f"demo failed: {failure} within {timeout_s:.0f} s: {missing}")
        time.sleep(POLL_INTERVAL_S)
