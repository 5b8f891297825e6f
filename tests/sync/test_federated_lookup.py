"""Federated lookup: the store answers first, peers are asked only for what stayed unmatched,
a peer can speak only for its own records, and a failing peer never fails the lookup.

Peers are injected (STYLE: peers are injected, never slept on); the local lookup is a small
table so each case states exactly what the store holds."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import pytest

from hashex.v1 import common_pb2, federation_pb2, registry_pb2
from services.sync.federated_lookup import FederatedLookup

MD5 = common_pb2.HASH_ALGORITHM_MD5
EXACT = registry_pb2.MATCH_KIND_EXACT
NEAR = registry_pb2.MATCH_KIND_NEAR


def signal(value: str) -> common_pb2.Signal:
    return common_pb2.Signal(algorithm=MD5, value=value * 32)


def match(origin: str, media_id: str, kind: int = EXACT, distance: int = 0) -> registry_pb2.Match:
    return registry_pb2.Match(
        kind=kind, distance=distance, media=common_pb2.Media(origin=origin, media_id=media_id)
    )


class Store:
    """The local lookup: matches by hash value."""

    def __init__(self, known: dict[str, list[registry_pb2.Match]]) -> None:
        self.known = known
        self.asked: list[registry_pb2.LookupRequest] = []

    async def __call__(self, request: registry_pb2.LookupRequest) -> registry_pb2.LookupResponse:
        self.asked.append(request)
        return answer(request, self.known)


def answer(
    request: registry_pb2.LookupRequest, known: dict[str, list[registry_pb2.Match]]
) -> registry_pb2.LookupResponse:
    return registry_pb2.LookupResponse(
        results=[
            registry_pb2.LookupResult(index=i, signal=s, matches=known.get(s.value, []))
            for i, s in enumerate(request.signals)
        ]
    )


class Peers:
    def __init__(self, answers: dict[str, dict[str, list[registry_pb2.Match]] | Exception]) -> None:
        self.answers = answers
        self.asked: dict[str, list[str]] = {}

    def peer_ids(self) -> Sequence[str]:
        return list(self.answers)

    async def peer_lookup(
        self, peer_id: str, request: registry_pb2.LookupRequest, *, timeout_s: float
    ) -> registry_pb2.LookupResponse:
        self.asked[peer_id] = [s.value for s in request.signals]
        known = self.answers[peer_id]
        if isinstance(known, Exception):
            raise known
        return answer(request, known)


def request(
    *values: str, ask_peers: bool = True, limit: int = 0
) -> federation_pb2.FederatedLookupRequest:
    return federation_pb2.FederatedLookupRequest(
        lookup=registry_pb2.LookupRequest(
            signals=[signal(v) for v in values], max_matches_per_signal=limit
        ),
        ask_peers=ask_peers,
    )


async def test_peers_are_asked_only_for_unmatched_hashes_and_matches_name_their_origin() -> None:
    store = Store({"a" * 32: [match("gb-nca", "m1")]})
    peers = Peers({"us-fbi": {"b" * 32: [match("us-fbi", "u7")]}, "de-bka": {}})
    response = await FederatedLookup(local=store, peers=peers).lookup(request("a", "b", "c"))
    assert peers.asked == {"us-fbi": ["b" * 32, "c" * 32], "de-bka": ["b" * 32, "c" * 32]}
    results = response.lookup.results
    assert [m.media.origin for m in results[0].matches] == ["gb-nca"]
    assert [(m.media.origin, m.media.media_id) for m in results[1].matches] == [("us-fbi", "u7")]
    assert not results[2].matches
    assert {(p.peer_id, p.asked, p.error) for p in response.peers} == {
        ("us-fbi", 2, ""),
        ("de-bka", 2, ""),
    }


async def test_peers_are_not_asked_when_the_store_matched_everything() -> None:
    store = Store({"a" * 32: [match("gb-nca", "m1")]})
    peers = Peers({"us-fbi": {}})
    response = await FederatedLookup(local=store, peers=peers).lookup(request("a"))
    assert peers.asked == {}
    assert [(p.peer_id, p.asked, p.outcome) for p in response.peers] == [
        ("us-fbi", 0, federation_pb2.PEER_LOOKUP_OUTCOME_NOT_ASKED)
    ]


async def test_without_ask_peers_no_peer_is_asked() -> None:
    peers = Peers({"us-fbi": {"b" * 32: [match("us-fbi", "u7")]}})
    response = await FederatedLookup(local=Store({}), peers=peers).lookup(
        request("b", ask_peers=False)
    )
    assert peers.asked == {} and not response.peers
    assert not response.lookup.results[0].matches


async def test_a_peer_cannot_answer_for_another_origin() -> None:
    peers = Peers({"us-fbi": {"b" * 32: [match("de-bka", "forged"), match("us-fbi", "u1")]}})
    response = await FederatedLookup(local=Store({}), peers=peers).lookup(request("b"))
    assert [m.media.origin for m in response.lookup.results[0].matches] == ["us-fbi"]


async def test_a_failing_or_slow_peer_is_reported_and_the_others_still_answer() -> None:
    class Slow(Peers):
        async def peer_lookup(
            self, peer_id: str, request: registry_pb2.LookupRequest, *, timeout_s: float
        ) -> registry_pb2.LookupResponse:
            if peer_id == "slow":
                await asyncio.Event().wait()
            return await super().peer_lookup(peer_id, request, timeout_s=timeout_s)

    down = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection refused"
    )
    refused = grpc.aio.AioRpcError(
        grpc.StatusCode.PERMISSION_DENIED, grpc.aio.Metadata(), grpc.aio.Metadata(), "not pinned"
    )
    broken = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "internal error"
    )
    peers = Slow(
        {
            "down": down,
            "refusing": refused,
            "broken": broken,
            "slow": {},
            "us-fbi": {"b" * 32: [match("us-fbi", "u1")]},
        }
    )
    wanted = request("b")
    wanted.peer_timeout_ms = 50
    response = await FederatedLookup(local=Store({}), peers=peers).lookup(wanted)
    outcomes = {p.peer_id: p.error for p in response.peers}
    assert outcomes["us-fbi"] == ""
    assert outcomes["down"] == "UNAVAILABLE: connection refused"
    assert outcomes["slow"].startswith("no answer within")
    assert {p.peer_id: p.outcome for p in response.peers} == {
        "us-fbi": federation_pb2.PEER_LOOKUP_OUTCOME_ANSWERED,
        "down": federation_pb2.PEER_LOOKUP_OUTCOME_UNREACHABLE,
        "refusing": federation_pb2.PEER_LOOKUP_OUTCOME_REFUSED,
        "broken": federation_pb2.PEER_LOOKUP_OUTCOME_FAILED,
        "slow": federation_pb2.PEER_LOOKUP_OUTCOME_TIMED_OUT,
    }
    assert [m.media.media_id for m in response.lookup.results[0].matches] == ["u1"]


async def test_merged_matches_are_ordered_exact_first_and_capped() -> None:
    peers = Peers(
        {
            "us-fbi": {"b" * 32: [match("us-fbi", "n9", NEAR, 9), match("us-fbi", "e1")]},
            "de-bka": {"b" * 32: [match("de-bka", "n2", NEAR, 2)]},
        }
    )
    response = await FederatedLookup(local=Store({}), peers=peers).lookup(request("b", limit=2))
    result = response.lookup.results[0]
    assert [m.media.media_id for m in result.matches] == ["e1", "n2"]
    assert result.truncated


async def test_a_bad_request_fails_before_any_peer_is_asked() -> None:
    class Refusing(Store):
        async def __call__(
            self, request: registry_pb2.LookupRequest
        ) -> registry_pb2.LookupResponse:
            raise ValueError("bad request")

    peers = Peers({"us-fbi": {}})
    with pytest.raises(ValueError):
        await FederatedLookup(local=Refusing({}), peers=peers).lookup(request("b"))
    assert peers.asked == {}
