"""Group commit for audit records: each call waits until its own record is stored, but calls
that finish together share one transaction (one advisory lock, one round of the chain), so the
audit log does not cap the gateway at one database transaction per call.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from services.core.audit.chain import AuditEntry, AuditRecord

_MAX_BATCH = 500


class AuditAppender(Protocol):
    async def append(self, entries: list[AuditEntry]) -> list[AuditRecord]: ...


class AuditRecorder:
    def __init__(self, store: AuditAppender) -> None:
        self._store = store
        self._pending: list[tuple[AuditEntry, asyncio.Future[AuditRecord]]] = []
        self._writing = asyncio.Lock()

    async def record(self, entry: AuditEntry) -> AuditRecord:
        """Store `entry`; returns once it is committed. Runs shielded: a call cancelled while
        its record is written still leaves the record."""
        return await asyncio.shield(self._record(entry))

    async def _record(self, entry: AuditEntry) -> AuditRecord:
        future: asyncio.Future[AuditRecord] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, future))
        async with self._writing:
            while not future.done():
                batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
                try:
                    records = await self._store.append([e for e, _ in batch])
                except Exception as error:
                    for _, waiting in batch:
                        waiting.set_exception(error)
                else:
                    for (_, waiting), stored in zip(batch, records, strict=True):
                        waiting.set_result(stored)
        return await future
