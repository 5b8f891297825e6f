"""The reference the write benches compare against: the rows a node holds for one origin, COPYed
into an empty database with the registry's migrations on the same server, a batch per
transaction (what PostgreSQL itself needs to take those rows in, with no logic of hashex's)."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from _common import Result, latency_summary

from services.core.db.migrations import apply_migration_plan
from services.core.db.pool import Database, ensure_database
from services.registry.store import MIGRATIONS as REGISTRY_MIGRATIONS


async def copy_reference(
    database: Database, admin_url: str | None, origin: str, *, batch_size: int
) -> Result:
    """The same media, signals, series links and series of `origin` the node holds, COPYed into
    an empty database with the registry's migrations on the same server, `batch_size` media
    per transaction. Row ids are predicted (an identity column of a fresh table counts from 1
    on one connection), so each batch is COPYs only: media, then signals, then series links."""
    if admin_url is None:
        assert database.embedded is not None
        admin_url = database.embedded.uri()
    name = f"hashex_bench_copy_{uuid.uuid4().hex[:12]}"
    await ensure_database(admin_url, name)
    url = urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    source = database.pool
    try:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
        try:
            await apply_migration_plan(pool, REGISTRY_MIGRATIONS)
            async with pool.acquire() as target:
                return await _copy_batches(source, target, origin, batch_size)
        finally:
            await pool.close()
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _copy_batches(source: Any, target: Any, origin: str, batch_size: int) -> Result:
    series = await source.fetch(
        "SELECT series_id, name, updated_at, origin_seq FROM series WHERE origin = $1 ORDER BY id",
        origin,
    )
    await target.copy_records_to_table(
        "series",
        records=[(origin, *r) for r in series],
        columns=["origin", "series_id", "name", "updated_at", "origin_seq"],
    )
    series_rows = {r["series_id"]: i + 1 for i, r in enumerate(series)}
    seconds: list[float] = []
    after, next_row, total = 0, 1, 0
    while True:
        media = await source.fetch(_READ_MEDIA, origin, after, batch_size)
        if not media:
            break
        ids = [r["id"] for r in media]
        row_of = {old: next_row + k for k, old in enumerate(ids)}
        signals = [
            (row_of[r["media_row"]], r["algorithm"], r["value"], r["quality"])
            for r in await source.fetch(_READ_SIGNALS, ids)
        ]
        links = [
            (row_of[r["media_row"]], series_rows[r["series_id"]])
            for r in await source.fetch(_READ_LINKS, ids)
        ]
        media_records = [(origin, *tuple(r)[1:]) for r in media]
        start = time.perf_counter()
        async with target.transaction():
            await target.copy_records_to_table("media", records=media_records, columns=_MEDIA)
            await target.copy_records_to_table("signals", records=signals, columns=_SIGNALS)
            if links:
                await target.copy_records_to_table(
                    "media_series", records=links, columns=["media_row", "series_row"]
                )
        seconds.append(time.perf_counter() - start)
        after, next_row, total = ids[-1], next_row + len(ids), total + len(ids)
    check = await target.fetchrow("SELECT count(*) AS n, coalesce(max(id), 0) AS top FROM media")
    if check["n"] != total or check["top"] != total:
        raise RuntimeError(f"COPY reference: predicted row ids did not hold ({dict(check)})")
    result = latency_summary(seconds)
    result["per_s"] = round(total / sum(seconds), 1)
    result["total_s"] = round(sum(seconds), 3)
    result["records"] = total
    return result


_MEDIA = [
    "origin",
    "media_id",
    "media_type",
    "category_scheme",
    "category_code",
    "flags",
    "first_seen",
    "origin_seq",
]
_SIGNALS = ["media_row", "algorithm", "value", "quality"]
_READ_MEDIA = """
SELECT id, media_id, media_type, category_scheme, category_code, flags, first_seen, origin_seq
FROM media WHERE origin = $1 AND id > $2 ORDER BY id LIMIT $3
"""
_READ_SIGNALS = "SELECT media_row, algorithm, value, quality FROM signals WHERE media_row = ANY($1)"
_READ_LINKS = """
SELECT ms.media_row, se.series_id FROM media_series ms JOIN series se ON se.id = ms.series_row
WHERE ms.media_row = ANY($1)
"""
