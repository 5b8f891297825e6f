"""The gateway alone (`hashex gateway serve`, for Kubernetes): the node's public port (mutual
TLS) forwarding Registry to the registry service and Units, Federation and Admin to the sync
service as raw bytes (services.gateway.forwarding), with the verified caller in MAC'd headers
(services.core.forwarded_caller). It keeps its audit chain in the node's database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from hashex.v1 import federation_pb2, flags_pb2, registry_pb2
from services.core import tls
from services.core.audit import store as audit_log
from services.core.audit.recorder import AuditRecorder
from services.core.audit.spool import SPOOL_FILE, AuditSpool
from services.core.caller import current_caller
from services.core.cert_expiry import node_certificates, watch_expiry
from services.core.clock import SYSTEM_CLOCK
from services.core.config import NodeConfig, require_node_material
from services.core.db.migrations import apply_migration_plan
from services.core.db.pool import Database, open_database
from services.core.forwarded_caller import (
    caller_metadata,
    load_internal_key,
)
from services.core.node_claim import store as node_claim
from services.core.server import internal_channel
from services.core.telemetry import Telemetry, setup_telemetry
from services.core.trust import TrustStore
from services.gateway.app import RunningGateway, start_gateway
from services.gateway.forwarding import MetadataFor, forwarding_bindings

_FEDERATION = federation_pb2.DESCRIPTOR.services_by_name
REGISTRY_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["Registry"]
SYNC_SERVICES = (
    _FEDERATION["Units"],
    _FEDERATION["Federation"],
    _FEDERATION["Admin"],
    flags_pb2.DESCRIPTOR.services_by_name["Flags"],
)


@dataclass
class RunningGatewayService:
    config: NodeConfig
    database: Database
    gateway: RunningGateway
    channels: tuple[grpc.aio.Channel, ...]
    telemetry: Telemetry
    # Warns in the log of certificates near expiry, at start and once a day.
    expiry_watch: asyncio.Task[None]

    @property
    def address(self) -> str:
        return self.gateway.address

    async def stop(self) -> None:
        self.expiry_watch.cancel()
        try:
            await self.gateway.stop()
            for channel in self.channels:
                await channel.close(None)
        finally:
            await self.database.close()
            self.telemetry.shutdown()
            self.config.gateway_address_file.unlink(missing_ok=True)


def signed_caller(secret: bytes, clock: Callable[[], float] = time.time) -> MetadataFor:
    """The caller the gateway verified for the call in progress, as MAC'd headers."""

    def metadata_for(method: str) -> Sequence[tuple[str, str]]:
        return caller_metadata(secret, method, current_caller(), now_s=clock())

    return metadata_for


async def start_gateway_service(
    config: NodeConfig, *, registry_address: str, sync_address: str
) -> RunningGatewayService:
    """The gateway alone: mutual TLS on `gateway_listen`, forwarding to the two services."""
    require_node_material(config, internal_key=True)
    secret = load_internal_key(config.data_dir)
    own_ca_pem = (config.tls_dir / "ca.pem").read_bytes()
    trust = TrustStore(config.peers_dir, own_ca_pem, own_node_id=config.node_id)
    database = await open_database(config.database_location())
    limit = config.max_message_bytes
    channels = (
        internal_channel(registry_address, max_message_bytes=limit),
        internal_channel(sync_address, max_message_bytes=limit),
    )
    try:
        telemetry = setup_telemetry(service="hashex-gateway", node_id=config.node_id)
        metadata_for = signed_caller(secret)
        bindings = [
            *forwarding_bindings(
                [REGISTRY_SERVICE], channels[0], metadata_for=metadata_for, upstream_name="registry"
            ),
            *forwarding_bindings(
                SYNC_SERVICES, channels[1], metadata_for=metadata_for, upstream_name="sync"
            ),
        ]
        await apply_migration_plan(
            database.pool,
            [
                (node_claim.COMPONENT, node_claim.MIGRATIONS_DIR),
                (audit_log.COMPONENT, audit_log.MIGRATIONS_DIR),
            ],
        )
        async with database.connection() as conn:
            # No case key here: the registry checks that; this checks the node id.
            await node_claim.claim_database(conn, node_id=config.node_id, case_key_fingerprint=None)
        audit = audit_log.AuditStore(database)
        recorder = AuditRecorder(audit, spool=AuditSpool(config.data_dir / SPOOL_FILE))
        await recorder.drain_spool()  # records of an outage the last run ended in
        gateway = await start_gateway(
            config,
            bindings,
            audit=audit,
            recorder=recorder,
            trust=trust,
            identity=lambda: tls.load_certified_key(
                certificate_path=config.tls_dir / "node.pem", key_path=config.tls_dir / "node.key"
            ),
            own_ca_pem=own_ca_pem,
            tracer_provider=telemetry.tracer_provider,
        )
    except BaseException:
        for channel in channels:
            await channel.close(None)
        await database.close()
        raise
    database.watch([gateway.server.set_serving, recorder.on_database_change])
    expiry_watch = asyncio.create_task(
        watch_expiry(node_certificates(config), clock=SYSTEM_CLOCK), name="certificate-expiry"
    )
    running = RunningGatewayService(config, database, gateway, channels, telemetry, expiry_watch)
    config.gateway_address_file.parent.mkdir(parents=True, exist_ok=True)
    config.gateway_address_file.write_text(running.address + "\n", encoding="utf-8")
    return running
