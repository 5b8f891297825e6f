"""Two real nodes for sync tests: each its own database, registry, node CA and certificate,
signing keys, sharing policies, sync service, and gateway on loopback (mutual TLS); each pins
the other's card. Nothing is mocked: pulls cross real TLS through the real gateway checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.core import tls
from services.core.audit.store import AuditStore
from services.core.config import NodeConfig
from services.core.signing import Keyring, create_first_key
from services.core.trust import TrustStore, make_card, pin_card
from services.gateway.app import RunningGateway, start_gateway
from services.registry.cases import CaseSealer
from services.registry.pdq_indexes import PdqIndexes
from services.registry.registry import Registry
from services.registry.servicer import RegistryServicer
from services.registry.store import RegistryStore
from services.sync.app import RunningSync, start_sync
from services.sync.batches import BatchRejected
from services.sync.policy import SharingPolicy, save_policy
from tests.store_calls import database_of


@dataclass
class SyncNode:
    node_id: str
    config: NodeConfig
    ca: tls.NodeCa
    certificate: tls.CertifiedKey
    registry: Registry
    trust: TrustStore
    sync: RunningSync
    gateway: RunningGateway | None = None
    rejections: list[tuple[str, BatchRejected]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        assert self.gateway is not None
        return f"127.0.0.1:{self.gateway.port}"

    def keyring(self) -> Keyring:
        return Keyring.load(self.config.signing_keys_dir)

    def card(self) -> bytes:
        return make_card(
            node_id=self.node_id,
            endpoint=self.endpoint,
            ca_certificate_pem=self.ca.certificate_pem,
            keyring=self.keyring(),
        )

    def set_policy(self, peer_id: str, policy: SharingPolicy) -> SharingPolicy:
        return save_policy(self.config.policy_dir, peer_id, policy)


@asynccontextmanager
async def started_node(
    node_id: str, pool: Any, data_dir: Path, *, run_pullers: bool = False, **settings: Any
) -> AsyncIterator[SyncNode]:
    config = NodeConfig(
        node_id=node_id,
        data_dir=data_dir,
        gateway_listen="127.0.0.1:0",
        rate_limit_hashes_per_s=10_000.0,
        rate_limit_hashes_burst=10_000,
        shutdown_grace_s=2.0,
        **settings,
    )
    ca, certificate = await asyncio.to_thread(_node_files, config)
    trust = TrustStore(config.peers_dir, ca.certificate_pem, own_node_id=node_id)
    database = database_of(pool)
    store = RegistryStore(node_id=node_id, sealer=CaseSealer(bytes(32)))
    registry = Registry(database=database, store=store, index=PdqIndexes(), node_id=node_id)
    rejections: list[tuple[str, BatchRejected]] = []

    async def audit_rejection(peer_id: str, rejected: BatchRejected) -> None:
        rejections.append((peer_id, rejected))

    sync = await start_sync(
        config,
        database=database,
        records=store,
        index=registry,
        lookup=RegistryServicer(registry).answer_lookup,
        trust=trust,
        on_rejected=audit_rejection,
        identity=lambda: certificate,
        run_pullers=run_pullers,
    )
    node = SyncNode(node_id, config, ca, certificate, registry, trust, sync, rejections=rejections)
    try:
        node.gateway = await start_gateway(
            config,
            sync.bindings(),
            audit=AuditStore(database),
            trust=trust,
            identity=certificate,
            own_ca_pem=ca.certificate_pem,
        )
        yield node
    finally:
        await sync.stop()
        if node.gateway is not None:
            await node.gateway.stop(0)


def _node_files(config: NodeConfig) -> tuple[tls.NodeCa, tls.CertifiedKey]:
    """What `hashex node init` makes: signing key, node CA and certificate, peers directory."""
    config.peers_dir.mkdir(parents=True)
    create_first_key(config.signing_keys_dir)
    ca = tls.create_node_ca(node_id=config.node_id)
    return ca, tls.issue_node_certificate(ca)


async def federate(*nodes: SyncNode) -> None:
    """Every node pins every other's card (as `hashex peer add` would)."""
    for node in nodes:
        for other in nodes:
            if other is not node:
                await asyncio.to_thread(
                    pin_card, node.config.peers_dir, other.card(), own_node_id=node.node_id
                )


@asynccontextmanager
async def two_nodes(
    origin_pool: Any,
    receiver_pool: Any,
    work_dir: Path,
    origin_settings: dict[str, Any] | None = None,
    **receiver_settings: Any,
) -> AsyncIterator[tuple[SyncNode, SyncNode]]:
    """gb-nca (the origin) and us-fbi (the receiver), federated."""
    async with AsyncExitStack() as stack:
        origin = await stack.enter_async_context(
            started_node("gb-nca", origin_pool, work_dir / "gb-nca", **(origin_settings or {}))
        )
        receiver = await stack.enter_async_context(
            started_node("us-fbi", receiver_pool, work_dir / "us-fbi", **receiver_settings)
        )
        await federate(origin, receiver)
        yield origin, receiver
