"""Every SQL statement of the sync service, as named transactions returning dataclasses.

The sender reads this node's change log (written by the registry store) and the key rotations
in it; the receiver applies a verified batch of a peer's entries to the registry's tables and
advances its cursor in ONE transaction, so an interrupted pull leaves either the whole batch and
the new cursor or neither. Applying is idempotent on (origin, seq): a replicated row keeps the
seq of the entry that last set it, and an entry applies only when newer, so a re-offered older
entry never overwrites newer state. Staged with COPY and merged set-wise, like a local submit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.core.db.migrations import apply_migrations
from services.core.errors import FailedPrecondition
from services.core.signing import (
    KEY_ROTATION_DOMAIN,
    Keyring,
    key_id,
    rotation_message,
    sign_bytes,
)
from services.registry.model import PdqEntry
from services.registry.store_log import PendingEntry, append_entries, lock_change_log
from services.registry.store_rows import PDQ_MIN_QUALITY, matchable_entries
from services.sync.apply_rows import StagedApply, matchable, signal_rows, stage_changes
from services.sync.batches import ActiveKey, Cursor, VerifiedBatch
from services.sync.changelog import EntryKind, LogRow, decode_entry, key_rotation_entry

COMPONENT = "sync"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Applied:
    """What one applied batch changed, for the PDQ index and the status."""

    entries: int
    added: list[PdqEntry]
    removed_rows: list[int]


@dataclass(frozen=True)
class CursorRow:
    peer_id: str
    cursor: Cursor
    peer_last_seq: int
    applied_entries: int


class SyncStore:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    # --- this node's log (sender side) ---

    async def last_seq(self) -> int:
        return int(await self._pool.fetchval(_LAST_SEQ))

    async def read_log(self, *, after_seq: int, limit: int) -> list[LogRow]:
        rows = await self._pool.fetch(_READ_LOG, after_seq, limit)
        return [
            LogRow(
                seq=r["seq"],
                kind=EntryKind(r["kind"]),
                entry=bytes(r["entry"]),
                media_before=bytes(r["media_before"]) if r["media_before"] is not None else None,
            )
            for r in rows
        ]

    async def logged_key_activations(self) -> dict[str, int]:
        """Key id → seq of the KeyRotation entry that published it."""
        rows = await self._pool.fetch(_KEY_ROTATIONS)
        return {decode_entry(bytes(r["entry"])).key_rotation.key_id: r["seq"] for r in rows}

    async def key_schedule(self, keyring: Keyring) -> list[ActiveKey]:
        """The keys that may sign, with their activation: the first key from the start, later
        ones from the entry that published them (a key not logged yet signs nothing)."""
        activations = await self.logged_key_activations()
        schedule = [ActiveKey(0, keyring.all()[0])]
        schedule += [
            ActiveKey(activations[k.key_id], k)
            for k in keyring.all()[1:]
            if k.key_id in activations
        ]
        return schedule

    async def log_key_rotations(self, keyring: Keyring) -> list[str]:
        """Append a KeyRotation entry, signed by its predecessor, for every key of `keyring`
        beyond the first that the log does not hold yet; returns their ids."""
        async with self._pool.acquire() as conn, conn.transaction():
            await lock_change_log(conn)
            rows = await conn.fetch(_KEY_ROTATIONS)
            logged = {decode_entry(bytes(r["entry"])).key_rotation.key_id for r in rows}
            pending = [k for k in keyring.all()[1:] if k.key_id not in logged]
            entries = [_rotation_entry(keyring, k.version) for k in pending]
            await append_entries(conn, entries)
        return [k.key_id for k in pending]

    # --- peers' logs (receiver side) ---

    async def cursor(self, peer_id: str) -> Cursor:
        row = await self._pool.fetchrow(_CURSOR, peer_id)
        return _cursor(row) if row else Cursor()

    async def cursors(self) -> dict[str, CursorRow]:
        rows = await self._pool.fetch(_ALL_CURSORS)
        return {
            r["peer_id"]: CursorRow(
                r["peer_id"], _cursor(r), r["peer_last_seq"], r["applied_entries"]
            )
            for r in rows
        }

    async def learned_keys(self, peer_id: str) -> dict[str, bytes]:
        rows = await self._pool.fetch(_LEARNED_KEYS, peer_id)
        return {r["key_id"]: bytes(r["public_key"]) for r in rows}

    async def apply_batch(self, *, peer_id: str, batch: VerifiedBatch, expected: Cursor) -> Applied:
        """Apply `batch` from `peer_id` and advance the cursor, all or nothing. `expected` is the
        cursor the batch was verified against; FailedPrecondition if it moved meanwhile."""
        staged = stage_changes(batch.changes)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_ENSURE_CURSOR, peer_id)
            current = _cursor(await conn.fetchrow(_LOCK_CURSOR, peer_id))
            if current != expected:
                raise FailedPrecondition(f"the cursor for {peer_id} moved while applying a batch")
            await conn.execute(_CREATE_STAGING)
            for table, records in staged.tables():
                if records:
                    await conn.copy_records_to_table(table, records=records)
            if staged.series:
                await _apply_series(conn, peer_id)
            added: list[PdqEntry] = []
            if staged.media:
                added = await _apply_media(conn, peer_id, staged)
            removed: list[int] = []
            if staged.retractions:
                media_ids, seqs, moments = zip(*staged.retractions, strict=True)
                rows = await conn.fetch(
                    _RETRACT, peer_id, list(media_ids), list(seqs), list(moments)
                )
                removed = sorted(r["id"] for r in rows)
            for key in batch.new_keys:
                await conn.execute(_LEARN_KEY, peer_id, key.key_id, key.public_key, key.seq)
            await conn.execute(
                _ADVANCE_CURSOR,
                peer_id,
                batch.last_seq,
                batch.digest,
                batch.generation,
                batch.origin_last_seq,
                len(batch.changes),
            )
        return Applied(entries=len(batch.changes), added=added, removed_rows=removed)


async def migrate(pool: Any) -> int:
    """Bring the sync tables up to date (the registry's must be migrated first)."""
    return await apply_migrations(pool, MIGRATIONS_DIR, component=COMPONENT)


async def _apply_series(conn: Any, origin: str) -> None:
    applied = await conn.fetch(_UPSERT_SERIES, origin)
    if applied:
        rows = [r["id"] for r in applied]
        names = [r["series_id"] for r in applied]
        await conn.execute(_DROP_OLD_VICTIMS, rows, names)
        await conn.execute(_UPSERT_VICTIMS, rows, names)


async def _apply_media(conn: Any, origin: str, staged: StagedApply) -> list[PdqEntry]:
    before = await conn.fetch(_MEDIA_HELD, origin)
    applied = {r["media_id"]: r["id"] for r in await conn.fetch(_UPSERT_MEDIA, origin)}
    if not applied:
        return []
    rows = list(applied.values())
    await conn.execute(_CREATE_LINKED_SERIES, origin, rows)
    await conn.execute(_RELINK, origin, rows)
    created, known = signal_rows(staged, applied, {r["id"] for r in before})
    if created:  # nothing to conflict with: straight into the table
        await conn.copy_records_to_table("signals", records=created, columns=_SIGNAL_COLUMNS)
    added_known: list[Any] = []
    if known:
        await conn.copy_records_to_table("sync_stage_signals", records=known)
        added_known = await conn.fetch(_INSERT_SIGNALS)
    revived = [r["id"] for r in before if r["revived"]]
    revived_pdq = await conn.fetch(_MATCHABLE_PDQ_OF, revived, PDQ_MIN_QUALITY) if revived else []
    return sorted(
        matchable(created) + matchable_entries(added_known, revived_pdq),
        key=lambda e: (e.row_id, e.value),
    )


def _rotation_entry(keyring: Keyring, version: int) -> PendingEntry:
    new, previous = keyring.by_id(key_id(version)), keyring.by_id(key_id(version - 1))
    signature = sign_bytes(
        previous, KEY_ROTATION_DOMAIN, rotation_message(new.key_id, new.public_key)
    )
    return PendingEntry(
        EntryKind.KEY_ROTATION,
        lambda seq, moment: key_rotation_entry(
            seq,
            moment,
            key_id=new.key_id,
            public_key=new.public_key,
            signed_by_key_id=previous.key_id,
            signature=signature,
        ),
    )


def _cursor(row: Any) -> Cursor:
    return Cursor(row["cursor_seq"], bytes(row["cursor_digest"]), row["policy_generation"])


_LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM change_log"

_READ_LOG = """
SELECT seq, kind, entry, media_before FROM change_log WHERE seq > $1 ORDER BY seq LIMIT $2
"""

_KEY_ROTATIONS = "SELECT seq, entry FROM change_log WHERE kind = 4 ORDER BY seq"

_CURSOR = """
SELECT peer_id, cursor_seq, cursor_digest, policy_generation, peer_last_seq, applied_entries
FROM sync_cursors WHERE peer_id = $1
"""
_ALL_CURSORS = """
SELECT peer_id, cursor_seq, cursor_digest, policy_generation, peer_last_seq, applied_entries
FROM sync_cursors ORDER BY peer_id
"""
_ENSURE_CURSOR = "INSERT INTO sync_cursors (peer_id) VALUES ($1) ON CONFLICT DO NOTHING"
_LOCK_CURSOR = _CURSOR + " FOR UPDATE"

_ADVANCE_CURSOR = """
UPDATE sync_cursors
SET cursor_seq = $2, cursor_digest = $3, policy_generation = $4,
    peer_last_seq = greatest(peer_last_seq, $5), applied_entries = applied_entries + $6,
    updated_at = now()
WHERE peer_id = $1
"""

_LEARNED_KEYS = "SELECT key_id, public_key FROM sync_peer_keys WHERE peer_id = $1"
_LEARN_KEY = """
INSERT INTO sync_peer_keys (peer_id, key_id, public_key, learned_at_seq) VALUES ($1, $2, $3, $4)
ON CONFLICT (peer_id, key_id) DO NOTHING
"""

_CREATE_STAGING = """
SET LOCAL client_min_messages = warning;
CREATE TEMP TABLE IF NOT EXISTS sync_stage_media (
    media_id text NOT NULL, media_type smallint NOT NULL, category_scheme smallint,
    category_code text, flags smallint NOT NULL, first_seen timestamptz NOT NULL,
    origin_seq bigint NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS sync_stage_signals (
    media_row bigint NOT NULL, algorithm smallint NOT NULL, value bytea NOT NULL, quality smallint
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS sync_stage_links (
    media_id text NOT NULL, series_id text NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS sync_stage_series (
    series_id text NOT NULL, name text NOT NULL, updated_at timestamptz NOT NULL,
    origin_seq bigint NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS sync_stage_victims (
    series_id text NOT NULL, victim_id text NOT NULL, status smallint NOT NULL,
    responsible_desk text NOT NULL, updated_at timestamptz NOT NULL
) ON COMMIT DELETE ROWS;
"""

_UPSERT_SERIES = """
INSERT INTO series (origin, series_id, name, updated_at, origin_seq)
SELECT $1, s.series_id, s.name, s.updated_at, s.origin_seq FROM sync_stage_series s
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
    SELECT 1 FROM sync_stage_victims sv
    WHERE sv.series_id = a.series_id AND sv.victim_id = v.victim_id)
"""

_UPSERT_VICTIMS = """
INSERT INTO victims (series_row, victim_id, status, responsible_desk, updated_at)
SELECT a.id, sv.victim_id, sv.status, sv.responsible_desk, sv.updated_at
FROM sync_stage_victims sv JOIN unnest($1::bigint[], $2::text[]) AS a(id, series_id)
     ON a.series_id = sv.series_id
ORDER BY 1, 2
ON CONFLICT (series_row, victim_id) DO UPDATE
SET status = EXCLUDED.status, responsible_desk = EXCLUDED.responsible_desk,
    updated_at = EXCLUDED.updated_at
"""

# The staged media this node holds already, and which of them are retracted and revived by the
# staged (newer) state: their PDQ hashes match again.
_MEDIA_HELD = """
SELECT m.id,
       m.retracted_at IS NOT NULL AND (m.origin_seq IS NULL OR m.origin_seq < s.origin_seq)
           AS revived
FROM sync_stage_media s
JOIN media m ON m.origin = $1 AND m.media_id = s.media_id
"""

_UPSERT_MEDIA = """
INSERT INTO media (origin, media_id, media_type, category_scheme, category_code, flags,
                   first_seen, origin_seq)
SELECT $1, s.media_id, s.media_type, s.category_scheme, s.category_code, s.flags, s.first_seen,
       s.origin_seq
FROM sync_stage_media s
ORDER BY s.media_id
ON CONFLICT (origin, media_id) DO UPDATE
SET media_type = EXCLUDED.media_type, category_scheme = EXCLUDED.category_scheme,
    category_code = EXCLUDED.category_code, flags = EXCLUDED.flags,
    first_seen = EXCLUDED.first_seen, origin_seq = EXCLUDED.origin_seq, retracted_at = NULL,
    updated_at = now()
WHERE media.origin_seq IS NULL OR media.origin_seq < EXCLUDED.origin_seq
RETURNING id, media_id
"""

# Series a media names before their own entry arrived: created bare (origin_seq NULL), so the
# series entry applies whenever it comes.
_CREATE_LINKED_SERIES = """
INSERT INTO series (origin, series_id)
SELECT DISTINCT $1, l.series_id
FROM sync_stage_links l JOIN media m ON m.origin = $1 AND m.media_id = l.media_id
WHERE m.id = ANY($2::bigint[])
ORDER BY 2
ON CONFLICT (origin, series_id) DO NOTHING
"""

_RELINK = """
WITH desired AS (
    SELECT m.id AS media_row, se.id AS series_row
    FROM sync_stage_links l
    JOIN media m ON m.origin = $1 AND m.media_id = l.media_id
    JOIN series se ON se.origin = $1 AND se.series_id = l.series_id
    WHERE m.id = ANY($2::bigint[])
), removed AS (
    DELETE FROM media_series ms
    WHERE ms.media_row = ANY($2::bigint[]) AND NOT EXISTS (
        SELECT 1 FROM desired d WHERE d.media_row = ms.media_row AND d.series_row = ms.series_row)
)
INSERT INTO media_series (media_row, series_row)
SELECT media_row, series_row FROM desired ORDER BY 1, 2
ON CONFLICT DO NOTHING
"""

_SIGNAL_COLUMNS = ("media_row", "algorithm", "value", "quality")

# Signals accumulate, as at the origin: a hash once true of a media stays true. (Staged: only
# those of media held before this batch, which may have some of them already.)
_INSERT_SIGNALS = """
INSERT INTO signals (media_row, algorithm, value, quality)
SELECT media_row, algorithm, value, quality FROM sync_stage_signals
ORDER BY algorithm, value, media_row
ON CONFLICT (algorithm, value, media_row) DO NOTHING
RETURNING media_row, algorithm, value, quality
"""

_MATCHABLE_PDQ_OF = """
SELECT media_row, value FROM signals
WHERE media_row = ANY($1::bigint[]) AND algorithm = 4 AND (quality IS NULL OR quality >= $2)
"""

_RETRACT = """
UPDATE media m
SET retracted_at = r.changed_at, origin_seq = r.origin_seq, updated_at = now()
FROM unnest($2::text[], $3::bigint[], $4::timestamptz[]) AS r(media_id, origin_seq, changed_at)
WHERE m.origin = $1 AND m.media_id = r.media_id
  AND (m.origin_seq IS NULL OR m.origin_seq < r.origin_seq)
RETURNING m.id
"""
