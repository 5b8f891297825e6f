"""The registry's named transactions (their SQL text is in store_sql.py and, for replicated
records, store_replicated.py), returning model dataclasses. The only writer of the registry's
tables: media, signals, series, media_series, victims, case_records.

Every operation runs on a connection the caller passes in, inside the caller's transaction
(services.core.db.pool.Database.transaction), so that a caller needing several owners' writes in
one transaction — sync applying a peer's batch and advancing its cursor — owns it. Local writes
(origin = this node) also append their change-log entries through the core change log on the
same connection. A batch of 1,000 media costs about a dozen round trips: what is new goes in with
COPY, what extends a held media through set-based statements (services.registry.store_submit).

What a resubmission means: signals accumulate (a hash once seen stays true, and keeps the quality
it was first stored with, so the matchable set only grows); type, category, flags and series are
stated in full by each submission and replace the stored ones; case data accumulates, one record
per distinct case, and is not a change of the media record (peers never see it).

Every change of a record also appends its full new state to the change log in the same
transaction (services.registry.change_entries); a write that changes nothing appends nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from services.core.algorithms import SignalValue
from services.core.changelog import store as changelog
from services.core.changelog.store import append_entries, lock_change_log
from services.core.db.migrations import schema_version
from services.core.errors import FailedPrecondition, FieldProblem, InvalidArgument, NotFound
from services.core.node_claim import store as node_claim
from services.registry import change_entries
from services.registry import store_sql as sql
from services.registry.cases import CaseSealer
from services.registry.contract import MAX_VICTIMS_PER_SERIES, merge_problems
from services.registry.linkage import read as linkage_read
from services.registry.model import (
    NODE_OPERATOR,
    IdentificationStatus,
    MediaChange,
    MediaChanged,
    MediaRecord,
    MediaSubmission,
    PdqEntry,
    RetractCounts,
    SeriesRecord,
    SubmitCounts,
    VictimRecord,
    Writer,
)
from services.registry.replicated import ReplicatedApplied, ReplicatedChange
from services.registry.store_owners import check_may_change, remember_submitter
from services.registry.store_replicated import apply_replicated, begin_resync, sweep_unconfirmed
from services.registry.store_rows import (
    PDQ_MIN_QUALITY,
    FoldedBatch,
    fold_batch,
    group_series,
    matchable_entries,
    media_record,
    victim_record,
)
from services.registry.store_submit import write_batch

COMPONENT = "registry"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# What the registry's statements need, in the order they apply: which node the database belongs
# to, its own tables, then the change log it appends to (whose table the registry's own early
# migrations created).
MIGRATIONS: tuple[tuple[str, Path], ...] = (
    (node_claim.COMPONENT, node_claim.MIGRATIONS_DIR),
    (COMPONENT, MIGRATIONS_DIR),
    (changelog.COMPONENT, changelog.MIGRATIONS_DIR),
)


@dataclass(frozen=True)
class StoreStats:
    """What the database knows for GetStats (the caller adds node id, index size, start time)."""

    media_count: int
    retracted_count: int
    signal_counts: dict[int, int]
    series_count: int
    victim_counts: dict[IdentificationStatus, int]


class RegistryStore:
    """The registry's named operations, each on the caller's connection; writes of local records
    are always this node's (origin = node id)."""

    def __init__(self, *, node_id: str, sealer: CaseSealer | None = None) -> None:
        """`sealer`: the node's case key, needed to store case data with local submissions
        (a store that only applies replicated records, in the sync service, goes without)."""
        self._origin = node_id
        self._sealer = sealer

    async def submit_media_batch(
        self, conn: Any, *, batch: Sequence[MediaSubmission], writer: Writer = NODE_OPERATOR
    ) -> tuple[SubmitCounts, list[PdqEntry]]:
        """Merge a batch of this node's media into what is stored; return the counts and the PDQ
        entries that became matchable. Nothing a submission leaves out is erased: signals and
        series are added, type and category set where given, flags set where given true. A
        retracted media is left as it is and counted. InvalidArgument, naming `media[i]`, when
        the batch would take a stored media past the contract's limits (nothing is stored).
        A media id repeated in the batch counts as successive submissions. PermissionDenied when
        the batch changes media submitted by another unit than `writer`'s (and it may not)."""
        if not batch:
            return SubmitCounts(), []
        folded = fold_batch(batch)
        await lock_change_log(conn)
        held_rows = await conn.fetch(sql.HELD_MEDIA, self._origin, list(folded.media))
        await check_may_change(
            conn, origin=self._origin, media_ids=[r["media_id"] for r in held_rows], writer=writer
        )
        before = {r["media_id"]: media_record(r) for r in held_rows}
        retracted = {r["media_id"] for r in held_rows if r["retracted"]}
        _check_merged_limits(folded, before, retracted)
        live = [m for media_id, m in folded.media.items() if media_id not in retracted]
        created: set[int] = set()
        changed: set[int] = set()
        entries: list[PdqEntry] = []
        if live:
            created, changed, entries = await self._merge(conn, live, folded, before)
            await remember_submitter(conn, media_rows=sorted(created), writer=writer)
        counts = SubmitCounts(
            received=len(batch),
            created=len(created),
            updated=len(changed - created),
            retracted=sum(folded.occurrences[media_id] for media_id in retracted),
        )
        unchanged = counts.received - counts.created - counts.updated - counts.retracted
        return replace(counts, unchanged=unchanged), entries

    async def _merge(
        self,
        conn: Any,
        media: Sequence[MediaSubmission],
        folded: FoldedBatch,
        before: dict[str, MediaRecord],
    ) -> tuple[set[int], set[int], list[PdqEntry]]:
        """Store and log `media` (none retracted): the rows created, the rows created or
        changed, and the newly matchable PDQ (services.registry.store_submit)."""
        written = await write_batch(
            conn,
            origin=self._origin,
            sealer=self._sealer,
            media=media,
            folded=folded,
            before=before,
        )
        return written.created, written.changed, written.entries

    async def update_media(
        self,
        conn: Any,
        *,
        media_ids: Sequence[str],
        change: MediaChange,
        writer: Writer = NODE_OPERATOR,
    ) -> tuple[MediaChanged, list[PdqEntry]]:
        """Apply an explicit change to media of this node, all or none: NotFound names ids not
        held, FailedPrecondition retracted media changed without `restore`. Returns what
        changed and the PDQ entries of restored media (they match again)."""
        await lock_change_log(conn)
        rows = await conn.fetch(sql.HELD_MEDIA, self._origin, list(media_ids))
        before = {r["media_id"]: media_record(r) for r in rows}
        if missing := [m for m in media_ids if m not in before]:
            raise NotFound(f"no media {_listed(missing)} on this node")
        await check_may_change(conn, origin=self._origin, media_ids=media_ids, writer=writer)
        retracted = [r for r in rows if r["retracted"]]
        if retracted and not change.restore:
            raise FailedPrecondition(
                f"media {_listed([r['media_id'] for r in retracted])} retracted: restore them "
                "first (`restore` in the request, `hashex media restore`)"
            )
        row_ids = [r["id"] for r in rows]
        touched: set[int] = set()
        restored: list[int] = []
        if retracted:
            restored = [
                r["id"] for r in await conn.fetch(sql.RESTORE_MEDIA, [r["id"] for r in retracted])
            ]
            touched.update(restored)
        if (
            change.set_category
            or change.media_type is not None
            or change.flags_on
            or change.flags_off
        ):
            category = change.category if change.set_category else None
            updated = await conn.fetch(
                sql.UPDATE_MEDIA,
                row_ids,
                int(change.media_type) if change.media_type is not None else None,
                change.set_category,
                int(category.scheme) if category else None,
                category.code if category else None,
                change.flags_on,
                change.flags_off,
            )
            touched.update(r["id"] for r in updated)
        if change.leave_series:
            left = await conn.fetch(
                sql.LEAVE_SERIES, row_ids, self._origin, list(change.leave_series)
            )
            if only_left := sorted({r["media_row"] for r in left} - touched):
                await conn.execute(sql.TOUCH_MEDIA, only_left)
            touched.update(r["media_row"] for r in left)
        states = {r.media_id: r for r in await _media_states(conn, row_ids)}
        await append_entries(
            conn,
            change_entries.media_changes(
                [r for r in states.values() if r.row_id in touched], before
            ),
        )
        matchable = (
            await conn.fetch(sql.MATCHABLE_PDQ_OF, restored, PDQ_MIN_QUALITY) if restored else []
        )
        outcome = MediaChanged(
            changed=len(touched),
            unchanged=len(row_ids) - len(touched),
            media=tuple(states[m] for m in media_ids),
        )
        return outcome, matchable_entries([], matchable)

    async def exact_hits(
        self,
        conn: Any,
        *,
        signals: Sequence[SignalValue],
        limit_per_signal: int | None = None,
        origin: str | None = None,
    ) -> list[list[int]]:
        """Per signal, the rows of stored media holding it (not retracted; a stored PDQ hash of
        too low a quality never matches), at most `limit_per_signal` each, of `origin` only
        when given."""
        found: list[list[int]] = [[] for _ in signals]
        if not signals:
            return found
        rows = await conn.fetch(
            sql.EXACT_HITS,
            [int(s.algorithm) for s in signals],
            [s.value for s in signals],
            limit_per_signal,
            PDQ_MIN_QUALITY,
            origin,
        )
        for r in rows:
            found[r["query_index"]].append(r["media_row"])
        return found

    async def media_records(self, conn: Any, *, row_ids: Sequence[int]) -> dict[int, MediaRecord]:
        """The media with these row ids, with all their signals and series ids, in one query.
        Retracted media are left out (a retraction may commit between a hit and this read)."""
        if not row_ids:
            return {}
        rows = await conn.fetch(sql.MEDIA_RECORDS, list(row_ids))
        return {r["id"]: media_record(r) for r in rows}

    async def series_for_media(
        self, conn: Any, *, row_ids: Sequence[int]
    ) -> dict[int, tuple[SeriesRecord, ...]]:
        """The series of each media (with victims and media counts), in one query; media without
        series are left out."""
        if not row_ids:
            return {}
        rows = await conn.fetch(sql.SERIES_ROWS, list(row_ids), None, None)
        return group_series(rows)

    async def retract_media(
        self, conn: Any, *, media_ids: Sequence[str], writer: Writer = NODE_OPERATOR
    ) -> RetractCounts:
        """Withdraw media of this node. Each id given counts once: retracted, already retracted
        (media of this node; a repeated id too), or not found (not media of this node).
        PermissionDenied (nothing retracted) for media another unit submitted."""
        if not media_ids:
            return RetractCounts(retracted=0, not_found=0)
        await lock_change_log(conn)
        await check_may_change(conn, origin=self._origin, media_ids=media_ids, writer=writer)
        rows = await conn.fetch(sql.RETRACT_MEDIA, self._origin, list(media_ids))
        row_ids = tuple(sorted(r["id"] for r in rows))
        retracted = await _media_states(conn, row_ids)
        await append_entries(conn, change_entries.retractions(retracted))
        known_rows = await conn.fetch(sql.KNOWN_MEDIA_IDS, self._origin, sorted(set(media_ids)))
        known = {r["media_id"] for r in known_rows}
        not_found = sum(1 for media_id in media_ids if media_id not in known)
        return RetractCounts(
            retracted=len(row_ids),
            not_found=not_found,
            already_retracted=len(media_ids) - len(row_ids) - not_found,
            retracted_row_ids=row_ids,
        )

    async def pdq_entries(
        self, conn: Any, *, batch_rows: int = 100_000
    ) -> AsyncIterator[tuple[list[PdqEntry], list[PdqEntry]]]:
        """Every matchable PDQ hash, this node's own and replicated ones apart, streamed through
        a server-side cursor so that loading the index at start never holds the whole table in
        memory. The caller's transaction (one repeatable-read snapshot) is the cursor's."""
        cursor = await conn.cursor(sql.MATCHABLE_PDQ, PDQ_MIN_QUALITY, self._origin)
        while rows := await cursor.fetch(batch_rows):
            own: list[PdqEntry] = []
            replicated: list[PdqEntry] = []
            for r in rows:
                (own if r["own"] else replicated).append(
                    PdqEntry(r["media_row"], bytes(r["value"]))
                )
            yield own, replicated

    async def upsert_series(
        self, conn: Any, *, series_id: str, name: str | None
    ) -> tuple[SeriesRecord, bool]:
        """Create a series of this node or rename it (`name` None keeps the current name, a new
        series starting unnamed); True when it was created."""
        await lock_change_log(conn)
        row = await conn.fetchrow(sql.UPSERT_SERIES, self._origin, series_id, name)
        record = await _read_series(conn, origin=self._origin, series_id=series_id)
        if row["changed"]:
            await append_entries(conn, [change_entries.series_change(record)])
        return record, bool(row["created"])

    async def get_series(self, conn: Any, *, origin: str, series_id: str) -> SeriesRecord:
        return await _read_series(conn, origin=origin, series_id=series_id)

    async def update_victim(
        self,
        conn: Any,
        *,
        series_id: str,
        victim_id: str,
        status: IdentificationStatus | None,
        responsible_desk: str | None,
    ) -> tuple[VictimRecord, bool]:
        """Create or change a victim of a series of this node; None keeps a field as it is (a
        new victim needs a status, and starts without a desk). A change also marks the series
        updated, since peers see victims through it."""
        await lock_change_log(conn)
        found = await conn.fetchrow(sql.VICTIM_OF_SERIES, self._origin, series_id, victim_id)
        if found is None:
            raise NotFound(f"series {series_id!r} does not exist on this node")
        if found["victim_id"] is not None:
            status_number = int(status) if status is not None else None
            args = (found["series_row"], victim_id, status_number, responsible_desk)
            row = await conn.fetchrow(sql.UPDATE_VICTIM, *args)
        else:
            if status is None:
                raise InvalidArgument(
                    FieldProblem("status", f"required to create victim {victim_id!r}")
                )
            if found["victims"] >= MAX_VICTIMS_PER_SERIES:
                raise InvalidArgument(
                    FieldProblem(
                        "victim_id",
                        f"series {series_id!r} already has {found['victims']} victims, the limit",
                    )
                )
            args = (found["series_row"], victim_id, int(status), responsible_desk or "")
            row = await conn.fetchrow(sql.INSERT_VICTIM, *args)
        if row["changed"]:
            await conn.execute(sql.TOUCH_SERIES, row["series_row"])
            record = await _read_series(conn, origin=self._origin, series_id=series_id)
            await append_entries(conn, [change_entries.series_change(record)])
        return victim_record(row), bool(row["created"])

    async def stats(self, conn: Any) -> StoreStats:
        """Counts; run it in one repeatable-read transaction so they agree with each other."""
        totals = await conn.fetchrow(sql.COUNT_TOTALS)
        signal_rows = await conn.fetch(sql.COUNT_SIGNALS)
        victim_rows = await conn.fetch(sql.COUNT_VICTIMS)
        victims = dict.fromkeys(IdentificationStatus, 0)
        victims.update({IdentificationStatus(r["status"]): r["count"] for r in victim_rows})
        return StoreStats(
            media_count=totals["media_count"],
            retracted_count=totals["retracted_count"],
            signal_counts={int(r["algorithm"]): r["count"] for r in signal_rows},
            series_count=totals["series_count"],
            victim_counts=victims,
        )

    async def apply_replicated(
        self, conn: Any, *, origin: str, changes: Sequence[ReplicatedChange]
    ) -> ReplicatedApplied:
        """Apply a peer's changes (validated, in seq order) on the caller's transaction, which
        also advances the caller's cursor; each record only when its entry is newer."""
        if origin == self._origin:
            raise ValueError("records of this node are never applied as replicated")
        return await apply_replicated(conn, origin=origin, changes=changes)

    async def begin_resync(self, conn: Any, *, origin: str) -> list[int]:
        """Withdraw every record of `origin` until a re-pull of its log confirms it (see
        store_replicated.begin_resync); returns the media rows withdrawn."""
        if origin == self._origin:
            raise ValueError("this node's own records are never resynced")
        return await begin_resync(conn, origin=origin)

    async def sweep_unconfirmed(self, conn: Any, *, origin: str) -> int:
        """Delete the records of `origin` that its re-pulled log did not confirm."""
        if origin == self._origin:
            raise ValueError("this node's own records are never resynced")
        return await sweep_unconfirmed(conn, origin=origin)

    async def replicated_changes(
        self, conn: Any, *, since: datetime
    ) -> tuple[list[PdqEntry], list[int], datetime | None]:
        """Media of other origins changed at or after `since` (a moment of the database's own
        clock): the matchable PDQ hashes of those still live, the rows of those retracted, and
        the latest change time seen (None: nothing changed). Run it in one snapshot."""
        changed = await conn.fetch(sql.REPLICATED_SINCE, self._origin, since)
        live = [r["id"] for r in changed if not r["retracted"]]
        pdq = await conn.fetch(sql.MATCHABLE_PDQ_OF, live, PDQ_MIN_QUALITY) if live else []
        retracted = [r["id"] for r in changed if r["retracted"]]
        latest = max((r["updated_at"] for r in changed), default=None)
        entries = [PdqEntry(row_id=r["media_row"], value=bytes(r["value"])) for r in pdq]
        return entries, retracted, latest

    async def database_now(self, conn: Any) -> datetime:
        moment: datetime = await conn.fetchval("SELECT now()")
        return moment

    # Linkage, as sync's overlap flags read it (services/sync/flags/reader.py).
    async def linkage_events_after(
        self, conn: Any, *, after_id: int, limit: int
    ) -> list[linkage_read.LinkageEvent]:
        return await linkage_read.linkage_events_after(conn, after_id=after_id, limit=limit)

    async def series_links_of(
        self, conn: Any, *, series_rows: list[int]
    ) -> list[linkage_read.SeriesLink]:
        return await linkage_read.series_links_of(conn, series_rows=series_rows)

    async def victim_summaries(
        self, conn: Any, *, series_rows: list[int]
    ) -> dict[int, linkage_read.VictimSummary]:
        return await linkage_read.victim_summaries(conn, series_rows=series_rows)

    async def media_linked_to_series(
        self, conn: Any, *, series_row: int
    ) -> dict[str, linkage_read.MediaEvidence]:
        return await linkage_read.media_linked_to_series(conn, series_row=series_row)

    async def series_refs(
        self, conn: Any, *, series_rows: list[int]
    ) -> dict[int, linkage_read.SeriesRef]:
        return await linkage_read.series_refs(conn, series_rows=series_rows)

    async def export_page(
        self, conn: Any, *, after_media_id: str, limit: int
    ) -> tuple[list[MediaRecord], dict[str, str]]:
        """Up to `limit` of this node's media after `after_media_id` in media id order (retracted
        ones left out), and the names of their named series."""
        media = [
            media_record(r)
            for r in await conn.fetch(sql.EXPORT_PAGE, self._origin, after_media_id, limit)
        ]
        series = sorted({s for m in media for s in m.series_ids})
        names: dict[str, str] = {}
        if series:
            rows = await conn.fetch(sql.SERIES_NAMES, self._origin, series)
            names = {r["series_id"]: r["name"] for r in rows}
        return media, names

    async def schema_version(self, conn: Any) -> int:
        return await schema_version(conn, COMPONENT)

    async def sealed_case_records(self, conn: Any, *, media_id: str) -> list[bytes]:
        """The sealed case records of a media of this node, oldest first (for tests and audits)."""
        rows = await conn.fetch(sql.SEALED_CASES, self._origin, media_id)
        if not rows:
            raise NotFound(f"media {media_id!r} does not exist on this node")
        return [bytes(r["sealed"]) for r in rows if r["sealed"] is not None]


def _check_merged_limits(
    folded: FoldedBatch, before: dict[str, MediaRecord], retracted: set[str]
) -> None:
    """InvalidArgument naming each `media[i]` that merging would take past the limits."""
    problems = [
        FieldProblem(f"media[{folded.positions[media_id]}].{field}", description)
        for media_id, item in folded.media.items()
        if media_id in before and media_id not in retracted
        for field, description in merge_problems(
            media_id,
            stored_signals=before[media_id].signals,
            added_signals=item.signals,
            stored_series=before[media_id].series_ids,
            added_series=item.series_ids,
        )
    ]
    if problems:
        raise InvalidArgument(sorted(problems, key=lambda p: p.field))


def _listed(media_ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(m) for m in media_ids[:limit])
    return shown + (f" and {len(media_ids) - limit} more" if len(media_ids) > limit else "")


async def _media_states(conn: Any, row_ids: Sequence[int]) -> list[MediaRecord]:
    """Full state of these media (retracted or not), ordered by media id."""
    if not row_ids:
        return []
    return [media_record(r) for r in await conn.fetch(sql.MEDIA_STATES, list(row_ids))]


async def _read_series(conn: Any, *, origin: str, series_id: str) -> SeriesRecord:
    rows = await conn.fetch(sql.SERIES_ROWS, [], origin, series_id)
    if not rows:
        raise NotFound(f"series {series_id!r} of {origin!r} does not exist on this node")
    return group_series(rows)[0][0]
