"""Whether the node's database can be reached, decided in one place and said once.

An outage is a state of the node, not an error of each call: calls that fail for a connection
reason answer UNAVAILABLE (see `services.core.rpc_status`) and log nothing, while
`DatabaseHealth` logs one line when the database goes and one when it returns, tells listeners
(the node sets gRPC health NOT_SERVING / SERVING on each server) and, for an embedded server,
restarts a postmaster that died.

Which errors mean "the connection is gone" was found by experiment with asyncpg 0.32 against a
real PostgreSQL 18 (embedded, Unix socket) that was stopped (`pg_ctl stop -m fast`) or killed
(SIGKILL to the postmaster):

- a statement on a pooled connection when the server stops: ConnectionDoesNotExistError
  ("connection was closed in the middle of operation"), or AdminShutdownError (57P01) while a
  statement runs; on an idle pooled connection that received the server's FATAL goodbye, the
  next statement raises InternalClientError ("cannot switch to state ...; another operation (2)
  is in progress": the protocol is stuck discarding the unsolicited error);
- a connection held across the outage: InterfaceError("connection is closed");
- connecting while the server is down: FileNotFoundError (Unix socket gone after a clean stop),
  ConnectionRefusedError (socket file left by a killed server, or TCP), TimeoutError (a host
  that does not answer), CannotConnectNowError (57P03: starting up, shutting down, recovering);
- after a crash: CrashShutdownError (57P02) on connections the server ends itself.

An OSError (ConnectionRefusedError, FileNotFoundError, TimeoutError, ...) counts only when raised
inside asyncpg, so that a missing file, a refused peer or a timeout elsewhere in a handler is not
mistaken for a database outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

import asyncpg

from services.core.errors import FailedPrecondition

_log = logging.getLogger(__name__)

# Lost or refused connections and a server that is going away or not yet ready. Deliberately not
# included: ProtocolViolationError (a client bug), QueryCanceledError and the other 57xxx
# "operator intervention" errors, TooManyConnectionsError (the server answers; it is full).
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)
_CLOSED_CONNECTION_MESSAGES = (
    "connection is closed",
    "cannot perform operation: connection is closed",
)
_STUCK_PROTOCOL_MARKERS = (
    "another operation (2) is in progress",
    'protocol is in the "failed" state',
)

Listener = Callable[[bool], Awaitable[None]]
# Restarts the embedded server if its postmaster is dead: None when it was running (nothing to
# do), else a description of what was restarted; raises when restarting failed.
Restart = Callable[[], Awaitable[str | None]]
Probe = Callable[[], Awaitable[None]]


def is_connection_failure(error: BaseException) -> bool:
    """True when `error` means the database cannot be reached (now): retrying later may succeed."""
    if isinstance(error, asyncpg.ProtocolViolationError):
        return False
    if isinstance(error, _CONNECTION_LOST):
        return True
    if type(error) is asyncpg.InterfaceError:
        return str(error) in _CLOSED_CONNECTION_MESSAGES
    if type(error) is asyncpg.InternalClientError:
        return any(marker in str(error) for marker in _STUCK_PROTOCOL_MARKERS)
    if isinstance(error, OSError):  # refused, reset, no socket, TimeoutError
        return _raised_inside_asyncpg(error.__traceback__)
    return False


def describe_failure(error: BaseException) -> str:
    """A one-line reason for a log line: the error's class and message, never a traceback."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def probe_by_connecting(url: str, *, timeout_s: float = 5.0) -> Probe:
    """A probe that opens its own connection to `url` (never one of the pool's, which may be
    stuck or all busy), runs `SELECT 1` and closes it; it raises when the database is out of
    reach."""

    async def probe() -> None:
        connection = await asyncpg.connect(url, timeout=timeout_s)
        try:
            await connection.fetchval("SELECT 1", timeout=timeout_s)
        finally:
            await connection.close(timeout=timeout_s)

    return probe


class EmbeddedServerLost(FailedPrecondition):
    """The embedded PostgreSQL died and could not be restarted: the node must stop."""


class DatabaseHealth:
    """Available or unavailable, decided by a probe loop and by failures the data layer reports.

    `run()` probes every `interval_s` (sooner when a failure is reported). Each change of state
    logs exactly one line and awaits every listener with the new state. Given `restart` (for an
    embedded server), a failed probe asks it to restart a dead postmaster, then probes again at
    once. After `max_failed_restarts` failed restarts in a row `run()` raises
    `EmbeddedServerLost`: a node whose own database will not start cannot heal by waiting, so it
    stops (NOT_SERVING, drain, exit non-zero) and leaves the next attempt to its service manager
    (systemd, Kubernetes), which also makes the outage visible. With an external database
    (DATABASE_URL) there is nothing to restart; the node answers UNAVAILABLE until it returns.

    Use from the event loop's thread only.
    """

    def __init__(
        self,
        *,
        probe: Probe,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        listeners: Sequence[Listener] = (),
        restart: Restart | None = None,
        max_failed_restarts: int = 5,
    ) -> None:
        self._probe = probe
        self._interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        self._listeners = tuple(listeners)
        self._restart = restart
        self._max_failed_restarts = max_failed_restarts
        self._available = True
        self._announced = True  # the state listeners were last told
        self._unavailable_since = 0.0
        self._failed_restarts = 0
        self._restarts = 0
        self._stopping = False
        self._wake = asyncio.Event()

    @property
    def available(self) -> bool:
        return self._available

    @property
    def restarts(self) -> int:
        """How often the embedded server was restarted since this object was made."""
        return self._restarts

    def add_listener(self, listener: Listener) -> None:
        """Also tell `listener` of every later change (a server built after the database)."""
        self._listeners = (*self._listeners, listener)

    def report_success(self) -> None:
        """A statement worked: while unavailable, probe now so the recovery is told at once."""
        if not self._available:
            self._wake.set()

    def report_failure(self, error: BaseException) -> None:
        """A statement failed for a connection reason: unavailable from now, and probe soon.
        Reporting again while unavailable does nothing (one line per outage, not per call)."""
        if self._available:
            self._mark_unavailable(describe_failure(error))
            self._wake.set()

    async def run(self) -> None:
        """Probe, tell listeners of changes, pause; until `stop()`. Raises EmbeddedServerLost
        when the embedded server cannot be restarted."""
        while not self._stopping:
            self._wake.clear()
            await self.check()
            if not self._stopping:
                await self._pause()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def check(self) -> bool:
        """Probe once now (restarting a dead embedded server first if need be), tell listeners
        if the state changed, and return whether the database is available."""
        await self._announce()
        restarted = False
        while True:
            try:
                await self._probe()
            except Exception as error:
                self._mark_unavailable(describe_failure(error))
                if not restarted and await self._restarted_dead_server():
                    restarted = True  # probe the restarted server at once (once per check)
                    continue
            else:
                self._mark_available()
            break
        await self._announce()
        return self._available

    def watching(self) -> _Watch:
        """`async with health.watching(): ...` reports a connection failure raised inside the
        block (and lets it propagate), for data-layer code that has no other hook."""
        return _Watch(self)

    def _mark_unavailable(self, reason: str) -> None:
        if not self._available:
            return
        self._available = False
        self._unavailable_since = self._clock()
        _log.warning("database unreachable: %s; answering UNAVAILABLE until it returns", reason)

    def _mark_available(self) -> None:
        if self._available:
            return
        self._available = True
        self._failed_restarts = 0
        elapsed_s = self._clock() - self._unavailable_since
        _log.info("database reachable again after %.1f s", elapsed_s)

    async def _announce(self) -> None:
        if self._announced == self._available:
            return
        self._announced = state = self._available
        for listener in self._listeners:
            try:
                await listener(state)
            except Exception as error:  # one broken listener must not stop the others
                _log.warning("database health listener failed: %s", describe_failure(error))

    async def _restarted_dead_server(self) -> bool:
        if self._restart is None:
            return False
        try:
            restarted = await self._restart()
        except Exception as error:
            self._failed_restarts += 1
            reason = describe_failure(error)
            if self._failed_restarts >= self._max_failed_restarts:
                _log.error(
                    "could not restart the embedded PostgreSQL %d times in a row (%s); "
                    "stopping the node so that its service manager restarts it",
                    self._failed_restarts,
                    reason,
                )
                raise EmbeddedServerLost(
                    f"the embedded PostgreSQL could not be restarted ({reason})"
                ) from error
            _log.error(
                "could not restart the embedded PostgreSQL (attempt %d of %d): %s",
                self._failed_restarts,
                self._max_failed_restarts,
                reason,
            )
            return False
        if restarted is None:
            return False  # the postmaster runs: the outage has another cause
        self._failed_restarts = 0
        self._restarts += 1
        _log.warning(
            "restarted %s after its postmaster died (%d restart%s since the node started)",
            restarted,
            self._restarts,
            "" if self._restarts == 1 else "s",
        )
        return True

    async def _pause(self) -> None:
        """Sleep `interval_s`, or less when a failure is reported or `stop()` is called."""
        timer = asyncio.ensure_future(self._sleep(self._interval_s))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({timer, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (timer, woken):
                task.cancel()


class _Watch:
    def __init__(self, health: DatabaseHealth) -> None:
        self._health = health

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is not None and is_connection_failure(error):
            self._health.report_failure(error)


def _raised_inside_asyncpg(traceback: TracebackType | None) -> bool:
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        if isinstance(module, str) and module.split(".", 1)[0] == "asyncpg":
            return True
        traceback = traceback.tb_next
    return False
