"""Overlap flags across three agencies on loopback with real TLS, end to end: submissions and
victim status replicate, each node's linker links what it holds, its flag engine raises the
flags its agency is involved in, and states set at one agency reach the other.

The material: gb-nca's series gb-willow (victim identified, desk disclosed to us-hsi) and us-hsi's
us-oak hold near copies of the same five images; us-hsi's us-pine and de-bka's de-fir hold near
copies of four others, both victims in progress; gb-nca's unfiled seizure holds exact copies of
three of de-fir's media.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from hashex.v1 import common_pb2, flags_pb2, flags_pb2_grpc, registry_pb2
from services.sync.flags.ids import already_identified_id, concurrent_work_id, new_material_id
from services.sync.flags.reader import SeriesRef
from services.sync.policy import SharingPolicy
from tests.federation.harness import Agency, federation
from tests.registry.node_harness import flip_bits, md5, pdq, submission
from tests.waiting import wait_for

IDENTIFIED = common_pb2.IDENTIFICATION_STATUS_IDENTIFIED
IN_PROGRESS = common_pb2.IDENTIFICATION_STATUS_IN_PROGRESS
GB, US, DE = "gb-nca", "us-hsi", "de-bka"
WILLOW, OAK = SeriesRef(0, GB, "gb-willow"), SeriesRef(0, US, "us-oak")
PINE, FIR = SeriesRef(0, US, "us-pine"), SeriesRef(0, DE, "de-fir")
AI = already_identified_id(OAK, WILLOW)
CW = concurrent_work_id(PINE, FIR)
NM_OAK_GB = new_material_id(OAK, GB)
NM_PINE_DE, NM_FIR_US = new_material_id(PINE, DE), new_material_id(FIR, US)
NM_FIR_GB = new_material_id(FIR, GB)
EXPECTED = {
    GB: {AI, NM_OAK_GB, NM_FIR_GB},
    US: {AI, NM_OAK_GB, CW, NM_PINE_DE, NM_FIR_US},
    DE: {CW, NM_PINE_DE, NM_FIR_US, NM_FIR_GB},
}


def flags_stub(node: Agency) -> flags_pb2_grpc.FlagsStub:
    return flags_pb2_grpc.FlagsStub(node.unit_channel("vic", ("victim-id",)))


async def flag_ids(node: Agency) -> dict[str, flags_pb2.Flag]:
    listed = await flags_stub(node).ListFlags(flags_pb2.ListFlagsRequest(limit=1000))
    return {f.id: f for f in listed.flags}


async def victim(node: Agency, series_id: str, status: int, desk: str = "") -> None:
    registry = node.registry()
    await registry.UpsertSeries(registry_pb2.UpsertSeriesRequest(series_id=series_id))
    await registry.UpdateVictim(
        registry_pb2.UpdateVictimRequest(
            series_id=series_id, victim_id="v1", status=status, responsible_desk=desk
        )
    )


async def seed(gb: Agency, us: Agency, de: Agency, rng: random.Random) -> None:
    await victim(gb, "gb-willow", IDENTIFIED, "GB-NCA victim-ID desk")
    await victim(us, "us-pine", IN_PROGRESS)
    await victim(de, "de-fir", IN_PROGRESS)
    willow = [rng.randbytes(32) for _ in range(5)]
    await gb.submit(
        *[submission(f"w{i}", pdq(v), series=("gb-willow",)) for i, v in enumerate(willow)]
    )
    await us.submit(
        *[
            submission(f"o{i}", pdq(flip_bits(v, 8, rng)), series=("us-oak",))
            for i, v in enumerate(willow)
        ]
    )
    pine = [rng.randbytes(32) for _ in range(4)]
    await us.submit(*[submission(f"p{i}", pdq(v), series=("us-pine",)) for i, v in enumerate(pine)])
    fir_md5 = [rng.randbytes(16) for _ in range(4)]
    await de.submit(
        *[
            submission(f"f{i}", pdq(flip_bits(v, 10, rng)), md5(fir_md5[i]), series=("de-fir",))
            for i, v in enumerate(pine)
        ]
    )
    await gb.submit(*[submission(f"seized{i}", md5(fir_md5[i])) for i in range(3)])


async def test_each_flag_arises_once_at_both_agencies_and_states_replicate(
    pg_server: Any, tmp_path: Path
) -> None:
    rng = random.Random(11)
    async with federation([GB, US, DE], tmp_path, pg_server) as fed:
        gb, us, de = fed[GB], fed[US], fed[DE]
        gb.set_policy(US, SharingPolicy(disclose_desk=True))
        await seed(gb, us, de, rng)

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
        assert already.identified_desk == "GB-NCA victim-ID desk"
        assert already.evidence.linked_media == 5 and already.evidence.closest_distance == 8
        new = (await flag_ids(de))[NM_FIR_GB]
        assert new.other_agency == GB and new.evidence.exact_media == 3

        # Acknowledged at one agency, resolved at the other: both see each change.
        await flags_stub(us).SetFlagState(
            flags_pb2.SetFlagStateRequest(flag_id=AI, state=flags_pb2.FLAG_STATE_VALUE_ACKNOWLEDGED)
        )

        async def acknowledged_at_gb() -> bool:
            return (await flag_ids(gb))[AI].state == flags_pb2.FLAG_STATE_VALUE_ACKNOWLEDGED

        await wait_for(acknowledged_at_gb, 60, "acknowledged at gb-nca")
        await flags_stub(gb).SetFlagState(
            flags_pb2.SetFlagStateRequest(flag_id=AI, state=flags_pb2.FLAG_STATE_VALUE_RESOLVED)
        )

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
