"""Linkage on a seeded synthetic federation with known ground truth (services/registry/linkage/
synthetic.py): the linked series pairs it finds against the true ones, precision and recall
printed and both at least 0.99; stray near matches link nothing."""

from __future__ import annotations

from typing import Any

import pytest

from services.core.db.pool import Database
from services.registry.linkage import synthetic
from services.registry.linkage.linker import Linker
from services.registry.pdq_indexes import PdqIndexes

pytestmark = pytest.mark.asyncio

OWN = synthetic.AGENCIES[0]


async def test_linkage_recovers_the_true_series_pairs(database: Database, db_pool: Any) -> None:
    fed = synthetic.generate(seed=10)
    assert fed.series_count >= 200 and fed.stray_pairs > 0
    index = PdqIndexes()
    async with db_pool.acquire() as conn, conn.transaction():
        loaded = await synthetic.load(conn, fed.media)
    for row, origin, value in loaded:
        (index.own if origin == OWN else index.replicated).add([row], [value])
    linker = Linker(database=database, index=index, node_id=OWN, chunk=500)
    await linker.drain(settle_s=0)
    async with db_pool.acquire() as conn:
        found = await synthetic.linked_pairs(conn)
    precision, recall = synthetic.precision_recall(found, fed.true_pairs)
    print(
        f"synthetic federation: {fed.series_count} series, {len(fed.media)} media, "
        f"{len(fed.true_pairs)} true pairs, {fed.stray_pairs} stray pairs: "
        f"precision {precision:.4f}, recall {recall:.4f}"
    )
    assert precision >= 0.99 and recall >= 0.99
