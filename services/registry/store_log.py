"""The change-log half of the registry store: the statements that append, in the transaction of
each local change, the ChangeEntry rows peers replay (services/sync reads and serves them).

Every writing transaction takes CHANGE_LOG_LOCK first (a transaction-scoped advisory lock) and
numbers its entries max(seq) + 1 onwards in a statement issued after the lock, so a later seq is
never committed before an earlier one and a reader that sees seq N sees every seq below it.
Taking the lock first also serialises this node's writers, so the state read back for an entry
is exactly the state the transaction leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.registry.convert import media_to_proto
from services.registry.model import MediaRecord, SeriesRecord
from services.registry.store_rows import media_record
from services.sync.changelog import EntryKind, media_entry, retraction_entry, series_entry

# Any fixed number shared by every writer of the log ("hxlog" in ASCII).
CHANGE_LOG_LOCK = 0x68786C6F67

EntryEncoder = Callable[[int, datetime], bytes]


@dataclass(frozen=True)
class PendingEntry:
    """An entry to append once its seq is known: the log kind, how to encode it for a seq and
    time, and (retractions) the media as it stood, for the sender's policy filter."""

    kind: int
    encode: EntryEncoder
    media_before: bytes | None = None


async def lock_change_log(conn: Any) -> None:
    await conn.execute(_LOCK, CHANGE_LOG_LOCK)


async def append_entries(conn: Any, entries: Sequence[PendingEntry]) -> int:
    """Append `entries` in order (the caller holds the lock); returns the last seq written."""
    head = await conn.fetchrow(_HEAD)
    last, now = int(head["last_seq"]), head["now"]
    if not entries:
        return last
    records = [
        (seq, now, entry.kind, entry.encode(seq, now), entry.media_before)
        for seq, entry in enumerate(entries, start=last + 1)
    ]
    await conn.copy_records_to_table("change_log", records=records, columns=_COLUMNS)
    return last + len(records)


async def media_states(conn: Any, row_ids: Sequence[int]) -> list[MediaRecord]:
    """Full state of these media (retracted or not), ordered by media id."""
    if not row_ids:
        return []
    rows = await conn.fetch(_MEDIA_STATES, list(row_ids))
    return [media_record(r) for r in rows]


_COLUMNS = ("seq", "changed_at", "kind", "entry", "media_before")

_LOCK = "SELECT pg_advisory_xact_lock($1)"

# A statement of its own after the lock, so its snapshot sees every entry committed before.
_HEAD = "SELECT coalesce(max(seq), 0) AS last_seq, now() AS now FROM change_log"

MEDIA_SELECT = """
SELECT m.id, m.origin, m.media_id, m.media_type, m.category_scheme, m.category_code, m.flags,
       m.first_seen, sg.algorithms, sg.sig_values, sg.qualities,
       ARRAY(SELECT se.series_id FROM media_series ms JOIN series se ON se.id = ms.series_row
             WHERE ms.media_row = m.id ORDER BY se.series_id) AS series_ids
FROM media m
LEFT JOIN LATERAL (
    SELECT array_agg(s.algorithm ORDER BY s.algorithm, s.value) AS algorithms,
           array_agg(s.value ORDER BY s.algorithm, s.value) AS sig_values,
           array_agg(s.quality ORDER BY s.algorithm, s.value) AS qualities
    FROM signals s WHERE s.media_row = m.id
) sg ON true
"""

_MEDIA_STATES = MEDIA_SELECT + "WHERE m.id = ANY($1::bigint[]) ORDER BY m.media_id"


def pending_media_entries(
    records: Sequence[MediaRecord], before: Mapping[str, MediaRecord]
) -> list[PendingEntry]:
    """Media states to log; a media the node held before carries that earlier state too."""

    def encode(record: MediaRecord) -> Any:
        return lambda seq, moment: media_entry(seq, moment, record)

    return [
        PendingEntry(
            EntryKind.MEDIA,
            encode(r),
            media_before=(
                media_to_proto(before[r.media_id]).SerializeToString()
                if r.media_id in before
                else None
            ),
        )
        for r in records
    ]


def pending_retractions(records: Sequence[MediaRecord]) -> list[PendingEntry]:
    def encode(media_id: str) -> Any:
        return lambda seq, moment: retraction_entry(seq, moment, media_id)

    return [
        PendingEntry(
            EntryKind.RETRACTION,
            encode(r.media_id),
            media_before=media_to_proto(r).SerializeToString(),
        )
        for r in records
    ]


def pending_series_entry(record: SeriesRecord) -> PendingEntry:
    return PendingEntry(EntryKind.SERIES, lambda seq, moment: series_entry(seq, moment, record))
