"""Rejected batches as records of the node's audit chain (services.core.audit): the security
tests and the operator expect a forged, misaddressed or replayed batch to leave a trace next to
the calls the gateway records, with a digest of the batch, never its content."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from services.core.audit.chain import AuditEntry
from services.sync.batches import BatchRejected
from services.sync.puller import OnRejected

PULL_METHOD = "/hashex.v1.Federation/Pull"


def audit_rejections(
    record: Callable[[AuditEntry], Awaitable[object]], *, now: Callable[[], datetime]
) -> OnRejected:
    """Rejections stored through `record` (services.core.audit.recorder.AuditRecorder.record:
    the node's one appender, shared with its gateway)."""

    async def audit(peer_id: str, rejected: BatchRejected) -> None:
        await record(
            AuditEntry(
                at=now(),
                duration_ms=0,
                caller=f"spiffe://hashex/node/{peer_id}",
                fingerprint="",
                role="peer",
                method=PULL_METHOD,
                request_messages=1,
                response_messages=1,
                request_digest=rejected.digest or bytes(32),
                status=f"BATCH_REJECTED:{rejected.reason}",
            )
        )

    return audit
