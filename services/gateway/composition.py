"""The composition root of a whole node in one process (`hashex node up`): the registry, the sync
service and the gateway on one database, for a small agency or a laptop. Every part is built
complete through its constructor here, and only here.

Two ways in: the gateway (mutual TLS, `gateway_listen`), the only port peers and units reach, and
the admin socket (`run/admin.sock`, owner only, services.gateway.admin_socket) that the operator's
own `hashex` commands use on the node's machine; both check, limit and audit every call alike.
Start order: database, every component's migrations (checked as one plan), registry (PDQ index),
sync (pullers), gateway; stop in reverse, so no call arrives at a service that is already gone.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from services.core import tls
from services.core.audit.recorder import AuditRecorder
from services.core.audit.spool import SPOOL_FILE, AuditSpool
from services.core.audit.store import AuditStore
from services.core.cert_expiry import node_certificates, watch_expiry
from services.core.clock import SYSTEM_CLOCK, Clock
from services.core.config import NodeConfig, require_node_material
from services.core.db.migrations import apply_migration_plan
from services.core.db.pool import Database, open_database
from services.core.server import RunningServer
from services.core.telemetry import Telemetry, setup_telemetry
from services.core.trust import TrustStore
from services.gateway.admin_socket import socket_target, start_admin_socket
from services.gateway.app import RunningGateway, start_gateway
from services.registry.app import open_registry
from services.registry.linkage.running import RunningLinker, start_linker
from services.registry.registry import Registry
from services.registry.servicer import RegistryServicer
from services.sync.app import RunningSync, start_sync
from services.sync.audit_rejections import (
    audit_contradictions,
    audit_quarantines,
    audit_rejections,
)
from services.sync.federated_lookup import FederatedLookup
from services.sync.store import MIGRATIONS
from services.sync.units_servicer import UnitsServicer

_log = logging.getLogger(__name__)


@dataclass
class RunningNode:
    config: NodeConfig
    database: Database
    registry: Registry
    sync: RunningSync
    local: RunningServer
    gateway: RunningGateway
    telemetry: Telemetry
    # Warns in the log of certificates near expiry, at start and once a day.
    expiry_watch: asyncio.Task[None]
    # Links media and series as records arrive (services/registry/linkage/).
    linker: RunningLinker

    @property
    def address(self) -> str:
        """The admin socket's gRPC target (`unix:/…/run/admin.sock`)."""
        return socket_target(self.config.admin_socket_path)

    @property
    def gateway_address(self) -> str:
        return self.gateway.address

    async def stop(self) -> None:
        """Pulls peers hold open end first, then the gateway (no new outside calls), pullers,
        the admin socket, the database (stopping an embedded PostgreSQL)."""
        _log.info("stopping node %s", self.config.node_id)
        self.expiry_watch.cancel()
        try:
            await self.linker.stop()
            await self.sync.release_pulls()
            await self.gateway.stop()
            await self.sync.stop()
            await self.local.stop(self.config.shutdown_grace_s)
        finally:
            await self.database.close()
            self.telemetry.shutdown()
            for path in (self.config.admin_socket_path, self.config.gateway_address_file):
                path.unlink(missing_ok=True)
        _log.info("node %s stopped", self.config.node_id)


async def start_node(config: NodeConfig, *, clock: Clock = SYSTEM_CLOCK) -> RunningNode:
    """Start everything; on failure, stop what was started and re-raise. `clock` times
    replication's holds, keep-alives, pauses and deadlines (tests run it fast)."""
    _log.info("starting node with %s", config.masked())
    require_node_material(config)
    own_ca_pem = (config.tls_dir / "ca.pem").read_bytes()
    trust = TrustStore(config.peers_dir, own_ca_pem, own_node_id=config.node_id)
    database = await open_database(config.database_location())
    started: list[RunningServer | RunningGateway | RunningSync] = []
    try:
        await apply_migration_plan(database.pool, MIGRATIONS)
        registry = await open_registry(config, database)
        telemetry = setup_telemetry(service="hashex-node", node_id=config.node_id)
        registry_servicer = RegistryServicer(
            registry, default_max_distance=config.pdq_default_max_distance
        )
        audit = AuditStore(database)
        recorder = AuditRecorder(audit, spool=AuditSpool(config.data_dir / SPOOL_FILE))
        await recorder.drain_spool()  # records of an outage the last run ended in
        # Batches the pullers reject go into the same audit chain as the gateway's calls, from
        # the first pull on (the gateway itself starts last).
        sync = await start_sync(
            config,
            database=database,
            records=registry.store,
            linkage=registry.store,
            min_linked_media=config.linkage_min_linked_media,
            on_rejected=audit_rejections(recorder.record, now=lambda: datetime.now(UTC)),
            on_quarantined=audit_quarantines(recorder.record, now=lambda: datetime.now(UTC)),
            on_audit_contradiction=audit_contradictions(
                recorder.record, now=lambda: datetime.now(UTC)
            ),
            index=registry,
            trust=trust,
            lookup=registry_servicer.answer_lookup,
            identity=lambda: _node_identity(config),
            clock=clock,
        )
        started.append(sync)
        units = UnitsServicer(
            FederatedLookup(local=registry_servicer.answer_lookup, peers=sync.clients)
        )
        local = await start_admin_socket(
            config,
            [
                registry_servicer.binding(),
                units.binding(),
                sync.admin_binding(),
                sync.flags_binding(),
            ],
            recorder=recorder,
            tracer_provider=telemetry.tracer_provider,
        )
        started.append(local)
        gateway = await start_gateway(
            config,
            [registry_servicer.binding(), units.binding(), *sync.bindings()],
            audit=audit,
            recorder=recorder,
            trust=trust,
            identity=lambda: _node_identity(config),
            own_ca_pem=own_ca_pem,
            tracer_provider=telemetry.tracer_provider,
        )
    except BaseException:
        for part in reversed(started):
            await _stop(part, config)
        await database.close()
        raise
    database.watch([local.set_serving, gateway.server.set_serving, recorder.on_database_change])
    expiry_watch = asyncio.create_task(
        watch_expiry(node_certificates(config), clock=clock), name="certificate-expiry"
    )
    linker = start_linker(config, registry)
    node = RunningNode(
        config, database, registry, sync, local, gateway, telemetry, expiry_watch, linker
    )
    config.gateway_address_file.write_text(node.gateway_address + "\n", encoding="utf-8")
    return node


def _node_identity(config: NodeConfig) -> tls.CertifiedKey:
    """Read per new connection, so a renewed node certificate is used without a restart."""
    return tls.load_certified_key(
        certificate_path=config.tls_dir / "node.pem", key_path=config.tls_dir / "node.key"
    )


async def _stop(part: RunningServer | RunningGateway | RunningSync, config: NodeConfig) -> None:
    if isinstance(part, RunningServer):
        await part.stop(config.shutdown_grace_s)
    else:
        await part.stop()
