"""The sync service alone (`hashex sync run`, for Kubernetes): its own pool, the pullers, and
Federation + Admin + Units on an internal port, next to `hashex registry serve` and `hashex gateway
serve`. `hashex node up` runs the same parts in one process (services/gateway/composition.py).

Units lives with sync: a federated lookup asks the peers through sync's peer clients, and the
local half of it (and of Federation.PeerLookup) is a Registry.Lookup call to the registry service,
so one registry process answers every lookup. The gateway tells sync who called through the MAC'd
caller headers of services.core.forwarded_caller (keys/internal.key, shared by the node's pods);
sync runs a call as that caller only when they verify. Rejected batches go into the gateway's
audit chain in the shared database.

Replicated records reach the registry process's PDQ index through its replica follower
(services/registry/replica_follower.py), within about a second; exact matches see them at once,
through the database. In one process, sync updates the shared index after each batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hashex.v1 import registry_pb2, registry_pb2_grpc
from services.core.audit.recorder import AuditRecorder
from services.core.audit.store import AuditStore
from services.core.caller import current_caller
from services.core.config import NodeConfig, check_listen, require_node_material
from services.core.db.migrations import apply_migration_plan
from services.core.db.pool import Database, open_database
from services.core.errors import (
    FailedPrecondition,
    FieldProblem,
    HashexError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from services.core.forwarded_caller import (
    ForwardedCallerInterceptor,
    caller_metadata,
    load_internal_key,
)
from services.core.node_claim.store import claim_database
from services.core.server import RunningServer, build_server, internal_channel
from services.core.telemetry import Telemetry, setup_telemetry
from services.core.trust import TrustStore
from services.registry.model import PdqEntry
from services.registry.store import RegistryStore
from services.sync.app import RunningSync, start_sync
from services.sync.audit_rejections import (
    audit_contradictions,
    audit_quarantines,
    audit_rejections,
)
from services.sync.federated_lookup import FederatedLookup
from services.sync.store import MIGRATIONS
from services.sync.units_servicer import UnitsServicer

DEFAULT_SYNC_LISTEN = "127.0.0.1:7701"


_REGISTRY_LOOKUP = "/hashex.v1.Registry/Lookup"


class RegistryLookupOverChannel:
    """The local lookup of sync (PeerLookup) and Units, asked of the registry service. Its
    refusals come back as the domain errors they were, so the servicers map them unchanged."""

    def __init__(self, channel: grpc.aio.Channel, *, secret: bytes, timeout_s: float) -> None:
        self._stub: Any = registry_pb2_grpc.RegistryStub(channel)
        self._secret = secret
        self._timeout_s = timeout_s

    async def __call__(
        self, request: registry_pb2.LookupRequest, *, origin: str | None = None
    ) -> registry_pb2.LookupResponse:
        """The Registry contract has no origin filter: the registry service answers across
        origins and PeerLookup's policy filter then keeps `origin`'s matches, so a hash with
        more replicated matches than the limit may leave a peer fewer than it asked for."""
        try:
            # The call runs as the caller sync serves (a peer, a unit), as the gateway signed it.
            metadata = caller_metadata(
                self._secret, _REGISTRY_LOOKUP, current_caller(), now_s=time.time()
            )
            response: registry_pb2.LookupResponse = await self._stub.Lookup(
                request, timeout=self._timeout_s, metadata=metadata
            )
        except grpc.aio.AioRpcError as error:
            raise domain_error(error) from None
        return response


def domain_error(error: grpc.aio.AioRpcError) -> HashexError:
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        problems = [FieldProblem(v.field, v.description) for v in _field_violations(error)]
        return InvalidArgument(problems or details)
    known: dict[grpc.StatusCode, type[HashexError]] = {
        grpc.StatusCode.NOT_FOUND: NotFound,
        grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    }
    if code in known:
        return known[code](details)
    return Unavailable(f"the node's registry service did not answer ({code.name}); retry later")


def _field_violations(error: grpc.aio.AioRpcError) -> list[Any]:
    try:
        status = rpc_status.from_call(cast(Any, error))
    except ValueError:
        return []
    found: list[Any] = []
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.extend(bad.field_violations)
    return found


class _IndexInRegistryProcess:
    """The PDQ index lives in the registry process, which follows the database by itself (see
    the module docstring); nothing to hand over from here."""

    async def index_replicated(
        self, *, added: Sequence[PdqEntry], removed_rows: Sequence[int]
    ) -> None:
        return None


@dataclass
class RunningSyncService:
    config: NodeConfig
    database: Database
    sync: RunningSync
    server: RunningServer
    registry_channel: grpc.aio.Channel
    telemetry: Telemetry
    host: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.server.port}"

    async def stop(self) -> None:
        """No new calls first, then the pullers, the registry channel, the database."""
        try:
            await self.sync.release_pulls()
            await self.server.stop(self.config.shutdown_grace_s)
            await self.sync.stop()
            await self.registry_channel.close(None)
        finally:
            await self.database.close()
            self.telemetry.shutdown()
            self.config.sync_address_file.unlink(missing_ok=True)


async def start_sync_service(
    config: NodeConfig,
    *,
    registry_address: str,
    listen: str = DEFAULT_SYNC_LISTEN,
    run_pullers: bool = True,
    clock: Callable[[], float] = time.time,
) -> RunningSyncService:
    """Sync alone: its own pool, pullers, and Federation + Admin + Units on `listen`."""
    check_listen(listen)
    require_node_material(config, internal_key=True)
    secret = load_internal_key(config.data_dir)
    own_ca_pem = (config.tls_dir / "ca.pem").read_bytes()
    trust = TrustStore(config.peers_dir, own_ca_pem, own_node_id=config.node_id)
    database = await open_database(config.database_location())
    registry_channel = internal_channel(
        registry_address, max_message_bytes=config.max_message_bytes
    )
    sync: RunningSync | None = None
    try:
        await apply_migration_plan(database.pool, MIGRATIONS)
        async with database.connection() as conn:
            # No case key here: the registry checks that; this checks the node id.
            await claim_database(conn, node_id=config.node_id, case_key_fingerprint=None)
        lookup = RegistryLookupOverChannel(
            registry_channel, secret=secret, timeout_s=config.call_deadline_s
        )
        recorder = AuditRecorder(AuditStore(database))
        store = RegistryStore(node_id=config.node_id)
        sync = await start_sync(
            config,
            database=database,
            # Replicated records carry no case data: this store never needs the case key.
            records=store,
            linkage=store,
            min_linked_media=config.linkage_min_linked_media,
            index=_IndexInRegistryProcess(),
            trust=trust,
            on_rejected=audit_rejections(recorder.record, now=lambda: datetime.now(UTC)),
            on_quarantined=audit_quarantines(recorder.record, now=lambda: datetime.now(UTC)),
            on_audit_contradiction=audit_contradictions(
                recorder.record, now=lambda: datetime.now(UTC)
            ),
            lookup=lookup,
            run_pullers=run_pullers,
        )
        telemetry = setup_telemetry(service="hashex-sync", node_id=config.node_id)
        units = UnitsServicer(FederatedLookup(local=lookup, peers=sync.clients))
        server = await build_server(
            listen=listen,
            services=[*sync.bindings(), units.binding()],
            tracer_provider=telemetry.tracer_provider,
            max_message_bytes=config.max_message_bytes,
            interceptors=[ForwardedCallerInterceptor(secret, clock=clock)],
        )
    except BaseException:
        if sync is not None:
            await sync.stop()
        await registry_channel.close(None)
        await database.close()
        raise
    host = listen.rpartition(":")[0]
    database.watch([server.set_serving])
    running = RunningSyncService(config, database, sync, server, registry_channel, telemetry, host)
    # Where this node's own sync admin commands find it (`hashex sync status`).
    config.sync_address_file.parent.mkdir(parents=True, exist_ok=True)
    config.sync_address_file.write_text(running.address + "\n", encoding="utf-8")
    return running
