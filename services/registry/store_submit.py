"""How a batch of this node's own media is written (RegistryStore.submit_media_batch holds the
lock, reads what is held, checks limits and permissions, then calls `write_batch`).

The batch's media rows are known once the new ones are inserted (the held ones were read under
the change-log lock), so every later statement addresses rows by id and never joins the batch to
`media` by its text key, whose plan depends on statistics that lag a bulk load (with stale
statistics such a join read every media of the origin, once per batch). What is new is written
with COPY straight into its table: a media just created has no signal, series link or case
record yet, so nothing can conflict. What extends a held media goes through `unnest` with
ON CONFLICT DO NOTHING, which returns what was really added. The full state of a created media
is known without reading it back (services.registry.store_rows.created_record); only held media
that changed are read for their change-log entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.core.algorithms import Algorithm, distinct_signals
from services.core.changelog.store import append_entries
from services.registry import change_entries
from services.registry import store_sql as sql
from services.registry.cases import CaseSealer
from services.registry.model import MediaRecord, MediaSubmission, PdqEntry
from services.registry.store_rows import (
    FoldedBatch,
    created_record,
    matchable_entries,
    media_record,
    sealed_cases,
)


@dataclass(frozen=True)
class Written:
    created: set[int]
    # Rows created or changed.
    changed: set[int]
    # PDQ values that became matchable.
    entries: list[PdqEntry]


async def write_batch(
    conn: Any,
    *,
    origin: str,
    sealer: CaseSealer | None,
    media: Sequence[MediaSubmission],
    folded: FoldedBatch,
    before: dict[str, MediaRecord],
) -> Written:
    """Store `media` (none retracted; `before`: the held ones' states) and log every media
    created or changed, with the series the batch created."""
    new = [m for m in media if m.media_id not in before]
    held = [m for m in media if m.media_id in before]
    await conn.execute(sql.CREATE_STAGING)
    await conn.copy_records_to_table(
        "registry_staged_media",
        records=[_staged_media(m, before) for m in media],
    )
    created_rows = await conn.fetch(sql.INSERT_NEW_MEDIA, origin) if new else []
    row_of = {r["media_id"]: r["id"] for r in created_rows}
    first_seen = {r["id"]: r["first_seen"] for r in created_rows}
    row_of.update({m.media_id: before[m.media_id].row_id for m in held})
    merged = {r["id"] for r in await conn.fetch(sql.MERGE_MEDIA)} if held else set()
    series_row, new_series = await _series_rows(conn, origin, media)

    created_states = [
        created_record(origin, row_of[m.media_id], first_seen[row_of[m.media_id]], m) for m in new
    ]
    await _copy_new(conn, created_states, series_row)
    linked = await _link_held(conn, held, row_of, series_row)
    added = await _add_held_signals(conn, held, row_of)
    await _store_cases(conn, folded, row_of, sealer)

    created = {r.row_id for r in created_states}
    changed_held = merged | linked | {r["media_row"] for r in added}
    if untouched := sorted(changed_held - merged):
        await conn.execute(sql.TOUCH_MEDIA, untouched)
    states = list(created_states)
    if changed_held:
        rows = await conn.fetch(sql.MEDIA_STATES, sorted(changed_held))
        states.extend(media_record(r) for r in rows)
    states.sort(key=lambda r: r.media_id)
    await append_entries(
        conn,
        [
            *change_entries.new_series(origin, new_series),
            *change_entries.media_changes(states, before),
        ],
    )
    pdq = [
        PdqEntry(r.row_id, s.value)
        for r in created_states
        for s in r.signals
        if s.algorithm == Algorithm.PDQ and s.matchable()
    ]
    entries = sorted({*pdq, *matchable_entries(added, [])}, key=lambda e: (e.row_id, e.value))
    return Written(created, created | changed_held, entries)


def _staged_media(item: MediaSubmission, before: dict[str, MediaRecord]) -> tuple[Any, ...]:
    held = before.get(item.media_id)
    return (
        held.row_id if held else None,
        item.media_id,
        int(item.media_type) if item.media_type is not None else None,
        int(item.category.scheme) if item.category else None,
        item.category.code if item.category else None,
        item.flags.to_bits(),
    )


async def _series_rows(
    conn: Any, origin: str, media: Sequence[MediaSubmission]
) -> tuple[dict[str, int], list[str]]:
    """Row ids of every series the batch names, creating the missing ones (unnamed)."""
    wanted = sorted({s for m in media for s in m.series_ids})
    if not wanted:
        return {}, []
    rows = {r["series_id"]: r["id"] for r in await conn.fetch(sql.SERIES_ROWS_OF, origin, wanted)}
    missing = [s for s in wanted if s not in rows]
    if missing:
        for r in await conn.fetch(sql.CREATE_SERIES, origin, missing):
            rows[r["series_id"]] = r["id"]
    return rows, missing


async def _copy_new(conn: Any, created: Sequence[MediaRecord], series_row: dict[str, int]) -> None:
    """Signals and series links of media just created: nothing of theirs exists to conflict."""
    if not created:
        return
    signals = [(r.row_id, int(s.algorithm), s.value, s.quality) for r in created for s in r.signals]
    await conn.copy_records_to_table(
        "signals", records=signals, columns=("media_row", "algorithm", "value", "quality")
    )
    links = [(r.row_id, series_row[s]) for r in created for s in r.series_ids]
    if links:
        await conn.copy_records_to_table(
            "media_series", records=links, columns=("media_row", "series_row")
        )


async def _link_held(
    conn: Any,
    held: Sequence[MediaSubmission],
    row_of: dict[str, int],
    series_row: dict[str, int],
) -> set[int]:
    links = sorted({(row_of[m.media_id], series_row[s]) for m in held for s in m.series_ids})
    if not links:
        return set()
    rows = await conn.fetch(sql.ADD_SERIES_LINKS, [a for a, _ in links], [b for _, b in links])
    return {r["media_row"] for r in rows}


async def _add_held_signals(
    conn: Any, held: Sequence[MediaSubmission], row_of: dict[str, int]
) -> list[Any]:
    """The signals a held media did not have yet, as rows (media_row, algorithm, value,
    quality); a value it had keeps the quality it was first stored with."""
    signals = [
        (row_of[m.media_id], int(s.algorithm), s.value, s.quality)
        for m in held
        for s in distinct_signals(m.signals)
    ]
    if not signals:
        return []
    columns = list(zip(*signals, strict=True))
    return list(
        await conn.fetch(
            sql.INSERT_SIGNALS,
            list(columns[0]),
            list(columns[1]),
            list(columns[2]),
            list(columns[3]),
        )
    )


async def _store_cases(
    conn: Any, folded: FoldedBatch, row_of: dict[str, int], sealer: CaseSealer | None
) -> None:
    """Each distinct case of each media of the batch once (the retracted ones, left out of the
    batch, are not in `row_of` and keep no new case)."""
    cases = [
        (row_of[media_id], digest, box)
        for media_id, digest, box in sealed_cases(folded.cases, sealer)
        if media_id in row_of
    ]
    if cases:
        columns = list(zip(*cases, strict=True))
        await conn.execute(sql.INSERT_CASES, list(columns[0]), list(columns[1]), list(columns[2]))
