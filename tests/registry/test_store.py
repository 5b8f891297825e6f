"""The registry store on a real PostgreSQL: idempotent batches, counting, retraction, series and
victims, and case data that is only ever stored sealed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.core.algorithms import Algorithm, SignalValue
from services.core.errors import FailedPrecondition, NotFound
from services.registry import store_sql
from services.registry.cases import CaseSealer, create_case_key, load_case_key
from services.registry.model import (
    CaseData,
    Category,
    CategoryScheme,
    IdentificationStatus,
    MediaChange,
    MediaFlags,
    MediaSubmission,
    MediaType,
    PdqEntry,
)
from services.registry.store import RegistryStore
from tests.store_calls import InTransactions, database_of

NODE = "gb-nca"
KEY = bytes(range(32))


def md5(seed: str) -> SignalValue:
    return SignalValue(Algorithm.MD5, hashlib.md5(seed.encode()).digest())


def sha1(seed: str) -> SignalValue:
    return SignalValue(Algorithm.SHA1, hashlib.sha1(seed.encode()).digest())


def pdq(seed: str, quality: int | None = 90) -> SignalValue:
    return SignalValue(Algorithm.PDQ, hashlib.sha256(b"pdq" + seed.encode()).digest(), quality)


def media(media_id: str, *signals: SignalValue, **fields: Any) -> MediaSubmission:
    return MediaSubmission(media_id=media_id, signals=signals or (md5(media_id),), **fields)


@pytest.fixture
def sealer() -> CaseSealer:
    return CaseSealer(KEY)


@pytest.fixture
def store(db_pool: Any, sealer: CaseSealer) -> RegistryStore:
    return InTransactions(RegistryStore(node_id=NODE, sealer=sealer), database_of(db_pool))


async def test_resubmitting_the_same_batch_stores_it_once(store: RegistryStore) -> None:
    batch = [media("m1", md5("a"), pdq("a")), media("m2", sha1("b"), series_ids=("s1",))]
    counts, entries = await store.submit_media_batch(batch=batch)
    assert (counts.received, counts.created, counts.updated, counts.unchanged) == (2, 2, 0, 0)
    assert [e.value for e in entries] == [pdq("a").value]

    counts, entries = await store.submit_media_batch(batch=batch)
    assert (counts.received, counts.created, counts.updated, counts.unchanged) == (2, 0, 0, 2)
    assert entries == []
    stats = await store.stats()
    assert stats.media_count == 2
    assert stats.signal_counts == {Algorithm.MD5: 1, Algorithm.PDQ: 1, Algorithm.SHA1: 1}


@pytest.mark.parametrize(
    "change",
    [
        {"category": Category(CategoryScheme.CAID_UK, "A")},
        {"flags": MediaFlags(distributed=True)},
        {"media_type": MediaType.VIDEO},
        {"series_ids": ("s1", "s2")},
        {"signals": (md5("m"), sha1("m"))},
    ],
    ids=["category", "flags", "type", "more-series", "new-signal"],
)
async def test_a_changed_record_counts_as_updated(
    store: RegistryStore, change: dict[str, Any]
) -> None:
    original = media(
        "m", md5("m"), series_ids=("s1",), category=Category(CategoryScheme.VICS_US, "1")
    )
    await store.submit_media_batch(batch=[original])
    counts, _ = await store.submit_media_batch(batch=[replace(original, **change)])
    assert (counts.created, counts.updated, counts.unchanged) == (0, 1, 0)
    counts, _ = await store.submit_media_batch(batch=[replace(original, **change)])
    assert (counts.created, counts.updated, counts.unchanged) == (0, 0, 1)


async def test_signals_are_the_union_of_submissions(store: RegistryStore) -> None:
    await store.submit_media_batch(batch=[media("m", md5("m"), pdq("m"))])
    counts, entries = await store.submit_media_batch(batch=[media("m", sha1("m"))])
    assert counts.updated == 1
    assert entries == []  # the PDQ hash was already matchable
    hits = await store.exact_hits(signals=[md5("m"), sha1("m"), pdq("m")])
    [row] = hits[0]
    assert hits == [[row], [row], [row]]
    record = (await store.media_records(row_ids=[row]))[row]
    assert {s.algorithm for s in record.signals} == {Algorithm.MD5, Algorithm.SHA1, Algorithm.PDQ}


async def test_a_repeated_media_id_in_one_batch_is_merged(
    store: RegistryStore, sealer: CaseSealer
) -> None:
    first = media("m", md5("m"), flags=MediaFlags(distributed=True), case_data=CaseData("C-1"))
    last = media("m", sha1("m"), media_type=MediaType.VIDEO, case_data=CaseData("C-2"))
    counts, _ = await store.submit_media_batch(batch=[first, last])
    assert (counts.received, counts.created, counts.updated, counts.unchanged) == (2, 1, 0, 1)
    [[row]] = await store.exact_hits(signals=[md5("m")])
    record = (await store.media_records(row_ids=[row]))[row]
    assert len(record.signals) == 2
    assert record.media_type == MediaType.VIDEO  # given by the last occurrence only
    assert record.flags == MediaFlags(distributed=True)  # set by the first, kept by the last
    sealed = await store.sealed_case_records(media_id="m")
    assert sorted(sealer.open(s).case_reference for s in sealed) == ["C-1", "C-2"]


async def test_retracted_media_stop_matching(store: RegistryStore) -> None:
    _, entries = await store.submit_media_batch(
        batch=[media("gone", md5("g"), pdq("g")), media("kept")]
    )
    gone_row = entries[0].row_id
    counts = await store.retract_media(media_ids=["gone", "gone", "unknown"])
    assert (counts.retracted, counts.already_retracted, counts.not_found) == (1, 1, 1)
    assert counts.retracted_row_ids == (gone_row,)
    again = await store.retract_media(media_ids=["gone"])
    assert (again.retracted, again.already_retracted, again.not_found) == (0, 1, 0)
    assert await store.exact_hits(signals=[md5("g"), pdq("g")]) == [[], []]
    assert await _all_pdq(store) == []
    assert await store.media_records(row_ids=[gone_row]) == {}
    stats = await store.stats()
    assert (stats.media_count, stats.retracted_count) == (1, 1)
    assert stats.signal_counts == {Algorithm.MD5: 1}


async def test_a_retracted_media_stays_retracted_until_restored(store: RegistryStore) -> None:
    await store.submit_media_batch(batch=[media("m", md5("m"), pdq("m"), pdq("low", quality=10))])
    await store.retract_media(media_ids=["m"])
    counts, entries = await store.submit_media_batch(batch=[media("m", md5("m"), sha1("m"))])
    assert (counts.created, counts.updated, counts.unchanged, counts.retracted) == (0, 0, 0, 1)
    assert entries == [] and await store.exact_hits(signals=[md5("m")]) == [[]]
    outcome, entries = await store.update_media(media_ids=["m"], change=MediaChange(restore=True))
    assert (outcome.changed, outcome.unchanged) == (1, 0)
    [[row]] = await store.exact_hits(signals=[md5("m")])
    assert entries == [PdqEntry(row, pdq("m").value)]
    assert await _all_pdq(store) == entries
    assert len(outcome.media[0].signals) == 3  # the retracted submission added nothing


async def test_only_usable_pdq_hashes_are_matchable(store: RegistryStore) -> None:
    signals = (pdq("unknown", None), pdq("good", 50), pdq("poor", 49))
    _, entries = await store.submit_media_batch(batch=[media("m", *signals)])
    usable = {pdq("unknown", None).value, pdq("good").value}
    assert {e.value for e in entries} == usable
    assert {e.value for e in await _all_pdq(store)} == usable


async def test_pdq_entries_are_streamed_in_batches(store: RegistryStore) -> None:
    await store.submit_media_batch(batch=[media(f"m{i}", pdq(f"m{i}")) for i in range(5)])
    sizes = [
        (len(own), len(replicated)) async for own, replicated in store.pdq_entries(batch_rows=2)
    ]
    assert sizes == [(2, 0), (2, 0), (1, 0)]


async def test_exact_hits_follow_query_order_and_limit(store: RegistryStore) -> None:
    shared = md5("shared")
    await store.submit_media_batch(batch=[media(f"m{i}", shared) for i in range(3)])
    hits = await store.exact_hits(signals=[md5("none"), shared])
    assert [len(h) for h in hits] == [0, 3]
    limited = await store.exact_hits(signals=[shared, shared], limit_per_signal=2)
    assert [len(h) for h in limited] == [2, 2]


async def test_media_records_carry_everything_stored(store: RegistryStore) -> None:
    submitted = media(
        "m",
        sha1("m"),
        pdq("m", 70),
        media_type=MediaType.VIDEO,
        category=Category(CategoryScheme.INTERPOL_BASELINE, "yes"),
        flags=MediaFlags(victim_identified=True, self_generated=True),
        series_ids=("s2", "s1"),
    )
    await store.submit_media_batch(batch=[submitted])
    [[row]] = await store.exact_hits(signals=[sha1("m")])
    record = (await store.media_records(row_ids=[row, 999_999]))[row]
    assert (record.origin, record.media_id, record.media_type) == (NODE, "m", MediaType.VIDEO)
    assert record.category == submitted.category
    assert record.flags == submitted.flags
    assert record.series_ids == ("s1", "s2")
    assert set(record.signals) == set(submitted.signals)
    assert record.first_seen.tzinfo is not None


async def test_series_victims_and_media_counts(store: RegistryStore) -> None:
    await store.submit_media_batch(
        batch=[media("a", series_ids=("s1",)), media("b", series_ids=("s1", "s2")), media("c")]
    )
    series, created = await store.upsert_series(series_id="s1", name="Cathedral")
    assert (created, series.name, series.media_count) == (False, "Cathedral", 2)
    victim, created = await store.update_victim(
        series_id="s1",
        victim_id="v1",
        status=IdentificationStatus.IN_PROGRESS,
        responsible_desk="GB-NCA victim-ID desk",
    )
    assert created and victim.status == IdentificationStatus.IN_PROGRESS
    victim, created = await store.update_victim(
        series_id="s1",
        victim_id="v1",
        status=IdentificationStatus.IDENTIFIED,
        responsible_desk=None,
    )
    assert not created
    assert (victim.status, victim.responsible_desk) == (
        IdentificationStatus.IDENTIFIED,
        "GB-NCA victim-ID desk",
    )

    found = await store.exact_hits(signals=[md5("a"), md5("b"), md5("c")])
    rows = {number: row for number, per_signal in enumerate(found) for row in per_signal}
    by_media = await store.series_for_media(row_ids=list(rows.values()))
    assert rows[2] not in by_media
    assert [s.series_id for s in by_media[rows[1]]] == ["s1", "s2"]
    [s1] = by_media[rows[0]]
    assert [(v.victim_id, v.status) for v in s1.victims] == [
        ("v1", IdentificationStatus.IDENTIFIED)
    ]
    await store.retract_media(media_ids=["a"])
    assert (await store.get_series(origin=NODE, series_id="s1")).media_count == 1


def _rows_read(plan: dict[str, Any]) -> int:
    """The most rows any node of an EXPLAIN ANALYZE plan produced over all its loops."""
    own = int(plan.get("Actual Rows", 0)) * int(plan.get("Actual Loops", 1))
    return max([own, *(_rows_read(child) for child in plan.get("Plans", []))])


async def test_reading_the_series_of_a_match_costs_the_same_whatever_the_series_size(
    store: RegistryStore, db_pool: Any
) -> None:
    """A lookup reads each matched media's series with its media count: with 2,000 media in
    one series (what `hashex submit --series` makes of a seizure) that read stays a handful of
    rows, since the count is maintained rather than recounted per match."""
    for part in ("m", "n"):
        await store.submit_media_batch(
            batch=[media(f"{part}{i}", series_ids=("big",)) for i in range(1000)]
        )
    [[row]] = await store.exact_hits(signals=[md5("m1")])
    [series] = (await store.series_for_media(row_ids=[row]))[row]
    assert series.media_count == 2000
    explained = await db_pool.fetchval(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + store_sql.SERIES_ROWS, [row], None, None
    )
    assert _rows_read(json.loads(explained)[0]["Plan"]) < 20


async def test_upsert_series_creates_then_renames(store: RegistryStore) -> None:
    series, created = await store.upsert_series(series_id="s9", name="first")
    assert created and series.name == "first" and series.victims == ()
    again, created = await store.upsert_series(series_id="s9", name="first")
    assert not created and again.updated_at == series.updated_at
    renamed, created = await store.upsert_series(series_id="s9", name="second")
    assert not created and renamed.name == "second"
    assert renamed.updated_at > series.updated_at


async def test_unknown_records_raise_not_found(store: RegistryStore) -> None:
    with pytest.raises(NotFound, match="series 'nope'"):
        await store.get_series(origin=NODE, series_id="nope")
    with pytest.raises(NotFound, match="series 'nope'"):
        await store.update_victim(
            series_id="nope",
            victim_id="v",
            status=IdentificationStatus.UNIDENTIFIED,
            responsible_desk="",
        )
    with pytest.raises(NotFound, match="media 'nope'"):
        await store.sealed_case_records(media_id="nope")


async def test_stats_count_victims_per_status(store: RegistryStore) -> None:
    await store.upsert_series(series_id="s", name="")
    for victim, status in [
        ("a", IdentificationStatus.IDENTIFIED),
        ("b", IdentificationStatus.IDENTIFIED),
    ]:
        await store.update_victim(
            series_id="s", victim_id=victim, status=status, responsible_desk=""
        )
    stats = await store.stats()
    assert stats.series_count == 1
    assert stats.victim_counts[IdentificationStatus.IDENTIFIED] == 2
    assert stats.victim_counts[IdentificationStatus.SAFEGUARDED] == 0
    assert await store.schema_version() == 11  # 0001 initial … 0011 VICS category schemes


async def test_only_this_nodes_media_can_be_retracted(db_pool: Any, sealer: CaseSealer) -> None:
    ours = InTransactions(RegistryStore(node_id=NODE, sealer=sealer), database_of(db_pool))
    theirs = InTransactions(RegistryStore(node_id="de-bka", sealer=sealer), database_of(db_pool))
    await theirs.submit_media_batch(batch=[media("x", md5("x"))])
    counts = await ours.retract_media(media_ids=["x"])
    assert (counts.retracted, counts.already_retracted, counts.not_found) == (0, 0, 1)
    [[row]] = await ours.exact_hits(signals=[md5("x")])
    assert (await ours.media_records(row_ids=[row]))[row].origin == "de-bka"


async def test_case_data_is_stored_sealed_once_per_distinct_case(
    store: RegistryStore, sealer: CaseSealer, db_pool: Any
) -> None:
    case = CaseData("OP-CATHEDRAL-77", "EXHIBIT-4711", "/seized/disk1/holiday.jpg")
    await store.submit_media_batch(batch=[media("m", md5("m"), case_data=case)])
    await store.submit_media_batch(batch=[media("m", md5("m"), case_data=case)])
    await store.submit_media_batch(batch=[media("m", md5("m"))])
    [sealed] = await store.sealed_case_records(media_id="m")
    assert sealer.open(sealed) == case
    async with db_pool.acquire() as conn:
        rows = await conn.fetch("SELECT digest, sealed, media_row::text FROM case_records")
        raw = b"".join(bytes(v) if isinstance(v, bytes) else v.encode() for r in rows for v in r)
        heap = await _table_file_bytes(conn, "case_records")
        media_heap = await _table_file_bytes(conn, "media")
    for secret in (case.case_reference, case.exhibit_reference, case.file_path):
        assert secret.encode() not in raw
        if heap is not None:
            assert secret.encode() not in heap
    if media_heap is not None:
        assert b"OP-" not in media_heap and b"m" in media_heap  # the file reading itself works


async def test_a_failing_batch_leaves_nothing(store: RegistryStore, db_pool: Any) -> None:
    bad_md5 = SignalValue(Algorithm.MD5, b"short")
    batch = [
        media("ok", md5("ok"), series_ids=("s1",), case_data=CaseData("C-1")),
        media("bad", bad_md5),
    ]
    with pytest.raises(asyncpg.CheckViolationError):
        await store.submit_media_batch(batch=batch)
    for table in ("media", "signals", "series", "media_series", "case_records"):
        assert await db_pool.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    counts, _ = await store.submit_media_batch(batch=batch[:1])  # the connection is still usable
    assert counts.created == 1


async def test_concurrent_batches_of_the_same_media_store_it_once(store: RegistryStore) -> None:
    batch = [media(f"m{i}", md5(f"m{i}"), case_data=CaseData(f"C-{i}")) for i in range(50)]
    results = await asyncio.gather(*(store.submit_media_batch(batch=batch) for _ in range(3)))
    assert sum(counts.created for counts, _ in results) == 50
    assert sum(counts.unchanged for counts, _ in results) == 100
    assert (await store.stats()).media_count == 50
    assert len(await store.sealed_case_records(media_id="m7")) == 1


async def test_a_full_batch_goes_through_copy(store: RegistryStore) -> None:
    batch = [
        media(
            f"sha1:{i:040x}",
            md5(str(i)),
            sha1(str(i)),
            pdq(str(i)),
            series_ids=(f"s{i % 7}",),
            case_data=CaseData(f"case-{i % 3}", file_path=f"/e/{i}.jpg"),
        )
        for i in range(1000)
    ]
    counts, entries = await store.submit_media_batch(batch=batch)
    assert (counts.created, len(entries)) == (1000, 1000)
    counts, entries = await store.submit_media_batch(batch=batch)
    assert (counts.unchanged, entries) == (1000, [])
    hits = await store.exact_hits(signals=[sha1(str(i)) for i in range(0, 1000, 100)])
    assert all(len(h) == 1 for h in hits) and len(hits) == 10
    stats = await store.stats()
    assert (stats.media_count, stats.series_count) == (1000, 7)
    assert stats.signal_counts == {Algorithm.MD5: 1000, Algorithm.SHA1: 1000, Algorithm.PDQ: 1000}


async def _all_pdq(store: RegistryStore) -> list[PdqEntry]:
    """Every matchable PDQ hash; this store's node owns all the test's records."""
    entries = []
    async for own, replicated in store.pdq_entries():
        assert replicated == []
        entries.extend(own)
    return entries


async def _table_file_bytes(conn: Any, table: str) -> bytes | None:
    """The table's heap file as PostgreSQL wrote it, when the role may read server files."""
    if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        return None
    await conn.execute("CHECKPOINT")
    data = await conn.fetchval(
        "SELECT pg_read_binary_file(pg_relation_filepath($1::regclass))", table
    )
    return bytes(data)


def test_a_case_key_is_created_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "case.key"
    key = create_case_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_case_key(path) == key
    with pytest.raises(FailedPrecondition, match="already exists"):
        create_case_key(path)
    assert load_case_key(path) == key


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_case_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "case.key"
    create_case_key(path)
    path.chmod(mode)
    with pytest.raises(FailedPrecondition, match=f"chmod 600 {path}"):
        load_case_key(path)


def test_a_case_key_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "case.key"
    path.touch(mode=0o600)
    path.write_bytes(b"x" * 31)
    with pytest.raises(FailedPrecondition, match="31 bytes instead of 32"):
        load_case_key(path)


def test_sealing_hides_the_case_and_the_digest_needs_the_key(sealer: CaseSealer) -> None:
    case = CaseData("OP-77", "EX-1", "/seized/a.jpg")
    first, second = sealer.seal(case), sealer.seal(case)
    assert first != second  # a fresh nonce each time
    assert sealer.open(first) == sealer.open(second) == case
    assert sealer.digest(case) == sealer.digest(CaseData("OP-77", "EX-1", "/seized/a.jpg"))
    assert sealer.digest(case) != sealer.digest(replace(case, file_path="/seized/b.jpg"))
    other = CaseSealer(bytes(32))
    assert other.digest(case) != sealer.digest(case)
    with pytest.raises(FailedPrecondition) as raised:
        other.open(first)
    assert "OP-77" not in str(raised.value) and "OP-77" not in repr(case)
