"""Series linkage at scale: a node holding N media of a seeded synthetic federation
(services/registry/linkage/synthetic.py), linked as they arrive; then a new seizure of M media
(copies of held series and new material) linked against it; then a full rebuild. The reference
is the federation's ground truth: precision and recall of linked series pairs.

Targets (BENCHMARKS.md): link a 100,000-media seizure against 1,000,000 in at most 30 s, rebuild
1,000,000 in at most 120 s, precision and recall at least 0.99. Then flag latency, from a
submit at one agency to WatchFlags delivery at the other, median and p99 (bench/_flag_latency.py).

    .venv/bin/python bench/linkage.py --n 1000000 --seizure 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import _flag_latency
from _common import emit, latency_summary, machine, progress, rss_mib

from services.core.config import NodeConfig
from services.core.db.migrations import apply_migration_plan
from services.core.db.pool import Database, open_database
from services.registry.linkage import synthetic
from services.registry.linkage.linker import Linker
from services.registry.pdq_indexes import PdqIndexes
from services.sync.store import MIGRATIONS as NODE_MIGRATIONS

OWN = synthetic.AGENCIES[0]
SEIZING = "be-fccu"
LOAD_BATCH = 20_000


@asynccontextmanager
async def scratch_database() -> AsyncIterator[Database]:
    """An embedded PostgreSQL in a temporary directory (traversable by its server user)."""
    path = Path(tempfile.mkdtemp(prefix="hashex-bench-linkage-"))
    os.chmod(path, 0o711)
    config = NodeConfig(node_id=OWN, data_dir=path)
    database = await open_database(config.database_location())
    try:
        await apply_migration_plan(database.pool, NODE_MIGRATIONS)
        yield database
    finally:
        await database.close()
        shutil.rmtree(path, ignore_errors=True)


async def load(
    database: Database, index: PdqIndexes, media: Sequence[synthetic.SyntheticMedia]
) -> float:
    started = time.perf_counter()
    for at in range(0, len(media), LOAD_BATCH):
        async with database.transaction() as conn:
            loaded = await synthetic.load(conn, media[at : at + LOAD_BATCH])
        own = [(row, value) for row, origin, value in loaded if origin == OWN]
        other = [(row, value) for row, origin, value in loaded if origin != OWN]
        for part, rows in ((index.own, own), (index.replicated, other)):
            if rows:
                part.add([r for r, _ in rows], [v for _, v in rows])
    async with database.connection() as conn:
        # What autovacuum does on a node that grew over time; the bench loads in seconds.
        await conn.execute("ANALYZE")
    return time.perf_counter() - started


async def run(args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], dict[str, object]]:
    held_series = max(1, args.n // 30)
    progress(f"generating about {args.n:,} held media and a seizure of about {args.seizure:,}")
    fed = synthetic.generate(
        seed=args.seed,
        true_series=int(held_series * 0.6),
        distractor_series=int(held_series * 0.4),
        stray_pairs=max(40, held_series // 20),
    )
    seizure = synthetic.seizure(fed, origin=SEIZING, size=args.seizure, seed=args.seed + 1)
    index = PdqIndexes()
    async with scratch_database() as database:
        linker = Linker(database=database, index=index, node_id=OWN)
        load_s = await load(database, index, fed.media)
        progress(f"loaded {len(fed.media):,} media in {load_s:.1f} s; linking them")
        started = time.perf_counter()
        await linker.drain(settle_s=0)
        initial_s = time.perf_counter() - started
        async with database.connection() as conn:
            found = await synthetic.linked_pairs(conn)
        precision, recall = synthetic.precision_recall(found, fed.true_pairs)
        progress(f"linked in {initial_s:.1f} s: precision {precision:.4f}, recall {recall:.4f}")

        await load(database, index, seizure.media)
        started = time.perf_counter()
        seizure_counts = await linker.drain(settle_s=0)
        seizure_s = time.perf_counter() - started
        async with database.connection() as conn:
            found = await synthetic.linked_pairs(conn)
        s_precision, s_recall = synthetic.precision_recall(found, seizure.true_pairs)
        progress(f"seizure linked in {seizure_s:.1f} s ({seizure_counts.events:,} series changed)")

        started = time.perf_counter()
        rebuilt = await linker.rebuild()
        rebuild_s = time.perf_counter() - started
        progress(f"rebuilt {rebuilt.media:,} media in {rebuild_s:.1f} s, {rebuilt.events} changed")
    latency = latency_summary(await _flag_latency.measure(args.latency_rounds, args.seed))
    progress(f"flag latency: median {latency['median_ms']:.0f} ms, p99 {latency['p99_ms']:.0f} ms")
    results = {
        "hashex": {
            "median_ms": round(seizure_s * 1e3, 1),
            "seizure_link_s": round(seizure_s, 2),
            "seizure_media_per_s": round(len(seizure.media) / seizure_s, 1),
            "initial_link_s": round(initial_s, 2),
            "rebuild_s": round(rebuild_s, 2),
            "rebuild_changed_series": rebuilt.events,
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "precision_after_seizure": round(s_precision, 4),
            "recall_after_seizure": round(s_recall, 4),
            "flag_latency_median_ms": round(latency["median_ms"], 1),
            "flag_latency_p99_ms": round(latency["p99_ms"], 1),
            "load_s": round(load_s, 2),
            "rss_mib": round(rss_mib(), 1),
        },
        "ground_truth": {
            "series": float(fed.series_count),
            "true_pairs": float(len(fed.true_pairs)),
            "stray_pairs": float(fed.stray_pairs),
        },
    }
    facts: dict[str, object] = {
        "held_media": len(fed.media),
        "seizure_media": len(seizure.media),
        "flag_latency_rounds": args.latency_rounds,
    }
    return results, facts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="media the node holds")
    parser.add_argument("--seizure", type=int, default=100_000, help="media of the new seizure")
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument(
        "--latency-rounds", type=int, default=50, help="flag latency samples (at least 1)"
    )
    args = parser.parse_args(argv)
    if args.latency_rounds < 1:
        parser.error("--latency-rounds must be at least 1")
    results, facts = asyncio.run(run(args))
    params = {
        "n": args.n,
        "seizure": args.seizure,
        "seed": args.seed,
        "median_ms": "hashex: time to link the seizure; ground_truth: the seeded federation",
        "targets": {"seizure_link_s": 30, "rebuild_s": 120, "precision": 0.99, "recall": 0.99},
        **facts,
    }
    emit("linkage", params, machine(), results, "hashex")


if __name__ == "__main__":
    main()
