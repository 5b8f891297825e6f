"""A registry whose embedded PostgreSQL dies: calls answer UNAVAILABLE (never INTERNAL), health
says NOT_SERVING, one line is logged, and the supervisor restarts the postmaster so that the
node heals by itself with every record kept."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hashex.v1 import registry_pb2, registry_pb2_grpc
from services.core.config import load_config
from services.registry.app import start_registry
from tests.registry.node_harness import init_node_dir, md5, submission, submit
from tests.signed_caller import signed_channel
from tests.waiting import wait_for

HASH = md5(b"kept-through-it.")


async def _serving(channel: grpc.aio.Channel) -> int:
    health = health_pb2_grpc.HealthStub(channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=""))
    return int(response.status)


async def test_a_killed_postmaster_is_answered_unavailable_then_restarted(
    node_data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    init_node_dir(node_data_dir, database="embedded")
    config = load_config(node_data_dir, env={})
    running = await start_registry(config)
    channel = signed_channel(running.address, config)
    try:
        stub = registry_pb2_grpc.RegistryStub(channel)
        await submit(stub, [submission("m", HASH)])
        assert running.database.embedded is not None
        os.kill(running.database.embedded.postmaster_pid, signal.SIGKILL)

        outcomes: list[grpc.StatusCode] = []

        async def answers_unavailable() -> bool:
            try:
                await stub.Lookup(registry_pb2.LookupRequest(signals=[HASH]))
            except grpc.aio.AioRpcError as error:
                outcomes.append(error.code())
                return error.code() == grpc.StatusCode.UNAVAILABLE
            return False

        async def healed() -> bool:
            try:
                response = await stub.Lookup(registry_pb2.LookupRequest(signals=[HASH]))
            except grpc.aio.AioRpcError as error:
                outcomes.append(error.code())
                return False
            return len(response.results[0].matches) == 1

        await wait_for(answers_unavailable, 60, "no UNAVAILABLE answer")
        await wait_for(healed, 60, "the node did not heal")
        assert set(outcomes) <= {grpc.StatusCode.UNAVAILABLE}, outcomes

        async def serving() -> bool:
            return await _serving(channel) == health_pb2.HealthCheckResponse.SERVING

        await wait_for(serving, 10, "health did not say SERVING again")
        messages = [r.getMessage() for r in caplog.records]
        assert sum("database unreachable" in m for m in messages) == 1
        assert any("restarted" in m for m in messages)
        assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.ERROR)
    finally:
        await channel.close()
        await running.stop()
