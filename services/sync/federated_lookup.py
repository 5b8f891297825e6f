"""A unit's lookup across the federation: this node's store first (its own records and those
replicated from peers), then, on request, a live question to every peer for the hashes that are
still unmatched. Peers answer under their own sharing policy for this node; every match carries
the origin of its media record, so the unit always sees which agency a record came from.

A peer that is down or slow never fails the lookup: its outcome names the error and the answer
holds what the store and the other peers found.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from hashex.v1 import federation_pb2, registry_pb2

_log = logging.getLogger(__name__)

DEFAULT_PEER_TIMEOUT_MS = 5_000
MAX_PEER_TIMEOUT_MS = 60_000
DEFAULT_MAX_MATCHES = 100

LocalLookup = Callable[[registry_pb2.LookupRequest], Awaitable[registry_pb2.LookupResponse]]


class PeerAsker(Protocol):
    """Asks pinned peers live (Federation.PeerLookup over mutual TLS)."""

    def peer_ids(self) -> Sequence[str]: ...

    async def peer_lookup(
        self, peer_id: str, request: registry_pb2.LookupRequest, *, timeout_s: float
    ) -> registry_pb2.LookupResponse: ...


class FederatedLookup:
    def __init__(self, *, local: LocalLookup, peers: PeerAsker) -> None:
        self._local = local
        self._peers = peers

    async def lookup(
        self, request: federation_pb2.FederatedLookupRequest
    ) -> federation_pb2.FederatedLookupResponse:
        """Raises what the local lookup raises for a bad request, before any peer is asked."""
        answer = await self._local(request.lookup)
        response = federation_pb2.FederatedLookupResponse(lookup=answer)
        if not request.ask_peers:
            return response
        unmatched = [i for i, result in enumerate(answer.results) if not result.matches]
        peer_ids = list(self._peers.peer_ids())
        if not unmatched or not peer_ids:
            response.peers.extend(
                federation_pb2.PeerOutcome(
                    peer_id=peer_id, asked=0, outcome=federation_pb2.PEER_LOOKUP_OUTCOME_NOT_ASKED
                )
                for peer_id in peer_ids
            )
            return response
        timeout_s = _timeout_s(request.peer_timeout_ms)
        question = registry_pb2.LookupRequest(
            signals=[request.lookup.signals[i] for i in unmatched],
            max_matches_per_signal=request.lookup.max_matches_per_signal,
        )
        if request.lookup.HasField("pdq_max_distance"):
            question.pdq_max_distance = request.lookup.pdq_max_distance
        answers = await asyncio.gather(
            *(self._ask(peer_id, question, timeout_s) for peer_id in peer_ids)
        )
        limit = request.lookup.max_matches_per_signal or DEFAULT_MAX_MATCHES
        for peer_id, (peer_answer, outcome, error) in zip(peer_ids, answers, strict=True):
            response.peers.append(
                federation_pb2.PeerOutcome(
                    peer_id=peer_id, asked=len(unmatched), error=error, outcome=outcome
                )
            )
            if peer_answer is not None:
                _merge(response.lookup, peer_answer, unmatched, peer_id=peer_id)
        for index in unmatched:
            _order_and_cap(response.lookup.results[index], limit)
        return response

    async def _ask(
        self, peer_id: str, question: registry_pb2.LookupRequest, timeout_s: float
    ) -> tuple[registry_pb2.LookupResponse | None, federation_pb2.PeerLookupOutcome.ValueType, str]:
        try:
            answer = await asyncio.wait_for(
                self._peers.peer_lookup(peer_id, question, timeout_s=timeout_s), timeout_s
            )
        except TimeoutError:
            return None, federation_pb2.PEER_LOOKUP_OUTCOME_TIMED_OUT, _no_answer(timeout_s)
        except Exception as exc:  # a peer's failure is reported, never raised to the unit
            _log.warning("live lookup at peer %s failed: %s", peer_id, _describe(exc))
            outcome = _outcome_of(exc)
            if outcome == federation_pb2.PEER_LOOKUP_OUTCOME_TIMED_OUT:
                return None, outcome, _no_answer(timeout_s)
            return None, outcome, _describe(exc)
        return answer, federation_pb2.PEER_LOOKUP_OUTCOME_ANSWERED, ""


def _merge(
    into: registry_pb2.LookupResponse,
    answer: registry_pb2.LookupResponse,
    asked: Sequence[int],
    *,
    peer_id: str,
) -> None:
    """Add a peer's matches to the results they answer. A peer may only speak for its own
    records: matches naming another origin, and results for hashes not asked, are dropped."""
    for result in answer.results:
        if result.index >= len(asked):
            continue
        target = into.results[asked[result.index]]
        target.matches.extend(m for m in result.matches if m.media.origin == peer_id)
        target.truncated = target.truncated or result.truncated


def _order_and_cap(result: registry_pb2.LookupResult, limit: int) -> None:
    """Exact first, then near by distance; at most `limit`, marking truncation."""
    ordered = sorted(result.matches, key=lambda m: (m.kind, m.distance, m.media.origin))
    if len(ordered) > limit:
        result.truncated = True
        ordered = ordered[:limit]
    del result.matches[:]
    result.matches.extend(ordered)


def _timeout_s(timeout_ms: int) -> float:
    if timeout_ms == 0:
        return DEFAULT_PEER_TIMEOUT_MS / 1000
    return min(timeout_ms, MAX_PEER_TIMEOUT_MS) / 1000


# By gRPC status name (the peer clients raise grpc errors; this module stays free of grpc).
_OUTCOME_OF_STATUS: dict[str, federation_pb2.PeerLookupOutcome.ValueType] = {
    "UNAVAILABLE": federation_pb2.PEER_LOOKUP_OUTCOME_UNREACHABLE,
    "UNAUTHENTICATED": federation_pb2.PEER_LOOKUP_OUTCOME_REFUSED,
    "PERMISSION_DENIED": federation_pb2.PEER_LOOKUP_OUTCOME_REFUSED,
    "DEADLINE_EXCEEDED": federation_pb2.PEER_LOOKUP_OUTCOME_TIMED_OUT,
}


def _outcome_of(exc: Exception) -> federation_pb2.PeerLookupOutcome.ValueType:
    code = getattr(exc, "code", None)
    name = getattr(code(), "name", "") if callable(code) else ""
    return _OUTCOME_OF_STATUS.get(name, federation_pb2.PEER_LOOKUP_OUTCOME_FAILED)


def _no_answer(timeout_s: float) -> str:
    return f"no answer within {timeout_s:g} s"


def _describe(exc: Exception) -> str:
    """A short, safe description: the gRPC status and details, or the exception's type."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return type(exc).__name__
