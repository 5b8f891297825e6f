"""Flag latency: from a unit's submit at one agency to the flag's delivery by `WatchFlags` at the
other. Two real nodes (`hashex node init`, embedded PostgreSQL each, peer cards pinned, share-all
policies, the node's default sync and linkage settings) run in this process; gb-nca holds
`rounds` series with no identified victim, already replicated to us-hsi. Each round a us-hsi
unit submits, through its gateway, one media holding an exact copy of a media of the next
series; the time until gb-nca's WatchFlags stream (a gb-nca unit over mutual TLS) delivers the
NEW_MATERIAL flag about that series from us-hsi is one sample. Rounds run one after another.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from _common import progress
from _nodes import cli, init_nodes, node_config, scratch_dir, unit_channel

from hashex.v1 import common_pb2, flags_pb2, flags_pb2_grpc, registry_pb2, registry_pb2_grpc
from services.gateway.composition import RunningNode, start_node
from services.registry.linkage.read import SeriesRef
from services.sync.flags.ids import new_material_id

OWNER, SEIZING = "gb-nca", "us-hsi"
MEDIA_PER_SERIES = 3
ROUND_TIMEOUT_S = 120.0


def _media(media_id: str, md5: bytes, pdq: bytes, series: str = "") -> registry_pb2.MediaSubmission:
    return registry_pb2.MediaSubmission(
        media_id=media_id,
        series_ids=[series] if series else [],
        signals=[
            common_pb2.Signal(algorithm=common_pb2.HASH_ALGORITHM_MD5, value=md5.hex()),
            common_pb2.Signal(algorithm=common_pb2.HASH_ALGORITHM_PDQ, value=pdq.hex(), quality=90),
        ],
    )


async def _submit(node: RunningNode, *media: registry_pb2.MediaSubmission) -> None:
    channel = unit_channel(node, node.config)
    async with channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        await stub.SubmitMedia(iter([registry_pb2.SubmitMediaRequest(media=list(media))]))


@asynccontextmanager
async def _nodes(root: Path) -> AsyncIterator[dict[str, RunningNode]]:
    dirs = await asyncio.to_thread(init_nodes, root, (OWNER, SEIZING), external=False)
    for node_id, data_dir in dirs.items():
        for other in dirs:
            if other != node_id:
                card = root / f"{other}.card"
                cli("peer", "add", card, "--policy", "share-all", "--data-dir", data_dir)
    async with AsyncExitStack() as stack:
        nodes = {}
        for node_id, data_dir in dirs.items():
            nodes[node_id] = await start_node(node_config(data_dir, None))
            stack.push_async_callback(nodes[node_id].stop)
        yield nodes


async def _replicated(node: RunningNode, origin: str, count: int) -> None:
    give_up = time.monotonic() + ROUND_TIMEOUT_S
    sql = "SELECT count(*) FROM media WHERE origin = $1"
    while await node.database.pool.fetchval(sql, origin) < count:
        if time.monotonic() > give_up:
            raise RuntimeError(f"{origin}'s media did not reach {node.config.node_id}")
        await asyncio.sleep(0.2)


async def _watch(node: RunningNode, seen: dict[str, float]) -> None:
    """Follow the owner's WatchFlags; the first delivery time of each flag id."""
    channel = unit_channel(node, node.config)
    async with channel:
        stub = flags_pb2_grpc.FlagsStub(channel)
        async for event in stub.WatchFlags(flags_pb2.WatchFlagsRequest(after_event=0)):
            if event.HasField("flag"):
                seen.setdefault(event.flag.id, time.monotonic())


async def measure(rounds: int, seed: int) -> list[float]:
    """One latency sample (seconds) per round."""
    rng = random.Random(seed)
    md5s = [rng.randbytes(16) for _ in range(rounds * MEDIA_PER_SERIES)]
    samples: list[float] = []
    async with scratch_dir("hashex-bench-flags-") as root, _nodes(root) as nodes:
        owner, seizing = nodes[OWNER], nodes[SEIZING]
        held = [
            _media(f"gb-{i}", md5s[i], rng.randbytes(32), series=f"gb-s{i // MEDIA_PER_SERIES}")
            for i in range(len(md5s))
        ]
        await _submit(owner, *held)
        await _replicated(seizing, OWNER, len(held))
        progress(f"flag latency: {len(held)} media of {rounds} series held at both; measuring")
        seen: dict[str, float] = {}
        watcher = asyncio.create_task(_watch(owner, seen))
        try:
            for i in range(rounds):
                flag = new_material_id(SeriesRef(0, OWNER, f"gb-s{i}"), SEIZING)
                started = time.monotonic()
                copy = _media(f"us-{i}", md5s[i * MEDIA_PER_SERIES], rng.randbytes(32))
                await _submit(seizing, copy)
                while flag not in seen:
                    if watcher.done():
                        watcher.result()
                        raise RuntimeError("WatchFlags ended")
                    if time.monotonic() - started > ROUND_TIMEOUT_S:
                        raise RuntimeError(f"round {i}: no NEW_MATERIAL flag at {OWNER}")
                    await asyncio.sleep(0.01)
                samples.append(seen[flag] - started)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
    return samples
