"""A peer's live lookup sees only this node's own records, and the match limit applies after
that choice: replicated records of other origins never crowd this node's own out, exact or
near."""

from __future__ import annotations

from typing import Any

from services.core.algorithms import SignalValue
from services.registry.cases import CaseSealer
from services.registry.model import MediaSubmission, MediaType
from services.registry.pdq_indexes import PdqIndexes
from services.registry.registry import Registry
from services.registry.store import RegistryStore
from services.sync.batches import Cursor
from services.sync.store import SyncStore
from tests.store_calls import database_of
from tests.sync.helpers import ORIGIN, md5, media_at, media_record, pdq, verified

OWN = "us-fbi"


async def test_the_limit_applies_after_keeping_own_records(
    sync_store: SyncStore, sync_pool: Any
) -> None:
    store = RegistryStore(node_id=OWN, sealer=CaseSealer(bytes(32)))
    registry = Registry(
        database=database_of(sync_pool), store=store, index=PdqIndexes(), node_id=OWN
    )
    replicated = [media_at(i, media_record(f"r{i}", md5("shared"))) for i in range(1, 4)]
    await sync_store.apply_batch(
        peer_id=ORIGIN, batch=verified(replicated, first=1, last=3), expected=Cursor()
    )
    await registry.submit_batch(
        [MediaSubmission(media_id="z-own", signals=(md5("shared"),), media_type=MediaType.IMAGE)]
    )
    everyone = await registry.lookup([md5("shared")], max_distance=31, max_matches=1)
    assert [m.media.origin for m in everyone[0].matches] == [ORIGIN]  # sorted by origin first
    assert everyone[0].truncated
    own = await registry.lookup([md5("shared")], max_distance=31, max_matches=1, origin=OWN)
    assert [(m.media.origin, m.media.media_id) for m in own[0].matches] == [(OWN, "z-own")]
    assert not own[0].truncated


async def test_near_matches_of_own_records_are_not_crowded_out_either(
    sync_store: SyncStore, sync_pool: Any
) -> None:
    store = RegistryStore(node_id=OWN, sealer=CaseSealer(bytes(32)))
    registry = Registry(
        database=database_of(sync_pool), store=store, index=PdqIndexes(), node_id=OWN
    )
    centre = pdq("centre")
    near = [_flipped(centre, bits) for bits in (1, 2, 3, 9)]
    replicated = [media_at(i + 1, media_record(f"r{i}", md5(f"r{i}"), near[i])) for i in range(3)]
    applied = await sync_store.apply_batch(
        peer_id=ORIGIN, batch=verified(replicated, first=1, last=3), expected=Cursor()
    )
    await registry.index_replicated(added=applied.added, removed_rows=applied.removed_rows)
    await registry.submit_batch(
        [MediaSubmission(media_id="own-far", signals=(md5("own"), near[3]))]
    )
    everyone = await registry.lookup([centre], max_distance=31, max_matches=2)
    assert [m.distance for m in everyone[0].matches] == [1, 2] and everyone[0].truncated
    own = await registry.lookup([centre], max_distance=31, max_matches=2, origin=OWN)
    assert [(m.media.media_id, m.distance) for m in own[0].matches] == [("own-far", 9)]
    assert not own[0].truncated


def _flipped(signal: SignalValue, bits: int) -> SignalValue:
    value = int.from_bytes(signal.value, "big") ^ ((1 << bits) - 1)
    return SignalValue(signal.algorithm, value.to_bytes(32, "big"), signal.quality)
