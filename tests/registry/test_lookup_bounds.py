"""A lookup's cost is bounded whatever the data: repeated hashes looked up once, a per-request
budget of hits shared fairly, an answer that always fits its message, a hard cap on matches per
hash and on near-matching work; a result cut by the bounds says so."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from hashex.v1 import registry_pb2
from services.core.errors import InvalidArgument
from services.registry.lookup import (
    NEAR_COST_BUDGET,
    FetchHits,
    check_near_budget,
    fetch_bounded,
)
from tests.registry.node_harness import Node, flip_bits, md5, pdq, running_node, submission, submit


@pytest.fixture
async def node(tmp_path: Path, empty_database: str) -> AsyncIterator[Node]:
    async with running_node(tmp_path / "node", empty_database) as running:
        yield running


def _store_of(available: Sequence[int]) -> tuple[list[tuple[list[int], int]], FetchHits[int]]:
    """A fetch over queries holding `available[q]` hits each, recording each call."""
    calls: list[tuple[list[int], int]] = []

    async def fetch(queries: Sequence[int], limit: int) -> list[list[int]]:
        calls.append((list(queries), limit))
        return [list(range(min(available[q], limit))) for q in queries]

    return calls, fetch


async def test_every_query_gets_an_equal_share_then_the_full_ones_share_the_rest() -> None:
    available = [0, 1, 500, 5000]
    calls, fetch = _store_of(available)
    hits, cut = await fetch_bounded(4, 1000, fetch, budget=2000)
    assert calls[0] == ([0, 1, 2, 3], 500)  # 2,000 / 4 each
    assert calls[1] == ([2, 3], 500 + (2000 - 1001) // 2)  # the rest, between the two full
    assert [len(h) for h in hits] == [0, 1, 500, 999]
    assert cut == {3}  # more than it got may exist, fewer than wanted were kept


async def test_a_share_never_exceeds_what_was_wanted_plus_one() -> None:
    calls, fetch = _store_of([5000, 3])
    hits, cut = await fetch_bounded(2, 100, fetch)
    assert calls == [([0, 1], 101)]
    assert [len(h) for h in hits] == [101, 3] and cut == set()  # 101: truncation is known


def test_near_matching_past_the_budget_is_refused_saying_what_would_be_answered() -> None:
    check_near_budget(10_000, NEAR_COST_BUDGET / 10_000, 31)
    with pytest.raises(InvalidArgument) as refused:
        check_near_budget(10_000, 1_000_000.0, 64)  # a full scan of 1M hashes each
    [problem] = refused.value.problems
    assert problem.field == "pdq_max_distance"
    assert "at most 2500 distinct PDQ hashes per request" in problem.description


async def test_one_hash_asked_a_thousand_times_against_many_near_duplicates_answers(
    node: Node,
) -> None:
    """1,000 copies of one PDQ hash with 1,000 stored neighbours once ran 7 s, doubled the
    node's memory and failed with RESOURCE_EXHAUSTED (answer over 16 MiB)."""
    rng = random.Random(11)
    centre = rng.randbytes(32)
    neighbours = [
        submission(f"n{i}", md5(rng.randbytes(16)), pdq(flip_bits(centre, 1 + i % 20, rng)))
        for i in range(1000)
    ]
    await submit(node.stub, *(neighbours[i : i + 500] for i in (0, 500)))
    request = registry_pb2.LookupRequest(signals=[pdq(centre)] * 1000, max_matches_per_signal=1000)
    response = await node.stub.Lookup(request)
    assert len(response.results) == 1000
    assert response.ByteSize() < 4 * 1024 * 1024  # what a default gRPC client accepts
    first = response.results[0]
    assert len(first.matches) == 1000 and not first.truncated
    assert [m.distance for m in first.matches] == sorted(m.distance for m in first.matches)
    full = [r for r in response.results if r.response_full]
    assert full and all(r.truncated for r in full)
    assert all(len(r.matches) < 1000 for r in full)


async def test_more_than_the_cap_of_matches_per_hash_is_invalid(node: Node) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await node.stub.Lookup(
            registry_pb2.LookupRequest(signals=[md5(b"x" * 16)], max_matches_per_signal=2**32 - 1)
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_matches_per_signal: 4294967295 is above the limit of 1000" in (
        refused.value.details() or ""
    )


async def test_a_hash_held_by_many_media_is_truncated_and_says_so(node: Node) -> None:
    shared = md5(b"shared".ljust(16, b"."))
    await submit(node.stub, [submission(f"m{i}", shared) for i in range(30)])
    response = await node.stub.Lookup(
        registry_pb2.LookupRequest(signals=[shared, shared], max_matches_per_signal=10)
    )
    assert [(len(r.matches), r.truncated) for r in response.results] == [(10, True), (10, True)]
    assert response.results[0].matches == response.results[1].matches
