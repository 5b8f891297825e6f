"""Flag states: set by this node's units, learned from the other agency's entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.core.changelog import store as changelog
from services.core.changelog.store import EntryKind
from services.core.db.pool import Database
from services.core.errors import InvalidArgument, NotFound
from services.sync.entries import (
    ReplicatedFlagState,
    decode_entry,
    flag_state_entry,
    parse_entry,
)
from services.sync.flags import store
from services.sync.flags.engine import EngineSettings, FlagEngine
from services.sync.flags.ids import already_identified_id
from services.sync.flags.states import FlagStates, apply_replicated_states
from services.sync.flags.store import FlagState
from tests.sync.flags.linkage_double import InMemoryLinkage
from tests.sync.flags.test_engine import DE_Y, IDENTIFIED, NL_X, NOTHING, linked

FLAG_ID = already_identified_id(NL_X, DE_Y)
T0 = datetime(2026, 3, 1, tzinfo=UTC)


async def raise_flag(database: Database) -> None:
    linkage = InMemoryLinkage(victims={1: NOTHING, 2: IDENTIFIED})
    linkage.link(linked(NL_X, DE_Y))
    settings = EngineSettings(node_id="nl-police")
    await FlagEngine(database=database, reader=linkage, settings=settings).catch_up()


def states(database: Database) -> FlagStates:
    return FlagStates(database=database, node_id="nl-police")


async def events(database: Database) -> list[store.FlagEventRow]:
    async with database.connection() as conn:
        return await store.events_after(conn, after_event=0, limit=100)


async def test_a_units_change_is_stored_evented_and_logged_for_the_other_agency(
    database: Database,
) -> None:
    await raise_flag(database)
    flag = await states(database).set_state(
        flag_id=FLAG_ID, state=2, caller="unit:vid", note="desk B called"
    )
    assert flag.state is FlagState.ACKNOWLEDGED
    async with database.connection() as conn:
        row = await conn.fetchrow("SELECT caller, note FROM flag_states")
    assert (row["caller"], row["note"]) == ("unit:vid", "desk B called")
    assert flag.state_change is not None and flag.state_change.changed_by == "nl-police"
    assert [e.kind for e in await events(database)][-1] is store.EventKind.STATE_CHANGED
    async with database.connection() as conn:
        [row] = await changelog.read_page(conn, after_seq=0, limit=10)
    assert row.kind is EntryKind.FLAG_STATE and row.media_before == b"de-bka"
    entry = decode_entry(row.entry)
    assert entry.flag_state.flag_id == FLAG_ID and entry.flag_state.state == 2


@pytest.mark.parametrize(
    ("flag_id", "state", "error", "says"),
    [
        ("abc", 2, InvalidArgument, "64 lowercase hex"),
        (FLAG_ID.upper(), 2, InvalidArgument, "64 lowercase hex"),
        (FLAG_ID, 0, InvalidArgument, "not a flag state"),
        (FLAG_ID, 9, InvalidArgument, "not a flag state"),
        ("b" * 64, 2, NotFound, "no flag"),
    ],
)
async def test_bad_changes_are_refused_and_store_nothing(
    database: Database, flag_id: str, state: int, error: type[Exception], says: str
) -> None:
    await raise_flag(database)
    with pytest.raises(error, match=says):
        await states(database).set_state(flag_id=flag_id, state=state, caller="analyst-1")
    async with database.connection() as conn:
        assert await changelog.read_page(conn, after_seq=0, limit=10) == []
    assert len(await events(database)) == 1


async def apply(database: Database, origin: str, *changes: ReplicatedFlagState) -> int:
    async with database.transaction() as conn:
        return await apply_replicated_states(conn, origin=origin, states=changes)


async def test_the_newest_replicated_state_is_kept(database: Database) -> None:
    await raise_flag(database)
    newer = ReplicatedFlagState(1, T0 + timedelta(hours=1), FLAG_ID, 3)
    older = ReplicatedFlagState(2, T0, FLAG_ID, 2)
    assert await apply(database, "de-bka", newer, older) == 1
    async with database.connection() as conn:
        flag = await store.get_flag(conn, flag_id=FLAG_ID)
    assert flag.state is FlagState.RESOLVED
    assert flag.state_change is not None and flag.state_change.changed_by == "de-bka"
    kinds = [e.kind for e in await events(database)]
    assert kinds == [store.EventKind.RAISED, store.EventKind.STATE_CHANGED]
    # The same moment: the greater origin wins, whichever arrives first.
    assert await apply(database, "fr-pn", ReplicatedFlagState(1, newer.changed_at, FLAG_ID, 1))
    assert not await apply(database, "de-bka", newer)


async def test_a_state_for_a_flag_not_raised_yet_is_kept_for_its_raise(
    database: Database,
) -> None:
    assert await apply(database, "de-bka", ReplicatedFlagState(1, T0, FLAG_ID, 2)) == 1
    assert await events(database) == []
    await raise_flag(database)
    [raised] = await events(database)
    assert raised.kind is store.EventKind.RAISED
    assert raised.flag.state is FlagState.ACKNOWLEDGED


@pytest.mark.parametrize(
    ("flag_id", "state", "says"),
    [("nope", 2, "64 lowercase hex"), ("a" * 64, 0, "not a flag state"), ("a" * 64, 7, "not")],
)
def test_a_malformed_flag_state_entry_is_refused(flag_id: str, state: int, says: str) -> None:
    data = flag_state_entry(4, T0, flag_id=flag_id, state=state)
    with pytest.raises(InvalidArgument, match=says):
        parse_entry(data, origin="de-bka")


def test_a_flag_state_entry_parses() -> None:
    data = flag_state_entry(4, T0, flag_id="a" * 64, state=3)
    assert parse_entry(data, origin="de-bka") == ReplicatedFlagState(4, T0, "a" * 64, 3)
