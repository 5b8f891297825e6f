"""A peer's live lookup sees only this node's own records, and the match limit applies after
that choice: replicated records of other origins never crowd this node's own out."""

from __future__ import annotations

from typing import Any

from services.registry.cases import CaseSealer
from services.registry.model import MediaSubmission, MediaType
from services.registry.pdq_index import PdqIndex
from services.registry.registry import Registry
from services.registry.store import RegistryStore
from services.sync.batches import Cursor
from services.sync.store import SyncStore
from tests.store_calls import database_of
from tests.sync.helpers import ORIGIN, md5, media_at, media_record, verified

OWN = "us-fbi"


async def test_the_limit_applies_after_keeping_own_records(
    sync_store: SyncStore, sync_pool: Any
) -> None:
    store = RegistryStore(node_id=OWN, sealer=CaseSealer(bytes(32)))
    registry = Registry(database=database_of(sync_pool), store=store, index=PdqIndex(), node_id=OWN)
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
