"""Three agencies federated on loopback with real TLS: what each submits reaches the others under
the sending agency's policy, status changes and retractions travel too, and a unit at one agency
finds the others' records (exact and near) with their origin, from its own store or live."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from hashex.v1 import common_pb2, federation_pb2, federation_pb2_grpc, registry_pb2
from services.core.clock import Clock
from services.sync.policy import SharingPolicy
from services.sync.puller import PeerPuller
from tests.federation.harness import federation
from tests.registry.node_harness import flip_bits, md5, pdq, signal, submission
from tests.waiting import wait_for

IDENTIFIED = common_pb2.IDENTIFICATION_STATUS_IDENTIFIED
SAFEGUARDED = common_pb2.IDENTIFICATION_STATUS_SAFEGUARDED
SHA1 = common_pb2.HASH_ALGORITHM_SHA1
EXACT = registry_pb2.MATCH_KIND_EXACT
NEAR = registry_pb2.MATCH_KIND_NEAR
GB_DESK = "GB-NCA victim-ID desk"


def categorised(
    media: registry_pb2.MediaSubmission, scheme: int, code: str
) -> registry_pb2.MediaSubmission:
    media.category.scheme = scheme
    media.category.code = code
    return media


async def test_records_reach_peers_under_the_senders_policies(
    pg_server: Any, tmp_path: Path
) -> None:
    rng = random.Random(3)
    g1_md5, g1_sha1, g1_pdq = rng.randbytes(16), rng.randbytes(20), rng.randbytes(32)
    u1_md5, u1_pdq, u2_md5 = rng.randbytes(16), rng.randbytes(32), rng.randbytes(16)
    async with federation(["gb-nca", "us-hsi", "de-bka"], tmp_path, pg_server) as fed:
        gb, us, de = fed["gb-nca"], fed["us-hsi"], fed["de-bka"]
        gb.set_policy("de-bka", SharingPolicy(disclose_victim_status=False))
        gb.set_policy(
            "us-hsi", SharingPolicy(algorithms=frozenset({"md5", "pdq"}), disclose_desk=True)
        )
        us.set_policy("de-bka", SharingPolicy(categories=frozenset({"vics-us:1"})))

        await gb.registry().UpsertSeries(
            registry_pb2.UpsertSeriesRequest(series_id="gb-willow", name="Willow")
        )
        await gb.registry().UpdateVictim(
            registry_pb2.UpdateVictimRequest(
                series_id="gb-willow", victim_id="v1", status=IDENTIFIED, responsible_desk=GB_DESK
            )
        )
        await gb.submit(
            categorised(
                submission(
                    "g1",
                    md5(g1_md5),
                    signal(SHA1, g1_sha1),
                    pdq(g1_pdq),
                    series=("gb-willow",),
                    case_reference="GB/2026/17",
                ),
                common_pb2.CATEGORY_SCHEME_CAID_UK,
                "A",
            )
        )
        vics = common_pb2.CATEGORY_SCHEME_VICS_US
        await us.submit(
            categorised(submission("u1", md5(u1_md5), pdq(u1_pdq)), vics, "1"),
            categorised(submission("u2", md5(u2_md5)), vics, "4"),
        )
        await de.submit(submission("d1", md5(rng.randbytes(16))))
        await fed.converged()

        # Each record reached each peer, under the sender's policy for that peer.
        assert await us.media_ids("gb-nca") == {"g1"}
        assert await us.algorithms_of("gb-nca", "g1") == {1, 4}  # sha1 withheld from US
        assert await de.algorithms_of("gb-nca", "g1") == {1, 2, 4}
        assert await gb.media_ids("us-hsi") == {"u1", "u2"}
        assert await de.media_ids("us-hsi") == {"u1"}  # vics-us:4 never reaches DE
        assert await gb.media_ids("de-bka") == await us.media_ids("de-bka") == {"d1"}
        assert await us.victims_of("gb-nca", "gb-willow") == [("v1", IDENTIFIED, GB_DESK)]
        assert await de.victims_of("gb-nca", "gb-willow") == []  # status withheld from DE
        # Case data never leaves its node.
        assert await gb.row_count("SELECT count(*) FROM case_records") == 1
        assert await us.row_count("SELECT count(*) FROM case_records") == 0

        # A unit at DE, through DE's gateway: exact and near matches, each with its origin.
        units = federation_pb2_grpc.UnitsStub(de.unit_channel())
        asked = [md5(g1_md5), pdq(flip_bits(u1_pdq, 5, rng)), md5(u2_md5)]
        answer = await units.FederatedLookup(
            federation_pb2.FederatedLookupRequest(lookup=registry_pb2.LookupRequest(signals=asked))
        )
        found = [
            [(m.kind, m.distance, m.media.origin, m.media.media_id) for m in r.matches]
            for r in answer.lookup.results
        ]
        assert found == [[(EXACT, 0, "gb-nca", "g1")], [(NEAR, 5, "us-hsi", "u1")], []]

        # Status changes and retractions travel too.
        await gb.registry().UpdateVictim(
            registry_pb2.UpdateVictimRequest(
                series_id="gb-willow", victim_id="v1", status=SAFEGUARDED
            )
        )
        await us.registry().RetractMedia(registry_pb2.RetractMediaRequest(media_ids=["u1"]))
        await fed.converged()
        assert await us.victims_of("gb-nca", "gb-willow") == [("v1", SAFEGUARDED, GB_DESK)]
        assert await gb.media_ids("us-hsi") == {"u2"}
        assert await de.media_ids("us-hsi") == set()
        # Nothing duplicated: every node holds each record once.
        for agency in (gb, us, de):
            assert (
                await agency.row_count(
                    "SELECT count(*) - count(DISTINCT (origin, media_id)) FROM media"
                )
                == 0
            )


async def test_widening_a_policy_re_offers_what_was_withheld(
    pg_server: Any, tmp_path: Path
) -> None:
    async with federation(["gb-nca", "us-hsi"], tmp_path, pg_server) as fed:
        gb, us = fed["gb-nca"], fed["us-hsi"]
        gb.set_policy("us-hsi", SharingPolicy(categories=frozenset({"caid-uk:B"})))
        caid = common_pb2.CATEGORY_SCHEME_CAID_UK
        await gb.submit(
            categorised(submission("a", md5(b"a" * 16)), caid, "A"),
            categorised(submission("b", md5(b"b" * 16)), caid, "B"),
        )
        await fed.converged()
        assert await us.media_ids("gb-nca") == {"b"}
        gb.set_policy("us-hsi", SharingPolicy(categories=frozenset({"caid-uk:A", "caid-uk:B"})))

        async def both_arrived() -> bool:
            return await us.media_ids("gb-nca") == {"a", "b"}

        await wait_for(both_arrived, 30, "the re-offered record did not arrive")


async def test_a_unit_asks_peers_live_for_what_its_store_does_not_hold(
    pg_server: Any, tmp_path: Path
) -> None:
    async with federation(["gb-nca", "us-hsi"], tmp_path, pg_server) as fed:
        gb, us = fed["gb-nca"], fed["us-hsi"]
        await fed.converged()
        # GB stops replicating from US (a node may keep a peer's set live-only).
        gb.running.sync.pullers["us-hsi"].stop()
        await us.submit(submission("fresh", md5(b"f" * 16)))
        units = federation_pb2_grpc.UnitsStub(gb.unit_channel())
        lookup = registry_pb2.LookupRequest(signals=[md5(b"f" * 16)])
        stored_only = await units.FederatedLookup(
            federation_pb2.FederatedLookupRequest(lookup=lookup)
        )
        assert not stored_only.lookup.results[0].matches and not stored_only.peers
        live = await units.FederatedLookup(
            federation_pb2.FederatedLookupRequest(lookup=lookup, ask_peers=True)
        )
        assert [(m.media.origin, m.media.media_id) for m in live.lookup.results[0].matches] == [
            ("us-hsi", "fresh")
        ]
        assert [(p.peer_id, p.asked, p.error) for p in live.peers] == [("us-hsi", 1, "")]
        assert await gb.media_ids("us-hsi") == set()  # asked live, not stored


async def test_a_record_moved_out_of_what_a_peer_may_see_is_withdrawn_from_it(
    pg_server: Any, tmp_path: Path
) -> None:
    async with federation(["gb-nca", "us-hsi"], tmp_path, pg_server) as fed:
        gb, us = fed["gb-nca"], fed["us-hsi"]
        gb.set_policy("us-hsi", SharingPolicy(embargoed_series=frozenset({"op-nightjar"})))
        caid = common_pb2.CATEGORY_SCHEME_CAID_UK
        await gb.submit(
            categorised(submission("a", md5(b"a" * 16)), caid, "A"),
            categorised(submission("b", md5(b"b" * 16)), caid, "B"),
        )
        await fed.converged()
        assert await us.media_ids("gb-nca") == {"a", "b"}
        # GB puts b into an embargoed operation: US's copy is withdrawn, a stays.
        await gb.submit(
            categorised(submission("b", md5(b"b" * 16), series=("op-nightjar",)), caid, "B")
        )
        await fed.converged()
        assert await us.media_ids("gb-nca") == {"a"}
        # Out of the operation again (an explicit unlink: a submission never removes a
        # series): b comes back.
        await gb.registry().UpdateMedia(
            registry_pb2.UpdateMediaRequest(media_ids=["b"], leave_series_ids=["op-nightjar"])
        )
        await fed.converged()
        assert await us.media_ids("gb-nca") == {"a", "b"}


# The production timers (2 s polls before, 30 s keep-alives), holds outlasting the idle window
# (a hold's end is a new, audited call: one per peer per pull_hold_s).
IDLE_SYNC = "pull_hold_s = 1800.0\npull_deadline_s = 2400.0\nshutdown_grace_s = 1.0\n"
IDLE_S = 600.0


async def test_an_idle_federation_of_three_writes_no_audit_record_for_ten_minutes(
    pg_server: Any, tmp_path: Path
) -> None:
    """Ten minutes of idling on an injected clock (200 times real time: three real seconds):
    as polls, 300 calls per peer and as many audit records; held pulls make none, while the
    keep-alives (every 30 s) keep each peer's "last OK" true. What is submitted then still
    reaches both peers."""
    clock = Clock(rate=200.0)
    async with federation(
        ["gb-nca", "us-hsi", "de-bka"], tmp_path, pg_server, sync_config=IDLE_SYNC, clock=clock
    ) as fed:
        agencies = [fed["gb-nca"], fed["us-hsi"], fed["de-bka"]]
        await fed.converged()

        async def audited() -> list[int]:
            return [await a.row_count("SELECT count(*) FROM audit_log") for a in agencies]

        def pullers() -> list[PeerPuller]:
            return [p for a in agencies for p in a.running.sync.supervisor.pullers.values()]

        before = await audited()
        ok_before = [p.state.last_success_at for p in pullers()]
        idle_from = clock.monotonic()
        await clock.sleep(IDLE_S)
        assert clock.monotonic() - idle_from >= IDLE_S
        assert await audited() == before
        assert all(p.held and p.state.failures == 0 for p in pullers())
        assert all(
            p.state.last_success_at is not None and (was is None or p.state.last_success_at > was)
            for p, was in zip(pullers(), ok_before, strict=True)
        ), "keep-alives stopped while idle"

        await agencies[0].submit(submission("after-idle", md5(b"i" * 16)))

        async def everywhere() -> bool:
            held = [await a.media_ids("gb-nca") for a in agencies[1:]]
            return all("after-idle" in ids for ids in held)

        await wait_for(everywhere, 10, "the record submitted after idling did not arrive")
