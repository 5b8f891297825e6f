"""The material of the three-agency flag tests, in parts that a test may submit at different
moments, and the flags each agency is expected to hold once all of it has replicated.

gb-nca's series gb-willow (victim identified, desk disclosed to us-hsi when the policy says so)
and us-hsi's us-oak hold near copies of the same five images; us-hsi's us-pine and de-bka's
de-fir hold near copies of four others, both victims in progress; gb-nca's unfiled seizure holds
exact copies of three of de-fir's media.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hashex.v1 import common_pb2, flags_pb2, flags_pb2_grpc, registry_pb2
from services.sync.flags.ids import already_identified_id, concurrent_work_id, new_material_id
from services.sync.flags.reader import SeriesRef
from tests.federation.harness import Agency
from tests.registry.node_harness import flip_bits, md5, pdq, submission

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
GB_DESK = "GB-NCA victim-ID desk"


def flags_stub(node: Agency) -> flags_pb2_grpc.FlagsStub:
    return flags_pb2_grpc.FlagsStub(node.unit_channel("vic", ("victim-id",)))


async def flag_ids(node: Agency) -> dict[str, flags_pb2.Flag]:
    listed = await flags_stub(node).ListFlags(flags_pb2.ListFlagsRequest(limit=1000))
    return {f.id: f for f in listed.flags}


async def set_flag_state(node: Agency, flag_id: str, state: flags_pb2.FlagStateValue) -> None:
    await flags_stub(node).SetFlagState(flags_pb2.SetFlagStateRequest(flag_id=flag_id, state=state))


async def victim(node: Agency, series_id: str, status: int, desk: str = "") -> None:
    registry = node.registry()
    await registry.UpsertSeries(registry_pb2.UpsertSeriesRequest(series_id=series_id))
    await registry.UpdateVictim(
        registry_pb2.UpdateVictimRequest(
            series_id=series_id, victim_id="v1", status=status, responsible_desk=desk
        )
    )


@dataclass(frozen=True)
class FlagMaterial:
    """Hash values drawn once from a seeded generator, so each part can be submitted alone."""

    willow: list[bytes]
    oak: list[bytes]
    pine: list[bytes]
    fir_pdq: list[bytes]
    fir_md5: list[bytes]

    @classmethod
    def drawn(cls, rng: random.Random) -> FlagMaterial:
        willow = [rng.randbytes(32) for _ in range(5)]
        oak = [flip_bits(v, 8, rng) for v in willow]
        pine = [rng.randbytes(32) for _ in range(4)]
        fir_md5 = [rng.randbytes(16) for _ in range(4)]
        fir_pdq = [flip_bits(v, 10, rng) for v in pine]
        return cls(willow, oak, pine, fir_pdq, fir_md5)

    async def submit_willow_and_oak(self, gb: Agency, us: Agency) -> None:
        """ALREADY_IDENTIFIED(us-oak, gb-willow) and NEW_MATERIAL(us-oak, gb-nca)."""
        await victim(gb, "gb-willow", IDENTIFIED, GB_DESK)
        await gb.submit(
            *[submission(f"w{i}", pdq(v), series=("gb-willow",)) for i, v in enumerate(self.willow)]
        )
        await us.submit(
            *[submission(f"o{i}", pdq(v), series=("us-oak",)) for i, v in enumerate(self.oak)]
        )

    async def submit_pine(self, us: Agency) -> None:
        await victim(us, "us-pine", IN_PROGRESS)
        await us.submit(
            *[submission(f"p{i}", pdq(v), series=("us-pine",)) for i, v in enumerate(self.pine)]
        )

    async def submit_fir(self, de: Agency) -> None:
        """With us-pine: CONCURRENT_WORK and NEW_MATERIAL both ways."""
        await victim(de, "de-fir", IN_PROGRESS)
        await de.submit(
            *[
                submission(f"f{i}", pdq(v), md5(self.fir_md5[i]), series=("de-fir",))
                for i, v in enumerate(self.fir_pdq)
            ]
        )

    async def submit_seizure(self, gb: Agency) -> None:
        """NEW_MATERIAL(de-fir, gb-nca): exact copies, in no series."""
        await gb.submit(*[submission(f"seized{i}", md5(self.fir_md5[i])) for i in range(3)])

    async def submit_all(self, gb: Agency, us: Agency, de: Agency) -> None:
        await self.submit_willow_and_oak(gb, us)
        await self.submit_pine(us)
        await self.submit_fir(de)
        await self.submit_seizure(gb)
