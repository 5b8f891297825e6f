"""The audit log's growth under a flood of refused calls: refusals of one caller, method and
outcome within a window cost at most two rows (the first call's, then one standing for the
rest), both part of the verifiable hash chain."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import grpc

from hashex.v1 import registry_pb2, registry_pb2_grpc
from services.core.audit.chain import ChainVerifier
from services.core.audit.refusals import WINDOW_S
from tests.gateway.harness import Pki, refused, request_digest, running_gateway

FLOOD = 40


async def test_a_flood_of_refusals_is_one_counted_record_per_caller_and_window(
    db_pool: Any, tmp_path: Path, pki: Pki
) -> None:
    async with running_gateway(
        db_pool, tmp_path, pki, rate_limit_hashes_per_s=1.0, rate_limit_hashes_burst=1
    ) as gateway:
        registry = registry_pb2_grpc.RegistryStub(gateway.channel(gateway.unit()))

        async def stats() -> Any:
            return await registry.GetStats(registry_pb2.GetStatsRequest(), timeout=5)

        await stats()
        for _ in range(FLOOD):
            error = await refused(stats)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Within the window: the first refusal is recorded, the others only counted.
        assert [(r.entry.status, r.entry.calls) for r in await gateway.audit()] == [
            ("OK", 1),
            ("RESOURCE_EXHAUSTED", 1),
        ]
        gateway.clock.now += WINDOW_S  # the window ends; the next record stores its aggregate
        await stats()
        records = await gateway.audit()
        assert [(r.entry.status, r.entry.calls) for r in records] == [
            ("OK", 1),
            ("RESOURCE_EXHAUSTED", 1),
            ("RESOURCE_EXHAUSTED", FLOOD - 1),
            ("OK", 1),
        ]
        aggregate = records[2].entry
        assert aggregate.caller == records[1].entry.caller
        assert aggregate.request_messages == FLOOD - 1
        one = request_digest(registry_pb2.GetStatsRequest().SerializeToString())
        assert aggregate.request_digest == hashlib.sha256(one * (FLOOD - 1)).digest()
        verifier = ChainVerifier()
        assert all(verifier.check(r) is None for r in records)


async def test_refusals_counted_in_an_open_window_are_stored_when_the_gateway_stops(
    db_pool: Any, tmp_path: Path, pki: Pki
) -> None:
    async with running_gateway(
        db_pool, tmp_path, pki, rate_limit_hashes_per_s=1.0, rate_limit_hashes_burst=1
    ) as gateway:
        registry = registry_pb2_grpc.RegistryStub(gateway.channel(gateway.unit()))
        await registry.GetStats(registry_pb2.GetStatsRequest(), timeout=5)
        for _ in range(3):
            await refused(lambda: registry.GetStats(registry_pb2.GetStatsRequest(), timeout=5))
        await gateway.running.stop(0)
        records = await gateway.audit()
    assert [(r.entry.status, r.entry.calls) for r in records] == [
        ("OK", 1),
        ("RESOURCE_EXHAUSTED", 1),
        ("RESOURCE_EXHAUSTED", 2),
    ]
