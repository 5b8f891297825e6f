"""A deduplication report: which items of a seizure (or media of a series) are new, known
exactly, or known only by a PDQ near match, and to which series clusters and origins the
matches belong.

An item is one file's hashes. It is `exact` when any of its hashes matches a stored media
exactly, else `near` when any is within the distance, else `new` when at least one of its hashes
could be checked; an item whose only hashes are PDQ of quality below 50 is `unchecked`, never
`new` (nothing was compared). Per cluster and per origin an item counts once, as exact when it
matched exactly there and as near otherwise. Pure functions: no gRPC, no SQL.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from services.core.algorithms import SignalValue
from services.registry.model import LookupResult, Match

# Per request: the signals of a lookup, the items a caller may send.
MAX_ITEMS = 1_000
MAX_SIGNALS_PER_ITEM = 16
# Matches fetched per signal: enough to reach every cluster an item touches in practice; an
# item cut here is counted in `truncated_items`.
MATCHES_PER_SIGNAL = 20
# Clusters listed in a report, and series named per cluster.
MAX_CLUSTERS = 100
MAX_SERIES_PER_CLUSTER = 20
# Media of a series reported per page.
SERIES_PAGE = 1_000

SeriesKey = tuple[str, str]
K = TypeVar("K", int, str)


@dataclass(frozen=True)
class DedupItem:
    signals: tuple[SignalValue, ...]


@dataclass
class Tally:
    """Items matching one cluster or one origin: exact ones, near-only ones, closest distance."""

    exact_items: int = 0
    near_items: int = 0
    closest_distance: int | None = None

    def count(self, exact: bool, distance: int | None) -> None:
        if exact:
            self.exact_items += 1
        else:
            self.near_items += 1
        if distance is not None and (
            self.closest_distance is None or distance < self.closest_distance
        ):
            self.closest_distance = distance


@dataclass
class DedupCounts:
    items: int = 0
    new_items: int = 0
    exact_items: int = 0
    near_items: int = 0
    unchecked_items: int = 0
    truncated_items: int = 0
    items_without_series: int = 0
    clusters: dict[int, Tally] = field(default_factory=dict)
    origins: dict[str, Tally] = field(default_factory=dict)


@dataclass(frozen=True)
class _Seen:
    """What one item matched in one cluster or origin: exactly or not, closest near distance."""

    exact: bool
    distance: int | None


def tally_items(
    items: Sequence[DedupItem],
    results: Sequence[LookupResult],
    *,
    cluster_of: Mapping[SeriesKey, int],
    excluded_origin: str | None = None,
    excluded_rows: Collection[int] = (),
) -> DedupCounts:
    """Counts for `items`, given the lookup `results` of their signals in item order (item 0's
    signals first), the cluster of every matched series, and matches to leave out (the series'
    own origin, the asked media themselves)."""
    counts = DedupCounts()
    position = 0
    for item in items:
        item_results = results[position : position + len(item.signals)]
        position += len(item.signals)
        _tally_item(counts, item_results, cluster_of, excluded_origin, excluded_rows)
    return counts


def _tally_item(
    counts: DedupCounts,
    results: Sequence[LookupResult],
    cluster_of: Mapping[SeriesKey, int],
    excluded_origin: str | None,
    excluded_rows: Collection[int],
) -> None:
    counts.items += 1
    matches = [
        match
        for result in results
        for match in result.matches
        if match.media.origin != excluded_origin and match.media.row_id not in excluded_rows
    ]
    if any(result.truncated for result in results):
        counts.truncated_items += 1
    if any(match.exact for match in matches):
        counts.exact_items += 1
    elif matches:
        counts.near_items += 1
    elif all(result.low_quality for result in results):
        counts.unchecked_items += 1
    else:
        counts.new_items += 1
    clusters: dict[int, _Seen] = {}
    origins: dict[str, _Seen] = {}
    without_series = False
    for match in matches:
        _note(origins, match.media.origin, match)
        if not match.series:
            without_series = True
        for series in match.series:
            _note(clusters, cluster_of[(series.origin, series.series_id)], match)
    counts.items_without_series += without_series
    for cluster_id, seen in clusters.items():
        counts.clusters.setdefault(cluster_id, Tally()).count(seen.exact, seen.distance)
    for origin, seen in origins.items():
        counts.origins.setdefault(origin, Tally()).count(seen.exact, seen.distance)


def _note(seen: dict[K, _Seen], key: K, match: Match) -> None:
    distance = None if match.exact else match.distance
    before = seen.get(key)
    if before is None:
        seen[key] = _Seen(match.exact, distance)
        return
    closest = before.distance
    if distance is not None and (closest is None or distance < closest):
        closest = distance
    seen[key] = _Seen(before.exact or match.exact, closest)


def matched_series(results: Sequence[LookupResult]) -> list[SeriesKey]:
    """Every series a match of `results` belongs to, each once."""
    keys = {
        (series.origin, series.series_id)
        for result in results
        for match in result.matches
        for series in match.series
    }
    return sorted(keys)


def top_clusters(counts: DedupCounts) -> list[int]:
    """The clusters a report lists: most items first, then the smaller id."""
    ranked = sorted(
        counts.clusters.items(),
        key=lambda pair: (-(pair[1].exact_items + pair[1].near_items), pair[0]),
    )
    return [cluster_id for cluster_id, _ in ranked[:MAX_CLUSTERS]]
