"""Every SQL statement of the flags (sync migration 0007) as functions taking the caller's
connection, so the engine and SetFlagState own their transactions.

Events are appended only under `lock_events` (a transaction-scoped advisory lock): ids are
assigned and committed in the same order, so a watcher that read up to id N never later finds
an id below N committed (WatchFlags resumes from the last id without missing or repeating).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

from services.core.errors import NotFound
from services.sync.flags.derive import DerivedFlag, Evidence
from services.sync.flags.ids import FlagKind
from services.sync.flags.reader import SeriesRef

# The advisory lock key of flag event writers ("hxflag").
FLAG_EVENTS_LOCK = 0x6878666C6167
# Delivered at commit: watchers wake and read the events after their cursor.
FLAG_EVENTS_CHANNEL = "hashex_flag_events"
# The most flags one listing returns, and its default.
MAX_FLAGS_LISTED = 1_000
DEFAULT_FLAGS_LISTED = 100

KIND_NUMBER = {
    FlagKind.ALREADY_IDENTIFIED: 1,
    FlagKind.CONCURRENT_WORK: 2,
    FlagKind.NEW_MATERIAL: 3,
}
KIND_OF_NUMBER = {n: k for k, n in KIND_NUMBER.items()}


class FlagState(IntEnum):
    """The `state` column: the FlagStateValue numbers of flags.proto."""

    OPEN = 1
    ACKNOWLEDGED = 2
    RESOLVED = 3


class EventKind(IntEnum):
    """The `kind` column of flag_events: the FlagEventKind numbers of flags.proto."""

    RAISED = 1
    EVIDENCE_CHANGED = 2
    STATE_CHANGED = 3


@dataclass(frozen=True)
class StateChange:
    state: FlagState
    changed_at: datetime
    changed_by: str


@dataclass(frozen=True)
class StoredFlag:
    flag: DerivedFlag
    raised_at: datetime
    updated_at: datetime
    # None: never changed (OPEN).
    state_change: StateChange | None

    @property
    def state(self) -> FlagState:
        return self.state_change.state if self.state_change else FlagState.OPEN


@dataclass(frozen=True)
class FlagEventRow:
    id: int
    kind: EventKind
    at: datetime
    flag: StoredFlag


# --- the engine's cursor over the registry's linkage events ------------------------------


async def linkage_cursor(conn: Any) -> int:
    """The last linkage event consumed, locked for the caller's transaction (one engine runs)."""
    return int(await conn.fetchval(_CURSOR))


async def advance_linkage_cursor(conn: Any, *, last_event_id: int) -> None:
    await conn.execute(_SET_CURSOR, last_event_id)


# --- raising ---------------------------------------------------------------------------------


async def lock_events(conn: Any) -> None:
    """Take the event writers' lock for the rest of the caller's transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", FLAG_EVENTS_LOCK)


async def stored_evidence(conn: Any, *, flag_ids: Sequence[str]) -> dict[str, Evidence]:
    rows = await conn.fetch(_EVIDENCE, list(flag_ids))
    return {
        r["id"]: Evidence(
            r["linked_media"], r["exact_media"], r["near_media"], r["closest_distance"]
        )
        for r in rows
    }


async def insert_flag(conn: Any, *, flag: DerivedFlag, at: datetime) -> None:
    other = flag.other_series
    await conn.execute(
        _INSERT,
        flag.id,
        KIND_NUMBER[flag.kind],
        flag.series.origin,
        flag.series.series_id,
        other.origin if other else None,
        other.series_id if other else None,
        flag.other_agency,
        flag.evidence.linked_media,
        flag.evidence.exact_media,
        flag.evidence.near_media,
        flag.evidence.closest_distance,
        flag.identified_agency,
        flag.identified_desk,
        flag.identified_since,
        at,
    )


async def update_evidence(conn: Any, *, flag: DerivedFlag, at: datetime) -> None:
    """The evidence and identification detail of a raised flag, in place."""
    await conn.execute(
        _UPDATE,
        flag.id,
        flag.evidence.linked_media,
        flag.evidence.exact_media,
        flag.evidence.near_media,
        flag.evidence.closest_distance,
        flag.identified_agency,
        flag.identified_desk,
        flag.identified_since,
        at,
    )


async def append_event(conn: Any, *, flag_id: str, kind: EventKind, at: datetime) -> int:
    """Append one event (the caller holds `lock_events`); watchers are told at commit."""
    event_id = int(await conn.fetchval(_APPEND_EVENT, flag_id, int(kind), at))
    await conn.execute("SELECT pg_notify($1, $2)", FLAG_EVENTS_CHANNEL, str(event_id))
    return event_id


# --- states ------------------------------------------------------------------------------------


async def keep_newest_state(
    conn: Any, *, flag_id: str, change: StateChange, caller: str | None, note: str | None = None
) -> bool:
    """Store `change` unless a newer one (changed_at, then origin) is held; True if stored."""
    stored = await conn.fetchval(
        _UPSERT_STATE,
        flag_id,
        int(change.state),
        change.changed_at,
        change.changed_by,
        caller,
        note,
    )
    return bool(stored)


async def is_raised(conn: Any, *, flag_id: str) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM flags WHERE id = $1)", flag_id))


# --- reading ---------------------------------------------------------------------------------


async def get_flag(conn: Any, *, flag_id: str) -> StoredFlag:
    row = await conn.fetchrow(_SELECT_FLAG + " WHERE f.id = $1", flag_id)
    if row is None:
        raise NotFound(f"no flag {flag_id} is held here")
    return _stored(row)


async def list_flags(
    conn: Any,
    *,
    kind: FlagKind | None,
    state: FlagState | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> list[StoredFlag]:
    """Newest raised first (raised_at, then id, descending), after the key `after`."""
    rows = await conn.fetch(
        _LIST,
        KIND_NUMBER[kind] if kind else None,
        int(state) if state else None,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [_stored(r) for r in rows]


async def events_after(conn: Any, *, after_event: int, limit: int) -> list[FlagEventRow]:
    rows = await conn.fetch(_EVENTS_AFTER, after_event, limit)
    return [
        FlagEventRow(r["event_id"], EventKind(r["event_kind"]), r["event_at"], _stored(r))
        for r in rows
    ]


async def last_event_id(conn: Any) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM flag_events"))


def _stored(r: Any) -> StoredFlag:
    series = SeriesRef(0, r["series_origin"], r["series_id"])
    other = (
        SeriesRef(0, r["other_origin"], r["other_series_id"])
        if r["other_origin"] is not None
        else None
    )
    flag = DerivedFlag(
        id=r["id"],
        kind=KIND_OF_NUMBER[r["kind"]],
        series=series,
        other_series=other,
        other_agency=r["other_agency"],
        evidence=Evidence(
            r["linked_media"], r["exact_media"], r["near_media"], r["closest_distance"]
        ),
        identified_agency=r["identified_agency"],
        identified_desk=r["identified_desk"],
        identified_since=r["identified_since"],
    )
    change = (
        StateChange(FlagState(r["state"]), r["changed_at"], r["changed_by"])
        if r["state"] is not None
        else None
    )
    return StoredFlag(flag, r["raised_at"], r["updated_at"], change)


_CURSOR = "SELECT last_event_id FROM flag_linkage_cursor FOR UPDATE"
_SET_CURSOR = "UPDATE flag_linkage_cursor SET last_event_id = $1"
_EVIDENCE = """
SELECT id, linked_media, exact_media, near_media, closest_distance
FROM flags WHERE id = ANY($1::text[])
"""
_INSERT = """
INSERT INTO flags (id, kind, series_origin, series_id, other_origin, other_series_id,
                   other_agency, linked_media, exact_media, near_media, closest_distance,
                   identified_agency, identified_desk, identified_since, raised_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)
"""
_UPDATE = """
UPDATE flags SET linked_media = $2, exact_media = $3, near_media = $4, closest_distance = $5,
                 identified_agency = $6, identified_desk = $7, identified_since = $8,
                 updated_at = $9
WHERE id = $1
"""
_APPEND_EVENT = "INSERT INTO flag_events (flag_id, kind, at) VALUES ($1, $2, $3) RETURNING id"
_UPSERT_STATE = """
INSERT INTO flag_states AS s (flag_id, state, changed_at, changed_by, caller, note)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (flag_id) DO UPDATE
SET state = EXCLUDED.state, changed_at = EXCLUDED.changed_at,
    changed_by = EXCLUDED.changed_by, caller = EXCLUDED.caller, note = EXCLUDED.note
WHERE (EXCLUDED.changed_at, EXCLUDED.changed_by) > (s.changed_at, s.changed_by)
RETURNING true
"""
_COLUMNS = """
f.id, f.kind, f.series_origin, f.series_id, f.other_origin, f.other_series_id, f.other_agency,
f.linked_media, f.exact_media, f.near_media, f.closest_distance, f.identified_agency,
f.identified_desk, f.identified_since, f.raised_at, f.updated_at,
s.state, s.changed_at, s.changed_by
"""
# Built from constants only.
_SELECT_FLAG = f"SELECT {_COLUMNS} FROM flags f LEFT JOIN flag_states s ON s.flag_id = f.id"  # noqa: S608
_LIST = f"""
{_SELECT_FLAG}
WHERE ($1::smallint IS NULL OR f.kind = $1)
  AND ($2::smallint IS NULL OR coalesce(s.state, 1) = $2)
  AND ($3::timestamptz IS NULL OR (f.raised_at, f.id) < ($3, $4::text))
ORDER BY f.raised_at DESC, f.id DESC
LIMIT $5
"""
_EVENTS_AFTER = (
    f"SELECT e.id AS event_id, e.kind AS event_kind, e.at AS event_at, {_COLUMNS}"  # noqa: S608
    """
FROM flag_events e
JOIN flags f ON f.id = e.flag_id
LEFT JOIN flag_states s ON s.flag_id = f.id
WHERE e.id > $1
ORDER BY e.id
LIMIT $2
"""
)
