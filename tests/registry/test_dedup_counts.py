"""How a dedup report counts items: pure rules, no database."""

from __future__ import annotations

from datetime import UTC, datetime

from services.core.algorithms import Algorithm, SignalValue
from services.registry.dedup import DedupItem, tally_items
from services.registry.model import (
    LookupResult,
    Match,
    MediaFlags,
    MediaRecord,
    MediaType,
    SeriesRecord,
)


def _media(row: int, origin: str) -> MediaRecord:
    return MediaRecord(
        row, origin, f"m{row}", (), MediaType.IMAGE, None, MediaFlags(), (), datetime.now(UTC)
    )


def _series(origin: str, series_id: str) -> SeriesRecord:
    return SeriesRecord(origin, series_id, "", (), 1, datetime.now(UTC))


def test_excluded_origin_and_rows_are_left_out_of_every_count() -> None:
    asked = SignalValue(Algorithm.MD5, bytes(16))
    own, other = _series("gb-nca", "s1"), _series("de-bka", "x9")
    matches = (
        Match(True, 0, asked, _media(1, "gb-nca"), (own,)),
        Match(False, 5, asked, _media(2, "de-bka"), (other,)),
    )
    results = [LookupResult(0, asked, matches, low_quality=False, truncated=False)]
    counts = tally_items(
        [DedupItem((asked,))],
        results,
        cluster_of={("gb-nca", "s1"): 1, ("de-bka", "x9"): 2},
        excluded_origin="gb-nca",
    )
    assert (counts.exact_items, counts.near_items) == (0, 1)
    assert set(counts.clusters) == {2} and set(counts.origins) == {"de-bka"}
    counts = tally_items(
        [DedupItem((asked,))],
        results,
        cluster_of={("gb-nca", "s1"): 1, ("de-bka", "x9"): 2},
        excluded_rows={1, 2},
    )
    assert (counts.new_items, counts.clusters, counts.origins) == (1, {}, {})
