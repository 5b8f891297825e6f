"""The registry writes its change log in the transaction of each change: full state after the
change, dense seqs, nothing for a write that changes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from hashex.v1 import common_pb2, federation_pb2
from services.core.algorithms import Algorithm, SignalValue
from services.core.changelog.store import EntryKind
from services.registry.cases import CaseSealer
from services.registry.model import IdentificationStatus, MediaChange, MediaSubmission
from services.registry.store import RegistryStore
from services.sync.store import SyncStore
from tests.store_calls import InTransactions, database_of
from tests.sync.helpers import CAID_A, md5, pdq, sha1

NODE = "gb-nca"


def media(media_id: str, *signals: SignalValue, **fields: Any) -> MediaSubmission:
    return MediaSubmission(media_id=media_id, signals=signals or (md5(media_id),), **fields)


@pytest.fixture
def store(sync_pool: Any) -> RegistryStore:
    store = RegistryStore(node_id=NODE, sealer=CaseSealer(bytes(32)))
    return InTransactions(store, database_of(sync_pool))


async def _log(sync_store: SyncStore) -> list[tuple[int, EntryKind, federation_pb2.ChangeEntry]]:
    rows = await sync_store.read_log(after_seq=0, limit=10_000)
    parsed = []
    for row in rows:
        entry = federation_pb2.ChangeEntry()
        entry.ParseFromString(row.entry)
        assert entry.seq == row.seq
        parsed.append((row.seq, row.kind, entry))
    return parsed


async def test_a_submission_logs_new_series_then_full_media_state(
    store: RegistryStore, sync_store: SyncStore
) -> None:
    await store.submit_media_batch(
        batch=[media("m2", md5("m2"), pdq("m2"), series_ids=("s1",), category=CAID_A), media("m1")]
    )
    log = await _log(sync_store)
    assert [(seq, kind) for seq, kind, _ in log] == [
        (1, EntryKind.SERIES),
        (2, EntryKind.MEDIA),
        (3, EntryKind.MEDIA),
    ]
    assert log[0][2].series.series_id == "s1" and log[0][2].series.origin == NODE
    m2 = log[2][2].media
    assert (m2.origin, m2.media_id, list(m2.series_ids)) == (NODE, "m2", ["s1"])
    assert {s.algorithm for s in m2.signals} == {
        common_pb2.HASH_ALGORITHM_MD5,
        common_pb2.HASH_ALGORITHM_PDQ,
    }
    assert (m2.category.scheme, m2.category.code) == (common_pb2.CATEGORY_SCHEME_CAID_UK, "A")
    assert await sync_store.last_seq() == 3


async def test_a_resubmission_that_changes_nothing_logs_nothing(
    store: RegistryStore, sync_store: SyncStore
) -> None:
    batch = [media("m1", md5("m1"), series_ids=("s1",)), media("m2")]
    await store.submit_media_batch(batch=batch)
    before = await sync_store.last_seq()
    await store.submit_media_batch(batch=batch)
    await store.submit_media_batch(batch=batch[:1])
    assert await sync_store.last_seq() == before


async def test_a_change_logs_the_whole_new_state(
    store: RegistryStore, sync_store: SyncStore
) -> None:
    await store.submit_media_batch(batch=[media("m", md5("m"))])
    await store.submit_media_batch(batch=[media("m", sha1("m"), category=CAID_A)])
    *_, (seq, kind, entry) = await _log(sync_store)
    assert (seq, kind) == (2, EntryKind.MEDIA)
    assert len(entry.media.signals) == 2  # signals accumulate: the union is the state
    assert entry.media.category.code == "A"


async def test_retraction_and_revival_are_logged_once(
    store: RegistryStore, sync_store: SyncStore
) -> None:
    await store.submit_media_batch(batch=[media("m", md5("m"), category=CAID_A)])
    await store.retract_media(media_ids=["m", "unknown"])
    await store.retract_media(media_ids=["m"])
    await store.submit_media_batch(batch=[media("m", md5("m"), category=CAID_A)])  # stays
    await store.update_media(media_ids=["m"], change=MediaChange(restore=True))
    await store.update_media(media_ids=["m"], change=MediaChange(restore=True))  # no change
    rows = await sync_store.read_log(after_seq=0, limit=100)
    assert [r.kind for r in rows] == [EntryKind.MEDIA, EntryKind.RETRACTION, EntryKind.MEDIA]
    before = common_pb2.Media()
    assert rows[1].media_before is not None
    before.ParseFromString(rows[1].media_before)
    assert (before.media_id, before.category.code) == ("m", "A")
    entry = federation_pb2.ChangeEntry()
    entry.ParseFromString(rows[1].entry)
    assert entry.retraction.media_id == "m"
    assert rows[0].media_before is None


async def test_series_and_victim_changes_are_logged_with_the_victims(
    store: RegistryStore, sync_store: SyncStore
) -> None:
    await store.upsert_series(series_id="s", name="Cathedral")
    await store.upsert_series(series_id="s", name="Cathedral")
    await store.update_victim(
        series_id="s", victim_id="v1", status=IdentificationStatus.IN_PROGRESS, responsible_desk="D"
    )
    await store.update_victim(
        series_id="s",
        victim_id="v1",
        status=IdentificationStatus.IN_PROGRESS,
        responsible_desk=None,
    )
    await store.upsert_series(series_id="s", name="Renamed")
    log = await _log(sync_store)
    assert [kind for _, kind, _ in log] == [EntryKind.SERIES] * 3
    named, victim, renamed = (entry.series for _, _, entry in log)
    assert (named.name, list(named.victims)) == ("Cathedral", [])
    assert [(v.victim_id, v.status, v.responsible_desk) for v in victim.victims] == [
        ("v1", common_pb2.IDENTIFICATION_STATUS_IN_PROGRESS, "D")
    ]
    assert (renamed.name, len(renamed.victims)) == ("Renamed", 1)
    assert renamed.media_count == 0  # a count of the origin's store is not replicated


async def test_a_failing_write_logs_nothing(store: RegistryStore, sync_store: SyncStore) -> None:
    bad = media("bad", SignalValue(Algorithm.MD5, b"short"), series_ids=("s1",))
    with pytest.raises(asyncpg.CheckViolationError):
        await store.submit_media_batch(batch=[media("ok"), bad])
    assert await sync_store.last_seq() == 0


async def test_concurrent_writers_get_dense_unique_seqs(
    store: RegistryStore, sync_store: SyncStore
) -> None:
    batches = [[media(f"b{b}-m{i}") for i in range(20)] for b in range(4)]
    await asyncio.gather(
        *(store.submit_media_batch(batch=batch) for batch in batches),
        store.upsert_series(series_id="s", name="x"),
        store.retract_media(media_ids=["b0-m0"]),
    )
    log = await _log(sync_store)
    assert [seq for seq, _, _ in log] == list(range(1, len(log) + 1))
    media_ids = [e.media.media_id for _, kind, e in log if kind == EntryKind.MEDIA]
    assert sorted(media_ids) == sorted(m.media_id for b in batches for m in b)


async def test_key_rotations_are_logged_once_and_schedule_keys(
    sync_store: SyncStore, tmp_path: Any
) -> None:
    from services.core.signing import Keyring, create_first_key, rotate

    keys_dir = tmp_path / "signing"
    create_first_key(keys_dir)
    assert await sync_store.log_key_rotations(Keyring.load(keys_dir)) == []
    rotate(keys_dir)
    rotate(keys_dir)
    keyring = Keyring.load(keys_dir)
    assert await sync_store.log_key_rotations(keyring) == ["ed25519:2", "ed25519:3"]
    assert await sync_store.log_key_rotations(keyring) == []
    schedule = await sync_store.key_schedule(keyring)
    assert [(k.activated_at, k.key.key_id) for k in schedule] == [
        (0, "ed25519:1"),
        (1, "ed25519:2"),
        (2, "ed25519:3"),
    ]
