"""Applying a peer's verified batch: all or nothing with the cursor, idempotent on (origin,
seq), never overwriting newer state with a re-offered older entry, retraction and revival."""

from __future__ import annotations

from typing import Any

import pytest

from services.core.errors import FailedPrecondition, NotFound
from services.registry.model import IdentificationStatus, MediaRecord
from services.registry.store import RegistryStore
from services.sync.batches import Cursor
from services.sync.store import SyncStore
from tests.store_calls import InTransactions, database_of
from tests.sync.helpers import (
    CAID_A,
    CAID_B,
    ORIGIN,
    md5,
    media_at,
    media_record,
    pdq,
    retraction_at,
    series_at,
    series_record,
    verified,
)


@pytest.fixture
def local(sync_pool: Any) -> RegistryStore:
    """The receiving node's registry store (it reads replicated records like its own)."""
    return InTransactions(RegistryStore(node_id="us-fbi"), database_of(sync_pool))


async def _record(local: RegistryStore, media_id: str) -> MediaRecord | None:
    [rows] = await local.exact_hits(signals=[md5(media_id)])
    if not rows:
        return None
    return (await local.media_records(row_ids=rows))[rows[0]]


async def test_a_batch_applies_records_and_advances_the_cursor(
    sync_store: SyncStore, local: RegistryStore
) -> None:
    batch = verified(
        [
            series_at(1, series_record("s1", "Cathedral", (("v1", 3, "desk"),))),
            media_at(2, media_record("m1", md5("m1"), pdq("m1"), series_ids=("s1",))),
            media_at(4, media_record("m2", category=CAID_A)),
        ],
        first=1,
        last=5,
    )
    applied = await sync_store.apply_batch(peer_id=ORIGIN, batch=batch, expected=Cursor())
    assert applied.entries == 3
    assert [e.value for e in applied.added] == [pdq("m1").value]
    record = await _record(local, "m1")
    assert record is not None
    assert (record.origin, record.series_ids) == (ORIGIN, ("s1",))
    series = await local.get_series(origin=ORIGIN, series_id="s1")
    assert (series.name, series.media_count) == ("Cathedral", 1)
    assert [(v.victim_id, v.status) for v in series.victims] == [
        ("v1", IdentificationStatus.IDENTIFIED)
    ]
    assert await sync_store.cursor(ORIGIN) == Cursor(5, batch.digest, 1)
    [row] = (await sync_store.cursors()).values()
    assert (row.peer_last_seq, row.applied_entries) == (5, 3)


async def test_a_batch_for_a_moved_cursor_applies_nothing(
    sync_store: SyncStore, local: RegistryStore
) -> None:
    first = verified([media_at(1, media_record("m1"))], first=1, last=1)
    await sync_store.apply_batch(peer_id=ORIGIN, batch=first, expected=Cursor())
    second = verified([media_at(2, media_record("m2"))], first=2, last=2)
    with pytest.raises(FailedPrecondition):
        await sync_store.apply_batch(peer_id=ORIGIN, batch=second, expected=Cursor())
    assert await _record(local, "m2") is None
    assert await sync_store.cursor(ORIGIN) == first.cursor


async def test_reapplying_is_idempotent_and_older_entries_never_win(
    sync_store: SyncStore, local: RegistryStore
) -> None:
    newer = verified(
        [media_at(5, media_record("m", md5("m"), pdq("m"), category=CAID_A))], first=1, last=5
    )
    await sync_store.apply_batch(peer_id=ORIGIN, batch=newer, expected=Cursor())
    # A restart under a newer policy generation re-offers the log from seq 1.
    older = verified(
        [
            media_at(3, media_record("m", md5("m"), category=CAID_B)),
            media_at(5, media_record("m", md5("m"), pdq("m"), category=CAID_A)),
        ],
        first=1,
        last=5,
        generation=2,
    )
    applied = await sync_store.apply_batch(peer_id=ORIGIN, batch=older, expected=newer.cursor)
    assert applied.added == []
    record = await _record(local, "m")
    assert record is not None and record.category == CAID_A
    stats = await local.stats()
    assert stats.media_count == 1


async def test_signals_of_held_and_new_media_accumulate_in_one_batch(
    sync_store: SyncStore, local: RegistryStore
) -> None:
    first = verified([media_at(1, media_record("held", md5("held")))], first=1, last=1)
    await sync_store.apply_batch(peer_id=ORIGIN, batch=first, expected=Cursor())
    # A held media gains a PDQ hash (and restates its md5); a new one arrives beside it.
    second = verified(
        [
            media_at(2, media_record("held", md5("held"), pdq("held"))),
            media_at(3, media_record("new", md5("new"), pdq("new"))),
        ],
        first=2,
        last=3,
    )
    applied = await sync_store.apply_batch(peer_id=ORIGIN, batch=second, expected=first.cursor)
    assert {e.value for e in applied.added} == {pdq("held").value, pdq("new").value}
    assert [e.row_id for e in applied.added] == sorted(e.row_id for e in applied.added)
    for media_id in ("held", "new"):
        record = await _record(local, media_id)
        assert record is not None
        assert set(record.signals) == {md5(media_id), pdq(media_id)}


async def test_retraction_then_revival(sync_store: SyncStore, local: RegistryStore) -> None:
    created = verified([media_at(1, media_record("m", md5("m"), pdq("m")))], first=1, last=1)
    await sync_store.apply_batch(peer_id=ORIGIN, batch=created, expected=Cursor())
    retracted = verified([retraction_at(2, "m"), retraction_at(3, "unknown")], first=2, last=3)
    applied = await sync_store.apply_batch(peer_id=ORIGIN, batch=retracted, expected=created.cursor)
    assert len(applied.removed_rows) == 1
    assert await _record(local, "m") is None
    # An older state offered again does not revive it...
    stale = verified(
        [media_at(1, media_record("m", md5("m"), pdq("m")))], first=1, last=3, generation=2
    )
    applied = await sync_store.apply_batch(peer_id=ORIGIN, batch=stale, expected=retracted.cursor)
    assert (applied.added, await _record(local, "m")) == ([], None)
    # ...a newer one does, and its PDQ hash becomes matchable again.
    revived = verified(
        [media_at(4, media_record("m", md5("m"), pdq("m")))], first=4, last=4, generation=2
    )
    applied = await sync_store.apply_batch(peer_id=ORIGIN, batch=revived, expected=stale.cursor)
    assert [e.value for e in applied.added] == [pdq("m").value]
    assert await _record(local, "m") is not None


async def test_series_entries_state_victims_in_full(
    sync_store: SyncStore, local: RegistryStore
) -> None:
    two = series_record("s", "x", (("v1", 1, ""), ("v2", 2, "desk")))
    one = series_record("s", "y", (("v2", 4, ""),))
    batch = verified([series_at(1, two), series_at(2, one)], first=1, last=2)
    await sync_store.apply_batch(peer_id=ORIGIN, batch=batch, expected=Cursor())
    series = await local.get_series(origin=ORIGIN, series_id="s")
    assert series.name == "y"
    assert [(v.victim_id, v.status) for v in series.victims] == [
        ("v2", IdentificationStatus.SAFEGUARDED)
    ]
    again = verified([series_at(1, two)], first=1, last=2, generation=2)
    await sync_store.apply_batch(peer_id=ORIGIN, batch=again, expected=batch.cursor)
    assert (await local.get_series(origin=ORIGIN, series_id="s")).name == "y"


async def test_a_media_naming_an_unseen_series_creates_it_bare(
    sync_store: SyncStore, local: RegistryStore
) -> None:
    batch = verified([media_at(1, media_record("m", series_ids=("later",)))], first=1, last=1)
    await sync_store.apply_batch(peer_id=ORIGIN, batch=batch, expected=Cursor())
    named = verified([series_at(2, series_record("later", "Named"))], first=2, last=2)
    await sync_store.apply_batch(peer_id=ORIGIN, batch=named, expected=batch.cursor)
    series = await local.get_series(origin=ORIGIN, series_id="later")
    assert (series.name, series.media_count) == ("Named", 1)


async def test_a_failing_apply_leaves_nothing(sync_store: SyncStore, local: RegistryStore) -> None:
    batch = verified(
        [media_at(1, media_record("m1")), media_at(2, media_record("m2"))], first=1, last=2
    )
    # Sabotage one staged record below validation (as a bug or a concurrent schema change
    # would): the whole transaction, cursor included, must roll back.
    broken = batch.changes[1]
    object.__setattr__(broken, "media_type", 9)
    with pytest.raises(Exception, match="media_type"):
        await sync_store.apply_batch(peer_id=ORIGIN, batch=batch, expected=Cursor())
    assert await _record(local, "m1") is None
    assert await sync_store.cursor(ORIGIN) == Cursor()


async def test_series_media_counts_follow_replicated_links_retractions_and_revivals(
    sync_store: SyncStore, local: RegistryStore
) -> None:
    async def count(series_id: str) -> int:
        try:
            return (await local.get_series(origin=ORIGIN, series_id=series_id)).media_count
        except NotFound:
            return 0

    async def counts() -> tuple[int, int]:
        return await count("s1"), await count("s2")

    steps = [
        ([media_at(1, media_record("a", series_ids=("s1",)))], (1, 0)),
        ([media_at(2, media_record("b", series_ids=("s1", "s2")))], (2, 1)),
        ([media_at(3, media_record("b", series_ids=("s2",)))], (1, 1)),  # b leaves s1
        ([retraction_at(4, "a")], (0, 1)),
        ([media_at(5, media_record("a", series_ids=("s1", "s2")))], (1, 2)),  # a revived
    ]
    cursor = Cursor()
    for seq, (changes, expected) in enumerate(steps, start=1):
        batch = verified(changes, first=seq, last=seq)
        await sync_store.apply_batch(peer_id=ORIGIN, batch=batch, expected=cursor)
        cursor = batch.cursor
        assert await counts() == expected, f"after entry {seq}"
