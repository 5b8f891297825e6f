"""A rogue peer for the security tests: a real gRPC server presenting the origin's real node
certificate (as a stolen key would let it), serving Federation.Pull with batches it got genuinely
from the real origin and then tampered with, and the tamperings themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from nacl.signing import SigningKey

from hashex.v1 import federation_pb2, federation_pb2_grpc
from services.core import tls
from services.core.signing import BATCH_DOMAIN, Keyring, NodeSigningKey, sign_bytes
from services.core.trust import make_card, pin_card
from tests.federation.harness import Agency, Federation

RECEIVER, ORIGIN, THIRD = "gb-nca", "us-hsi", "de-bka"
CALL_TIMEOUT_S = 10.0
SignedBatches = list[federation_pb2.SignedBatch]


def ca_pem(agency: Agency) -> bytes:
    return (agency.config.tls_dir / "ca.pem").read_bytes()


def node_identity(agency: Agency) -> tls.CertifiedKey:
    tls_dir = agency.config.tls_dir
    return tls.load_certified_key(
        certificate_path=tls_dir / "node.pem", key_path=tls_dir / "node.key"
    )


def gateway_channel(agency: Agency, identity: tls.CertifiedKey | None) -> grpc.aio.Channel:
    """A channel to the node's gateway presenting `identity` (None: no client certificate);
    closed when the agency stops."""
    credentials = tls.channel_credentials(identity, trusted_server_cas=[ca_pem(agency)])
    channel = grpc.aio.secure_channel(agency.running.gateway_address, credentials)
    agency.channels.append(channel)
    return channel


# --- the rogue peer ------------------------------------------------------------------------


class RogueOrigin(federation_pb2_grpc.FederationServicer):
    """Answers Pull as the origin, with what `tamper` makes of the genuine batches it pulls
    from the real origin's gateway with the node certificate of `pull_as`."""

    def __init__(
        self, origin: Agency, pull_as: Agency, tamper: Callable[[SignedBatches], SignedBatches]
    ) -> None:
        self._origin = origin
        self._pull_as = pull_as
        self._tamper = tamper
        self._channel: grpc.aio.Channel | None = None
        self.served = 0

    async def Pull(
        self, request: federation_pb2.PullRequest, context: Any
    ) -> AsyncIterator[federation_pb2.PullResponse]:
        for batch in self._tamper(await self._genuine(request)):
            self.served += 1
            yield federation_pb2.PullResponse(batch=batch)

    async def _genuine(self, request: federation_pb2.PullRequest) -> SignedBatches:
        if self._channel is None:
            credentials = tls.channel_credentials(
                node_identity(self._pull_as), trusted_server_cas=[ca_pem(self._origin)]
            )
            self._channel = grpc.aio.secure_channel(
                self._origin.running.gateway_address, credentials
            )
        stub = federation_pb2_grpc.FederationStub(self._channel)
        # What is there now, not a held stream: the rogue answers once, then ends.
        asked = federation_pb2.PullRequest()
        asked.CopyFrom(request)
        asked.wait_s = 0
        return [
            r.batch async for r in stub.Pull(asked, timeout=CALL_TIMEOUT_S) if r.HasField("batch")
        ]

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


@asynccontextmanager
async def rogue_origin(
    fed: Federation, *, pull_as: str, tamper: Callable[[SignedBatches], SignedBatches]
) -> AsyncIterator[RogueOrigin]:
    """The rogue, serving with the origin's node certificate to clients of the receiver's CA,
    and the receiver's pin of the origin re-pointed at it (the card genuinely signed)."""
    origin, receiver = fed[ORIGIN], fed[RECEIVER]
    rogue = RogueOrigin(origin, fed[pull_as], tamper)
    server = grpc.aio.server()
    federation_pb2_grpc.add_FederationServicer_to_server(rogue, server)
    credentials = tls.server_credentials(
        node_identity(origin), trusted_client_cas=[ca_pem(receiver)]
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        card = make_card(
            node_id=ORIGIN,
            endpoint=f"127.0.0.1:{port}",
            ca_certificate_pem=ca_pem(origin),
            keyring=Keyring.load(origin.config.signing_keys_dir),
        )
        pin_card(receiver.config.peers_dir, card, own_node_id=RECEIVER, replace=True)
        yield rogue
    finally:
        await server.stop(0)
        await rogue.close()


def flip_a_body_byte(batches: SignedBatches) -> SignedBatches:
    """A forged signature: one byte of each body changed, the origin's signature kept."""
    forged = []
    for batch in batches:
        body = bytearray(batch.body)
        body[len(body) // 2] ^= 0x01
        forged.append(
            federation_pb2.SignedBatch(
                body=bytes(body), key_id=batch.key_id, signature=batch.signature
            )
        )
    return forged


def unchanged(batches: SignedBatches) -> SignedBatches:
    return batches


def sign_with_an_unknown_key(batches: SignedBatches) -> SignedBatches:
    """The genuine body, signed with a fresh key under an id the origin never published."""
    stranger = NodeSigningKey("ed25519:9", SigningKey.generate())
    return [
        federation_pb2.SignedBatch(
            body=b.body,
            key_id=stranger.key_id,
            signature=sign_bytes(stranger, BATCH_DOMAIN, b.body),
        )
        for b in batches
    ]


class ReplayFirstBatch:
    """Passes genuine batches through until armed, then serves the first one again."""

    def __init__(self) -> None:
        self.armed = False
        self._seen: SignedBatches = []

    def __call__(self, batches: SignedBatches) -> SignedBatches:
        if self.armed:
            return self._seen[:1]
        self._seen.extend(batches)
        return batches
