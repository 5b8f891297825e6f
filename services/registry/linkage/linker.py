"""The node's linker: drains the linkage queues of registry migrations 0009-0010 in chunks, each
one transaction under the linker's advisory lock (docs/linkage.md "Incremental").

A chunk relinks each queued media from what is stored now (relink.py: exact signals in SQL, PDQ
through the registry's index) and writes the links that differ; it recomputes the evidence of every
pair of the series whose media's links changed or that were queued themselves (membership, size,
victims), the clusters those pairs touch, and appends a `linkage_events` row for each series whose
linkage changed. Every step recomputes from stored state, never applies a delta, so a rebuild (every
media and series queued again) comes to the same links, pairs and clusters as the incremental runs
did and writes and appends only where something differs.

While a chunk's statements run, `drain` has the PDQ answers of the next chunk computed
(near.py), so that the index's search can overlap PostgreSQL's work (as far as the search lets
go of the GIL), and what a chunk takes from an answer computed ahead is checked against its own
snapshot.

Bounded: a chunk takes at most `chunk` media; each media keeps at most MAX_LINKS_PER_MEDIA links,
exact first, then the closest PDQ (past that it is marked truncated and its series' evidence is a
lower bound). Queued rows wait `settle_s` so that the PDQ index (updated just after each commit)
holds every value committed before them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.core.db.pool import Database
from services.registry.linkage import sql
from services.registry.linkage.evidence import LinkageSettings, PairEvidence, clusters
from services.registry.linkage.near import NearSearch, scope_of
from services.registry.linkage.origin_indexes import OriginIndexes
from services.registry.linkage.read import LINKAGE_EVENTS_CHANNEL
from services.registry.linkage.relink import MAX_LINKS_PER_MEDIA, PDQ_MIN_QUALITY, MediaRelinker
from services.registry.pdq_indexes import PdqIndexes

_log = logging.getLogger(__name__)

DEFAULT_CHUNK = 2_000
DEFAULT_SETTLE_S = 1.0
# The share of the time a running linker spends on a backlog (a catch-up, a big submission).
BACKLOG_DUTY = 0.35


@dataclass(frozen=True)
class DrainCounts:
    media: int
    series: int
    events: int


class Linker:
    def __init__(
        self,
        *,
        database: Database,
        index: PdqIndexes,
        node_id: str,
        settings: LinkageSettings | None = None,
        chunk: int = DEFAULT_CHUNK,
        settle_s: float = DEFAULT_SETTLE_S,
    ) -> None:
        self._db = database
        self._index = index
        self._node_id = node_id
        self.settings = settings or LinkageSettings()
        self._chunk = chunk
        self._settle_s = settle_s
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._near = NearSearch(
            index,
            node_id=node_id,
            distance=self.settings.pdq_max_distance,
            limit=MAX_LINKS_PER_MEDIA + 1,
        )
        self._relinker = MediaRelinker(near=self._near, node_id=node_id, settings=self.settings)

    async def drain_once(self, *, settle_s: float | None = None) -> DrainCounts:
        """One chunk: what it took from the queues and how many events it appended."""
        settle = self._settle_s if settle_s is None else settle_s
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", sql.LINKER_LOCK)
            await _plan_for_lookups(conn)
            taken_media = await conn.fetch(sql.TAKE_MEDIA, settle, self._chunk)
            media = sorted(r[0] for r in taken_media)
            taken = await conn.fetch(sql.TAKE_SERIES, settle, self._chunk)
            queued_series = {r[0] for r in taken}
            if not media and not queued_series:
                return DrainCounts(0, 0, 0)
            # Pairs are recomputed where their inputs changed: the links of a media, or a
            # series' membership, size or victims (which queue the series; a rebuild queues
            # every series, announced only where its pairs or cluster differ).
            rebuild_only = {r[0] for r in taken_media if not r[1]}
            touched = await self._relinker.relink(conn, media, rebuild_only) if media else set()
            changed = await _series_of(conn, sorted(touched)) if touched else set()
            changed |= {r[0] for r in taken if r[1]}
            changed |= await self._recompute_pairs(conn, changed | queued_series)
            events = sorted(changed)
            if events:
                await conn.execute(sql.APPEND_EVENTS, events)
                await conn.execute("SELECT pg_notify($1, '')", LINKAGE_EVENTS_CHANNEL)
        return DrainCounts(len(media), len(queued_series), len(events))

    async def drain(self, *, settle_s: float | None = None, duty: float = 1.0) -> DrainCounts:
        """Chunks until the queues hold nothing ready. `duty` < 1: after each full chunk, pause
        so that linking takes at most that share of the time while a backlog lasts (records
        streaming in from a peer's catch-up are applied first, linked soon after)."""
        total = DrainCounts(0, 0, 0)
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            # The next chunk's PDQ answers are computed while this chunk's statements run.
            ahead = asyncio.create_task(self._compute_ahead(settle_s))
            try:
                done = await self.drain_once(settle_s=settle_s)
                if done.media:
                    await ahead
            finally:
                if not ahead.done():
                    ahead.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ahead
            if not done.media and not done.series:
                self._near.forget()
                return total
            self._near.advance()
            if duty < 1.0 and max(done.media, done.series) >= self._chunk:
                await asyncio.sleep((loop.time() - started) * (1.0 / duty - 1.0))
            total = DrainCounts(
                total.media + done.media, total.series + done.series, total.events + done.events
            )

    async def rebuild(self) -> DrainCounts:
        """Relink every media from scratch (what `hashex linkage rebuild` runs). The replicated
        media are searched in per-origin indexes read after queueing (origin_indexes.py)."""
        async with self._db.transaction() as conn:
            await conn.execute(sql.QUEUE_ALL_MEDIA)
            await conn.execute(sql.QUEUE_ALL_SERIES)
        async with self._db.connection() as conn:
            rows = await OriginIndexes.read(
                conn, node_id=self._node_id, min_quality=PDQ_MIN_QUALITY
            )
        self._near.use_origin_indexes(await asyncio.to_thread(OriginIndexes.build, rows))
        del rows
        try:
            return await self.drain(settle_s=0.0)
        finally:
            self._near.use_origin_indexes(None)

    async def _compute_ahead(self, settle_s: float | None) -> None:
        """PDQ answers for the queued media after the next `chunk`, for the chunk after."""
        settle = self._settle_s if settle_s is None else settle_s
        async with self._db.transaction() as conn:
            await _plan_for_lookups(conn)
            rows = await conn.fetch(sql.PEEK_PDQ, settle, self._chunk, PDQ_MIN_QUALITY)
        node = self._node_id
        queries = [(r[0], bytes(r[1]), scope_of(r[2], changed=r[3], node_id=node)) for r in rows]
        if queries:
            await self._near.compute_ahead(queries)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self, *, poll_s: float = 5.0) -> None:
        """Drain at start, then whenever woken (NOTIFY at commit of a queue's writer) or every
        `poll_s`; failures (the database restarting) are logged and retried."""
        while not self._stop.is_set():
            try:
                async with self._db.connection() as listener:
                    await listener.add_listener("hashex_linkage", self._on_notify)
                    try:
                        await self._follow(poll_s)
                    finally:
                        await listener.remove_listener("hashex_linkage", self._on_notify)
            except Exception:
                _log.exception("linker failed; retrying in %.0f s", poll_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), poll_s)

    async def _follow(self, poll_s: float) -> None:
        while not self._stop.is_set():
            await self.drain(duty=BACKLOG_DUTY)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll_s)
            if not self._stop.is_set():
                await asyncio.sleep(self._settle_s)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _recompute_pairs(self, conn: Any, series: set[int]) -> set[int]:
        """Recompute every pair of `series` and the clusters they touch; the series whose
        pairs or cluster changed."""
        if not series:
            return set()
        wanted = sorted(series)
        old = {(r[0], r[1]): tuple(r[2:]) for r in await conn.fetch(sql.PAIRS_OF, wanted)}
        sides: dict[tuple[int, int], PairEvidence] = {}
        for r in await conn.fetch(sql.PAIR_EVIDENCE, wanted):
            s, t = r["s"], r["t"]
            if s < t:
                sides[(s, t)] = PairEvidence(
                    s, t, r["linked_s"], r["linked_t"], r["exact_s"], r["exact_t"], r["closest"]
                )
            else:
                sides[(t, s)] = PairEvidence(
                    t, s, r["linked_t"], r["linked_s"], r["exact_t"], r["exact_s"], r["closest"]
                )
        rows_of_pairs = sorted({row for key in sides for row in key})
        sizes = {r[0]: r[1] for r in await conn.fetch(sql.SERIES_SIZES, rows_of_pairs)}
        new: dict[tuple[int, int], tuple[Any, ...]] = {}
        for key, ev in sides.items():
            linked = ev.passes(sizes.get(key[0], 0), sizes.get(key[1], 0), self.settings)
            new[key] = (
                linked,
                ev.linked_low,
                ev.linked_high,
                ev.exact_low,
                ev.exact_high,
                ev.closest_distance,
            )
        await conn.execute(sql.DROP_PAIRS_OF, wanted)
        if new:
            keys = sorted(new)
            columns = list(zip(*(new[k] for k in keys), strict=True))
            await conn.execute(
                sql.INSERT_PAIRS, [k[0] for k in keys], [k[1] for k in keys], *map(list, columns)
            )
        changed = {row for key in old.keys() ^ new.keys() for row in key}
        changed |= {row for key in old.keys() & new.keys() if old[key] != new[key] for row in key}
        return changed | await self._recluster(conn, series | changed)

    async def _recluster(self, conn: Any, seeds: set[int]) -> set[int]:
        """Recompute the clusters of `seeds` and of everything they were or are connected to;
        the series whose cluster changed."""
        members = {r[0] for r in await conn.fetch(sql.CLUSTER_MEMBERS, sorted(seeds))}
        seen = set(seeds) | members
        frontier = set(seen)
        pairs: set[tuple[int, int]] = set()
        while frontier:
            found = await conn.fetch(sql.LINKED_NEIGHBOURS, sorted(frontier))
            pairs |= {(r[0], r[1]) for r in found}
            reached = {row for r in found for row in r} - seen
            seen |= reached
            frontier = reached
        existing = {r[0] for r in await conn.fetch(sql.EXISTING_SERIES, sorted(seen))}
        new = {s: c for s, c in clusters(pairs).items() if s in existing}
        visited = sorted(seen)
        old = {r[0]: r[1] for r in await conn.fetch(sql.CLUSTERS_OF, visited)}
        if old == new:
            return set()
        await conn.execute(sql.DROP_CLUSTERS_OF, visited)
        if new:
            rows = sorted(new)
            await conn.execute(sql.INSERT_CLUSTERS, rows, [new[r] for r in rows])
        return {s for s in old.keys() | new.keys() if old.get(s) != new.get(s)} & existing


async def _plan_for_lookups(conn: Any) -> None:
    """Plan a chunk's statements (in `conn`'s transaction) for what they are: a few thousand
    index lookups into tables held in memory. A plan kept from an empty node's first chunks
    scanned whole tables once the node had grown, hence a custom plan each time. With the
    default random_page_cost (4, a disk seek), joins of a chunk's 2,000 rows to `media` were
    planned as scans of all of it, growing with the node: at 450k media, LINKS_OF took 65 ms
    instead of 3, EXACT_CANDIDATES 37 instead of 10, PEEK_PDQ 53 instead of 6."""
    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
    await conn.execute("SET LOCAL random_page_cost = 1.1")


async def _series_of(conn: Any, media: Iterable[int]) -> set[int]:
    rows = list(media)
    if not rows:
        return set()
    return {r[0] for r in await conn.fetch(sql.SERIES_OF_MEDIA, rows)}
