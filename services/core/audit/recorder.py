"""The node's one appender to its audit log.

Group commit: each call waits until its own record is stored, but calls that finish together
share one transaction (one advisory lock, one round of the chain), so the audit log does not cap
the gateway at one database transaction per call.

Refusals are aggregated per caller and window (services.core.audit.refusals): the first of a
window is stored like any record, the others are counted and stored as one record when the
window ends (on the next record, on `flush_due`, which the gateway calls periodically, or on
`flush` at shutdown).

While the database is down, records go to the local spool (services.core.audit.spool) instead,
durably, and the call counts as audited; before anything else is appended again, the spool is
written into the chain, in order (`drain_spool`, also run when the database comes back and at
start).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from services.core.audit.chain import AuditEntry, AuditRecord
from services.core.audit.refusals import RefusalWindows
from services.core.audit.spool import AuditSpool, SpoolFull, entries_after
from services.core.errors import Unavailable

_log = logging.getLogger(__name__)

_MAX_BATCH = 500


class AuditAppender(Protocol):
    async def append(self, entries: list[AuditEntry]) -> list[AuditRecord]: ...

    async def append_spooled(
        self, entries: list[AuditEntry], *, spool_id: str, drained_bytes: int
    ) -> list[AuditRecord]: ...

    async def spool_drained_bytes(self, spool_id: str) -> int: ...


class AuditRecorder:
    def __init__(
        self,
        store: AuditAppender,
        *,
        spool: AuditSpool | None = None,
        refusals: RefusalWindows | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`spool`: where records go while the database is down (None: they are not kept, and
        the calls fail as unaudited). `clock` (monotonic seconds) times the refusal windows."""
        self._store = store
        self._spool = spool
        self._refusals = refusals or RefusalWindows()
        self._clock = clock
        self._pending: list[tuple[AuditEntry, asyncio.Future[AuditRecord | None]]] = []
        self._writing = asyncio.Lock()
        self._spooling = False

    async def record(self, entry: AuditEntry) -> AuditRecord | None:
        """Keep `entry`; returns once it is committed (its record), spooled or counted into an
        aggregated refusal (None). Runs shielded: a call cancelled while its record is written
        still leaves the record. Raises when the record could not be kept."""
        return await asyncio.shield(self._record(entry))

    async def _record(self, entry: AuditEntry) -> AuditRecord | None:
        now = self._clock()
        if RefusalWindows.is_refusal(entry):
            admitted = self._refusals.admit(entry, now)
            due, own = admitted.due, admitted.entry
        else:
            due, own = self._refusals.due(now), entry
        kept = await self._keep([*due, *([own] if own is not None else [])])
        return kept[-1] if own is not None else None

    async def flush_due(self) -> None:
        """Store the aggregated refusals of windows that have ended."""
        await self._keep(self._refusals.due(self._clock()))

    async def flush(self) -> None:
        """Store the aggregated refusals of every window, ended or not (at shutdown)."""
        await self._keep(self._refusals.close_all())

    async def keep_flushing(self, interval_s: float) -> None:
        """Run `flush_due` every `interval_s` until cancelled (failures are logged)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush_due()
            except Exception:
                _log.exception("could not store aggregated refusals; retrying")

    async def drain_spool(self) -> None:
        """Write what the spool holds into the chain now (at start, when the database returns)."""
        async with self._writing:
            await self._drain_spool()

    async def on_database_change(self, available: bool) -> None:
        """A database health listener: drain the spool as soon as the database is back."""
        if not available:
            return
        try:
            await self.drain_spool()
        except Exception:
            _log.exception("could not write the audit spool into the chain yet")

    async def _keep(self, entries: list[AuditEntry]) -> list[AuditRecord | None]:
        if not entries:
            return []
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[AuditRecord | None]] = []
        for entry in entries:
            futures.append(loop.create_future())
            self._pending.append((entry, futures[-1]))
        async with self._writing:
            while not all(f.done() for f in futures):
                batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
                try:
                    await self._drain_spool()
                    records = await self._store.append([e for e, _ in batch])
                except Unavailable as error:
                    await self._spool_or_fail(batch, error)
                except Exception as error:
                    for _, waiting in batch:
                        waiting.set_exception(error)
                else:
                    for (_, waiting), stored in zip(batch, records, strict=True):
                        waiting.set_result(stored)
        return [await f for f in futures]

    async def _spool_or_fail(
        self,
        batch: list[tuple[AuditEntry, asyncio.Future[AuditRecord | None]]],
        error: Exception,
    ) -> None:
        try:
            if self._spool is None:
                raise error
            # fsync off the event loop: other calls go on meanwhile.
            await asyncio.to_thread(self._spool.append, [e for e, _ in batch])
        except (Unavailable, SpoolFull) as failed:
            for _, waiting in batch:
                waiting.set_exception(failed)
            return
        if not self._spooling:  # one line per outage
            _log.warning(
                "database unreachable: audit records are kept in the spool %s until it returns",
                self._spool.path,
            )
            self._spooling = True
        for _, waiting in batch:
            waiting.set_result(None)

    async def _drain_spool(self) -> None:
        """Under `_writing`: the spool's records into the chain, a batch per transaction."""
        if self._spool is None or not self._spool.pending():
            return
        with self._spool.draining() as spooled:
            if spooled is None:
                return
            drained = await self._store.spool_drained_bytes(spooled.spool_id)
            left = entries_after(spooled, drained)
            ends = spooled.ends[len(spooled.ends) - len(left) :]
            for start in range(0, len(left), _MAX_BATCH):
                chunk = left[start : start + _MAX_BATCH]
                await self._store.append_spooled(
                    chunk,
                    spool_id=spooled.spool_id,
                    drained_bytes=ends[start + len(chunk) - 1],
                )
            self._spool.remove()
        self._spooling = False
        if left:
            _log.info(
                "wrote %d audit record(s) spooled while the database was down into the chain",
                len(left),
            )
