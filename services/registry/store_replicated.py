"""Applying a peer's records to the registry's tables: the statements behind
`RegistryStore.apply_replicated`, run on the caller's connection inside its transaction (sync
applies a verified batch and advances its cursor in one transaction).

Applying is idempotent on (origin, seq): a replicated row keeps the seq of the entry that last
set it, and an entry applies only when newer, so a re-offered older entry never overwrites newer
state. Staged with COPY and merged set-wise, like a local submission.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.registry.model import PdqEntry
from services.registry.replicated import (
    ReplicatedApplied,
    ReplicatedChange,
    StagedApply,
    link_rows,
    linked_series,
    matchable,
    signal_rows,
    stage_changes,
)
from services.registry.store_rows import PDQ_MIN_QUALITY, matchable_entries
from services.registry.store_sql import MATCHABLE_PDQ_OF


async def apply_replicated(
    conn: Any, *, origin: str, changes: Sequence[ReplicatedChange]
) -> ReplicatedApplied:
    staged = stage_changes(changes)
    if staged.series:
        await _ensure_staging(conn)
        for table, records in staged.tables():
            if records:
                await conn.copy_records_to_table(table, records=records)
        await _apply_series(conn, origin)
    added: list[PdqEntry] = []
    if staged.media:
        added = await _apply_media(conn, origin, staged)
    removed: list[int] = []
    if staged.retractions:
        media_ids, seqs, moments = zip(*staged.retractions, strict=True)
        rows = await conn.fetch(_RETRACT, origin, list(media_ids), list(seqs), list(moments))
        removed = sorted(r["id"] for r in rows)
    return ReplicatedApplied(added=added, removed_rows=removed)


async def _ensure_staging(conn: Any) -> None:
    """The temporary tables series, victims and signals of held media are staged in. Only a
    batch that needs them touches them: a transaction that touched none commits without
    emptying them (PostgreSQL skips ON COMMIT DELETE ROWS then)."""
    await conn.execute(_CREATE_STAGING)


async def begin_resync(conn: Any, *, origin: str) -> list[int]:
    """Withdraw `origin`'s records until its re-pulled log confirms them: its media retracted
    (out of every lookup at once) with their signals and series links dropped, its series'
    victims dropped, and every seq guard cleared, so each entry re-sent applies in full (a
    restored origin's new seqs may be lower than those held). Returns the media rows that were
    live, for the PDQ index."""
    withdrawn = [r["id"] for r in await conn.fetch(_WITHDRAW_MEDIA, origin)]
    for statement in _DROP_WITHDRAWN:
        await conn.execute(statement, origin)
    return sorted(withdrawn)


async def sweep_unconfirmed(conn: Any, *, origin: str) -> int:
    """Delete what the re-pull did not confirm (media and series whose seq guard is still
    clear): the origin no longer holds them. Returns the media deleted."""
    deleted = await conn.fetchval(_SWEEP, origin)
    return int(deleted)


async def _apply_series(conn: Any, origin: str) -> None:
    applied = await conn.fetch(_UPSERT_SERIES, origin)
    if applied:
        rows = [r["id"] for r in applied]
        names = [r["series_id"] for r in applied]
        await conn.execute(_DROP_OLD_VICTIMS, rows, names)
        await conn.execute(_UPSERT_VICTIMS, rows, names)


async def _apply_media(conn: Any, origin: str, staged: StagedApply) -> list[PdqEntry]:
    # New media insert plainly: a first replication (most of any batch) probes nothing else.
    created = {
        r["media_id"]: r["id"]
        for r in await conn.fetch(_INSERT_NEW_MEDIA, origin, *staged.media.columns())
    }
    held = staged.media.without(created)
    updated = await conn.fetch(_UPDATE_HELD_MEDIA, origin, *held.columns()) if held else []
    known = {r["media_id"]: r["id"] for r in updated}
    if not created and not known:
        return []
    series_rows = await _series_rows(conn, origin, linked_series(staged, [*created, *known]))
    new_links = link_rows(staged, created, series_rows)
    if new_links:  # links of new media cannot exist yet
        await conn.copy_records_to_table("media_series", records=new_links, columns=_LINK_COLUMNS)
    if known:
        await _relink(conn, link_rows(staged, known, series_rows), list(known.values()))
    new_signals, known_signals = signal_rows(staged, created | known, set(known.values()))
    if new_signals:  # nothing to conflict with: straight into the table
        await conn.copy_records_to_table("signals", records=new_signals, columns=_SIGNAL_COLUMNS)
    added_known: list[Any] = []
    if known_signals:
        await _ensure_staging(conn)
        await conn.copy_records_to_table("replica_stage_signals", records=known_signals)
        added_known = await conn.fetch(_INSERT_SIGNALS)
    revived = [r["id"] for r in updated if r["was_retracted"]]
    revived_pdq = await conn.fetch(MATCHABLE_PDQ_OF, revived, PDQ_MIN_QUALITY) if revived else []
    return sorted(
        matchable(new_signals) + matchable_entries(added_known, revived_pdq),
        key=lambda e: (e.row_id, e.value),
    )


async def _series_rows(conn: Any, origin: str, series_ids: list[str]) -> dict[str, int]:
    """Rows of `origin`'s series `series_ids`, created bare (origin_seq NULL, so that the series
    entry applies whenever it comes) for those a media names before their own entry arrived.
    Nothing else creates `origin`'s series meanwhile: its applies hold its cursor's lock."""
    if not series_ids:
        return {}
    return {r["series_id"]: r["id"] for r in await conn.fetch(_SERIES_ROWS, origin, series_ids)}


async def _relink(conn: Any, links: list[tuple[int, int]], media_rows: list[int]) -> None:
    """A media entry states its series in full: links it no longer names go."""
    media_of = [m for m, _ in links]
    series_of = [s for _, s in links]
    await conn.execute(_RELINK, media_of, series_of, media_rows)


_CREATE_STAGING = """
SET LOCAL client_min_messages = warning;
CREATE TEMP TABLE IF NOT EXISTS replica_stage_signals (
    media_row bigint NOT NULL, algorithm smallint NOT NULL, value bytea NOT NULL, quality smallint
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS replica_stage_series (
    series_id text NOT NULL, name text NOT NULL, updated_at timestamptz NOT NULL,
    origin_seq bigint NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS replica_stage_victims (
    series_id text NOT NULL, victim_id text NOT NULL, status smallint NOT NULL,
    responsible_desk text NOT NULL, updated_at timestamptz NOT NULL
) ON COMMIT DELETE ROWS;
"""

_UPSERT_SERIES = """
INSERT INTO series (origin, series_id, name, updated_at, origin_seq)
SELECT $1, s.series_id, s.name, s.updated_at, s.origin_seq FROM replica_stage_series s
ORDER BY s.series_id
ON CONFLICT (origin, series_id) DO UPDATE
SET name = EXCLUDED.name, updated_at = EXCLUDED.updated_at, origin_seq = EXCLUDED.origin_seq
WHERE series.origin_seq IS NULL OR series.origin_seq < EXCLUDED.origin_seq
RETURNING id, series_id
"""

# A series entry states its victims in full.
_DROP_OLD_VICTIMS = """
DELETE FROM victims v
USING unnest($1::bigint[], $2::text[]) AS a(id, series_id)
WHERE v.series_row = a.id AND NOT EXISTS (
    SELECT 1 FROM replica_stage_victims sv
    WHERE sv.series_id = a.series_id AND sv.victim_id = v.victim_id)
"""

_UPSERT_VICTIMS = """
INSERT INTO victims (series_row, victim_id, status, responsible_desk, updated_at)
SELECT a.id, sv.victim_id, sv.status, sv.responsible_desk, sv.updated_at
FROM replica_stage_victims sv JOIN unnest($1::bigint[], $2::text[]) AS a(id, series_id)
     ON a.series_id = sv.series_id
ORDER BY 1, 2
ON CONFLICT (series_row, victim_id) DO UPDATE
SET status = EXCLUDED.status, responsible_desk = EXCLUDED.responsible_desk,
    updated_at = EXCLUDED.updated_at
"""

# The staged media come as parameters $2-$8, one array per column (services.registry.replicated
# `StagedMedia`), sorted by media id: rows go into the table's unique index in its order.
_INSERT_NEW_MEDIA = """
INSERT INTO media (origin, media_id, media_type, category_scheme, category_code, flags,
                   first_seen, origin_seq)
SELECT $1, s.media_id, s.media_type, s.category_scheme, s.category_code, s.flags, s.first_seen,
       s.origin_seq
FROM unnest($2::text[], $3::smallint[], $4::smallint[], $5::text[], $6::smallint[],
       $7::timestamptz[], $8::bigint[])
    AS s(media_id, media_type, category_scheme, category_code, flags, first_seen, origin_seq)
ON CONFLICT (origin, media_id) DO NOTHING
RETURNING id, media_id
"""

# The staged media this node held already (those `_INSERT_NEW_MEDIA` did not create), where the
# staged state is newer; whether each was retracted until now (in one statement, `held` reads
# the rows as they were before `applied` changed them): a revived media's PDQ hashes match
# again.
_UPDATE_HELD_MEDIA = """
WITH staged AS (
    SELECT * FROM unnest($2::text[], $3::smallint[], $4::smallint[], $5::text[], $6::smallint[],
                         $7::timestamptz[], $8::bigint[])
        AS s(media_id, media_type, category_scheme, category_code, flags, first_seen, origin_seq)
), held AS (
    SELECT m.id, m.retracted_at IS NOT NULL AS was_retracted
    FROM media m JOIN staged s ON m.origin = $1 AND m.media_id = s.media_id
), applied AS (
    UPDATE media m
    SET media_type = s.media_type, category_scheme = s.category_scheme,
        category_code = s.category_code, flags = s.flags, first_seen = s.first_seen,
        origin_seq = s.origin_seq, retracted_at = NULL, updated_at = now()
    FROM staged s
    WHERE m.origin = $1 AND m.media_id = s.media_id
      AND (m.origin_seq IS NULL OR m.origin_seq < s.origin_seq)
    RETURNING m.id, m.media_id
)
SELECT applied.id, applied.media_id, held.was_retracted FROM applied JOIN held USING (id)
"""

# In one statement the final SELECT does not see what `created` inserted: both halves together
# are every series asked for.
_SERIES_ROWS = """
WITH wanted AS (
    SELECT DISTINCT unnest($2::text[]) AS series_id
), created AS (
    INSERT INTO series (origin, series_id)
    SELECT $1, w.series_id FROM wanted w ORDER BY 2
    ON CONFLICT (origin, series_id) DO NOTHING
    RETURNING id, series_id
)
SELECT id, series_id FROM created
UNION ALL
SELECT se.id, se.series_id FROM series se JOIN wanted w ON w.series_id = se.series_id
WHERE se.origin = $1
"""

_RELINK = """
WITH desired AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[]) AS d(media_row, series_row)
), removed AS (
    DELETE FROM media_series ms
    WHERE ms.media_row = ANY($3::bigint[]) AND NOT EXISTS (
        SELECT 1 FROM desired d WHERE d.media_row = ms.media_row AND d.series_row = ms.series_row)
)
INSERT INTO media_series (media_row, series_row)
SELECT media_row, series_row FROM desired ORDER BY 1, 2
ON CONFLICT DO NOTHING
"""

_LINK_COLUMNS = ("media_row", "series_row")
_SIGNAL_COLUMNS = ("media_row", "algorithm", "value", "quality")

# Signals accumulate, as at the origin: a hash once true of a media stays true. (Staged: only
# those of media held before this batch, which may have some of them already.)
_INSERT_SIGNALS = """
INSERT INTO signals (media_row, algorithm, value, quality)
SELECT media_row, algorithm, value, quality FROM replica_stage_signals
ORDER BY algorithm, value, media_row
ON CONFLICT (algorithm, value, media_row) DO NOTHING
RETURNING media_row, algorithm, value, quality
"""

_RETRACT = """
UPDATE media m
SET retracted_at = r.changed_at, origin_seq = r.origin_seq, updated_at = now()
FROM unnest($2::text[], $3::bigint[], $4::timestamptz[]) AS r(media_id, origin_seq, changed_at)
WHERE m.origin = $1 AND m.media_id = r.media_id
  AND (m.origin_seq IS NULL OR m.origin_seq < r.origin_seq)
RETURNING m.id
"""

_WITHDRAW_MEDIA = """
WITH held AS (
    SELECT id, retracted_at IS NULL AS live FROM media WHERE origin = $1 FOR UPDATE
), withdrawn AS (
    UPDATE media m
    SET retracted_at = coalesce(m.retracted_at, now()), origin_seq = NULL, updated_at = now()
    FROM held WHERE m.id = held.id
)
SELECT id FROM held WHERE live
"""

# One statement each: parameters need the extended protocol, which takes one statement.
_DROP_WITHDRAWN = (
    "DELETE FROM signals s USING media m WHERE s.media_row = m.id AND m.origin = $1",
    "DELETE FROM media_series ms USING media m WHERE ms.media_row = m.id AND m.origin = $1",
    "DELETE FROM victims v USING series se WHERE v.series_row = se.id AND se.origin = $1",
    "UPDATE series SET origin_seq = NULL WHERE origin = $1",
)

# Signals and links of unconfirmed media went at begin_resync; a confirmed media got new ones.
_SWEEP = """
WITH gone AS (
    DELETE FROM media m WHERE m.origin = $1 AND m.origin_seq IS NULL RETURNING m.id
), series_gone AS (
    DELETE FROM series se
    WHERE se.origin = $1 AND se.origin_seq IS NULL
      AND NOT EXISTS (SELECT 1 FROM media_series ms WHERE ms.series_row = se.id)
)
SELECT count(*) FROM gone
"""
