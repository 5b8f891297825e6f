"""A real gateway for tests: certificates from services.core.tls, pinned peer cards in a real
TrustStore, a real Registry servicer on a fresh database, and a small Federation servicer that
shows which caller the gateway handed it; real TLS on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from hashex.v1 import federation_pb2, federation_pb2_grpc
from services.core import tls
from services.core.audit.chain import AuditRecord
from services.core.audit.store import AuditStore
from services.core.caller import Caller, current_caller
from services.core.config import NodeConfig
from services.core.server import ServiceBinding
from services.core.signing import Keyring, create_first_key
from services.core.trust import TrustStore, make_card, pin_card
from services.gateway.app import RunningGateway, start_gateway
from services.registry.cases import CaseSealer
from services.registry.pdq_indexes import PdqIndexes
from services.registry.registry import Registry
from services.registry.servicer import RegistryServicer
from services.registry.store import RegistryStore
from tests.signed_caller import WORKING_ROLES
from tests.store_calls import database_of

OWN = "gb-nca"
PEER = "us-fbi"
OTHER_PEER = "de-bka"
CALL_TIMEOUT_S = 10.0
PULL_BATCHES = 4


@dataclass(frozen=True)
class Pki:
    own: tls.NodeCa
    peer: tls.NodeCa
    other_peer: tls.NodeCa
    gateway: tls.CertifiedKey

    @classmethod
    def create(cls) -> Pki:
        own = tls.create_node_ca(node_id=OWN)
        return cls(
            own=own,
            peer=tls.create_node_ca(node_id=PEER),
            other_peer=tls.create_node_ca(node_id=OTHER_PEER),
            gateway=tls.issue_node_certificate(own),
        )


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FederationForTests(federation_pb2_grpc.FederationServicer):
    """Pull streams a fixed number of batches naming the caller the gateway set; PeerLookup
    waits for `release` (so deadlines can be tested)."""

    def __init__(self) -> None:
        self.callers: list[Caller] = []
        self.release = asyncio.Event()
        self._arrived = asyncio.Condition()

    def binding(self) -> ServiceBinding:
        return ServiceBinding(
            "hashex.v1.Federation",
            lambda server: federation_pb2_grpc.add_FederationServicer_to_server(self, server),
        )

    async def Pull(
        self, request: federation_pb2.PullRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[federation_pb2.PullResponse]:
        for number in range(PULL_BATCHES):
            caller = current_caller()
            self.callers.append(caller)
            body = f"{caller.node_id}:{request.after_seq + number}".encode()
            yield federation_pb2.PullResponse(batch=federation_pb2.SignedBatch(body=body))

    async def PeerLookup(
        self,
        request: federation_pb2.PeerLookupRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> federation_pb2.PeerLookupResponse:
        async with self._arrived:
            self.callers.append(current_caller())
            self._arrived.notify_all()
        await self.release.wait()
        return federation_pb2.PeerLookupResponse()

    async def callers_at_least(self, count: int) -> None:
        """Return once `count` calls have reached the servicer."""
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.callers) >= count), CALL_TIMEOUT_S
            )


@dataclass
class GatewayUnderTest:
    running: RunningGateway
    pki: Pki
    peers_dir: Path
    clock: FakeClock
    federation: FederationForTests
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def channel(self, identity: tls.CertifiedKey | None) -> grpc.aio.Channel:
        credentials = tls.channel_credentials(
            identity, trusted_server_cas=[self.pki.own.certificate_pem]
        )
        channel = grpc.aio.secure_channel(f"127.0.0.1:{self.running.port}", credentials)
        self.channels.append(channel)
        return channel

    def unit(self, name: str = "ceop-desk") -> tls.CertifiedKey:
        return tls.issue_unit_certificate(self.pki.own, unit=name, roles=WORKING_ROLES)

    def peer(self) -> tls.CertifiedKey:
        return tls.issue_node_certificate(self.pki.peer)

    async def audit(self) -> list[AuditRecord]:
        return [record async for record in self.running.audit.records()]

    async def audit_until(self, count: int, timeout_s: float = CALL_TIMEOUT_S) -> list[AuditRecord]:
        """The audit log once it holds `count` records: a call ended by the client is recorded
        by the server after the client has moved on."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            records = await self.audit()
            if len(records) >= count:
                return records
            assert loop.time() < deadline, f"{len(records)} audit records, expected {count}"
            await asyncio.sleep(0.02)  # polling the database: there is nothing to wait on

    async def pin(self, ca: tls.NodeCa, directory: Path) -> None:
        await asyncio.to_thread(pin_peer, self.peers_dir, ca, directory)


def pin_peer(peers_dir: Path, ca: tls.NodeCa, keys_dir: Path) -> None:
    create_first_key(keys_dir)
    card = make_card(
        node_id=ca.node_id,
        endpoint=f"{ca.node_id}.example.org:7443",
        ca_certificate_pem=ca.certificate_pem,
        keyring=Keyring.load(keys_dir),
    )
    pin_card(peers_dir, card, own_node_id=OWN)


def gateway_config(data_dir: Path, **settings: Any) -> NodeConfig:
    base = NodeConfig(
        node_id=OWN,
        data_dir=data_dir,
        gateway_listen="127.0.0.1:0",
        rate_limit_hashes_per_s=1000.0,
        rate_limit_hashes_burst=1000,
        shutdown_grace_s=1.0,
    )
    return replace(base, **settings)


@asynccontextmanager
async def running_gateway(
    pool: Any,
    work_dir: Path,
    pki: Pki,
    *,
    pinned: tuple[tls.NodeCa, ...] | None = None,
    **settings: Any,
) -> AsyncIterator[GatewayUnderTest]:
    """A gateway for node gb-nca fronting a real Registry and the test Federation servicer.
    Pins us-fbi and de-bka unless `pinned` says otherwise."""
    peers_dir = work_dir / "peers"
    peers_dir.mkdir()
    for ca in (pki.peer, pki.other_peer) if pinned is None else pinned:
        pin_peer(peers_dir, ca, work_dir / f"keys-{ca.node_id}")
    trust = TrustStore(peers_dir, pki.own.certificate_pem, own_node_id=OWN)
    database = database_of(pool)
    store = RegistryStore(node_id=OWN, sealer=CaseSealer(bytes(range(32))))
    registry = Registry(database=database, store=store, index=PdqIndexes(), node_id=OWN)
    federation = FederationForTests()
    clock = FakeClock()
    running = await start_gateway(
        gateway_config(work_dir, **settings),
        [RegistryServicer(registry).binding(), federation.binding()],
        audit=AuditStore(database),
        trust=trust,
        identity=pki.gateway,
        own_ca_pem=pki.own.certificate_pem,
        clock=clock,
    )
    under_test = GatewayUnderTest(running, pki, peers_dir, clock, federation)
    try:
        yield under_test
    finally:
        federation.release.set()
        for channel in under_test.channels:
            await channel.close()
        await running.stop(0)


def request_digest(*messages: bytes) -> bytes:
    """What the audit record's request digest must be for these request messages."""
    digest = hashlib.sha256()
    for message in messages:
        digest.update(struct.pack(">Q", len(message)) + message)
    return digest.digest()


async def refused(call: Callable[[], Any]) -> grpc.aio.AioRpcError:
    try:
        await call()
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call was not refused")
