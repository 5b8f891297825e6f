"""Live lookups over real gRPC channels: a peer whose connection is refused is reported
unreachable at once, never after the whole deadline."""

from __future__ import annotations

import socket

from hashex.v1 import common_pb2, federation_pb2, registry_pb2
from services.core.peer_card import PeerCard, PeerKey
from services.core.tls import create_node_ca, issue_node_certificate
from services.sync.federated_lookup import FederatedLookup
from services.sync.peer_client import PeerClients

# Long enough that a call held for the whole deadline shows as TIMED_OUT rather than passing.
DEADLINE_MS = 30_000


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Directory:
    def __init__(self, cards: dict[str, PeerCard]) -> None:
        self.cards = cards

    def peers(self) -> dict[str, PeerCard]:
        return self.cards


async def nothing_stored(request: registry_pb2.LookupRequest) -> registry_pb2.LookupResponse:
    return registry_pb2.LookupResponse(
        results=[registry_pb2.LookupResult(index=i) for i in range(len(request.signals))]
    )


async def test_a_refused_connection_is_unreachable_without_waiting_for_the_deadline() -> None:
    ca = create_node_ca(node_id="gb-nca")
    identity = issue_node_certificate(ca)
    peer_ca = create_node_ca(node_id="us-fbi")
    card = PeerCard(
        node_id="us-fbi",
        endpoint=f"127.0.0.1:{closed_port()}",
        ca_certificate_pem=peer_ca.certificate_pem,
        signing_keys=(PeerKey("ed25519:1", bytes(32)),),
    )
    clients = PeerClients(trust=Directory({"us-fbi": card}), identity=lambda: identity)
    lookup = FederatedLookup(local=nothing_stored, peers=clients)
    question = federation_pb2.FederatedLookupRequest(
        lookup=registry_pb2.LookupRequest(
            signals=[common_pb2.Signal(algorithm=common_pb2.HASH_ALGORITHM_MD5, value="a" * 32)]
        ),
        ask_peers=True,
        peer_timeout_ms=DEADLINE_MS,
    )
    try:
        first = await lookup.lookup(question)
        # Asked again on the same channel, now backing off after the refusal: still at once.
        again = await lookup.lookup(question)
    finally:
        await clients.close()
    for answer in (first, again):
        [outcome] = answer.peers
        assert outcome.outcome == federation_pb2.PEER_LOOKUP_OUTCOME_UNREACHABLE, outcome
        assert outcome.error.startswith("UNAVAILABLE") and outcome.asked == 1
