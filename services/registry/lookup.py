"""Assembling lookup results from exact hits (database) and near hits (PDQ index).

Pure functions: no gRPC, no SQL. One result per queried signal, in request order; per result,
exact matches first, then near matches by increasing distance; one match per stored media.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.core.algorithms import SignalValue
from services.registry.model import ExactHit, LookupResult, Match, MediaRecord, SeriesRecord


@dataclass(frozen=True)
class NearCandidate:
    """Query `query_index` is within `distance` of PDQ `value` stored on media `row_id`."""

    query_index: int
    row_id: int
    value: bytes
    distance: int


def near_match_queries(signals: Sequence[SignalValue]) -> list[int]:
    """Indexes of the signals that take part in near matching (PDQ of sufficient quality)."""
    return [i for i, s in enumerate(signals) if s.usable_for_near_match()]


def rows_to_fetch(exact: Sequence[ExactHit], near: Sequence[NearCandidate]) -> list[int]:
    return sorted({h.row_id for h in exact} | {c.row_id for c in near})


def assemble_results(
    signals: Sequence[SignalValue],
    *,
    exact: Sequence[ExactHit],
    near: Sequence[NearCandidate],
    media: Mapping[int, MediaRecord],
    series: Mapping[int, tuple[SeriesRecord, ...]],
    max_matches: int,
) -> list[LookupResult]:
    """The lookup answer. Rows missing from `media` (retracted meanwhile) are left out."""
    best: list[dict[int, Match]] = [{} for _ in signals]
    for hit in exact:
        record = media.get(hit.row_id)
        if record is not None:
            stored = _stored_signal(record, signals[hit.query_index])
            best[hit.query_index][hit.row_id] = Match(
                True, 0, stored, record, series.get(hit.row_id, ())
            )
    for candidate in near:
        record = media.get(candidate.row_id)
        current = best[candidate.query_index].get(candidate.row_id)
        if record is None or (current is not None and current.distance <= candidate.distance):
            continue
        query = signals[candidate.query_index]
        stored = _stored_signal(record, SignalValue(query.algorithm, candidate.value))
        best[candidate.query_index][candidate.row_id] = Match(
            candidate.distance == 0,
            candidate.distance,
            stored,
            record,
            series.get(candidate.row_id, ()),
        )
    results = []
    for index, (signal, by_row) in enumerate(zip(signals, best, strict=True)):
        ordered = sorted(
            by_row.values(),
            key=lambda m: (not m.exact, m.distance, m.media.origin, m.media.media_id),
        )
        results.append(
            LookupResult(
                index=index,
                signal=signal,
                matches=tuple(ordered[:max_matches]),
                low_quality=signal.spec.perceptual and not signal.usable_for_near_match(),
                truncated=len(ordered) > max_matches,
            )
        )
    return results


def _stored_signal(record: MediaRecord, wanted: SignalValue) -> SignalValue:
    """The media's own copy of `wanted` (it carries the stored quality)."""
    for signal in record.signals:
        if signal.algorithm == wanted.algorithm and signal.value == wanted.value:
            return signal
    return SignalValue(wanted.algorithm, wanted.value)
