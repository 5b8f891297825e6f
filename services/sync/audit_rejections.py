"""Rejected batches, quarantined entries and contradicted audit checkpoints as records of the
node's audit chain (services.core.audit): the security tests and the operator expect a forged,
misaddressed or replayed batch, a batch whose entries were set aside, and a peer's audit log
found cut or rewritten, to leave a trace next to the calls the gateway records, with a digest of
the batch or checkpoint, never its content."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime

from services.core.audit.chain import AuditEntry
from services.sync.audit_checkpoints import Contradiction
from services.sync.batches import BatchRejected, VerifiedBatch
from services.sync.puller import OnAuditContradiction, OnQuarantined, OnRejected

PULL_METHOD = "/hashex.v1.Federation/Pull"


Record = Callable[[AuditEntry], Awaitable[object]]


def audit_rejections(record: Record, *, now: Callable[[], datetime]) -> OnRejected:
    """Rejections stored through `record` (services.core.audit.recorder.AuditRecorder.record:
    the node's one appender, shared with its gateway)."""

    async def audit(peer_id: str, rejected: BatchRejected) -> None:
        status = f"BATCH_REJECTED:{rejected.reason}"
        await record(_entry(peer_id, rejected.digest, status, now()))

    return audit


def audit_quarantines(record: Record, *, now: Callable[[], datetime]) -> OnQuarantined:
    """One record per applied batch that had entries quarantined, naming how many."""

    async def audit(peer_id: str, batch: VerifiedBatch) -> None:
        status = f"ENTRIES_QUARANTINED:{len(batch.quarantined)}"
        await record(_entry(peer_id, batch.digest, status, now()))

    return audit


def audit_contradictions(record: Record, *, now: Callable[[], datetime]) -> OnAuditContradiction:
    """One record per contradiction found in a peer's audit checkpoints (AUDIT_LOG_TRUNCATED or
    AUDIT_LOG_REWRITTEN), with the digest of the checkpoint body that contradicts."""

    async def audit(peer_id: str, found: Contradiction) -> None:
        status = f"AUDIT_LOG_{found.kind.upper()}"
        digest = hashlib.sha256(found.received.body).digest()
        await record(_entry(peer_id, digest, status, now()))

    return audit


def _entry(peer_id: str, digest: bytes, status: str, at: datetime) -> AuditEntry:
    return AuditEntry(
        at=at,
        duration_ms=0,
        caller=f"spiffe://hashex/node/{peer_id}",
        fingerprint="",
        role="peer",
        method=PULL_METHOD,
        request_messages=1,
        response_messages=1,
        request_digest=digest or bytes(32),
        status=status,
    )
