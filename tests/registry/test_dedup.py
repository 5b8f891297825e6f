"""Dedup reports end to end: real PostgreSQL, real gRPC on loopback."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from hashex.v1 import common_pb2, registry_pb2
from tests.registry.node_harness import Node, flip_bits, md5, pdq, running_node, submission, submit

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def node(tmp_path: Path, empty_database: str) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "node", empty_database) as running:
        yield running


def items(*groups: list[common_pb2.Signal]) -> registry_pb2.DedupRequest:
    return registry_pb2.DedupRequest(
        items=registry_pb2.DedupItems(
            items=[registry_pb2.DedupItem(signals=group) for group in groups]
        )
    )


async def test_items_are_counted_new_exact_near_or_unchecked(node: Node) -> None:
    rng = random.Random(7)
    known_md5, known_pdq = rng.randbytes(16), rng.randbytes(32)
    await submit(node.stub, [submission("m1", md5(known_md5), pdq(known_pdq), series=("s1",))])
    request = items(
        [md5(known_md5)],  # exact
        [md5(rng.randbytes(16)), pdq(flip_bits(known_pdq, 9, rng))],  # near only, at 9
        [md5(rng.randbytes(16))],  # new
        [pdq(rng.randbytes(32), quality=20)],  # nothing to compare: unchecked, not new
        [md5(known_md5), pdq(flip_bits(known_pdq, 3, rng))],  # exact (and near)
    )
    report = await node.stub.Dedup(request)
    assert (report.items, report.exact_items, report.near_items) == (5, 2, 1)
    assert (report.new_items, report.unchecked_items, report.truncated_items) == (1, 1, 0)
    [cluster] = report.clusters
    assert (cluster.exact_items, cluster.near_items, cluster.closest_distance) == (2, 1, 3)
    assert [(s.origin, s.series_id, s.media_count) for s in cluster.series] == [
        ("test-node", "s1", 1)
    ]
    assert (cluster.series_count, report.cluster_count) == (1, 1)
    [origin] = report.origins
    assert (origin.origin, origin.exact_items, origin.near_items) == ("test-node", 2, 1)
    assert report.items_without_series == 0


async def test_a_narrower_distance_turns_a_near_item_new(node: Node) -> None:
    rng = random.Random(8)
    stored = rng.randbytes(32)
    await submit(node.stub, [submission("m1", pdq(stored))])
    request = items([pdq(flip_bits(stored, 12, rng))])
    assert (await node.stub.Dedup(request)).near_items == 1
    request.pdq_max_distance = 11
    report = await node.stub.Dedup(request)
    assert (report.near_items, report.new_items, report.items_without_series) == (0, 1, 0)


async def test_series_in_one_cluster_count_an_item_once(node: Node, empty_database: str) -> None:
    rng = random.Random(9)
    shared = rng.randbytes(16)
    await submit(
        node.stub,
        [
            submission("a", md5(shared), series=("s1",)),
            submission("b", md5(shared), series=("s2",)),
        ],
    )
    # Two series of one origin never link: stand in for the linker (tests/registry/linkage/).
    assert node.running.linker is not None
    await node.running.linker.stop()
    conn = await asyncpg.connect(empty_database)
    try:  # the clusters as the registry's series linkage writes them
        await conn.execute(
            "INSERT INTO series_clusters (series_row, cluster_id) "
            "SELECT id, (SELECT min(id) FROM series) FROM series"
        )
    finally:
        await conn.close()
    report = await node.stub.Dedup(items([md5(shared)]))
    [cluster] = report.clusters
    assert (cluster.exact_items, cluster.series_count) == (1, 2)
    assert [s.series_id for s in cluster.series] == ["s1", "s2"]
    [origin] = report.origins
    assert origin.exact_items == 1


async def test_series_report_pages_and_leaves_out_its_own_origin(node: Node) -> None:
    rng = random.Random(10)
    media = [submission(f"m{i}", md5(rng.randbytes(16)), series=("big",)) for i in range(1_005)]
    await submit(node.stub, media[:1000], media[1000:])
    request = registry_pb2.DedupRequest(series=registry_pb2.DedupSeries(series_id="big"))
    first = await node.stub.Dedup(request)
    assert (first.items, first.new_items, first.exact_items) == (1000, 1000, 0)
    assert first.next_page_token and not first.clusters
    request.series.page_token = first.next_page_token
    second = await node.stub.Dedup(request)
    assert (second.items, second.new_items, second.next_page_token) == (5, 5, "")


async def test_bad_requests_are_refused_naming_the_field(node: Node) -> None:
    cases = [
        (registry_pb2.DedupRequest(), "source"),
        (items(*[[md5(bytes(16))]] * 1001), "items.items: 1001 items"),
        (items([md5(bytes(16))] * 17), "items.items[0].signals"),
        (items([common_pb2.Signal(algorithm=1, value="abc")]), "items.items[0].signals[0]"),
        (registry_pb2.DedupRequest(items=items([md5(bytes(16))]).items, pdq_max_distance=32), "31"),
        (
            registry_pb2.DedupRequest(
                series=registry_pb2.DedupSeries(series_id="s", page_token="nonsense")
            ),
            "page_token",
        ),
    ]
    for request, named in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await node.stub.Dedup(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert named in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await node.stub.Dedup(
            registry_pb2.DedupRequest(series=registry_pb2.DedupSeries(series_id="nope"))
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
