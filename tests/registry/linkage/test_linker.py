"""The linker on real PostgreSQL: the queues its triggers fill, media links across origins, series
pairs under the evidence threshold, clusters, events, and a rebuild that changes nothing.

Records of other origins are written with plain SQL, as sync's apply writes them (the triggers
see every writer alike), and their PDQ values put in the index as sync hands them over.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from services.core.db.pool import Database
from services.registry.linkage import read, sql
from services.registry.linkage.evidence import LinkageSettings
from services.registry.linkage.linker import Linker
from services.registry.linkage.origin_indexes import OriginIndexes
from services.registry.pdq_indexes import PdqIndexes

pytestmark = pytest.mark.asyncio

OWN = "de-bka"


class Fed:
    """Media of several origins in one node's database and index."""

    def __init__(self, database: Database, pool: Any) -> None:
        self.pool = pool
        self.index = PdqIndexes()
        self.linker = Linker(
            database=database, index=self.index, node_id=OWN, settings=LinkageSettings()
        )
        self.rng = random.Random(5)

    async def media(
        self,
        origin: str,
        media_id: str,
        *,
        md5: bytes | None = None,
        pdq: bytes | None = None,
        quality: int | None = 90,
        series: str | None = None,
    ) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            row: int = await conn.fetchval(
                "INSERT INTO media (origin, media_id, media_type) VALUES ($1, $2, 1) RETURNING id",
                origin,
                media_id,
            )
            if md5 is not None:
                await conn.execute(
                    "INSERT INTO signals (media_row, algorithm, value) VALUES ($1, 1, $2)", row, md5
                )
            if pdq is not None:
                await conn.execute(
                    "INSERT INTO signals (media_row, algorithm, value, quality) "
                    "VALUES ($1, 4, $2, $3)",
                    row,
                    pdq,
                    quality,
                )
            if series is not None:
                series_row = await conn.fetchval(
                    "INSERT INTO series (origin, series_id) VALUES ($1, $2) "
                    "ON CONFLICT (origin, series_id) DO UPDATE SET name = series.name "
                    "RETURNING id",
                    origin,
                    series,
                )
                await conn.execute(
                    "INSERT INTO media_series (media_row, series_row) VALUES ($1, $2)",
                    row,
                    series_row,
                )
        if pdq is not None and (quality is None or quality >= 50):
            index = self.index.own if origin == OWN else self.index.replicated
            index.add([row], [pdq])
        return row

    async def series_row(self, origin: str, series_id: str) -> int:
        row: int = await self.pool.fetchval(
            "SELECT id FROM series WHERE origin = $1 AND series_id = $2", origin, series_id
        )
        return row

    async def links(self) -> set[tuple[int, int, bool, int | None]]:
        rows = await self.pool.fetch("SELECT * FROM media_links")
        return {(r["low_row"], r["high_row"], r["exact"], r["distance"]) for r in rows}

    async def state(self) -> tuple[Any, ...]:
        tables = ("media_links", "series_links", "series_clusters", "media_link_truncated")
        out = []
        for table in tables:
            out.append(sorted(tuple(r) for r in await self.pool.fetch(f"SELECT * FROM {table}")))
        return tuple(out)

    async def events(self) -> list[int]:
        return [r[0] for r in await self.pool.fetch("SELECT series_row FROM linkage_events")]

    def near(self, value: bytes, bits: int) -> bytes:
        flipped = bytearray(value)
        for bit in self.rng.sample(range(256), bits):
            flipped[bit // 8] ^= 1 << (bit % 8)
        return bytes(flipped)

    async def twin_series(
        self, a: tuple[str, str], b: tuple[str, str], n: int, *, prefix: str
    ) -> list[int]:
        """Series a and b holding n near copies of each other's media."""
        rows = []
        for i in range(n):
            value = self.rng.randbytes(32)
            rows.append(await self.media(a[0], f"{prefix}a{i}", pdq=value, series=a[1]))
            near = self.near(value, 6 + i % 10)
            rows.append(await self.media(b[0], f"{prefix}b{i}", pdq=near, series=b[1]))
        return rows


@pytest.fixture
def fed(database: Database, db_pool: Any) -> Fed:
    return Fed(database, db_pool)


async def test_exact_and_near_media_of_different_origins_are_linked(fed: Fed) -> None:
    shared, value = fed.rng.randbytes(16), fed.rng.randbytes(32)
    a = await fed.media(OWN, "a", md5=shared)
    b = await fed.media("fr-ocrvp", "b", md5=shared)
    c = await fed.media(OWN, "c", pdq=value)
    d = await fed.media("nl-politie", "d", pdq=fed.near(value, 12))
    await fed.media("nl-politie", "e", pdq=fed.near(value, 40))  # too far
    await fed.media("nl-politie", "f", pdq=fed.near(value, 2), quality=30)  # too poor
    await fed.media(OWN, "g", md5=shared)  # same origin as a: never linked to a
    g = await fed.pool.fetchval("SELECT id FROM media WHERE media_id = 'g'")
    await fed.linker.drain(settle_s=0)
    assert await fed.links() == {(a, b, True, None), (b, g, True, None), (c, d, False, 12)}


async def test_a_retracted_media_loses_its_links(fed: Fed) -> None:
    shared = fed.rng.randbytes(16)
    a = await fed.media(OWN, "a", md5=shared)
    await fed.media("fr-ocrvp", "b", md5=shared)
    await fed.linker.drain(settle_s=0)
    assert len(await fed.links()) == 1
    await fed.pool.execute("UPDATE media SET retracted_at = now() WHERE id = $1", a)
    await fed.linker.drain(settle_s=0)
    assert await fed.links() == set()


async def test_an_answer_computed_ahead_is_checked_against_what_is_stored(fed: Fed) -> None:
    """A chunk's PDQ answers may be computed while the chunk before runs (Linker.drain). One
    computed before a link was found from the other side keeps that link; one holding a hit
    whose value has changed since links nothing to it."""
    value, far = fed.rng.randbytes(32), fed.rng.randbytes(32)
    a = await fed.media(OWN, "a", pdq=value)
    x = await fed.media("nl-politie", "x", pdq=fed.near(value, 9))
    await fed.linker.drain(settle_s=0)
    assert await fed.links() == {(a, x, False, 9)}
    # a's answer, computed ahead: x within range, no b yet.
    await fed.linker._near.compute_ahead([(a, value, OWN)])
    fed.linker._near.advance()
    b = await fed.media("fr-ocrvp", "b", pdq=fed.near(value, 5))
    # x's value changes (it is queued and relinked: its link to a goes).
    async with fed.pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM signals WHERE media_row = $1", x)
        await conn.execute(
            "INSERT INTO signals (media_row, algorithm, value, quality) VALUES ($1, 4, $2, 90)",
            x,
            far,
        )
    fed.index.replicated.remove_rows([x])
    fed.index.replicated.add([x], [far])
    await fed.linker.drain_once(settle_s=0)  # b (linked to a from b's side) and x
    assert await fed.links() == {(a, b, False, 5)}
    await fed.pool.execute("INSERT INTO linkage_pending_media (media_row) VALUES ($1)", a)
    await fed.linker.drain_once(settle_s=0)  # a, from its answer computed ahead
    assert await fed.links() == {(a, b, False, 5)}


async def test_a_media_is_queued_once_and_a_change_during_a_rebuild_is_announced(
    fed: Fed,
) -> None:
    a = await fed.media(OWN, "a", pdq=fed.rng.randbytes(32), series="s1")  # signal and series
    pending = "SELECT media_row, queued_at > '-infinity' FROM linkage_pending_media"
    assert [tuple(r) for r in await fed.pool.fetch(pending)] == [(a, True)]
    await fed.linker.drain(settle_s=0)
    await fed.pool.execute(
        "INSERT INTO linkage_pending_media (media_row, queued_at) VALUES ($1, '-infinity')", a
    )
    await fed.pool.execute("UPDATE media SET retracted_at = now() WHERE id = $1", a)
    assert [tuple(r) for r in await fed.pool.fetch(pending)] == [(a, True)]


async def test_queued_changes_wait_to_settle(fed: Fed) -> None:
    shared = fed.rng.randbytes(16)
    await fed.media(OWN, "a", md5=shared)
    await fed.media("fr-ocrvp", "b", md5=shared)
    assert (await fed.linker.drain(settle_s=60)).media == 0
    assert await fed.links() == set()
    assert (await fed.linker.drain(settle_s=0)).media == 2


async def test_series_link_past_the_threshold_and_form_clusters(fed: Fed) -> None:
    await fed.twin_series((OWN, "s1"), ("fr-ocrvp", "t1"), 5, prefix="x")
    await fed.twin_series(("fr-ocrvp", "t1"), ("nl-politie", "u1"), 4, prefix="y")
    await fed.linker.drain(settle_s=0)
    s1, t1 = await fed.series_row(OWN, "s1"), await fed.series_row("fr-ocrvp", "t1")
    u1 = await fed.series_row("nl-politie", "u1")
    clusters = dict(await fed.pool.fetch("SELECT series_row, cluster_id FROM series_clusters"))
    assert clusters == {s1: s1, t1: s1, u1: s1}
    async with fed.pool.acquire() as conn:
        links = await read.series_links_of(conn, series_rows=[s1])
    [link] = links
    assert (link.linked, link.linked_media, link.exact_media, link.near_media) == (True, 5, 0, 5)
    assert link.closest_distance == 6 and link.cluster_id == s1


async def test_one_stray_near_match_does_not_link_two_series(fed: Fed) -> None:
    for i in range(10):
        await fed.media(OWN, f"s{i}", pdq=fed.rng.randbytes(32), series="s1")
        await fed.media("fr-ocrvp", f"t{i}", pdq=fed.rng.randbytes(32), series="t1")
    value = fed.rng.randbytes(32)
    await fed.media(OWN, "stray-a", pdq=value, series="s1")
    await fed.media("fr-ocrvp", "stray-b", pdq=fed.near(value, 5), series="t1")
    await fed.linker.drain(settle_s=0)
    [pair] = await fed.pool.fetch("SELECT * FROM series_links")
    assert (pair["linked"], pair["linked_low"], pair["linked_high"]) == (False, 1, 1)
    assert await fed.pool.fetch("SELECT * FROM series_clusters") == []


async def test_a_series_grown_past_the_fraction_unlinks_and_its_cluster_splits(fed: Fed) -> None:
    await fed.twin_series((OWN, "s1"), ("fr-ocrvp", "t1"), 3, prefix="x")
    await fed.linker.drain(settle_s=0)
    assert len(await fed.pool.fetch("SELECT * FROM series_clusters")) == 2
    for i in range(20):  # 3 of the smaller series' 23 is below 0.2
        await fed.media(OWN, f"more{i}", pdq=fed.rng.randbytes(32), series="s1")
        await fed.media("fr-ocrvp", f"more{i}", pdq=fed.rng.randbytes(32), series="t1")
    await fed.linker.drain(settle_s=0)
    assert await fed.pool.fetch("SELECT * FROM series_clusters") == []
    [pair] = await fed.pool.fetch("SELECT linked FROM series_links")
    assert pair["linked"] is False


async def test_events_name_the_series_that_changed_and_a_rebuild_changes_nothing(
    fed: Fed,
) -> None:
    await fed.twin_series((OWN, "s1"), ("fr-ocrvp", "t1"), 4, prefix="x")
    await fed.twin_series((OWN, "s2"), ("nl-politie", "u2"), 3, prefix="y")
    shared = fed.rng.randbytes(16)
    await fed.media(OWN, "lone", md5=shared)
    await fed.media("nl-politie", "lone-b", md5=shared, series="u3")
    # Replicated with replicated: a rebuild relinks these from both sides.
    await fed.twin_series(("fr-ocrvp", "t4"), ("nl-politie", "u4"), 3, prefix="z")
    other = fed.rng.randbytes(16)
    await fed.media("fr-ocrvp", "pair-a", md5=other)
    await fed.media("nl-politie", "pair-b", md5=other)
    await fed.linker.drain(settle_s=0)
    rows = {
        key: await fed.series_row(*key)
        for key in ((OWN, "s1"), ("fr-ocrvp", "t1"), (OWN, "s2"), ("nl-politie", "u2"))
    }
    assert set(rows.values()) <= set(await fed.events())
    before, events = await fed.state(), len(await fed.events())
    rebuilt = await fed.linker.rebuild()
    assert rebuilt.events == 0
    assert (await fed.state(), len(await fed.events())) == (before, events)
    # From nothing at all: the same links, pairs and clusters.
    for table in ("media_links", "series_links", "series_clusters", "media_link_truncated"):
        await fed.pool.execute(f"TRUNCATE {table}")
    await fed.linker.rebuild()
    assert await fed.state() == before
    # Links lost or invented (own with replicated, replicated with replicated) are put right.
    links = sorted(await fed.links())
    own_rows = {r[0] for r in await fed.pool.fetch("SELECT id FROM media WHERE origin = $1", OWN)}
    mixed = next(link for link in links if {link[0], link[1]} & own_rows)
    among_replicated = next(link for link in links if not {link[0], link[1]} & own_rows)
    for low, high, *_ in (mixed, among_replicated):
        await fed.pool.execute(
            "DELETE FROM media_links WHERE low_row = $1 AND high_row = $2", low, high
        )
    await fed.pool.execute(
        "INSERT INTO media_links (low_row, high_row, exact, distance) VALUES ($1, $2, true, NULL)",
        min(mixed[0], among_replicated[0]),
        max(mixed[1], among_replicated[1]),
    )
    await fed.linker.rebuild()
    assert await fed.state() == before


async def test_a_rebuild_searches_origins_ranked_above_and_links_what_came_after_it(
    fed: Fed,
) -> None:
    """A rebuild relinks a replicated media to the origins ranked above its own only, found in
    per-origin indexes read at its start (origin_indexes.py). Four origins hold near copies of
    one image; after the indexes are read, a new copy arrives and is linked, and one copy's
    value changes. The rebuild still comes to what relinking from nothing does: the link of
    the new copy to a lower-ranked one, which that one's answer lacks, is kept."""
    value = fed.rng.randbytes(32)
    origins = (OWN, "fr-ocrvp", "nl-politie", "se-polisen")
    copies = [await fed.media(o, f"c-{o}", pdq=fed.near(value, 3)) for o in origins]
    await fed.twin_series(("nl-politie", "u1"), ("se-polisen", "v1"), 3, prefix="t")
    await fed.linker.drain(settle_s=0)
    assert len([link for link in await fed.links() if {link[0], link[1]} <= set(copies)]) == 6
    async with fed.pool.acquire() as conn:
        rows = await OriginIndexes.read(conn, node_id=OWN, min_quality=50)
    assert sorted(rows) == ["fr-ocrvp", "nl-politie", "se-polisen"]
    snapshot = OriginIndexes.build(rows)
    late = await fed.media("nl-politie", "late", pdq=fed.near(value, 4))
    far = fed.rng.randbytes(32)
    async with fed.pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE signals SET value = $2 WHERE media_row = $1", copies[3], far)
    fed.index.replicated.remove_rows([copies[3]])
    fed.index.replicated.add([copies[3]], [far])
    await fed.linker.drain(settle_s=0)
    assert (copies[1], late) in {(link[0], link[1]) for link in await fed.links()}
    await fed.pool.execute(sql.QUEUE_ALL_MEDIA)
    await fed.pool.execute(sql.QUEUE_ALL_SERIES)
    fed.linker._near.use_origin_indexes(snapshot)
    try:
        await fed.linker.drain(settle_s=0)
    finally:
        fed.linker._near.use_origin_indexes(None)
    state = await fed.state()
    linked = {(link[0], link[1]) for link in await fed.links()}
    held = (*copies[:3], late)
    expected = {(a, b) for a in held for b in held if a < b and (a, b) != (copies[2], late)}
    assert {k for k in linked if set(k) <= {*copies, late}} == expected
    for table in ("media_links", "series_links", "series_clusters", "media_link_truncated"):
        await fed.pool.execute(f"TRUNCATE {table}")
    await fed.linker.rebuild()
    assert await fed.state() == state


async def test_victims_queue_their_series_and_the_read_api_summarises_them(fed: Fed) -> None:
    await fed.twin_series((OWN, "s1"), ("fr-ocrvp", "t1"), 3, prefix="x")
    await fed.linker.drain(settle_s=0)
    t1 = await fed.series_row("fr-ocrvp", "t1")
    after = max(r[0] for r in await fed.pool.fetch("SELECT id FROM linkage_events"))
    await fed.pool.execute(
        "INSERT INTO victims (series_row, victim_id, status, responsible_desk) "
        "VALUES ($1, 'v1', 3, 'FR victim-ID desk'), ($1, 'v2', 2, '')",
        t1,
    )
    await fed.linker.drain(settle_s=0)
    async with fed.pool.acquire() as conn:
        events = await read.linkage_events_after(conn, after_id=after, limit=10)
        summaries = await read.victim_summaries(conn, series_rows=[t1])
        s1 = await fed.series_row(OWN, "s1")
        linked = await read.media_linked_to_series(conn, series_row=s1)
    assert [e.series_row for e in events] == [t1]
    summary = summaries[t1]
    assert summary.identified_since is not None and summary.in_progress
    assert summary.desks == ("FR victim-ID desk",) and not summary.unidentified
    assert set(linked) == {"fr-ocrvp"} and linked["fr-ocrvp"].linked_media == 3


async def test_a_resync_sweep_deleting_series_and_media_is_never_blocked(fed: Fed) -> None:
    await fed.twin_series((OWN, "s1"), ("fr-ocrvp", "t1"), 3, prefix="x")
    await fed.linker.drain(settle_s=0)
    async with fed.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "DELETE FROM signals s USING media m WHERE s.media_row = m.id AND m.origin = 'fr-ocrvp'"
        )
        await conn.execute(
            "DELETE FROM media_series ms USING media m "
            "WHERE ms.media_row = m.id AND m.origin = 'fr-ocrvp'"
        )
        await conn.execute("DELETE FROM media WHERE origin = 'fr-ocrvp'")
        await conn.execute("DELETE FROM series WHERE origin = 'fr-ocrvp'")
    await fed.linker.drain(settle_s=0)
    assert await fed.state() == ([], [], [], [])
