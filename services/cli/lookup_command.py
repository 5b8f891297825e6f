"""`hashex lookup`: look hashes up at the node, exact and PDQ near matches, and with `--peers`
live at every peer for what the node's store does not match.

What is looked up comes from services.cli.lookup_inputs (hashes, lists, hash files, images,
folders, stdin); everything is validated before anything is sent. The exit code says what
happened (services.cli.exit_codes): 5 when a peer asked did not answer, since the "no match" of
what it was asked is then unverified.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from hashex.v1 import common_pb2, federation_pb2, federation_pb2_grpc, registry_pb2
from services.cli import exit_codes
from services.cli.json_output import enum_word, to_json
from services.cli.lookup_inputs import MAX_FILES, Query, collect_queries
from services.cli.node_client import add_node_options, node_channel, registry_stub, run_command
from services.core.algorithms import ALGORITHMS, Algorithm, SignalValue
from services.core.errors import InvalidArgument
from services.registry.convert import signal_to_proto
from services.registry.model import SCHEME_NAMES

BATCH = 1000
_STATUS = common_pb2.IdentificationStatus.DESCRIPTOR
_MATCH_KIND = registry_pb2.MatchKind.DESCRIPTOR
_MEDIA_TYPE = common_pb2.MediaType.DESCRIPTOR
# Peer outcomes after which every hash asked of the peer was checked there.
_CHECKED = {
    federation_pb2.PEER_LOOKUP_OUTCOME_ANSWERED,
    federation_pb2.PEER_LOOKUP_OUTCOME_NOT_ASKED,
}

_SCHEME_TEXT = {int(scheme): name for scheme, name in SCHEME_NAMES.items()}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "lookup",
        help="look hashes, images and folders up at the node (exact and PDQ near matches)",
        description=(
            "Look hashes up at your node. Each argument is a hash as ALGO:HEX (md5, sha1,\n"
            "sha256, pdq, photodna), a file of such lines (# comments allowed), a hash file\n"
            "from `hashex hash` (.jsonl, .csv), an image, a folder (walked recursively, at\n"
            f"most {MAX_FILES:,} files), or - for ALGO:HEX lines on stdin. Images and folders\n"
            "are hashed here as `hashex hash` does: only their hashes are sent."
        ),
        epilog=(
            "examples:\n"
            "  hashex lookup md5:9e107d9d372bb6826bd81d3542a419d6\n"
            "  hashex lookup IMG_0042.jpg exhibit-07/ --format json --max-distance 20\n"
            "  hashex lookup seizure.jsonl --peers --cert units/alice.pem\n"
            "  grep -h '^md5:' notes/*.txt | hashex lookup -\n"
            "\n"
            'With --format json each result is one line with a "query"; with --peers a last\n'
            'line {"peers": [...]} gives each peer\'s outcome (answered, not_asked,\n'
            "unreachable, refused, timed_out, failed).\n\n" + exit_codes.EPILOG
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="*", metavar="HASH|PATH|-", help="hashes, files, folders, - for stdin"
    )
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="PATH",
        help="the same as giving PATH as an argument (kept for older scripts)",
    )
    parser.add_argument(
        "--max-distance",
        type=int,
        help="largest PDQ Hamming distance reported as a near match, 0-64 (node default: 31)",
    )
    parser.add_argument(
        "--max-matches", type=int, default=100, help="matches per hash (default: %(default)s)"
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument(
        "--all", action="store_true", help="also list hashes without matches (table format)"
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also ask every peer live for hashes your node's store does not match (records "
        "replicated from peers are always searched); exit code 5 if a peer did not answer",
    )
    add_node_options(parser)
    parser.set_defaults(func=lambda ns: run_command(_lookup, ns))


def _lookup(ns: argparse.Namespace) -> int:
    queries = collect_queries([*ns.inputs, *ns.file])
    if ns.max_distance is not None and not 0 <= ns.max_distance <= 64:
        raise InvalidArgument("--max-distance must be 0-64")
    signals = [signal for signal, _ in queries]
    tally = Tally()
    if ns.peers:
        peers = PeerTally()
        with node_channel(ns) as channel:
            _show(queries, _federated_results(channel, signals, ns, peers), tally, ns)
        if ns.format == "json":
            sys.stdout.write(json.dumps({"peers": peers.as_json()}) + "\n")
        print(tally.summary(), file=sys.stderr)
        for line in peers.unanswered():
            print(line, file=sys.stderr)
        if not peers.complete():
            return exit_codes.INCOMPLETE
    else:
        with registry_stub(ns) as stub:
            responses = stub.LookupStream(_requests(signals, ns), timeout=ns.timeout)
            _show(
                queries, (r for response in responses for r in response.lookup.results), tally, ns
            )
        print(tally.summary(), file=sys.stderr)
    return exit_codes.OK if tally.matched else exit_codes.NO_MATCH


def _show(
    queries: Sequence[Query],
    results: Iterator[registry_pb2.LookupResult],
    tally: Tally,
    ns: argparse.Namespace,
) -> None:
    for (signal, label), result in zip(queries, results, strict=False):
        tally.count(result)
        if ns.format == "json":
            sys.stdout.write(json.dumps(_result_json(signal, label, result)) + "\n")
        else:
            _write_table_rows(label, result, ns.all, sys.stdout, header=tally.queries == 1)


def _federated_results(
    channel: Any, signals: Sequence[SignalValue], ns: argparse.Namespace, peers: PeerTally
) -> Iterator[registry_pb2.LookupResult]:
    """FederatedLookup batch by batch; each peer's outcome is kept in `peers`."""
    stub = federation_pb2_grpc.UnitsStub(channel)
    for request in _requests(signals, ns):
        response = stub.FederatedLookup(
            federation_pb2.FederatedLookupRequest(lookup=request.lookup, ask_peers=True),
            timeout=ns.timeout,
        )
        peers.add(response.peers)
        yield from response.lookup.results


@dataclass
class PeerTally:
    """Each peer's outcome over every batch: hashes asked summed; the first failure kept (a
    peer that failed one batch left that batch's hashes unchecked)."""

    outcomes: dict[str, federation_pb2.PeerOutcome] = field(default_factory=dict)

    def add(self, outcomes: Iterable[federation_pb2.PeerOutcome]) -> None:
        for outcome in outcomes:
            kept = self.outcomes.setdefault(outcome.peer_id, federation_pb2.PeerOutcome())
            asked = kept.asked + outcome.asked
            if kept.peer_id == "" or _weight(outcome) > _weight(kept):
                kept.CopyFrom(outcome)
            kept.asked = asked

    def complete(self) -> bool:
        return all(o.outcome in _CHECKED for o in self.outcomes.values())

    def unanswered(self) -> list[str]:
        return [
            f"incomplete: peer {o.peer_id} {enum_word(_OUTCOME, o.outcome).replace('_', ' ')}"
            f" ({o.error}): its {o.asked} hashes unchecked there"
            for o in sorted(self.outcomes.values(), key=lambda o: o.peer_id)
            if o.outcome not in _CHECKED
        ]

    def as_json(self) -> list[dict[str, Any]]:
        return [to_json(self.outcomes[peer_id]) for peer_id in sorted(self.outcomes)]


_OUTCOME = federation_pb2.PeerLookupOutcome.DESCRIPTOR


def _weight(outcome: federation_pb2.PeerOutcome) -> int:
    """Which outcome a peer's summary keeps: a failure over an answer over not being asked."""
    if outcome.outcome == federation_pb2.PEER_LOOKUP_OUTCOME_NOT_ASKED:
        return 0
    return 1 if outcome.outcome in _CHECKED else 2


@dataclass
class Tally:
    queries: int = 0
    matched: int = 0
    exact: int = 0
    near: int = 0

    def count(self, result: registry_pb2.LookupResult) -> None:
        self.queries += 1
        self.matched += bool(result.matches)
        for match in result.matches:
            if match.kind == registry_pb2.MATCH_KIND_EXACT:
                self.exact += 1
            else:
                self.near += 1

    def summary(self) -> str:
        return (
            f"{self.matched} of {self.queries} hashes matched "
            f"({self.exact} exact and {self.near} near matches)"
        )


def _requests(
    signals: Sequence[SignalValue], ns: argparse.Namespace
) -> Iterator[registry_pb2.LookupStreamRequest]:
    for number, start in enumerate(range(0, len(signals), BATCH)):
        request = registry_pb2.LookupRequest(
            signals=[signal_to_proto(s) for s in signals[start : start + BATCH]],
            max_matches_per_signal=ns.max_matches,
        )
        if ns.max_distance is not None:
            request.pdq_max_distance = ns.max_distance
        yield registry_pb2.LookupStreamRequest(batch_id=str(number), lookup=request)


def _result_json(
    query: SignalValue, label: str, result: registry_pb2.LookupResult
) -> dict[str, Any]:
    return {
        "query": query.text(),
        "label": label,
        "low_quality": result.low_quality,
        "truncated": result.truncated,
        "matches": [
            {
                "kind": enum_word(_MATCH_KIND, m.kind),
                "distance": m.distance,
                "matched": _signal_text(m.matched_signal),
                "origin": m.media.origin,
                "media_id": m.media.media_id,
                "category": _category_text(m.media),
                "media_type": enum_word(_MEDIA_TYPE, m.media.media_type),
                "flags": to_json(m.media.flags),
                "series": [_series_json(s) for s in m.series],
            }
            for m in result.matches
        ],
    }


def _series_json(series: common_pb2.Series) -> dict[str, Any]:
    return {
        "origin": series.origin,
        "series_id": series.series_id,
        "name": series.name,
        "victims": [
            {
                "victim_id": v.victim_id,
                "status": enum_word(_STATUS, v.status),
                "responsible_desk": v.responsible_desk,
            }
            for v in series.victims
        ],
    }


def _write_table_rows(
    label: str, result: registry_pb2.LookupResult, show_all: bool, out: TextIO, *, header: bool
) -> None:
    if header:
        out.write(
            f"{'QUERY':<24} {'MATCH':<6} {'DIST':>4}  {'ORIGIN':<10} {'MEDIA':<26} "
            f"{'CATEGORY':<12} SERIES (VICTIMS)\n"
        )
    short = _short(label)
    if not result.matches:
        if show_all:
            note = "low quality: exact only" if result.low_quality else ""
            out.write(f"{short:<24} {'-':<6} {'':>4}  {note}\n")
        return
    for match in result.matches:
        kind = "exact" if match.kind == registry_pb2.MATCH_KIND_EXACT else "near"
        series = "; ".join(_series_text(s) for s in match.series) or "-"
        out.write(
            f"{short:<24} {kind:<6} {match.distance:>4}  {match.media.origin:<10} "
            f"{_short(match.media.media_id, 26):<26} {_category_text(match.media) or '-':<12} "
            f"{series}\n"
        )


def _series_text(series: common_pb2.Series) -> str:
    victims = ", ".join(f"{v.victim_id}: {enum_word(_STATUS, v.status)}" for v in series.victims)
    name = f" {series.name!r}" if series.name else ""
    return f"{series.series_id}{name}" + (f" ({victims})" if victims else "")


def _category_text(media: common_pb2.Media) -> str:
    if not media.HasField("category"):
        return ""
    return f"{_SCHEME_TEXT.get(media.category.scheme, '?')}:{media.category.code}"


def _signal_text(signal: common_pb2.Signal) -> str:
    return f"{ALGORITHMS[Algorithm(signal.algorithm)].name}:{signal.value}"


def _short(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
