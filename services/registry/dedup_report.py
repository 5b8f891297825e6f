"""Deduplication reports (the Registry's Dedup RPC): a seizure's items, or a held series page by
page, looked up among every record this node holds and counted by services.registry.dedup.

Bounded like a lookup (it is one: at most 10,000 signals, 20 matches each, the near-match cost
budget), plus at most 100 clusters listed with 20 series each. No gRPC and no SQL here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.core.db.pool import Database
from services.core.errors import InvalidArgument
from services.registry import store_dedup
from services.registry.dedup import (
    MATCHES_PER_SIGNAL,
    MAX_SERIES_PER_CLUSTER,
    SERIES_PAGE,
    DedupCounts,
    DedupItem,
    Tally,
    matched_series,
    tally_items,
    top_clusters,
)
from services.registry.model import LookupResult
from services.registry.registry import Registry
from services.registry.store_dedup import ClusterSeries

_PAGE_PREFIX = "after-media-"


@dataclass(frozen=True)
class ClusterReport:
    cluster_id: int
    series: tuple[ClusterSeries, ...]
    series_count: int
    tally: Tally


@dataclass(frozen=True)
class DedupReport:
    counts: DedupCounts
    # The clusters listed (at most MAX_CLUSTERS, most items first); counts.clusters has all.
    clusters: tuple[ClusterReport, ...]
    next_page_token: str = ""


class DedupReporter:
    def __init__(self, *, registry: Registry, database: Database) -> None:
        self._registry = registry
        self._db = database

    async def report_items(self, items: Sequence[DedupItem], *, max_distance: int) -> DedupReport:
        results = await self._lookup(items, max_distance)
        return await self._report(items, results, excluded_origin=None, excluded_rows=set())

    async def report_series(
        self, *, origin: str, series_id: str, page_token: str, max_distance: int
    ) -> DedupReport:
        """One page of a held series' media, matched against other origins' records."""
        after_row = _row_of_token(page_token)
        async with self._db.connection() as conn:
            page = await store_dedup.series_media_page(
                conn, origin=origin, series_id=series_id, after_row=after_row, limit=SERIES_PAGE
            )
        items = [DedupItem(media.signals) for media in page]
        results = await self._lookup(items, max_distance)
        report = await self._report(
            items,
            results,
            excluded_origin=origin,
            excluded_rows={media.row_id for media in page},
        )
        if len(page) < SERIES_PAGE:
            return report
        return DedupReport(report.counts, report.clusters, f"{_PAGE_PREFIX}{page[-1].row_id}")

    async def _lookup(self, items: Sequence[DedupItem], max_distance: int) -> list[LookupResult]:
        signals = [signal for item in items for signal in item.signals]
        if not signals:
            return []
        return await self._registry.lookup(
            signals, max_distance=max_distance, max_matches=MATCHES_PER_SIGNAL
        )

    async def _report(
        self,
        items: Sequence[DedupItem],
        results: Sequence[LookupResult],
        *,
        excluded_origin: str | None,
        excluded_rows: set[int],
    ) -> DedupReport:
        async with self._db.connection() as conn:
            cluster_of = await store_dedup.clusters_of_series(conn, keys=matched_series(results))
            counts = tally_items(
                items,
                results,
                cluster_of=cluster_of,
                excluded_origin=excluded_origin,
                excluded_rows=excluded_rows,
            )
            listed = top_clusters(counts)
            members = await store_dedup.cluster_members(
                conn, cluster_ids=listed, per_cluster=MAX_SERIES_PER_CLUSTER
            )
        clusters = tuple(
            ClusterReport(
                cluster_id,
                members[cluster_id].series,
                members[cluster_id].series_count,
                counts.clusters[cluster_id],
            )
            for cluster_id in listed
            if cluster_id in members
        )
        return DedupReport(counts, clusters)


def _row_of_token(token: str) -> int:
    if not token:
        return 0
    digits = token.removeprefix(_PAGE_PREFIX)
    if digits == token or not digits.isdigit() or len(digits) > 19:
        raise InvalidArgument("page_token: not a token this report gave; leave it empty to start")
    return int(digits)
