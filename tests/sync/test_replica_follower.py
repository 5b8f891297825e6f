"""A registry running apart from sync (`hashex registry serve`) follows what sync replicates into
the shared database: new PDQ hashes become near-matchable, retracted ones stop matching."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from services.registry.cases import CaseSealer
from services.registry.pdq_indexes import PdqIndexes
from services.registry.registry import Registry
from services.registry.replica_follower import ReplicaFollower
from services.registry.store import RegistryStore
from services.sync.batches import Cursor
from services.sync.store import SyncStore
from tests.registry.node_harness import flip_bits
from tests.store_calls import database_of
from tests.sync.helpers import ORIGIN, md5, media_at, media_record, pdq, retraction_at, verified


async def near_matches(registry: Registry, media_id: str) -> list[str]:
    """Matches of an edited copy (5 bits away): only the in-memory index can find those."""
    exact = pdq(media_id)
    edited = replace(exact, value=flip_bits(exact.value, 5, random.Random(media_id)))
    results = await registry.lookup([edited], max_distance=31, max_matches=10)
    return [m.media.media_id for m in results[0].matches]


async def test_the_registry_indexes_what_a_separate_sync_applied(
    sync_store: SyncStore, sync_pool: Any
) -> None:
    store = RegistryStore(node_id="us-fbi", sealer=CaseSealer(bytes(32)))
    registry = Registry(
        database=database_of(sync_pool), store=store, index=PdqIndexes(), node_id="us-fbi"
    )
    await registry.load_index()
    assert registry.index_loaded_as_of is not None
    follower = ReplicaFollower(registry=registry, since=registry.index_loaded_as_of)

    first = verified([media_at(1, media_record("m1", md5("m1"), pdq("m1")))], first=1, last=1)
    await sync_store.apply_batch(peer_id=ORIGIN, batch=first, expected=Cursor())
    assert await near_matches(registry, "m1") == []  # applied, not yet followed
    assert await follower.poll_once() == (1, 0)
    assert await near_matches(registry, "m1") == ["m1"]
    assert await follower.poll_once() == (1, 0)  # looked at again within the overlap: no harm
    assert len(await near_matches(registry, "m1")) == 1

    second = verified([retraction_at(2, "m1")], first=2, last=2)
    await sync_store.apply_batch(peer_id=ORIGIN, batch=second, expected=first.cursor)
    await follower.poll_once()
    assert await near_matches(registry, "m1") == []
