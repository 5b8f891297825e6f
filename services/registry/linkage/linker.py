"""The node's linker: drains the linkage queues of registry migration 0009 in chunks, each one
transaction under the linker's advisory lock (docs/linkage.md "Incremental").

A chunk relinks each queued media from what is stored now (exact signals in SQL, PDQ through the
registry's index) and writes the links that differ; it recomputes the evidence of every pair of
the series whose media's links changed or that were queued themselves (membership, size,
victims), the clusters those pairs touch, and appends a `linkage_events` row for each series
whose linkage changed. Every step recomputes from stored state, never applies a delta, so a
rebuild (every media and series queued again) comes to the same links, pairs and clusters as the
incremental runs did and writes and appends only where something differs.

While a chunk's statements run, `drain` has the PDQ answers of the next chunk computed
(near.py): the index's threads and PostgreSQL then work at the same time, and what a chunk takes
from an answer computed ahead is checked against its own snapshot.

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

from services.core.algorithms import ALGORITHMS, Algorithm
from services.core.db.pool import Database
from services.registry.linkage import sql
from services.registry.linkage.evidence import LinkageSettings, MediaLink, PairEvidence, clusters
from services.registry.linkage.near import NearSearch
from services.registry.linkage.read import LINKAGE_EVENTS_CHANNEL
from services.registry.pdq_indexes import PdqIndexes

_log = logging.getLogger(__name__)

MAX_LINKS_PER_MEDIA = 1_000
DEFAULT_CHUNK = 2_000
DEFAULT_SETTLE_S = 1.0
# The share of the time a running linker spends on a backlog (a catch-up, a big submission).
BACKLOG_DUTY = 0.35
_PDQ_MIN_QUALITY = ALGORITHMS[Algorithm.PDQ].min_match_quality
_NO_DISTANCE = 1_000


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
            index, distance=self.settings.pdq_max_distance, limit=MAX_LINKS_PER_MEDIA + 1
        )

    async def drain_once(self, *, settle_s: float | None = None) -> DrainCounts:
        """One chunk: what it took from the queues and how many events it appended."""
        settle = self._settle_s if settle_s is None else settle_s
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", sql.LINKER_LOCK)
            # Planned on each chunk's arrays and the tables as they are now: a plan kept from
            # an empty node's first chunks scanned whole tables once the node had grown.
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
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
            changed = await self._relink_media(conn, media, rebuild_only) if media else set()
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
        """Relink every media from scratch (what `hashex linkage rebuild` runs)."""
        async with self._db.transaction() as conn:
            await conn.execute(sql.QUEUE_ALL_MEDIA)
            await conn.execute(sql.QUEUE_ALL_SERIES)
        return await self.drain(settle_s=0.0)

    async def _compute_ahead(self, settle_s: float | None) -> None:
        """PDQ answers for the queued media after the next `chunk`, for the chunk after."""
        settle = self._settle_s if settle_s is None else settle_s
        async with self._db.connection() as conn:
            rows = await conn.fetch(sql.PEEK_PDQ, settle, self._chunk, _PDQ_MIN_QUALITY)
        queries = [(r[0], bytes(r[1]), r[2] != self._node_id and r[3]) for r in rows]
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

    async def _relink_media(self, conn: Any, media: list[int], rebuild_only: set[int]) -> set[int]:
        """Replace the links of `media`; the series of every media whose links changed.

        A replicated media that only a rebuild queued is relinked to the other replicated
        media alone: its links to own media are the own media's to relink (they are rebuilt
        too), so each own-replicated pair is searched once, against the smaller index."""
        origins = {r[0]: r[1] for r in await conn.fetch(sql.LIVE_MEDIA, media)}
        halved = {m for m in rebuild_only if origins.get(m, self._node_id) != self._node_id}
        chunk = set(media)

        def in_scope(end: int, other_is_own: bool) -> bool:
            return end in chunk and not (end in halved and other_is_own)

        old = {
            (r[0], r[1]): (r[2], r[3])
            for r in await conn.fetch(sql.LINKS_OF, media, self._node_id)
            if in_scope(r[0], r[5]) or in_scope(r[1], r[4])
        }
        found, truncated = await self._candidates(conn, origins, halved, old)
        # Only what differs is written: a rebuild that finds what is stored writes nothing.
        gone = sorted(old.keys() - found.keys())
        if gone:
            await conn.execute(sql.DROP_LINKS, [k[0] for k in gone], [k[1] for k in gone])
        keys = sorted(k for k, v in found.items() if old.get(k) != v)
        if keys:
            await conn.execute(
                sql.INSERT_LINKS,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [found[k][0] for k in keys],
                [found[k][1] for k in keys],
            )
        await conn.execute(sql.SET_TRUNCATED, media, sorted(truncated))
        touched = {m for key in (*gone, *keys) for m in key}
        return await _series_of(conn, sorted(touched)) if touched else set()

    async def _candidates(
        self,
        conn: Any,
        origins: dict[int, str],
        halved: set[int],
        old: dict[tuple[int, int], tuple[bool, int | None]],
    ) -> tuple[dict[tuple[int, int], tuple[bool, int | None]], set[int]]:
        """The links of the live media `origins` (of `halved`, to replicated media only), at
        most MAX_LINKS_PER_MEDIA each."""
        live = sorted(origins)
        per_media: dict[int, dict[int, list[Any]]] = {m: {} for m in live}
        if not live:
            return {}, set()
        for r in await conn.fetch(sql.EXACT_CANDIDATES, live, MAX_LINKS_PER_MEDIA + 1):
            if r[0] in halved and r[2] == self._node_id:
                continue
            per_media[r[0]].setdefault(r[1], [False, None])[0] = True
        await self._near_links(conn, origins, halved, old, per_media)
        found: dict[tuple[int, int], tuple[bool, int | None]] = {}
        truncated: set[int] = set()
        for m, others in per_media.items():
            ranked = sorted(
                others.items(),
                key=lambda kv: (
                    not kv[1][0],
                    _NO_DISTANCE if kv[1][1] is None else kv[1][1],
                    kv[0],
                ),
            )
            if len(ranked) > MAX_LINKS_PER_MEDIA:
                truncated.add(m)
            for other, (exact, distance) in ranked[:MAX_LINKS_PER_MEDIA]:
                key = _pair(m, other)
                MediaLink(key[0], key[1], exact, distance)  # the link's own checks
                found[key] = _better(found.get(key), (exact, distance))
        return found, truncated

    async def _near_links(
        self,
        conn: Any,
        origins: dict[int, str],
        halved: set[int],
        old: dict[tuple[int, int], tuple[bool, int | None]],
        per_media: dict[int, dict[int, list[Any]]],
    ) -> None:
        rows = await conn.fetch(sql.MATCHABLE_PDQ, sorted(origins), _PDQ_MIN_QUALITY)
        if not rows:
            return
        # The own records' media only ever link to replicated ones; replicated ones to both,
        # or (halved) to replicated ones only.
        queries = [
            (r[0], bytes(r[1]), origins[r[0]] != self._node_id and r[0] not in halved) for r in rows
        ]
        answers, ahead = await self._near.answer(queries)
        hits: dict[tuple[int, int, bytes], int] = {}
        for query, found in zip(queries, answers, strict=True):
            for other, value, d in found:
                key = (query[0], other, value)
                hits[key] = min(d, hits.get(key, d))
        if hits:
            wanted = sorted({(h[1], h[2]) for h in hits})
            live = {
                (r[0], bytes(r[1])): r[2]
                for r in await conn.fetch(
                    sql.LIVE_PDQ_HITS,
                    [w[0] for w in wanted],
                    [w[1] for w in wanted],
                    _PDQ_MIN_QUALITY,
                )
            }
            for (m, other, value), d in hits.items():
                other_origin = live.get((other, value))
                if other_origin is None or other_origin == origins[m]:
                    continue
                slot = per_media[m].setdefault(other, [False, None])
                if slot[1] is None or d < slot[1]:
                    slot[1] = d
        if ahead:
            await self._keep_found_meanwhile(conn, origins, halved, old, rows, ahead, per_media)

    async def _keep_found_meanwhile(
        self,
        conn: Any,
        origins: dict[int, str],
        halved: set[int],
        old: dict[tuple[int, int], tuple[bool, int | None]],
        rows: list[Any],
        ahead: set[int],
        per_media: dict[int, dict[int, list[Any]]],
    ) -> None:
        """Stored PDQ links of media answered ahead that their answer lacks: linked from the
        other side meanwhile. Kept, at the distance of the stored values, while within range."""
        lacking = [
            (m, other)
            for low, high in (k for k, v in old.items() if v[1] is not None)
            for m, other in ((low, high), (high, low))
            if m in ahead and m in per_media and per_media[m].get(other, [False, None])[1] is None
        ]
        if not lacking:
            return
        values: dict[int, list[int]] = {}
        for r in rows:
            values.setdefault(r[0], []).append(int.from_bytes(r[1]))
        others: dict[int, tuple[str, list[int]]] = {}
        for r in await conn.fetch(
            sql.LIVE_PDQ_OF, sorted({o for _, o in lacking}), _PDQ_MIN_QUALITY
        ):
            others.setdefault(r[0], (r[2], []))[1].append(int.from_bytes(r[1]))
        limit = self.settings.pdq_max_distance
        for m, other in lacking:
            if other not in others or m not in values:
                continue
            other_origin, other_values = others[other]
            if other_origin == origins[m] or (m in halved and other_origin == self._node_id):
                continue
            d = min((a ^ b).bit_count() for a in values[m] for b in other_values)
            if d <= limit:
                slot = per_media[m].setdefault(other, [False, None])
                slot[1] = d if slot[1] is None else min(slot[1], d)

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


async def _series_of(conn: Any, media: Iterable[int]) -> set[int]:
    rows = list(media)
    if not rows:
        return set()
    return {r[0] for r in await conn.fetch(sql.SERIES_OF_MEDIA, rows)}


def _rank(candidate: tuple[int, list[Any]]) -> tuple[bool, int, int]:
    """Exact links first, then the closest PDQ, then the smaller row."""
    other, (exact, distance) = candidate
    return not exact, _NO_DISTANCE if distance is None else distance, other


def _pair(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _better(
    held: tuple[bool, int | None] | None, found: tuple[bool, int | None]
) -> tuple[bool, int | None]:
    """A pair seen from both of its media: exact if either saw it so, the closer distance."""
    if held is None:
        return found
    distances = [d for d in (held[1], found[1]) if d is not None]
    return held[0] or found[0], min(distances) if distances else None
