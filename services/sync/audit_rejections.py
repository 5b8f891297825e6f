"""Rejected batches as records of the node's audit chain (services/gateway/audit.py): the
security tests and the operator expect a forged, misaddressed or replayed batch to leave a
trace next to the calls the gateway records, with a digest of the batch, never its content."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from services.core.db.migrations import apply_migrations
from services.gateway.audit import AuditEntry, AuditRecord
from services.gateway.store import MIGRATIONS_DIR as GATEWAY_MIGRATIONS
from services.gateway.store import AuditStore
from services.sync.batches import BatchRejected
from services.sync.puller import OnRejected

PULL_METHOD = "/hashex.v1.Federation/Pull"


class AuditAppender(Protocol):
    async def append(self, entries: list[AuditEntry]) -> list[AuditRecord]: ...


def audit_rejections(audit: AuditAppender, *, now: Callable[[], datetime]) -> OnRejected:
    async def record(peer_id: str, rejected: BatchRejected) -> None:
        await audit.append(
            [
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
            ]
        )

    return record


async def audit_rejections_in(pool: Any) -> OnRejected:
    """Rejections recorded in the audit chain of the node's database (its gateway's table,
    created here if the gateway has not started yet)."""
    await apply_migrations(pool, GATEWAY_MIGRATIONS)
    return audit_rejections(AuditStore(pool), now=lambda: datetime.now(UTC))
