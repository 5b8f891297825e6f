"""Every SQL statement of the registry, as named transactions that return model dataclasses.

Only this node's records are written here (origin = node id); records of other origins arrive
through the sync service. Batches are staged with COPY into per-connection temporary tables and
merged with set-based statements, so a batch of 1,000 media costs about a dozen round trips.

What a resubmission means: signals accumulate (a hash once seen stays true, and keeps the quality
it was first stored with, so the matchable set only grows); type, category, flags and series are
stated in full by each submission and replace the stored ones; case data accumulates, one record
per distinct case, and is not a change of the media record (peers never see it).

Every change of a record also appends its full new state to the change log in the same
transaction (store_log.py); a write that changes nothing appends nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from services.core.algorithms import SignalValue
from services.core.db.migrations import schema_version
from services.core.errors import NotFound
from services.registry.cases import CaseSealer
from services.registry.model import (
    ExactHit,
    IdentificationStatus,
    MediaRecord,
    MediaSubmission,
    PdqEntry,
    RetractCounts,
    SeriesRecord,
    SubmitCounts,
    VictimRecord,
)
from services.registry.store_log import (
    MEDIA_SELECT,
    PendingEntry,
    append_entries,
    lock_change_log,
    media_states,
    pending_media_entries,
    pending_retractions,
    pending_series_entry,
)
from services.registry.store_rows import (
    PDQ_MIN_QUALITY,
    StagedBatch,
    group_series,
    matchable_entries,
    media_record,
    stage_batch,
    victim_record,
)
from services.sync.changelog import EntryKind, series_entry

COMPONENT = "registry"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class StoreStats:
    """What the database knows for GetStats (the caller adds node id, index size, start time)."""

    media_count: int
    retracted_count: int
    signal_counts: dict[int, int]
    series_count: int
    victim_counts: dict[IdentificationStatus, int]


class RegistryStore:
    """The registry's named transactions on a shared pool; writes are always this node's."""

    def __init__(self, pool: Any, *, node_id: str, sealer: CaseSealer) -> None:
        self._pool = pool
        self._origin = node_id
        self._sealer = sealer

    async def submit_media_batch(
        self, batch: Sequence[MediaSubmission]
    ) -> tuple[SubmitCounts, list[PdqEntry]]:
        """Store a batch of this node's media in one transaction; return the counts and the PDQ
        entries that became matchable. A media id repeated in the batch is merged: signals and
        case data of every occurrence are kept, the other fields of the last one win."""
        if not batch:
            return SubmitCounts(), []
        staged = stage_batch(batch, self._sealer)
        async with self._pool.acquire() as conn, conn.transaction():
            await lock_change_log(conn)
            await conn.execute(_CREATE_STAGING)
            await _copy_staged(conn, staged)
            created = {r["id"] for r in await conn.fetch(_INSERT_NEW_MEDIA, self._origin)}
            rewritten = await conn.fetch(_UPDATE_CHANGED_MEDIA, self._origin)
            new_series: list[str] = []
            if staged.series:
                new_series = [
                    r["series_id"] for r in await conn.fetch(_CREATE_MISSING_SERIES, self._origin)
                ]
            relinked = {r["media_row"] for r in await conn.fetch(_RELINK_SERIES, self._origin)}
            new_signals = await conn.fetch(_INSERT_SIGNALS, self._origin)
            if staged.cases:
                await conn.execute(_INSERT_CASES, self._origin)
            touched = (relinked | {r["media_row"] for r in new_signals}) - created
            rewritten_rows = {r["id"] for r in rewritten}
            if touched - rewritten_rows:
                await conn.execute(_TOUCH_MEDIA, sorted(touched - rewritten_rows))
            revived = sorted(r["id"] for r in rewritten if r["was_retracted"])
            revived_pdq = (
                await conn.fetch(_MATCHABLE_PDQ_OF, revived, PDQ_MIN_QUALITY) if revived else []
            )
            changed = await media_states(conn, sorted(created | touched | rewritten_rows))
            await append_entries(
                conn, [*self._new_series_entries(new_series), *pending_media_entries(changed)]
            )
        updated = len(touched | rewritten_rows)
        counts = SubmitCounts(
            received=len(batch),
            created=len(created),
            updated=updated,
            unchanged=len(staged.media) - len(created) - updated + staged.repeats,
        )
        return counts, matchable_entries(new_signals, revived_pdq)

    def _new_series_entries(self, series_ids: Sequence[str]) -> list[PendingEntry]:
        """Entries for series a submission created implicitly (unnamed, without victims)."""

        def encode(series_id: str) -> Any:
            def at(seq: int, moment: datetime) -> bytes:
                record = SeriesRecord(self._origin, series_id, "", (), 0, moment)
                return series_entry(seq, moment, record)

            return at

        return [PendingEntry(EntryKind.SERIES, encode(sid)) for sid in sorted(series_ids)]

    async def exact_hits(
        self, signals: Sequence[SignalValue], *, limit_per_signal: int | None = None
    ) -> list[ExactHit]:
        """Stored media (not retracted) holding each signal, in query order, at most
        `limit_per_signal` per signal (pass the match limit + 1 to learn of truncation)."""
        if not signals:
            return []
        rows = await self._pool.fetch(
            _EXACT_HITS,
            [int(s.algorithm) for s in signals],
            [s.value for s in signals],
            limit_per_signal,
        )
        return [ExactHit(query_index=r["query_index"], row_id=r["media_row"]) for r in rows]

    async def media_records(self, row_ids: Sequence[int]) -> dict[int, MediaRecord]:
        """The media with these row ids, with all their signals and series ids, in one query.
        Retracted media are left out (a retraction may commit between a hit and this read)."""
        if not row_ids:
            return {}
        rows = await self._pool.fetch(_MEDIA_RECORDS, list(row_ids))
        return {r["id"]: media_record(r) for r in rows}

    async def series_for_media(self, row_ids: Sequence[int]) -> dict[int, tuple[SeriesRecord, ...]]:
        """The series of each media (with victims and media counts), in one query; media without
        series are left out."""
        if not row_ids:
            return {}
        rows = await self._pool.fetch(_SERIES_ROWS, list(row_ids), None, None)
        return group_series(rows)

    async def retract_media(self, media_ids: Sequence[str]) -> RetractCounts:
        """Withdraw media of this node; unknown or already retracted ids count as not found."""
        if not media_ids:
            return RetractCounts(retracted=0, not_found=0)
        async with self._pool.acquire() as conn, conn.transaction():
            await lock_change_log(conn)
            rows = await conn.fetch(_RETRACT_MEDIA, self._origin, list(media_ids))
            row_ids = tuple(sorted(r["id"] for r in rows))
            retracted = await media_states(conn, row_ids)
            await append_entries(conn, pending_retractions(retracted))
        return RetractCounts(
            retracted=len(row_ids),
            not_found=len(media_ids) - len(row_ids),
            retracted_row_ids=row_ids,
        )

    async def pdq_entries(self, batch_rows: int = 100_000) -> AsyncIterator[list[PdqEntry]]:
        """Every matchable PDQ hash, streamed from one snapshot through a server-side cursor so
        that loading the index at start never holds the whole table in memory."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            cursor = await conn.cursor(_MATCHABLE_PDQ, PDQ_MIN_QUALITY)
            while rows := await cursor.fetch(batch_rows):
                yield [PdqEntry(row_id=r["media_row"], value=bytes(r["value"])) for r in rows]

    async def upsert_series(self, *, series_id: str, name: str) -> tuple[SeriesRecord, bool]:
        """Create or rename a series of this node; True when it was created."""
        async with self._pool.acquire() as conn, conn.transaction():
            await lock_change_log(conn)
            row = await conn.fetchrow(_UPSERT_SERIES, self._origin, series_id, name)
            record = await _read_series(conn, origin=self._origin, series_id=series_id)
            if row["changed"]:
                await append_entries(conn, [pending_series_entry(record)])
        return record, bool(row["created"])

    async def get_series(self, *, origin: str, series_id: str) -> SeriesRecord:
        async with self._pool.acquire() as conn:
            return await _read_series(conn, origin=origin, series_id=series_id)

    async def update_victim(
        self,
        *,
        series_id: str,
        victim_id: str,
        status: IdentificationStatus,
        responsible_desk: str,
    ) -> tuple[VictimRecord, bool]:
        """Create or change a victim of a series of this node (an empty desk keeps the current
        one); a change also marks the series updated, since peers see victims through it."""
        async with self._pool.acquire() as conn, conn.transaction():
            await lock_change_log(conn)
            row = await conn.fetchrow(
                _UPSERT_VICTIM,
                self._origin,
                series_id,
                victim_id,
                int(status),
                responsible_desk,
            )
            if row is None:
                raise NotFound(f"series {series_id!r} does not exist on this node")
            if row["changed"]:
                await conn.execute(_TOUCH_SERIES, row["series_row"])
                record = await _read_series(conn, origin=self._origin, series_id=series_id)
                await append_entries(conn, [pending_series_entry(record)])
        return victim_record(row), bool(row["created"])

    async def stats(self) -> StoreStats:
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            totals = await conn.fetchrow(_COUNT_TOTALS)
            signal_rows = await conn.fetch(_COUNT_SIGNALS)
            victim_rows = await conn.fetch(_COUNT_VICTIMS)
        victims = dict.fromkeys(IdentificationStatus, 0)
        victims.update({IdentificationStatus(r["status"]): r["count"] for r in victim_rows})
        return StoreStats(
            media_count=totals["media_count"],
            retracted_count=totals["retracted_count"],
            signal_counts={int(r["algorithm"]): r["count"] for r in signal_rows},
            series_count=totals["series_count"],
            victim_counts=victims,
        )

    async def replicated_changes(
        self, *, since: datetime
    ) -> tuple[list[PdqEntry], list[int], datetime | None]:
        """Media of other origins changed at or after `since` (a moment of the database's own
        clock): the matchable PDQ hashes of those still live, the rows of those retracted, and
        the latest change time seen (None: nothing changed)."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            changed = await conn.fetch(_REPLICATED_SINCE, self._origin, since)
            live = [r["id"] for r in changed if not r["retracted"]]
            pdq = await conn.fetch(_MATCHABLE_PDQ_OF, live, PDQ_MIN_QUALITY) if live else []
        retracted = [r["id"] for r in changed if r["retracted"]]
        latest = max((r["updated_at"] for r in changed), default=None)
        entries = [PdqEntry(row_id=r["media_row"], value=bytes(r["value"])) for r in pdq]
        return entries, retracted, latest

    async def database_now(self) -> datetime:
        moment: datetime = await self._pool.fetchval("SELECT now()")
        return moment

    async def schema_version(self) -> int:
        async with self._pool.acquire() as conn:
            return await schema_version(conn, COMPONENT)

    async def sealed_case_records(self, media_id: str) -> list[bytes]:
        """The sealed case records of a media of this node, oldest first (for tests and audits)."""
        rows = await self._pool.fetch(_SEALED_CASES, self._origin, media_id)
        if not rows:
            raise NotFound(f"media {media_id!r} does not exist on this node")
        return [bytes(r["sealed"]) for r in rows if r["sealed"] is not None]


async def _copy_staged(conn: Any, staged: StagedBatch) -> None:
    tables: Iterable[tuple[str, Sequence[tuple[Any, ...]]]] = (
        ("registry_stage_media", staged.media),
        ("registry_stage_signals", staged.signals),
        ("registry_stage_series", staged.series),
        ("registry_stage_cases", staged.cases),
    )
    for table, records in tables:
        if records:
            await conn.copy_records_to_table(table, records=records)


async def _read_series(conn: Any, *, origin: str, series_id: str) -> SeriesRecord:
    rows = await conn.fetch(_SERIES_ROWS, [], origin, series_id)
    if not rows:
        raise NotFound(f"series {series_id!r} of {origin!r} does not exist on this node")
    return group_series(rows)[0][0]


# The statements. Staging tables live per connection (created on first use, emptied at each
# commit), so batches do not churn the catalogue. Inserts are ordered by key so that concurrent
# batches lock rows in the same order.
_CREATE_STAGING = """
SET LOCAL client_min_messages = warning;
CREATE TEMP TABLE IF NOT EXISTS registry_stage_media (
    media_id text NOT NULL, media_type smallint NOT NULL, category_scheme smallint,
    category_code text, flags smallint NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS registry_stage_signals (
    media_id text NOT NULL, algorithm smallint NOT NULL, value bytea NOT NULL, quality smallint
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS registry_stage_series (
    media_id text NOT NULL, series_id text NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS registry_stage_cases (
    media_id text NOT NULL, digest bytea NOT NULL, sealed bytea NOT NULL
) ON COMMIT DELETE ROWS;
"""

# Only ids not stored yet, so that resubmissions do not consume identity values.
_INSERT_NEW_MEDIA = """
INSERT INTO media (origin, media_id, media_type, category_scheme, category_code, flags)
SELECT $1, s.media_id, s.media_type, s.category_scheme, s.category_code, s.flags
FROM registry_stage_media s
WHERE NOT EXISTS (SELECT 1 FROM media m WHERE m.origin = $1 AND m.media_id = s.media_id)
ORDER BY s.media_id
ON CONFLICT (origin, media_id) DO NOTHING
RETURNING id
"""

# `prior` is the row as the statement found it, so RETURNING can tell a revived media.
_UPDATE_CHANGED_MEDIA = """
UPDATE media m
SET media_type = s.media_type, category_scheme = s.category_scheme,
    category_code = s.category_code, flags = s.flags, retracted_at = NULL, updated_at = now()
FROM registry_stage_media s, media prior
WHERE m.origin = $1 AND m.media_id = s.media_id AND prior.id = m.id
  AND (m.retracted_at IS NOT NULL
       OR (m.media_type, m.category_scheme, m.category_code, m.flags)
          IS DISTINCT FROM (s.media_type, s.category_scheme, s.category_code, s.flags))
RETURNING m.id, prior.retracted_at IS NOT NULL AS was_retracted
"""

_CREATE_MISSING_SERIES = """
INSERT INTO series (origin, series_id)
SELECT DISTINCT $1, s.series_id FROM registry_stage_series s
WHERE NOT EXISTS (SELECT 1 FROM series se WHERE se.origin = $1 AND se.series_id = s.series_id)
ORDER BY 2
ON CONFLICT (origin, series_id) DO NOTHING
RETURNING series_id
"""

# A submission states the media's series in full: links not named any more are removed.
_RELINK_SERIES = """
WITH batch AS (
    SELECT m.id AS media_row, s.media_id
    FROM registry_stage_media s JOIN media m ON m.origin = $1 AND m.media_id = s.media_id
), desired AS (
    SELECT b.media_row, se.id AS series_row
    FROM registry_stage_series ss
    JOIN batch b ON b.media_id = ss.media_id
    JOIN series se ON se.origin = $1 AND se.series_id = ss.series_id
), removed AS (
    DELETE FROM media_series ms USING batch b
    WHERE ms.media_row = b.media_row AND NOT EXISTS (
        SELECT 1 FROM desired d WHERE d.media_row = ms.media_row AND d.series_row = ms.series_row)
    RETURNING ms.media_row
), added AS (
    INSERT INTO media_series (media_row, series_row)
    SELECT media_row, series_row FROM desired ORDER BY 1, 2
    ON CONFLICT DO NOTHING
    RETURNING media_row
)
SELECT media_row FROM removed UNION SELECT media_row FROM added
"""

_INSERT_SIGNALS = """
INSERT INTO signals (media_row, algorithm, value, quality)
SELECT m.id, s.algorithm, s.value, s.quality
FROM registry_stage_signals s JOIN media m ON m.origin = $1 AND m.media_id = s.media_id
ORDER BY s.algorithm, s.value, m.id
ON CONFLICT (algorithm, value, media_row) DO NOTHING
RETURNING media_row, algorithm, value, quality
"""

_INSERT_CASES = """
INSERT INTO case_records (media_row, digest, sealed)
SELECT m.id, c.digest, c.sealed
FROM registry_stage_cases c JOIN media m ON m.origin = $1 AND m.media_id = c.media_id
WHERE NOT EXISTS (
    SELECT 1 FROM case_records r WHERE r.media_row = m.id AND r.digest = c.digest)
ON CONFLICT (media_row, digest) DO NOTHING
"""

_TOUCH_MEDIA = "UPDATE media SET updated_at = now() WHERE id = ANY($1::bigint[])"

_REPLICATED_SINCE = """
SELECT id, retracted_at IS NOT NULL AS retracted, updated_at FROM media
WHERE updated_at >= $2 AND origin <> $1
"""

_MATCHABLE_PDQ_OF = """
SELECT media_row, value FROM signals
WHERE media_row = ANY($1::bigint[]) AND algorithm = 4 AND (quality IS NULL OR quality >= $2)
"""

_MATCHABLE_PDQ = """
SELECT s.media_row, s.value
FROM signals s JOIN media m ON m.id = s.media_row AND m.retracted_at IS NULL
WHERE s.algorithm = 4 AND (s.quality IS NULL OR s.quality >= $1)
"""

_EXACT_HITS = """
SELECT (q.ord - 1)::int AS query_index, hit.media_row
FROM unnest($1::smallint[], $2::bytea[]) WITH ORDINALITY AS q(algorithm, value, ord)
CROSS JOIN LATERAL (
    SELECT s.media_row
    FROM signals s JOIN media m ON m.id = s.media_row AND m.retracted_at IS NULL
    WHERE s.algorithm = q.algorithm AND s.value = q.value
    ORDER BY s.media_row
    LIMIT $3::bigint
) hit
ORDER BY q.ord, hit.media_row
"""

_MEDIA_RECORDS = MEDIA_SELECT + "WHERE m.id = ANY($1::bigint[]) AND m.retracted_at IS NULL"

# Series with their victims, one row per (key, series, victim): the series of the media in $1
# (keyed by media row), or the series named by origin $2 and id $3 (keyed 0). The media count
# leaves retracted media out.
_SERIES_ROWS = """
WITH wanted AS (
    SELECT media_row AS key, series_row FROM media_series WHERE media_row = ANY($1::bigint[])
    UNION ALL
    SELECT 0, id FROM series WHERE origin = $2 AND series_id = $3
), counted AS (
    SELECT se.id, se.origin, se.series_id, se.name, se.updated_at,
           (SELECT count(*) FROM media_series c
            JOIN media m ON m.id = c.media_row AND m.retracted_at IS NULL
            WHERE c.series_row = se.id) AS media_count
    FROM series se WHERE se.id IN (SELECT series_row FROM wanted)
)
SELECT w.key, c.id AS series_row, c.origin, c.series_id, c.name,
       c.updated_at AS series_updated_at, c.media_count,
       v.victim_id, v.status, v.responsible_desk, v.updated_at AS victim_updated_at
FROM wanted w
JOIN counted c ON c.id = w.series_row
LEFT JOIN victims v ON v.series_row = c.id
ORDER BY w.key, c.origin, c.series_id, v.victim_id
"""

_RETRACT_MEDIA = """
UPDATE media SET retracted_at = now(), updated_at = now()
WHERE origin = $1 AND media_id = ANY($2::text[]) AND retracted_at IS NULL
RETURNING id
"""

# `xmax = 0` holds for a freshly inserted row, not for one updated on conflict.
_UPSERT_SERIES = """
INSERT INTO series (origin, series_id, name) VALUES ($1, $2, $3)
ON CONFLICT (origin, series_id) DO UPDATE
SET name = EXCLUDED.name,
    updated_at = CASE WHEN series.name = EXCLUDED.name THEN series.updated_at ELSE now() END
RETURNING xmax = 0 AS created, updated_at = now() AS changed
"""

_UPSERT_VICTIM = """
INSERT INTO victims (series_row, victim_id, status, responsible_desk)
SELECT se.id, $3, $4, $5 FROM series se WHERE se.origin = $1 AND se.series_id = $2
ON CONFLICT (series_row, victim_id) DO UPDATE
SET status = EXCLUDED.status,
    responsible_desk = coalesce(nullif(EXCLUDED.responsible_desk, ''), victims.responsible_desk),
    updated_at = CASE
        WHEN victims.status = EXCLUDED.status
             AND EXCLUDED.responsible_desk IN ('', victims.responsible_desk)
        THEN victims.updated_at ELSE now() END
RETURNING series_row, victim_id, status, responsible_desk, updated_at AS victim_updated_at,
          xmax = 0 AS created, updated_at = now() AS changed
"""

_TOUCH_SERIES = "UPDATE series SET updated_at = now() WHERE id = $1"

_COUNT_TOTALS = """
SELECT (SELECT count(*) FROM media WHERE retracted_at IS NULL) AS media_count,
       (SELECT count(*) FROM media WHERE retracted_at IS NOT NULL) AS retracted_count,
       (SELECT count(*) FROM series) AS series_count
"""

_COUNT_SIGNALS = """
SELECT s.algorithm, count(*) AS count
FROM signals s JOIN media m ON m.id = s.media_row AND m.retracted_at IS NULL
GROUP BY s.algorithm
"""

_COUNT_VICTIMS = "SELECT status, count(*) AS count FROM victims GROUP BY status"

_SEALED_CASES = """
SELECT c.sealed
FROM media m LEFT JOIN case_records c ON c.media_row = m.id
WHERE m.origin = $1 AND m.media_id = $2
ORDER BY c.id
"""
