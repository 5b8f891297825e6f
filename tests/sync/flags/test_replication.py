"""Flag state changes replicate through the change log to the flag's other agency only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.sync.flags.engine import EngineSettings, FlagEngine
from services.sync.flags.ids import already_identified_id
from services.sync.flags.reader import SeriesRef
from services.sync.flags.states import FlagStates
from services.sync.policy import SharingPolicy
from tests.store_calls import database_of
from tests.sync.federation_harness import two_nodes
from tests.sync.flags.linkage_double import InMemoryLinkage
from tests.sync.flags.test_engine import IDENTIFIED, NOTHING, linked
from tests.sync.test_pull import puller

GB_X = SeriesRef(1, "gb-nca", "x")
US_Y = SeriesRef(2, "us-fbi", "y")
DE_Z = SeriesRef(3, "de-bka", "z")


async def test_a_state_change_reaches_only_the_other_agency(
    db_pool: Any, second_pool: Any, tmp_path: Path
) -> None:
    async with two_nodes(db_pool, second_pool, tmp_path) as (origin, receiver):
        origin.set_policy("us-fbi", SharingPolicy())
        gb = database_of(db_pool)
        linkage = InMemoryLinkage(victims={1: NOTHING, 2: IDENTIFIED, 3: IDENTIFIED})
        linkage.link(linked(GB_X, US_Y))
        linkage.link(linked(GB_X, DE_Z))
        settings = EngineSettings(node_id="gb-nca")
        assert (
            await FlagEngine(database=gb, reader=linkage, settings=settings).catch_up()
        ).raised == 2
        with_us, with_de = already_identified_id(GB_X, US_Y), already_identified_id(GB_X, DE_Z)
        states = FlagStates(database=gb, node_id="gb-nca")
        await states.set_state(flag_id=with_us, state=3, caller="unit:vid")
        await states.set_state(flag_id=with_de, state=2, caller="unit:vid")

        assert await puller(receiver).pull_once() >= 1
        rows = await second_pool.fetch("SELECT flag_id, state, changed_by, caller FROM flag_states")
        # Kept although us-fbi has not raised the flag (yet); the DE flag's state never came.
        assert [tuple(r) for r in rows] == [(with_us, 3, "gb-nca", None)]
        quarantined = await second_pool.fetchval("SELECT count(*) FROM sync_quarantine")
        assert quarantined == 0
