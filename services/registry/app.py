"""Assembles and runs a registry: database (embedded by default), migrations, case key, PDQ index
loaded from the database, gRPC server; stops in order on request.

Used by `hashex node up` and `hashex registry serve`, and by tests that want a real node.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.core.config import NodeConfig
from services.core.db.migrations import apply_migration_plan
from services.core.db.pool import Database, open_database
from services.core.forwarded_caller import ForwardedCallerInterceptor, load_internal_key
from services.core.node_claim.store import claim_database
from services.core.server import RunningServer, build_server
from services.core.telemetry import Telemetry, setup_telemetry
from services.registry.cases import CaseSealer, load_case_key
from services.registry.linkage.running import RunningLinker, start_linker
from services.registry.pdq_indexes import PdqIndexes
from services.registry.registry import Registry
from services.registry.replica_follower import ReplicaFollower
from services.registry.servicer import RegistryServicer
from services.registry.store import MIGRATIONS, RegistryStore

_log = logging.getLogger(__name__)


@dataclass
class RunningRegistry:
    config: NodeConfig
    database: Database
    registry: Registry
    server: RunningServer
    telemetry: Telemetry
    follower: ReplicaFollower | None = None
    follower_task: asyncio.Task[None] | None = None
    linker: RunningLinker | None = None

    @property
    def address(self) -> str:
        host = self.config.listen.rpartition(":")[0]
        return f"{host}:{self.server.port}"

    async def stop(self) -> None:
        """Drain calls in flight, then close the database (stopping an embedded PostgreSQL)."""
        _log.info("stopping registry of %s", self.config.node_id)
        if self.follower is not None and self.follower_task is not None:
            self.follower.stop()
            await self.follower_task
        if self.linker is not None:
            await self.linker.stop()
        await self.server.stop(self.config.shutdown_grace_s)
        await self.database.close()
        self.telemetry.shutdown()
        _log.info("registry of %s stopped", self.config.node_id)


async def open_registry(config: NodeConfig, database: Database) -> Registry:
    """A Registry on an open, migrated database that belongs to this node (claimed now if no
    node has claimed it yet), with its PDQ index loaded."""
    sealer = CaseSealer(load_case_key(config.case_key_path))
    async with database.connection() as conn:
        await claim_database(conn, node_id=config.node_id, case_key_fingerprint=sealer.fingerprint)
    store = RegistryStore(node_id=config.node_id, sealer=sealer)
    registry = Registry(database=database, store=store, index=PdqIndexes(), node_id=config.node_id)
    await registry.load_index()
    _log.info("registry of %s ready", config.node_id)
    return registry


async def start_registry(config: NodeConfig, *, follow_replicas: bool = False) -> RunningRegistry:
    """Start everything; on failure, stop what was started and re-raise. `follow_replicas`:
    the sync service runs in another process, so poll for the records it replicates."""
    _log.info("starting registry with %s", config.masked())
    database = await open_database(config.database_location())
    try:
        await apply_migration_plan(database.pool, MIGRATIONS)
        registry = await open_registry(config, database)
        telemetry = setup_telemetry(service="hashex-registry", node_id=config.node_id)
        servicer = RegistryServicer(registry, default_max_distance=config.pdq_default_max_distance)
        server = await build_server(
            listen=config.listen,
            services=[servicer.binding()],
            tracer_provider=telemetry.tracer_provider,
            max_message_bytes=config.max_message_bytes,
            # Every call but health runs as the caller the node's gateway signed.
            interceptors=[ForwardedCallerInterceptor(load_internal_key(config.data_dir))],
        )
    except BaseException:
        await database.close()
        raise
    database.watch([server.set_serving])
    running = RunningRegistry(config, database, registry, server, telemetry)
    if follow_replicas and registry.index_loaded_as_of is not None:
        running.follower = ReplicaFollower(registry=registry, since=registry.index_loaded_as_of)
        running.follower_task = asyncio.create_task(running.follower.run(), name="replicas")
    running.linker = start_linker(config, registry)
    config.address_file.parent.mkdir(parents=True, exist_ok=True)
    config.address_file.write_text(running.address + "\n", encoding="utf-8")
    return running
