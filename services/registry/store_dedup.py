"""Reads of a deduplication report: the clusters of matched series, a cluster's series, and a
series' media page by page. Read only; the clusters are the linker's (services.registry.linkage).
A series the linker has not placed in a cluster (linked to none) is a cluster of its own, whose
id is its row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.core.algorithms import Algorithm, SignalValue
from services.core.errors import NotFound
from services.registry.dedup import SeriesKey

CLUSTERS_OF_SERIES = """
SELECT s.origin, s.series_id, coalesce(c.cluster_id, s.id) AS cluster_id
FROM unnest($1::text[], $2::text[]) AS k(origin, series_id)
JOIN series s ON s.origin = k.origin AND s.series_id = k.series_id
LEFT JOIN series_clusters c ON c.series_row = s.id
"""

# Members of clusters; a cluster id without member rows is a lone series (its own row).
CLUSTER_SERIES = """
WITH members AS (
    SELECT c.cluster_id, c.series_row FROM series_clusters c WHERE c.cluster_id = ANY($1::bigint[])
    UNION
    SELECT s.id, s.id FROM series s WHERE s.id = ANY($1::bigint[])
), ranked AS (
    SELECT cluster_id, series_row,
           row_number() OVER (PARTITION BY cluster_id ORDER BY series_row) AS place,
           count(*) OVER (PARTITION BY cluster_id) AS members
    FROM members
)
SELECT r.cluster_id, r.members, s.origin, s.series_id, s.name, s.media_count
FROM ranked r JOIN series s ON s.id = r.series_row
WHERE r.place <= $2
ORDER BY r.cluster_id, r.series_row
"""

SERIES_ROW = "SELECT id FROM series WHERE origin = $1 AND series_id = $2"

# One page of a series' media (not retracted) with their signals.
SERIES_MEDIA_PAGE = """
WITH page AS (
    SELECT ms.media_row FROM media_series ms JOIN media m ON m.id = ms.media_row
    WHERE ms.series_row = $1 AND ms.media_row > $2 AND m.retracted_at IS NULL
    ORDER BY ms.media_row LIMIT $3
)
SELECT p.media_row, s.algorithm, s.value, s.quality
FROM page p JOIN signals s ON s.media_row = p.media_row
ORDER BY p.media_row, s.algorithm, s.value
"""


@dataclass(frozen=True)
class ClusterSeries:
    origin: str
    series_id: str
    name: str
    media_count: int


@dataclass(frozen=True)
class ClusterMembers:
    series: tuple[ClusterSeries, ...]
    series_count: int


@dataclass(frozen=True)
class SeriesMedia:
    row_id: int
    signals: tuple[SignalValue, ...]


async def clusters_of_series(conn: Any, *, keys: Sequence[SeriesKey]) -> dict[SeriesKey, int]:
    if not keys:
        return {}
    rows = await conn.fetch(
        CLUSTERS_OF_SERIES, [origin for origin, _ in keys], [series for _, series in keys]
    )
    return {(r["origin"], r["series_id"]): r["cluster_id"] for r in rows}


async def cluster_members(
    conn: Any, *, cluster_ids: Sequence[int], per_cluster: int
) -> dict[int, ClusterMembers]:
    """The first `per_cluster` series of each cluster (smallest row first) and its size."""
    if not cluster_ids:
        return {}
    rows = await conn.fetch(CLUSTER_SERIES, list(cluster_ids), per_cluster)
    series: dict[int, list[ClusterSeries]] = {}
    sizes: dict[int, int] = {}
    for r in rows:
        series.setdefault(r["cluster_id"], []).append(
            ClusterSeries(r["origin"], r["series_id"], r["name"], r["media_count"])
        )
        sizes[r["cluster_id"]] = r["members"]
    return {cid: ClusterMembers(tuple(found), sizes[cid]) for cid, found in series.items()}


async def series_media_page(
    conn: Any, *, origin: str, series_id: str, after_row: int, limit: int
) -> list[SeriesMedia]:
    """Up to `limit` media of the series after media row `after_row`, in row order; NotFound
    for a series this node does not hold."""
    series_row = await conn.fetchval(SERIES_ROW, origin, series_id)
    if series_row is None:
        raise NotFound(f"series {origin}/{series_id} is not held by this node")
    rows = await conn.fetch(SERIES_MEDIA_PAGE, series_row, after_row, limit)
    media: dict[int, list[SignalValue]] = {}
    for r in rows:
        media.setdefault(r["media_row"], []).append(
            SignalValue(Algorithm(r["algorithm"]), bytes(r["value"]), r["quality"])
        )
    return [SeriesMedia(row, tuple(signals)) for row, signals in media.items()]
