"""A real registry for tests: fresh database, node keys in a temporary data directory, gRPC on a
free loopback port, and helpers to build requests."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from hashex.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.cli.main import main as hashex_main
from services.core.config import NodeConfig, load_config
from services.registry.app import RunningRegistry, start_registry
from tests.signed_caller import signed_channel


@dataclass
class Node:
    config: NodeConfig
    running: RunningRegistry
    stub: registry_pb2_grpc.RegistryStub
    channel: grpc.aio.Channel


def init_node_dir(
    data_dir: Path, node_id: str = "test-node", *, database: str = "external"
) -> None:
    """`hashex node init`; an external database's URL is given as DATABASE_URL (running_node)."""
    code = hashex_main(
        [
            "node",
            "init",
            "--node-id",
            node_id,
            "--listen",
            "127.0.0.1:0",
            "--database",
            database,
            "--data-dir",
            str(data_dir),
        ]
    )
    assert code == 0


@asynccontextmanager
async def running_node(data_dir: Path, database_url: str) -> AsyncIterator[Node]:
    if not (data_dir / "node.toml").exists():
        init_node_dir(data_dir)
    config = load_config(data_dir, env={"DATABASE_URL": database_url})
    running = await start_registry(config)
    channel = signed_channel(running.address, config)
    try:
        yield Node(config, running, registry_pb2_grpc.RegistryStub(channel), channel)
    finally:
        await channel.close()
        await running.stop()


def signal(algorithm: int, value: str | bytes, quality: int | None = None) -> common_pb2.Signal:
    text = value.hex() if isinstance(value, bytes) else value
    message = common_pb2.Signal(algorithm=algorithm, value=text)
    if quality is not None:
        message.quality = quality
    return message


def md5(value: bytes) -> common_pb2.Signal:
    return signal(common_pb2.HASH_ALGORITHM_MD5, value)


def pdq(value: bytes, quality: int | None = 90) -> common_pb2.Signal:
    return signal(common_pb2.HASH_ALGORITHM_PDQ, value, quality)


def random_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def flip_bits(value: bytes, count: int, rng: random.Random) -> bytes:
    bits = bytearray(value)
    for position in rng.sample(range(len(value) * 8), count):
        bits[position // 8] ^= 1 << (position % 8)
    return bytes(bits)


def hamming(a: bytes, b: bytes) -> int:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


def submission(
    media_id: str,
    *signals: common_pb2.Signal,
    series: tuple[str, ...] = (),
    case_reference: str = "",
) -> registry_pb2.MediaSubmission:
    message = registry_pb2.MediaSubmission(
        media_id=media_id, signals=list(signals), series_ids=list(series)
    )
    if case_reference:
        message.case_data.case_reference = case_reference
        message.case_data.file_path = f"/evidence/{case_reference}/{media_id}.jpg"
    return message


async def submit(
    stub: registry_pb2_grpc.RegistryStub, *batches: list[registry_pb2.MediaSubmission]
) -> registry_pb2.SubmitMediaResponse:
    requests = [registry_pb2.SubmitMediaRequest(media=batch) for batch in batches]
    response: registry_pb2.SubmitMediaResponse = await stub.SubmitMedia(iter(requests))
    return response
