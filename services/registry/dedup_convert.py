"""Dedup requests and reports ⇄ protobuf, with the request's limits checked (registry.proto,
DedupRequest)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from hashex.v1 import registry_pb2
from services.core.errors import FieldProblem, InvalidArgument
from services.registry import model
from services.registry.contract import MAX_LOOKUP_SIGNALS
from services.registry.convert import Problems, signal_from_proto
from services.registry.dedup import MAX_ITEMS, MAX_SIGNALS_PER_ITEM, DedupItem
from services.registry.dedup_report import DedupReport

# Near matches in a report: at most the linkage threshold (a near match is a link at most 31).
MAX_DEDUP_PDQ_DISTANCE = 31


@dataclass(frozen=True)
class SeriesAsked:
    origin: str
    series_id: str
    page_token: str


def dedup_from_proto(
    request: registry_pb2.DedupRequest, *, node_id: str
) -> tuple[list[DedupItem] | SeriesAsked, int]:
    """What to report on, and the PDQ distance; InvalidArgument names every problem."""
    distance = MAX_DEDUP_PDQ_DISTANCE
    if request.HasField("pdq_max_distance"):
        distance = request.pdq_max_distance
        if distance > MAX_DEDUP_PDQ_DISTANCE:
            raise InvalidArgument(
                FieldProblem("pdq_max_distance", f"{distance} is above the limit of 31")
            )
    source = request.WhichOneof("source")
    if source == "series":
        return _series_from_proto(request.series, node_id), distance
    if source == "items":
        return _items_from_proto(request.items.items), distance
    raise InvalidArgument(FieldProblem("source", "give items or a series"))


def _series_from_proto(series: registry_pb2.DedupSeries, node_id: str) -> SeriesAsked:
    problems = Problems()
    origin = series.origin or node_id
    problems.check("series.origin", partial(model.check_id, "origin", origin))
    problems.check("series.series_id", partial(model.check_id, "series id", series.series_id))
    if len(series.page_token) > 64:
        problems.add("series.page_token", "not a token this report gave")
    problems.raise_if_any()
    return SeriesAsked(origin, series.series_id, series.page_token)


def _items_from_proto(messages: Sequence[registry_pb2.DedupItem]) -> list[DedupItem]:
    if not messages:
        raise InvalidArgument(FieldProblem("items.items", "at least one item is required"))
    if len(messages) > MAX_ITEMS:
        raise InvalidArgument(
            FieldProblem("items.items", f"{len(messages)} items; the limit is {MAX_ITEMS}")
        )
    total = sum(len(item.signals) for item in messages)
    if total > MAX_LOOKUP_SIGNALS:
        raise InvalidArgument(
            FieldProblem("items.items", f"{total} signals; the limit is {MAX_LOOKUP_SIGNALS}")
        )
    problems = Problems()
    items: list[DedupItem] = []
    for i, item in enumerate(messages):
        field = f"items.items[{i}].signals"
        if not item.signals or len(item.signals) > MAX_SIGNALS_PER_ITEM:
            problems.add(field, f"an item has 1 to {MAX_SIGNALS_PER_ITEM} signals")
            continue
        signals = [
            problems.check(f"{field}[{j}]", partial(signal_from_proto, message))
            for j, message in enumerate(item.signals)
        ]
        items.append(DedupItem(tuple(s for s in signals if s is not None)))
    problems.raise_if_any()
    return items


def dedup_response_to_proto(report: DedupReport) -> registry_pb2.DedupResponse:
    counts = report.counts
    return registry_pb2.DedupResponse(
        items=counts.items,
        new_items=counts.new_items,
        exact_items=counts.exact_items,
        near_items=counts.near_items,
        unchecked_items=counts.unchecked_items,
        truncated_items=counts.truncated_items,
        clusters=[
            registry_pb2.DedupCluster(
                cluster_id=cluster.cluster_id,
                series=[
                    registry_pb2.DedupSeriesRef(
                        origin=s.origin,
                        series_id=s.series_id,
                        name=s.name,
                        media_count=s.media_count,
                    )
                    for s in cluster.series
                ],
                series_count=cluster.series_count,
                exact_items=cluster.tally.exact_items,
                near_items=cluster.tally.near_items,
                closest_distance=cluster.tally.closest_distance,
            )
            for cluster in report.clusters
        ],
        cluster_count=len(counts.clusters),
        origins=[
            registry_pb2.DedupOrigin(
                origin=origin, exact_items=tally.exact_items, near_items=tally.near_items
            )
            for origin, tally in sorted(counts.origins.items())
        ],
        items_without_series=counts.items_without_series,
        next_page_token=report.next_page_token,
    )
