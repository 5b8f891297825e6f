"""A linker chunk's statements are planned as index lookups into `media`, never as a scan of it:
with PostgreSQL's default random_page_cost, joins of a chunk's 2,000 rows were planned as scans
of the whole table, so every chunk cost more as the node grew (bench/README.md, linkage.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.registry.linkage import sql
from services.registry.linkage.linker import _plan_for_lookups

pytestmark = pytest.mark.asyncio

MEDIA = 300_000
CHUNK = 2_000


def _scans_of_media(plan: Any) -> list[str]:
    """The plan nodes reading `media` other than by a lookup of given rows."""
    found = []
    stack = [plan]
    while stack:
        node = stack.pop()
        if node.get("Relation Name") == "media" and "Index Cond" not in node:
            found.append(node["Node Type"])
        stack.extend(node.get("Plans", []))
    return found


async def test_chunk_statements_look_media_up_by_index(db_pool: Any) -> None:
    async with db_pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO media (origin, media_id, media_type)"
            " SELECT CASE WHEN i % 2 = 0 THEN 'de-bka' ELSE 'fr-ocrvp' END, 'm' || i, 1"
            " FROM generate_series(1, $1::int) i",
            MEDIA,
        )
        await conn.execute(
            "INSERT INTO signals (media_row, algorithm, value)"
            " SELECT id, 1, decode(md5(media_id), 'hex') FROM media"
        )
        await conn.execute(
            "INSERT INTO signals (media_row, algorithm, value, quality)"
            " SELECT id, 4, decode(md5(media_id) || md5(media_id || 'p'), 'hex'), 90 FROM media"
        )
        await conn.execute(
            "INSERT INTO media_links (low_row, high_row, exact, distance)"
            " SELECT id, id + 1, true, NULL FROM media WHERE id % 2 = 1 AND id < $1",
            MEDIA,
        )
        await conn.execute("ANALYZE")
        first = await conn.fetchval("SELECT min(id) FROM media") + MEDIA // 2
        chunk = list(range(first, first + CHUNK))
        statements = {
            "LINKS_OF": (sql.LINKS_OF, [chunk]),
            "EXACT_CANDIDATES": (sql.EXACT_CANDIDATES, [chunk, 1001]),
            "PEEK_PDQ": (sql.PEEK_PDQ, [0.0, CHUNK, 50]),
        }
        scans = {}
        async with conn.transaction():
            await _plan_for_lookups(conn)
            for name, (statement, args) in statements.items():
                [row] = await conn.fetch("EXPLAIN (FORMAT JSON) " + statement, *args)
                scans[name] = _scans_of_media(json.loads(row[0])[0]["Plan"])
    assert scans == {name: [] for name in statements}
