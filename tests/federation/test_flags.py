"""Overlap flags across three agencies on loopback with real TLS, end to end: submissions and
victim status replicate, each node's linker links what it holds, its flag engine raises the
flags its agency is involved in, and states set at one agency reach the other. The material is
tests/federation/flag_material.py's.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from hashex.v1 import flags_pb2
from services.sync.flags.ids import already_identified_id, new_material_id
from services.sync.flags.reader import SeriesRef
from services.sync.policy import SharingPolicy
from tests.federation.flag_material import (
    AI,
    DE,
    EXPECTED,
    GB,
    GB_DESK,
    IDENTIFIED,
    NM_FIR_GB,
    OAK,
    US,
    WILLOW,
    FlagMaterial,
    flag_ids,
    set_flag_state,
    victim,
)
from tests.federation.harness import federation
from tests.registry.node_harness import flip_bits, pdq, submission
from tests.waiting import wait_for


async def test_each_flag_arises_once_at_both_agencies_and_states_replicate(
    pg_server: Any, tmp_path: Path
) -> None:
    rng = random.Random(11)
    async with federation([GB, US, DE], tmp_path, pg_server) as fed:
        gb, us, de = fed[GB], fed[US], fed[DE]
        gb.set_policy(US, SharingPolicy(disclose_desk=True))
        await FlagMaterial.drawn(rng).submit_all(gb, us, de)

        async def raised() -> bool:
            for node_id, want in EXPECTED.items():
                if set(await flag_ids(fed[node_id])) != want:
                    return False
            return True

        await wait_for(raised, 90, "every flag raised at both agencies")
        at_us = await flag_ids(us)
        already = at_us[AI]
        assert already.kind == flags_pb2.FLAG_KIND_ALREADY_IDENTIFIED
        assert (already.series.series_id, already.other_series.series_id) == ("us-oak", "gb-willow")
        assert already.identified_agency == GB
        assert already.identified_desk == GB_DESK
        assert already.evidence.linked_media == 5 and already.evidence.closest_distance == 8
        new = (await flag_ids(de))[NM_FIR_GB]
        assert new.other_agency == GB and new.evidence.exact_media == 3

        # Acknowledged at one agency, resolved at the other: both see each change.
        await set_flag_state(us, AI, flags_pb2.FLAG_STATE_VALUE_ACKNOWLEDGED)

        async def acknowledged_at_gb() -> bool:
            return (await flag_ids(gb))[AI].state == flags_pb2.FLAG_STATE_VALUE_ACKNOWLEDGED

        await wait_for(acknowledged_at_gb, 60, "acknowledged at gb-nca")
        await set_flag_state(gb, AI, flags_pb2.FLAG_STATE_VALUE_RESOLVED)

        async def resolved_at_us() -> bool:
            return (await flag_ids(us))[AI].state == flags_pb2.FLAG_STATE_VALUE_RESOLVED

        await wait_for(resolved_at_us, 60, "resolved at us-hsi")
        # de-bka, not involved, never hears of it.
        assert AI not in await flag_ids(de)

        # A rebuild at every node raises nothing new.
        for node in (gb, us, de):
            linker = node.running.linker.linker
            await linker.rebuild()
        await wait_for(raised, 30, "the same flags after rebuilds")
        for node_id, want in EXPECTED.items():
            assert set(await flag_ids(fed[node_id])) == want


async def test_an_embargo_and_a_withheld_status_raise_nothing_toward_the_peer(
    pg_server: Any, tmp_path: Path
) -> None:
    rng = random.Random(12)
    async with federation([GB, US], tmp_path, pg_server) as fed:
        gb, us = fed[GB], fed[US]
        gb.set_policy(
            US,
            SharingPolicy(disclose_victim_status=False, embargoed_series=frozenset({"gb-hidden"})),
        )
        await victim(gb, "gb-willow", IDENTIFIED, "desk")
        await victim(gb, "gb-hidden", IDENTIFIED, "desk")
        willow = [rng.randbytes(32) for _ in range(4)]
        hidden = [rng.randbytes(32) for _ in range(4)]
        await gb.submit(
            *[submission(f"w{i}", pdq(v), series=("gb-willow",)) for i, v in enumerate(willow)],
            *[submission(f"h{i}", pdq(v), series=("gb-hidden",)) for i, v in enumerate(hidden)],
        )
        await us.submit(
            *[
                submission(f"o{i}", pdq(flip_bits(v, 5, rng)), series=("us-oak",))
                for i, v in enumerate(willow + hidden)
            ]
        )
        withheld = already_identified_id(OAK, WILLOW)
        embargoed = already_identified_id(OAK, SeriesRef(0, GB, "gb-hidden"))

        async def both_linked() -> bool:  # each holds the other's records, linked and derived
            return withheld in await flag_ids(gb) and new_material_id(OAK, GB) in await flag_ids(us)

        await wait_for(both_linked, 90, "both linked")
        at_us = await flag_ids(us)
        # No victim status reached us-hsi and the embargoed series not at all: no
        # ALREADY_IDENTIFIED there, though gb-nca (which holds both) derives it.
        assert withheld not in at_us and embargoed not in at_us
        at_gb = await flag_ids(gb)
        assert withheld in at_gb and embargoed in at_gb
