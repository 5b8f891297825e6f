"""Raising flags from the registry's linkage events (docs/linkage.md "Flags (sync)").

The engine reads the linkage events after its cursor, a chunk at a time, re-derives the flags
of every series those events name, and stores the ones in which this node's agency is involved:
a new id is raised (RAISED), a known id whose evidence changed is updated (EVIDENCE_CHANGED),
anything else is left alone, so re-emitted events (a rebuild) raise nothing twice. The flags,
their events and the cursor advance commit in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.core.clock import SYSTEM_CLOCK, Clock
from services.core.db.pool import Database
from services.sync.flags import store
from services.sync.flags.derive import DerivedFlag, decide, flags_of_link, new_material_flags
from services.sync.flags.reader import LINKAGE_EVENTS_CHANNEL, LinkageReader

_log = logging.getLogger(__name__)

# Linkage events consumed per transaction.
CHUNK_EVENTS = 500


@dataclass(frozen=True)
class EngineSettings:
    # This node's id: the agency whose flags are kept.
    node_id: str
    # NEW_MATERIAL needs at least this many linked media (or one exact link).
    min_linked_media: int = 3
    # Pause between polls once caught up, in the clock's seconds.
    poll_interval_s: float = 2.0


@dataclass(frozen=True)
class ChunkResult:
    events: int
    raised: int
    evidence_changed: int


class FlagEngine:
    def __init__(
        self,
        *,
        database: Database,
        reader: LinkageReader,
        settings: EngineSettings,
        clock: Clock = SYSTEM_CLOCK,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = database
        self._reader = reader
        self._settings = settings
        self._clock = clock
        self._now = now

    async def run(self) -> None:
        """Consume linkage events until cancelled; once caught up, wait for the linker's next
        commit (its notification) or `poll_interval_s`, whichever comes first. A failure (the
        database restarting) ends the run: run_engine starts it again."""
        _log.info("flag engine started for %s", self._settings.node_id)
        woken = asyncio.Event()

        def notified(*_: object) -> None:
            woken.set()

        async with self._db.connection() as listener:
            await listener.add_listener(LINKAGE_EVENTS_CHANNEL, notified)
            try:
                while True:
                    woken.clear()
                    result = await self.consume_chunk()
                    if result.events < CHUNK_EVENTS:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(
                                woken.wait(), self._clock.real_s(self._settings.poll_interval_s)
                            )
            finally:
                with contextlib.suppress(Exception):
                    await listener.remove_listener(LINKAGE_EVENTS_CHANNEL, notified)

    async def catch_up(self) -> ChunkResult:
        """Consume every linkage event held now (tests and the first start)."""
        total = ChunkResult(0, 0, 0)
        while True:
            result = await self.consume_chunk()
            total = ChunkResult(
                total.events + result.events,
                total.raised + result.raised,
                total.evidence_changed + result.evidence_changed,
            )
            if result.events < CHUNK_EVENTS:
                return total

    async def consume_chunk(self) -> ChunkResult:
        """One transaction: up to CHUNK_EVENTS linkage events, their flags, the cursor."""
        async with self._db.transaction() as conn:
            after = await store.linkage_cursor(conn)
            events = await self._reader.linkage_events_after(
                conn, after_id=after, limit=CHUNK_EVENTS
            )
            if not events:
                return ChunkResult(0, 0, 0)
            rows = sorted({e.series_row for e in events})
            derived = await self._derive(conn, rows)
            raised, changed = await self._store(conn, derived)
            await store.advance_linkage_cursor(conn, last_event_id=max(e.id for e in events))
        if raised or changed:
            _log.info("flags: %d raised, %d evidence changed", raised, changed)
        return ChunkResult(len(events), raised, changed)

    async def _derive(self, conn: Any, rows: list[int]) -> dict[str, DerivedFlag]:
        links = await self._reader.series_links_of(conn, series_rows=rows)
        involved = sorted(set(rows) | {r.row for link in links for r in (link.a, link.b)})
        victims = await self._reader.victim_summaries(conn, series_rows=involved)
        out: dict[str, DerivedFlag] = {}
        for link in links:
            for flag in flags_of_link(link, victims):
                out[flag.id] = flag
        refs = await self._reader.series_refs(conn, series_rows=rows)
        for row in rows:
            ref = refs.get(row)  # None: the series is gone
            if ref is None:
                continue
            by_origin = await self._reader.media_linked_to_series(conn, series_row=row)
            if not by_origin:
                continue
            flags = new_material_flags(
                ref,
                victims.get(row),
                by_origin,
                min_linked_media=self._settings.min_linked_media,
            )
            for flag in flags:
                out[flag.id] = flag
        return {i: f for i, f in out.items() if self._involves_us(f)}

    def _involves_us(self, flag: DerivedFlag) -> bool:
        me = self._settings.node_id
        return me in (flag.series.origin, flag.other_agency)

    async def _store(self, conn: Any, derived: dict[str, DerivedFlag]) -> tuple[int, int]:
        if not derived:
            return 0, 0
        at = self._now()
        await store.lock_events(conn)
        held = await store.stored_evidence(conn, flag_ids=sorted(derived))
        raised = changed = 0
        for flag_id in sorted(derived):
            flag = derived[flag_id]
            decision = decide(flag, held.get(flag_id))
            if decision.raise_new:
                await store.insert_flag(conn, flag=flag, at=at)
                await store.append_event(conn, flag_id=flag_id, kind=store.EventKind.RAISED, at=at)
                raised += 1
            elif decision.evidence_changed:
                await store.update_evidence(conn, flag=flag, at=at)
                await store.append_event(
                    conn, flag_id=flag_id, kind=store.EventKind.EVIDENCE_CHANGED, at=at
                )
                changed += 1
        return raised, changed


async def run_engine(engine: FlagEngine) -> None:
    """The background task of the sync service: the engine, restarted after a failure."""
    while True:
        try:
            await engine.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("flag engine failed; restarting in 10 s")
            await asyncio.sleep(10)
