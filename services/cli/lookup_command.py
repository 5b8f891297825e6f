"""`hashex lookup`: look hashes up at the node, exact and PDQ near matches.

Hashes come from the command line (`md5:9e10…`, `pdq:…`), from a file of such lines, or from a
hash file written by `hashex hash`. Everything is validated before anything is sent.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from hashex.v1 import common_pb2, federation_pb2, federation_pb2_grpc, registry_pb2
from services.cli import exit_codes
from services.cli.hashfile import (
    HashRecord,
    read_hash_file,
    record_of_undecodable,
    record_signals,
)
from services.cli.node_client import add_node_options, node_channel, registry_stub, run_command
from services.core.algorithms import ALGORITHMS, Algorithm, SignalValue, parse_signal_text
from services.core.errors import FieldProblem, InvalidArgument
from services.core.filehash import ImageHashes, Undecodable, Unreadable, hash_file
from services.registry.convert import signal_to_proto

BATCH = 1000
HASH_FILE_SUFFIXES = {".jsonl", ".json", ".csv"}
STATUS_NAMES = {
    common_pb2.IDENTIFICATION_STATUS_UNIDENTIFIED: "unidentified",
    common_pb2.IDENTIFICATION_STATUS_IN_PROGRESS: "in_progress",
    common_pb2.IDENTIFICATION_STATUS_IDENTIFIED: "identified",
    common_pb2.IDENTIFICATION_STATUS_SAFEGUARDED: "safeguarded",
}
SCHEME_NAMES = {
    common_pb2.CATEGORY_SCHEME_VICS_US: "vics-us",
    common_pb2.CATEGORY_SCHEME_CAID_UK: "caid-uk",
    common_pb2.CATEGORY_SCHEME_INTERPOL_BASELINE: "interpol-baseline",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "lookup",
        help="look hashes up at the node (exact and PDQ near matches)",
        description=(
            "Look hashes up at your node. Give hashes as ALGO:HEX (md5, sha1, sha256, pdq, "
            "photodna), a file with one per line (--file), a hash file from `hashex hash`, or "
            "an image (--file; hashed here: only its hashes are sent). "
            "Exit code 0 when something matched, 1 when nothing did, 2 for bad input."
        ),
        epilog=(
            "examples:\n"
            "  hashex lookup md5:9e107d9d372bb6826bd81d3542a419d6\n"
            "  hashex lookup --file seizure.jsonl --format json --max-distance 20\n"
            "  hashex lookup --file IMG_0042.jpg\n"
            "  hashex lookup --file seizure.jsonl --peers --cert units/alice.pem"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("hashes", nargs="*", metavar="ALGO:HEX", help="hashes to look up")
    parser.add_argument(
        "--file",
        type=Path,
        help="a file of ALGO:HEX lines (# comments allowed; - reads them from stdin), a "
        ".jsonl/.csv hash file, or an image (its md5, sha1, sha256 and PDQ are looked up)",
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
        "replicated from peers are always searched)",
    )
    add_node_options(parser)
    parser.set_defaults(func=lambda ns: run_command(_lookup, ns))


def _lookup(ns: argparse.Namespace) -> int:
    queries = _collect_queries(ns.hashes, ns.file)
    if ns.max_distance is not None and not 0 <= ns.max_distance <= 64:
        raise InvalidArgument("--max-distance must be 0-64")
    signals = [signal for signal, _ in queries]
    tally = Tally()
    if ns.peers:
        with node_channel(ns) as channel:
            _show(queries, _federated_results(channel, signals, ns), tally, ns)
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
    channel: Any, signals: Sequence[SignalValue], ns: argparse.Namespace
) -> Iterator[registry_pb2.LookupResult]:
    """FederatedLookup batch by batch; each peer that could not answer is named on stderr."""
    stub = federation_pb2_grpc.UnitsStub(channel)
    reported: set[str] = set()
    for request in _requests(signals, ns):
        response = stub.FederatedLookup(
            federation_pb2.FederatedLookupRequest(lookup=request.lookup, ask_peers=True),
            timeout=ns.timeout,
        )
        for peer in response.peers:
            if peer.error and peer.peer_id not in reported:
                reported.add(peer.peer_id)
                print(f"peer {peer.peer_id} did not answer live: {peer.error}", file=sys.stderr)
        yield from response.lookup.results


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


Query = tuple[SignalValue, str]


def _collect_queries(texts: Sequence[str], file: Path | None) -> list[Query]:
    """Every hash to look up with the label it is shown under (a file name or the hash)."""
    problems: list[FieldProblem] = []
    queries: list[Query] = []
    for position, text in enumerate(texts, start=1):
        try:
            signal = parse_signal_text(text)
            queries.append((signal, signal.text()))
        except InvalidArgument as error:
            problems.extend(error.within(f"argument {position}").problems)
    if file is not None:
        queries.extend(_queries_from_file(file, problems))
    if problems:
        raise InvalidArgument(problems)
    if not queries:
        raise InvalidArgument("no hashes given: pass ALGO:HEX arguments or --file")
    return queries


def _queries_from_file(file: Path, problems: list[FieldProblem]) -> list[Query]:
    if str(file) == "-":
        return _queries_from_lines("stdin", sys.stdin.read().splitlines(), problems)
    if not file.is_file():
        raise InvalidArgument(f"{file}: no such file")
    if file.suffix.lower() in HASH_FILE_SUFFIXES:
        return [
            (signal, f"{Path(record.path).name} {signal.spec.name}")
            for record in read_hash_file(file)
            for signal in record_signals(record)
        ]
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:  # not a hash list: an image is hashed here, as `hashex hash` does
        return _queries_from_image(file)
    except OSError as error:
        raise InvalidArgument(f"{file}: cannot read it ({error.strerror or error})") from None
    return _queries_from_lines(file.name, lines, problems)


def _queries_from_lines(
    source: str, lines: Sequence[str], problems: list[FieldProblem]
) -> list[Query]:
    """ALGO:HEX lines (blank lines and # comments skipped); bad lines go to `problems`."""
    queries = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            signal = parse_signal_text(text)
            queries.append((signal, signal.text()))
        except InvalidArgument as error:
            problems.extend(error.within(f"{source} line {number}").problems)
    return queries


def _queries_from_image(file: Path) -> list[Query]:
    """Its exact hashes and its PDQ; only the hashes leave this machine, never the image."""
    outcome = hash_file(file)
    if isinstance(outcome, ImageHashes):
        record = HashRecord.from_image_hashes(outcome)
    elif isinstance(outcome, Undecodable):
        record = record_of_undecodable(outcome)
        print(f"hashex: {file}: exact hashes only: {outcome.reason}", file=sys.stderr)
    elif isinstance(outcome, Unreadable):
        raise InvalidArgument(f"{file}: {outcome.reason}")
    else:
        raise InvalidArgument(
            f"{file}: neither a list of hashes (UTF-8 text, one ALGO:HEX per line), a hash "
            "file from `hashex hash` (.jsonl, .csv) nor an image"
        )
    return [(signal, f"{file.name} {signal.spec.name}") for signal in record.signals()]


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
                "kind": "exact" if m.kind == registry_pb2.MATCH_KIND_EXACT else "near",
                "distance": m.distance,
                "matched": _signal_text(m.matched_signal),
                "origin": m.media.origin,
                "media_id": m.media.media_id,
                "category": _category_text(m.media),
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
                "status": STATUS_NAMES.get(v.status, "unspecified"),
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
    victims = ", ".join(f"{v.victim_id}: {STATUS_NAMES.get(v.status, '?')}" for v in series.victims)
    name = f" {series.name!r}" if series.name else ""
    return f"{series.series_id}{name}" + (f" ({victims})" if victims else "")


def _category_text(media: common_pb2.Media) -> str:
    if not media.HasField("category"):
        return ""
    return f"{SCHEME_NAMES.get(media.category.scheme, '?')}:{media.category.code}"


def _signal_text(signal: common_pb2.Signal) -> str:
    return f"{ALGORITHMS[Algorithm(signal.algorithm)].name}:{signal.value}"


def _short(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
