"""Flag states (docs/linkage.md "States"): set by this node's units, or learned from the other
agency's FlagState entries; the newest per flag (changed_at, then origin) is kept.

A unit's change is one transaction: the state, a STATE_CHANGED event and a FlagState entry of
this node's change log (told only to the flag's other agency, services/sync/policy_filter.py).
The call itself is audited by the gateway like every call; the unit's note is kept with the
state here and never replicated. Locks are taken change log first,
then flag events, everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from services.core.changelog import store as changelog
from services.core.changelog.store import EntryKind, PendingEntry
from services.core.db.pool import Database
from services.core.errors import InvalidArgument
from services.sync.entries import ReplicatedFlagState, flag_state_entry
from services.sync.flags import store
from services.sync.flags.ids import check_flag_id
from services.sync.flags.store import FlagState, StateChange, StoredFlag


def check_state(number: int) -> FlagState:
    """A state a unit may set: OPEN, ACKNOWLEDGED or RESOLVED; InvalidArgument otherwise."""
    try:
        return FlagState(number)
    except ValueError:
        raise InvalidArgument(
            f"state: {number} is not a flag state (OPEN, ACKNOWLEDGED or RESOLVED)"
        ) from None


class FlagStates:
    def __init__(self, *, database: Database, node_id: str) -> None:
        self._db = database
        self._node_id = node_id

    async def set_state(
        self, *, flag_id: str, state: int, caller: str, note: str | None = None
    ) -> StoredFlag:
        """A unit of this node sets a held flag's state; NotFound when it is not held here."""
        flag_id = check_flag_id(flag_id)
        value = check_state(state)
        async with self._db.transaction() as conn:
            held = await store.get_flag(conn, flag_id=flag_id)
            told_to = _other_agency(held, self._node_id)
            await changelog.lock_change_log(conn)
            moments: list[datetime] = []

            def encode(seq: int, moment: datetime) -> bytes:
                moments.append(moment)
                return flag_state_entry(seq, moment, flag_id=flag_id, state=int(value))

            pending = PendingEntry(EntryKind.FLAG_STATE, encode, media_before=told_to.encode())
            await changelog.append_entries(conn, [pending])
            change = StateChange(value, moments[0], self._node_id)
            await store.lock_events(conn)
            await store.keep_newest_state(
                conn, flag_id=flag_id, change=change, caller=caller, note=note
            )
            await store.append_event(
                conn, flag_id=flag_id, kind=store.EventKind.STATE_CHANGED, at=moments[0]
            )
            return await store.get_flag(conn, flag_id=flag_id)


def _other_agency(held: StoredFlag, node_id: str) -> str:
    """The agency involved that is not this node: the one peer a state change is told to."""
    flag = held.flag
    return flag.other_agency if flag.series.origin == node_id else flag.series.origin


async def apply_replicated_states(
    conn: Any, *, origin: str, states: Sequence[ReplicatedFlagState]
) -> int:
    """Keep each peer state change that is newest for its flag (also for a flag not raised here:
    it takes that state when raised); a STATE_CHANGED event for each raised flag it changed.
    Returns how many were kept."""
    if not states:
        return 0
    kept = 0
    await store.lock_events(conn)
    for s in states:
        change = StateChange(FlagState(s.state), s.changed_at, origin)
        if not await store.keep_newest_state(conn, flag_id=s.flag_id, change=change, caller=None):
            continue
        kept += 1
        if await store.is_raised(conn, flag_id=s.flag_id):
            await store.append_event(
                conn, flag_id=s.flag_id, kind=store.EventKind.STATE_CHANGED, at=s.changed_at
            )
    return kept
