"""Calls to pinned peers' gateways: one aio channel per peer, presenting this node's certificate
and trusting only that peer's pinned CA (so no other CA, not even another pinned peer's, can
answer as that peer). A channel is made again when the peer's card or this node's certificate
changes: client certificates cannot be rotated on a live channel.

Implements the PeerAsker protocol of services/sync/federated_lookup.py (live PeerLookup) and
opens Pull streams for the pullers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from hashex.v1 import federation_pb2, federation_pb2_grpc, registry_pb2
from services.core.errors import NotFound
from services.core.peer_card import PeerCard
from services.core.tls import CertifiedKey, channel_credentials

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# gRPC's default backoff between connection attempts grows to 120 s; a fail-fast live lookup on
# a channel still backing off fails at once, so a peer that came back would stay "unreachable"
# that long. 10 s bounds that; a down peer then costs one connection attempt per 10 s.
MAX_RECONNECT_BACKOFF_MS = 10_000


class PeerDirectory(Protocol):
    """The pinned peers (services.core.trust.TrustStore)."""

    def peers(self) -> dict[str, PeerCard]: ...


@dataclass
class _Open:
    key: tuple[str, bytes, bytes]
    channel: grpc.aio.Channel
    # The generated stub is typed for blocking channels; on an aio channel its calls are
    # awaitables and async iterators, hence Any.
    stub: Any


class PeerClients:
    def __init__(
        self,
        *,
        trust: PeerDirectory,
        identity: Callable[[], CertifiedKey],
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._trust = trust
        self._identity = identity
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ]
        self._open: dict[str, _Open] = {}
        self._stale: list[grpc.aio.Channel] = []

    def peer_ids(self) -> Sequence[str]:
        return sorted(self._trust.peers())

    def stub(self, peer_id: str) -> Any:
        """The Federation stub for `peer_id` on a channel matching its current card."""
        cards: Mapping[str, PeerCard] = self._trust.peers()
        card = cards.get(peer_id)
        if card is None:
            raise NotFound(f"{peer_id!r} is not a pinned peer of this node")
        identity = self._identity()
        key = (card.endpoint, card.ca_certificate_pem, identity.certificate_pem)
        current = self._open.get(peer_id)
        if current is not None and current.key == key:
            return current.stub
        if current is not None:
            self._stale.append(current.channel)
        credentials = channel_credentials(identity, trusted_server_cas=[card.ca_certificate_pem])
        channel = grpc.aio.secure_channel(card.endpoint, credentials, options=self._options)
        opened = _Open(key, channel, federation_pb2_grpc.FederationStub(channel))
        self._open[peer_id] = opened
        return opened.stub

    def pull(self, peer_id: str, request: federation_pb2.PullRequest, *, timeout_s: float) -> Any:
        """The Pull stream (iterate it; `cancel()` ends it early)."""
        return self.stub(peer_id).Pull(request, timeout=timeout_s)

    async def peer_lookup(
        self, peer_id: str, request: registry_pb2.LookupRequest, *, timeout_s: float
    ) -> registry_pb2.LookupResponse:
        response = await self.stub(peer_id).PeerLookup(
            federation_pb2.PeerLookupRequest(lookup=request),
            timeout=timeout_s,
            # Fail fast (gRPC's default, no wait_for_ready): a peer whose connection is refused
            # is reported unreachable at once instead of holding the unit's lookup for the whole
            # deadline. wait_for_ready would queue the call while the channel is in
            # TRANSIENT_FAILURE until the deadline. The reconnect backoff is capped (see
            # MAX_RECONNECT_BACKOFF_MS) so a peer that came back is asked again soon.
        )
        answer: registry_pb2.LookupResponse = response.lookup
        return answer

    async def close(self) -> None:
        channels = [o.channel for o in self._open.values()] + self._stale
        self._open.clear()
        self._stale.clear()
        for channel in channels:
            await channel.close(None)
