"""gRPC face of the sync service: Federation.Pull, PeerLookup and GetAuditCheckpoint (for peers,
through the gateway, which verified the caller) and Admin.GetSyncStatus. Converts, calls, maps
errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc

from hashex.v1 import federation_pb2, federation_pb2_grpc, registry_pb2
from services.core.caller import Caller, current_caller
from services.core.errors import InvalidArgument, PermissionDenied
from services.core.rpc_status import handles_errors, handles_stream_errors
from services.core.server import ServiceBinding
from services.registry.convert import timestamp
from services.sync.audit_checkpoints import HeldCheckpoint
from services.sync.policy_filter import filter_lookup
from services.sync.sender import KeepAlive, LogSender, PolicyFor
from services.sync.status import SyncStatus
from services.sync.store import MAX_QUARANTINE_LISTED, QuarantineRow

Context = grpc.aio.ServicerContext[Any, Any]


class QuarantineListing(Protocol):
    """services.sync.store.SyncStore.quarantine."""

    async def __call__(
        self, *, peer_id: str | None, after_id: int, limit: int
    ) -> list[QuarantineRow]: ...


class LocalLookup(Protocol):
    """The node's own lookup; with `origin`, among that node's records only."""

    async def __call__(
        self, request: registry_pb2.LookupRequest, *, origin: str | None = None
    ) -> registry_pb2.LookupResponse: ...


FEDERATION = federation_pb2.DESCRIPTOR.services_by_name["Federation"].full_name
ADMIN = federation_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
_KEY_STATES = {
    "current": federation_pb2.PeerSigningKey.STATE_CURRENT,
    "retired": federation_pb2.PeerSigningKey.STATE_RETIRED,
    "revoked": federation_pb2.PeerSigningKey.STATE_REVOKED,
}


def _calling_peer() -> Caller:
    caller = current_caller()
    if caller.role != "peer" or caller.kind != "node":
        raise PermissionDenied("only a pinned peer's node certificate may call this method")
    return caller


class HeldCheckpoints(Protocol):
    """services.sync.store.SyncStore.audit_checkpoint: the latest kept of an origin's log."""

    async def __call__(self, origin: str) -> HeldCheckpoint | None: ...


class FederationServicer(federation_pb2_grpc.FederationServicer):
    def __init__(
        self,
        *,
        node_id: str,
        sender: LogSender,
        lookup: LocalLookup,
        policy_for: PolicyFor,
        held_checkpoint: HeldCheckpoints,
    ) -> None:
        self._held_checkpoint = held_checkpoint
        self._node_id = node_id
        self._sender = sender
        self._lookup = lookup
        self._policy_for = policy_for

    def binding(self) -> ServiceBinding:
        return ServiceBinding(
            FEDERATION,
            lambda server: federation_pb2_grpc.add_FederationServicer_to_server(self, server),
        )

    @handles_stream_errors
    async def Pull(
        self, request: federation_pb2.PullRequest, context: Context
    ) -> AsyncIterator[federation_pb2.PullResponse]:
        peer = _calling_peer()
        async for item in self._sender.batches_for(peer.node_id, request):
            if isinstance(item, KeepAlive):
                yield federation_pb2.PullResponse(
                    keep_alive=federation_pb2.KeepAlive(origin_last_seq=item.origin_last_seq)
                )
            elif isinstance(item, federation_pb2.SignedAuditCheckpoint):
                yield federation_pb2.PullResponse(audit_checkpoint=item)
            else:
                yield federation_pb2.PullResponse(batch=item)

    @handles_errors
    async def PeerLookup(
        self, request: federation_pb2.PeerLookupRequest, context: Context
    ) -> federation_pb2.PeerLookupResponse:
        peer = _calling_peer()
        answer = await self._lookup(request.lookup, origin=self._node_id)
        policy = self._policy_for(peer.node_id)
        return federation_pb2.PeerLookupResponse(
            lookup=filter_lookup(answer, policy, origin=self._node_id)
        )

    @handles_errors
    async def GetAuditCheckpoint(
        self, request: federation_pb2.GetAuditCheckpointRequest, context: Context
    ) -> federation_pb2.GetAuditCheckpointResponse:
        peer = _calling_peer()
        held = await self._held_checkpoint(peer.node_id)
        if held is None:
            return federation_pb2.GetAuditCheckpointResponse(held=False)
        return federation_pb2.GetAuditCheckpointResponse(held=True, checkpoint=held.signed())


class AdminServicer(federation_pb2_grpc.AdminServicer):
    """Operator methods. Through the gateway only operators reach them (its method table); on
    the node's loopback port, whoever can reach loopback runs the node anyway."""

    def __init__(
        self,
        *,
        status: Callable[[], Awaitable[SyncStatus]],
        quarantine: QuarantineListing,
        resync: Callable[[str], Awaitable[int]],
    ) -> None:
        self._status = status
        self._quarantine = quarantine
        self._resync = resync

    def binding(self) -> ServiceBinding:
        return ServiceBinding(
            ADMIN, lambda server: federation_pb2_grpc.add_AdminServicer_to_server(self, server)
        )

    @handles_errors
    async def GetSyncStatus(
        self, request: federation_pb2.GetSyncStatusRequest, context: Context
    ) -> federation_pb2.GetSyncStatusResponse:
        status = await self._status()
        response = federation_pb2.GetSyncStatusResponse(
            node_id=status.node_id, local_last_seq=status.local_last_seq
        )
        for peer in status.peers:
            item = federation_pb2.PeerSyncStatus(
                peer_id=peer.peer_id,
                endpoint=peer.endpoint,
                cursor_seq=peer.cursor_seq,
                peer_last_seq=peer.peer_last_seq,
                lag=peer.lag,
                last_error=peer.last_error,
                applied_entries=peer.applied_entries,
                rejected_batches=peer.rejected_batches,
                quarantined_entries=peer.quarantined_entries,
                resyncing=peer.resyncing,
                audit_alarm=peer.audit_alarm,
                signing_keys=[
                    federation_pb2.PeerSigningKey(
                        key_id=k.key_id,
                        state=_KEY_STATES[k.state],
                        retired_at_seq=k.retired_at_seq,
                        revoked_from_seq=k.revoked_from_seq,
                        on_card=k.on_card,
                        from_log=k.from_log,
                    )
                    for k in peer.signing_keys
                ],
            )
            if peer.last_success_at is not None:
                item.last_success_at.CopyFrom(timestamp(peer.last_success_at))
            if peer.last_error_at is not None:
                item.last_error_at.CopyFrom(timestamp(peer.last_error_at))
            response.peers.append(item)
        return response

    @handles_errors
    async def ResyncPeer(
        self, request: federation_pb2.ResyncPeerRequest, context: Context
    ) -> federation_pb2.ResyncPeerResponse:
        if not request.peer_id:
            raise InvalidArgument("peer_id: name the peer to resync")
        withdrawn = await self._resync(request.peer_id)
        return federation_pb2.ResyncPeerResponse(withdrawn_media=withdrawn)

    @handles_errors
    async def ListQuarantine(
        self, request: federation_pb2.ListQuarantineRequest, context: Context
    ) -> federation_pb2.ListQuarantineResponse:
        if request.limit > MAX_QUARANTINE_LISTED:
            raise InvalidArgument(
                f"limit {request.limit} is more than {MAX_QUARANTINE_LISTED} (0 means 100)"
            )
        limit = request.limit or 100
        rows = await self._quarantine(
            peer_id=request.peer_id or None, after_id=request.after_id, limit=limit + 1
        )
        response = federation_pb2.ListQuarantineResponse(more=len(rows) > limit)
        for row in rows[:limit]:
            response.entries.append(
                federation_pb2.QuarantinedEntry(
                    id=row.id,
                    peer_id=row.peer_id,
                    seq=row.seq,
                    reason=row.reason,
                    entry_bytes=row.entry_bytes,
                    batch_digest=row.batch_digest,
                    quarantined_at=timestamp(row.quarantined_at),
                )
            )
        return response
