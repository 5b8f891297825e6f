"""`hashex dedup`: a deduplication report for a seizure (hash lists, hash files, images,
folders) or for a series the node holds — how many media are new, known exactly or only by a
near match among the records the node holds, and in which series clusters and origins.

The seizure is read and checked as `hashex lookup` reads it (services.cli.lookup_inputs), then
sent in requests of at most 1,000 items; a series is reported page by page. The counts of every
request are added up here (an item is in exactly one request, so the sums are exact).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from hashex.v1 import registry_pb2
from services.cli import exit_codes
from services.cli.lookup_inputs import MAX_FILES, collect_items
from services.cli.node_client import add_node_options, registry_stub, run_command
from services.core.algorithms import SignalValue
from services.core.errors import InvalidArgument
from services.registry.contract import MAX_LOOKUP_SIGNALS as MAX_SIGNALS_PER_REQUEST
from services.registry.convert import signal_to_proto
from services.registry.dedup import MAX_ITEMS as MAX_ITEMS_PER_REQUEST
from services.registry.dedup import MAX_SIGNALS_PER_ITEM

_COUNTS = (
    "items",
    "new_items",
    "exact_items",
    "near_items",
    "unchecked_items",
    "truncated_items",
    "items_without_series",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "dedup",
        help="how much of a seizure or series is new, known exactly or by near match",
        description=(
            "Report how many media of a seizure are new to the records your node holds (its own\n"
            "and those replicated from peers), known exactly, or known only by a PDQ near\n"
            "match, and to which series clusters and origins they belong. Give hashes, hash\n"
            f"lists, hash files, images or folders (at most {MAX_FILES:,} files) as for\n"
            "`hashex lookup` (one file, or one line of a hash list, is one item), or\n"
            "--series ID for a series the node holds (matches of its own origin left out)."
        ),
        epilog=(
            "examples:\n"
            "  hashex dedup exhibit-07/ --cert units/alice.pem\n"
            "  hashex dedup seizure.jsonl --format json\n"
            "  hashex dedup --series S-2026-031\n\n" + exit_codes.EPILOG
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", metavar="HASH|PATH|-")
    parser.add_argument("--series", metavar="ID", help="report on a series the node holds")
    parser.add_argument(
        "--origin", metavar="NODE", default="", help="the series' origin (default: this node)"
    )
    parser.add_argument(
        "--max-distance", type=int, help="largest PDQ distance counted as near, 0-31 (default 31)"
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")
    add_node_options(parser)
    parser.set_defaults(func=lambda ns: run_command(_dedup, ns))


@dataclass
class Report:
    """The sum of the reports of every request."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0))
    clusters: dict[int, dict[str, Any]] = field(default_factory=dict)
    origins: dict[str, dict[str, int]] = field(default_factory=dict)
    # True when a request matched more clusters than it listed.
    clusters_cut: bool = False

    def add(self, response: registry_pb2.DedupResponse) -> None:
        for name in _COUNTS:
            self.counts[name] += getattr(response, name)
        self.clusters_cut |= response.cluster_count > len(response.clusters)
        for cluster in response.clusters:
            entry = self.clusters.setdefault(
                cluster.cluster_id,
                {
                    "cluster_id": cluster.cluster_id,
                    "series": [_series_json(s) for s in cluster.series],
                    "series_count": cluster.series_count,
                    "exact_items": 0,
                    "near_items": 0,
                    "closest_distance": None,
                },
            )
            entry["exact_items"] += cluster.exact_items
            entry["near_items"] += cluster.near_items
            if cluster.HasField("closest_distance"):
                closest = entry["closest_distance"]
                entry["closest_distance"] = min(
                    cluster.closest_distance, closest if closest is not None else 64
                )
        for origin in response.origins:
            tally = self.origins.setdefault(origin.origin, {"exact_items": 0, "near_items": 0})
            tally["exact_items"] += origin.exact_items
            tally["near_items"] += origin.near_items

    def ranked_clusters(self) -> list[dict[str, Any]]:
        return sorted(
            self.clusters.values(),
            key=lambda c: (-(c["exact_items"] + c["near_items"]), c["cluster_id"]),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            **self.counts,
            "clusters": self.ranked_clusters(),
            "clusters_complete": not self.clusters_cut,
            "origins": [{"origin": o, **t} for o, t in sorted(self.origins.items())],
        }


def _dedup(ns: argparse.Namespace) -> int:
    if ns.max_distance is not None and not 0 <= ns.max_distance <= 31:
        raise InvalidArgument("--max-distance must be 0-31")
    if bool(ns.series) == bool(ns.inputs):
        raise InvalidArgument("give either hashes, files or folders, or --series ID")
    report = Report()
    with registry_stub(ns) as stub:
        if ns.series:
            request = _series_request(ns)
            while True:  # one page of 1,000 media per call
                response: registry_pb2.DedupResponse = stub.Dedup(request, timeout=ns.timeout)
                report.add(response)
                if not response.next_page_token:
                    break
                request.series.page_token = response.next_page_token
        else:
            for request in _item_requests(ns):
                report.add(stub.Dedup(request, timeout=ns.timeout))
    if ns.format == "json":
        sys.stdout.write(json.dumps(report.as_json()) + "\n")
    else:
        _write_table(report)
    return exit_codes.OK


def _series_request(ns: argparse.Namespace) -> registry_pb2.DedupRequest:
    request = registry_pb2.DedupRequest(
        series=registry_pb2.DedupSeries(origin=ns.origin, series_id=ns.series)
    )
    if ns.max_distance is not None:
        request.pdq_max_distance = ns.max_distance
    return request


def _item_requests(ns: argparse.Namespace) -> Iterator[registry_pb2.DedupRequest]:
    batch: list[registry_pb2.DedupItem] = []
    signals = 0
    for item in split_items(collect_items(ns.inputs)):
        if batch and (
            len(batch) == MAX_ITEMS_PER_REQUEST or signals + len(item) > MAX_SIGNALS_PER_REQUEST
        ):
            yield _items_request(batch, ns)
            batch, signals = [], 0
        batch.append(registry_pb2.DedupItem(signals=[signal_to_proto(s) for s in item]))
        signals += len(item)
    if batch:
        yield _items_request(batch, ns)


def _items_request(
    batch: list[registry_pb2.DedupItem], ns: argparse.Namespace
) -> registry_pb2.DedupRequest:
    request = registry_pb2.DedupRequest(items=registry_pb2.DedupItems(items=batch))
    if ns.max_distance is not None:
        request.pdq_max_distance = ns.max_distance
    return request


def split_items(items: Sequence[list[SignalValue]]) -> list[list[SignalValue]]:
    """Each item's signals once each; an item of more than 16 is sent as items of 16."""
    split: list[list[SignalValue]] = []
    for item in items:
        values = list({(s.algorithm, s.value): s for s in item}.values())
        for start in range(0, len(values), MAX_SIGNALS_PER_ITEM):
            split.append(values[start : start + MAX_SIGNALS_PER_ITEM])
    return split


def _series_json(series: registry_pb2.DedupSeriesRef) -> dict[str, Any]:
    return {
        "origin": series.origin,
        "series_id": series.series_id,
        "name": series.name,
        "media_count": series.media_count,
    }


def _write_table(report: Report) -> None:
    out = sys.stdout
    c = report.counts
    out.write(f"items        {c['items']:>10,}\n")
    out.write(f"new          {c['new_items']:>10,}\n")
    out.write(f"known exact  {c['exact_items']:>10,}\n")
    out.write(f"near only    {c['near_items']:>10,}\n")
    out.write(f"unchecked    {c['unchecked_items']:>10,}  (only PDQ of quality below 50)\n")
    if c["truncated_items"]:
        out.write(f"cut          {c['truncated_items']:>10,}  (their clusters may be more)\n")
    if report.clusters:
        out.write(f"\n{'CLUSTER':>8}  {'EXACT':>7}  {'NEAR':>7}  CLOSEST  SERIES\n")
        for cluster in report.ranked_clusters():
            closest = cluster["closest_distance"]
            names = ", ".join(f"{s['origin']}/{s['series_id']}" for s in cluster["series"])
            more = cluster["series_count"] - len(cluster["series"])
            names += f" (+{more} more)" if more > 0 else ""
            out.write(
                f"{cluster['cluster_id']:>8}  {cluster['exact_items']:>7,}  "
                f"{cluster['near_items']:>7,}  {'-' if closest is None else closest:>7}  {names}\n"
            )
        if report.clusters_cut:
            out.write("(more clusters matched than a report lists: 100 per request)\n")
    if report.origins:
        out.write(f"\n{'ORIGIN':<24}  {'EXACT':>7}  {'NEAR':>7}\n")
        for origin, tally in sorted(report.origins.items()):
            out.write(f"{origin:<24}  {tally['exact_items']:>7,}  {tally['near_items']:>7,}\n")
    if c["items_without_series"]:
        out.write(f"\n{c['items_without_series']:,} items matched media in no series\n")
