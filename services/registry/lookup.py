"""The bounds of a lookup, and assembling its results from exact hits (database) and near hits
(PDQ index).

Whatever the request and the data (10,000 hashes, one hash asked 10,000 times, a million
near-duplicates stored, the largest distance allowed), a lookup's work is bounded:

- each distinct value is looked up once, however often the request repeats it;
- hits fetched per kind (exact, near) are at most MAX_HITS_PER_REQUEST in all: every distinct
  value first gets an equal share (at most max_matches + 1, to learn of truncation); values that
  filled their share get a second, larger share of what the others left unused;
- near matching is refused (InvalidArgument naming pdq_max_distance) when the PDQ index's
  estimate of its cost (hashes compared, at most a scan of the index per value) exceeds
  NEAR_COST_BUDGET for the request;
- a PDQ hash of quality below 50, stored or asked, never matches, exactly or near: every flat
  or black image hashes alike.

A result whose matches were cut by these bounds says so (`truncated`). Pure functions: no gRPC,
no SQL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from services.core.algorithms import SignalValue
from services.core.errors import FieldProblem, InvalidArgument
from services.registry.model import LookupResult, Match, MediaRecord, SeriesRecord

# Hits of one kind fetched for one request (a distinct media per hit at most).
MAX_HITS_PER_REQUEST = 20_000
# Hashes the PDQ index may compare for one request: about 3 s of one core.
NEAR_COST_BUDGET = 2.5e9

T = TypeVar("T")


@dataclass(frozen=True)
class NearHit:
    """Query value `value` of the request is within `distance` of PDQ `stored` of media
    `row_id`."""

    row_id: int
    stored: bytes
    distance: int


@dataclass(frozen=True)
class Queries:
    """The distinct values a lookup asks of one kind, with the request positions asking each."""

    values: list[SignalValue]
    positions: list[list[int]]


def distinct_queries(
    signals: Sequence[SignalValue], wanted: Callable[[SignalValue], bool]
) -> Queries:
    """The signals for which `wanted` holds, each distinct (algorithm, value) once."""
    index: dict[tuple[int, bytes], int] = {}
    queries = Queries([], [])
    for position, signal in enumerate(signals):
        if not wanted(signal):
            continue
        key = (signal.algorithm, signal.value)
        if key not in index:
            index[key] = len(queries.values)
            queries.values.append(signal)
            queries.positions.append([])
        queries.positions[index[key]].append(position)
    return queries


def check_near_budget(queries: int, cost_per_query: float, max_distance: int) -> None:
    """InvalidArgument when `queries` PDQ values at `max_distance` cost more than the budget."""
    if queries * cost_per_query <= NEAR_COST_BUDGET:
        return
    allowed = int(NEAR_COST_BUDGET // max(cost_per_query, 1.0))
    raise InvalidArgument(
        FieldProblem(
            "pdq_max_distance",
            f"near matching {queries} PDQ hashes at distance {max_distance} costs more than this "
            f"node allows per request: at that distance it answers at most {allowed} distinct PDQ "
            "hashes per request; send fewer or lower the distance",
        )
    )


FetchHits = Callable[[Sequence[int], int], Awaitable[list[list[T]]]]


async def fetch_bounded(
    count: int, wanted: int, fetch: FetchHits[T], *, budget: int = MAX_HITS_PER_REQUEST
) -> tuple[list[list[T]], set[int]]:
    """Hits for queries 0..count-1 (`fetch(queries, limit)`: at most `limit` each, best first),
    at most `wanted` + 1 each and about `budget` in all. Also returns the queries whose hits
    were cut by the budget (more may exist than were fetched, fewer than `wanted` kept)."""
    if count == 0:
        return [], set()
    limits = [min(wanted + 1, max(2, budget // count))] * count
    hits = await fetch(range(count), limits[0])
    full = [q for q in range(count) if len(hits[q]) >= limits[q] and limits[q] <= wanted]
    spare = budget - sum(len(h) for h in hits)
    if full and spare > 0:
        larger = min(wanted + 1, limits[0] + spare // len(full))
        if larger > limits[0]:
            for q, more in zip(full, await fetch(full, larger), strict=True):
                hits[q], limits[q] = more, larger
    cut = {q for q in range(count) if len(hits[q]) >= limits[q] and limits[q] <= wanted}
    return hits, cut


def assemble_results(
    signals: Sequence[SignalValue],
    *,
    exact: Queries,
    exact_rows: Sequence[Sequence[int]],
    near: Queries,
    near_hits: Sequence[Sequence[NearHit]],
    cut: set[int],
    media: Mapping[int, MediaRecord],
    series: Mapping[int, tuple[SeriesRecord, ...]],
    max_matches: int,
) -> list[LookupResult]:
    """One result per signal, in request order: exact matches first, then near ones by
    increasing distance, one match per stored media, at most `max_matches`; `truncated` when
    more existed or the bounds cut the fetch (`cut`: request positions). Rows missing from
    `media` (retracted meanwhile, or of another origin than asked) are left out."""
    best: list[dict[int, Match]] = [{} for _ in signals]
    for number, rows in enumerate(exact_rows):
        query = exact.values[number]
        for row in rows:
            record = media.get(row)
            if record is None:
                continue
            match = Match(True, 0, _stored_signal(record, query), record, series.get(row, ()))
            for position in exact.positions[number]:
                best[position][row] = match
    for number, hits in enumerate(near_hits):
        query = near.values[number]
        for hit in hits:
            record = media.get(hit.row_id)
            if record is None:
                continue
            stored = _stored_signal(record, SignalValue(query.algorithm, hit.stored))
            match = Match(
                hit.distance == 0, hit.distance, stored, record, series.get(hit.row_id, ())
            )
            for position in near.positions[number]:
                current = best[position].get(hit.row_id)
                if current is None or current.distance > hit.distance:
                    best[position][hit.row_id] = match
    results = []
    for position, (signal, by_row) in enumerate(zip(signals, best, strict=True)):
        ordered = sorted(
            by_row.values(),
            key=lambda m: (not m.exact, m.distance, m.media.origin, m.media.media_id),
        )
        results.append(
            LookupResult(
                index=position,
                signal=signal,
                matches=tuple(ordered[:max_matches]),
                low_quality=signal.spec.perceptual and not signal.matchable(),
                truncated=len(ordered) > max_matches or position in cut,
            )
        )
    return results


def positions_of(queries: Queries, numbers: set[int]) -> set[int]:
    """The request positions asking the distinct queries `numbers`."""
    return {position for n in numbers for position in queries.positions[n]}


def _stored_signal(record: MediaRecord, wanted: SignalValue) -> SignalValue:
    """The media's own copy of `wanted` (it carries the stored quality)."""
    for signal in record.signals:
        if signal.algorithm == wanted.algorithm and signal.value == wanted.value:
            return signal
    return SignalValue(wanted.algorithm, wanted.value)
