"""The registry's application logic: submit, look up, retract, series and victims.

Keeps the PDQ index in step with the database: entries are added after their batch commits and
removed after their retraction commits, so a lookup never sees an uncommitted record. Writes are
serialised (database commit, then index change, under one lock) so that the index applies them in
commit order: a retraction and a resubmission of the same media cannot swap. Index changes run in
a worker thread because a merge can take seconds at tens of millions of hashes; lookups never
wait for them. No gRPC and no SQL here: the database (for transactions), the store (the
statements) and the index arrive through the constructor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial

from services.core.algorithms import SignalValue
from services.core.db.pool import Database
from services.registry.lookup import (
    NearHit,
    Queries,
    assemble_results,
    check_near_budget,
    distinct_queries,
    fetch_bounded,
    positions_of,
)
from services.registry.model import (
    NODE_OPERATOR,
    IdentificationStatus,
    LookupResult,
    MediaChange,
    MediaChanged,
    MediaRecord,
    MediaSubmission,
    NodeStats,
    PdqEntry,
    RetractCounts,
    SeriesRecord,
    SubmitCounts,
    VictimRecord,
    Writer,
)
from services.registry.pdq_indexes import PdqIndexes
from services.registry.store import RegistryStore

_log = logging.getLogger(__name__)

# Near-match batches larger than this run in a worker thread so the event loop keeps serving.
_NEAR_QUERIES_INLINE = 32


class Registry:
    def __init__(
        self, *, database: Database, store: RegistryStore, index: PdqIndexes, node_id: str
    ) -> None:
        self._db = database
        self._store = store
        self._index = index
        self.node_id = node_id
        self.started_at = datetime.now(UTC)
        self._writes = asyncio.Lock()
        # The database's time just before the index was loaded: what a replica follower
        # (services/registry/replica_follower.py) starts from.
        self.index_loaded_as_of: datetime | None = None

    @property
    def store(self) -> RegistryStore:
        """The registry's statements, for a caller that runs them in its own transaction (sync
        applying replicated records)."""
        return self._store

    @property
    def database(self) -> Database:
        """The registry's database, for readers beside it (dedup reports)."""
        return self._db

    @property
    def index(self) -> PdqIndexes:
        """The PDQ index, for the linker's near pairs (reads only)."""
        return self._index

    async def load_index(self) -> int:
        """Fill the PDQ index from the database (at start) with one build; returns the count."""
        loaders = self._index.loaders()
        loaded = 0
        async with self._db.transaction(readonly=True, isolation="repeatable_read") as conn:
            self.index_loaded_as_of = await self._store.database_now(conn)
            async for parts in self._store.pdq_entries(conn):
                for loader, entries in zip(loaders, parts, strict=True):
                    loader.add([e.row_id for e in entries], [e.value for e in entries])
                    loaded += len(entries)
        for loader in loaders:
            await asyncio.to_thread(loader.commit)
        _log.info("PDQ index loaded: %d hashes", loaded)
        return loaded

    async def submit_batch(
        self, batch: Sequence[MediaSubmission], *, writer: Writer = NODE_OPERATOR
    ) -> SubmitCounts:
        async with self._writes:
            async with self._db.transaction() as conn:
                counts, entries = await self._store.submit_media_batch(
                    conn, batch=batch, writer=writer
                )
            if entries:
                rows, values = [e.row_id for e in entries], [e.value for e in entries]
                await asyncio.to_thread(self._index.own.add, rows, values)
        return counts

    async def retract(
        self, media_ids: Sequence[str], *, writer: Writer = NODE_OPERATOR
    ) -> RetractCounts:
        async with self._writes:
            async with self._db.transaction() as conn:
                counts = await self._store.retract_media(conn, media_ids=media_ids, writer=writer)
            if counts.retracted_row_ids:
                await asyncio.to_thread(self._index.own.remove_rows, counts.retracted_row_ids)
        return counts

    async def update_media(
        self, media_ids: Sequence[str], change: MediaChange, *, writer: Writer = NODE_OPERATOR
    ) -> MediaChanged:
        """An explicit change of media of this node; restored media match again at once."""
        async with self._writes:
            async with self._db.transaction() as conn:
                outcome, restored = await self._store.update_media(
                    conn, media_ids=media_ids, change=change, writer=writer
                )
            if restored:
                rows, values = [e.row_id for e in restored], [e.value for e in restored]
                await asyncio.to_thread(self._index.own.add, rows, values)
        return outcome

    async def index_replicated(
        self, *, added: Sequence[PdqEntry], removed_rows: Sequence[int]
    ) -> None:
        """Bring the PDQ index in step with records of other origins that the sync service has
        just committed: drop retracted rows, add newly matchable hashes. Local writes never touch
        those rows, so this need not wait for them; the sync service calls it once per applied
        batch, in commit order."""
        if removed_rows:
            await asyncio.to_thread(self._index.replicated.remove_rows, list(removed_rows))
        if added:
            rows, values = [e.row_id for e in added], [e.value for e in added]
            await asyncio.to_thread(self._index.replicated.add, rows, values)

    async def index_replicated_since(self, since: datetime) -> tuple[int, int, datetime | None]:
        """Index records of other origins changed at or after `since` by a sync service in
        another process: hashes added, rows dropped, and the latest change time seen."""
        async with self._db.transaction(readonly=True, isolation="repeatable_read") as conn:
            added, removed, latest = await self._store.replicated_changes(conn, since=since)
        await self.index_replicated(added=added, removed_rows=removed)
        return len(added), len(removed), latest

    async def database_now(self) -> datetime:
        async with self._db.connection() as conn:
            return await self._store.database_now(conn)

    async def lookup(
        self,
        signals: Sequence[SignalValue],
        *,
        max_distance: int,
        max_matches: int,
        origin: str | None = None,
    ) -> list[LookupResult]:
        """Matches among every stored record, or only among `origin`'s (a peer's live lookup
        may see this node's own records only; that choice is made before the match limit),
        within the bounds of services.registry.lookup."""
        exact = distinct_queries(signals, lambda s: s.matchable())
        near = distinct_queries(signals, lambda s: s.usable_for_near_match())
        own_only = origin == self.node_id
        cost = self._index.query_cost(max_distance, own_only=own_only)
        check_near_budget(len(near.values), cost, max_distance)
        near_hits, near_cut = await fetch_bounded(
            len(near.values),
            max_matches,
            lambda numbers, limit: self._near_hits(near, numbers, max_distance, limit, own_only),
        )
        async with self._db.connection() as conn:

            async def exact_rows(numbers: Sequence[int], limit: int) -> list[list[int]]:
                asked = [exact.values[n] for n in numbers]
                return await self._store.exact_hits(
                    conn, signals=asked, limit_per_signal=limit, origin=origin
                )

            rows_per_query, exact_cut = await fetch_bounded(
                len(exact.values), max_matches, exact_rows
            )
            rows = sorted(
                {row for per_query in rows_per_query for row in per_query}
                | {hit.row_id for per_query in near_hits for hit in per_query}
            )
            media = await self._store.media_records(conn, row_ids=rows) if rows else {}
            if origin is not None:
                media = {row: record for row, record in media.items() if record.origin == origin}
            series = await self._store.series_for_media(conn, row_ids=sorted(media))
        return assemble_results(
            signals,
            exact=exact,
            exact_rows=rows_per_query,
            near=near,
            near_hits=near_hits,
            cut=positions_of(exact, exact_cut) | positions_of(near, near_cut),
            media=media,
            series=series,
            max_matches=max_matches,
        )

    async def _near_hits(
        self,
        near: Queries,
        numbers: Sequence[int],
        max_distance: int,
        limit: int,
        own_only: bool,
    ) -> list[list[NearHit]]:
        """The nearest `limit` stored PDQ hashes of each of these distinct queries (among this
        node's own records only when `own_only`)."""
        values = [near.values[n].value for n in numbers]
        if not values:
            return []
        search = partial(
            self._index.query_many, values, max_distance, limit=limit, own_only=own_only
        )
        if len(values) > _NEAR_QUERIES_INLINE:
            found = await asyncio.to_thread(search)
        else:
            found = search()
        return [[NearHit(h.row_id, h.value, h.distance) for h in hits] for hits in found]

    async def upsert_series(self, *, series_id: str, name: str | None) -> tuple[SeriesRecord, bool]:
        async with self._db.transaction() as conn:
            return await self._store.upsert_series(conn, series_id=series_id, name=name)

    async def get_series(self, *, origin: str, series_id: str) -> SeriesRecord:
        async with self._db.connection() as conn:
            return await self._store.get_series(
                conn, origin=origin or self.node_id, series_id=series_id
            )

    async def update_victim(
        self,
        *,
        series_id: str,
        victim_id: str,
        status: IdentificationStatus | None,
        responsible_desk: str | None,
    ) -> tuple[VictimRecord, bool]:
        async with self._db.transaction() as conn:
            return await self._store.update_victim(
                conn,
                series_id=series_id,
                victim_id=victim_id,
                status=status,
                responsible_desk=responsible_desk,
            )

    async def export_page(
        self, *, after_media_id: str, limit: int
    ) -> tuple[list[MediaRecord], dict[str, str]]:
        """A page of this node's own media for export (services.registry.store.export_page)."""
        async with self._db.transaction(readonly=True) as conn:
            return await self._store.export_page(conn, after_media_id=after_media_id, limit=limit)

    async def stats(self) -> NodeStats:
        async with self._db.transaction(readonly=True, isolation="repeatable_read") as conn:
            counts = await self._store.stats(conn)
            version = await self._store.schema_version(conn)
        return NodeStats(
            node_id=self.node_id,
            media_count=counts.media_count,
            retracted_count=counts.retracted_count,
            signal_counts=counts.signal_counts,
            series_count=counts.series_count,
            victim_counts=counts.victim_counts,
            pdq_index_size=len(self._index),
            schema_version=version,
            started_at=self.started_at,
        )
