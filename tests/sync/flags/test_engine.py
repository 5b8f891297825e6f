"""The flag engine on real PostgreSQL, fed by an in-memory double of the linkage read API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.core.db.pool import Database
from services.sync.flags import store
from services.sync.flags.engine import CHUNK_EVENTS, EngineSettings, FlagEngine
from services.sync.flags.ids import FlagKind, already_identified_id, concurrent_work_id
from services.sync.flags.reader import MediaEvidence, SeriesLink, VictimSummary
from tests.sync.flags.linkage_double import InMemoryLinkage, series

NL_X = series(1, "nl-police", "x")
DE_Y = series(2, "de-bka", "y")
FR_Z = series(3, "fr-pn", "z")
SINCE = datetime(2026, 1, 2, tzinfo=UTC)
IDENTIFIED = VictimSummary(SINCE, False, False, ("desk-b",))
WORKING = VictimSummary(None, True, False, ())
NOTHING = VictimSummary(None, False, True, ())


def engine(database: Database, linkage: InMemoryLinkage, node: str = "nl-police") -> FlagEngine:
    return FlagEngine(database=database, reader=linkage, settings=EngineSettings(node_id=node))


def linked(a: Any, b: Any, media: int = 5) -> SeriesLink:
    return SeriesLink(a, b, True, media, 2, media - 2, 4, 1)


async def events(database: Database) -> list[store.FlagEventRow]:
    async with database.connection() as conn:
        return await store.events_after(conn, after_event=0, limit=1000)


async def test_already_identified_is_raised_once(database: Database) -> None:
    linkage = InMemoryLinkage(victims={1: NOTHING, 2: IDENTIFIED})
    linkage.link(linked(NL_X, DE_Y))
    result = await engine(database, linkage).catch_up()
    assert (result.events, result.raised) == (2, 1)
    [event] = await events(database)
    assert event.kind is store.EventKind.RAISED
    flag = event.flag
    assert flag.flag.id == already_identified_id(NL_X, DE_Y)
    assert flag.flag.kind is FlagKind.ALREADY_IDENTIFIED
    assert flag.flag.identified_desk == "desk-b" and flag.flag.identified_since == SINCE
    assert flag.state is store.FlagState.OPEN

    # A rebuild re-emits every event: nothing is raised again.
    linkage.touch(1, 2, 1)
    again = await engine(database, linkage).catch_up()
    assert (again.events, again.raised, again.evidence_changed) == (3, 0, 0)
    assert len(await events(database)) == 1


async def test_changed_evidence_updates_in_place(database: Database) -> None:
    linkage = InMemoryLinkage(victims={1: WORKING, 2: WORKING})
    linkage.link(linked(NL_X, DE_Y))
    await engine(database, linkage).catch_up()
    linkage.link(linked(NL_X, DE_Y, media=9))
    result = await engine(database, linkage).catch_up()
    assert (result.raised, result.evidence_changed) == (0, 1)
    kinds = [e.kind for e in await events(database)]
    assert kinds == [store.EventKind.RAISED, store.EventKind.EVIDENCE_CHANGED]
    async with database.connection() as conn:
        flag = await store.get_flag(conn, flag_id=concurrent_work_id(NL_X, DE_Y))
    assert flag.flag.evidence.linked_media == 9


async def test_flags_not_involving_this_agency_are_not_kept(database: Database) -> None:
    linkage = InMemoryLinkage(victims={2: NOTHING, 3: IDENTIFIED})
    linkage.link(linked(DE_Y, FR_Z))
    result = await engine(database, linkage).catch_up()
    assert (result.events, result.raised) == (2, 0)
    assert await events(database) == []
    # The cursor moved on all the same.
    async with database.transaction() as conn:
        assert await store.linkage_cursor(conn) == 2


async def test_new_material_is_kept_by_both_agencies(database: Database, db_pool: Any) -> None:
    linkage = InMemoryLinkage(
        victims={1: NOTHING, 2: WORKING},
        media={1: {"de-bka": MediaEvidence(4, 0, 7), "nl-police": MediaEvidence(9, 9, 0)}},
    )
    linkage.link(SeriesLink(NL_X, DE_Y, False, 1, 0, 1, 30, 1))
    await engine(database, linkage, node="de-bka").catch_up()
    [event] = await events(database)
    assert event.flag.flag.kind is FlagKind.NEW_MATERIAL
    assert event.flag.flag.other_series is None
    assert event.flag.flag.other_agency == "de-bka"
    assert event.flag.flag.evidence.near_media == 4


async def test_many_events_are_consumed_in_chunks(database: Database) -> None:
    linkage = InMemoryLinkage(victims={1: NOTHING, 2: IDENTIFIED})
    linkage.link(linked(NL_X, DE_Y))
    linkage.touch(*([1] * (CHUNK_EVENTS + 10)))
    result = await engine(database, linkage).catch_up()
    assert (result.events, result.raised) == (CHUNK_EVENTS + 12, 1)
    async with database.transaction() as conn:
        assert await store.linkage_cursor(conn) == CHUNK_EVENTS + 12
