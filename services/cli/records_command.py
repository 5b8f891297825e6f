"""`hashex stats`, `hashex retract`, `hashex series` and `hashex victim`: the node's records."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from google.protobuf.message import Message

from hashex.v1 import common_pb2, registry_pb2
from services.cli import exit_codes
from services.cli.json_output import write_json
from services.cli.node_client import add_node_options, registry_stub, run_command
from services.core.errors import InvalidArgument
from services.registry.model import check_id

STATUS_BY_NAME = {
    "unidentified": common_pb2.IDENTIFICATION_STATUS_UNIDENTIFIED,
    "in_progress": common_pb2.IDENTIFICATION_STATUS_IN_PROGRESS,
    "identified": common_pb2.IDENTIFICATION_STATUS_IDENTIFIED,
    "safeguarded": common_pb2.IDENTIFICATION_STATUS_SAFEGUARDED,
}
STATUS_NAMES = {number: name for name, number in STATUS_BY_NAME.items()}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stats = sub.add_parser("stats", help="counts of what the node holds (JSON)")
    add_node_options(stats)
    stats.set_defaults(func=lambda ns: run_command(_stats, ns))

    retract = sub.add_parser(
        "retract",
        help="withdraw media of this node so they stop matching",
        description="Retract media by id (as `hashex lookup` shows them), or from --file.",
        epilog=(
            "example: hashex retract sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822c\n\n"
            "Media already retracted count as done (exit 0); an id that is not media of\n"
            "this node exits 4, after the others are retracted.\n\n" + exit_codes.EPILOG
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    retract.add_argument("media_ids", nargs="*", metavar="MEDIA_ID")
    retract.add_argument("--file", type=Path, help="a file with one media id per line")
    add_node_options(retract)
    retract.set_defaults(func=lambda ns: run_command(_retract, ns))

    series = sub.add_parser("series", help="create, rename or show a series")
    series_sub = series.add_subparsers(dest="series_command", metavar="COMMAND", required=True)
    series_set = series_sub.add_parser("set", help="create or rename a series of this node")
    series_set.add_argument("series_id")
    naming = series_set.add_mutually_exclusive_group()
    naming.add_argument("--name", help="working name (without it the name stays as it is)")
    naming.add_argument("--clear-name", action="store_true", help="remove the working name")
    add_node_options(series_set)
    series_set.set_defaults(func=lambda ns: run_command(_series_set, ns))
    series_show = series_sub.add_parser("show", help="show a series with its victims (JSON)")
    series_show.add_argument("series_id")
    series_show.add_argument("--origin", default="", help="the series' node (default: this one)")
    add_node_options(series_show)
    series_show.set_defaults(func=lambda ns: run_command(_series_show, ns))

    victim = sub.add_parser(
        "victim",
        help="set a victim's identification status or desk in a series of this node",
        description=(
            "Create a victim of a series of this node, or change its status or responsible desk. "
            "What is not given stays as it is."
        ),
        epilog="example: hashex victim op-lantern v1 identified --desk 'GB-NCA victim-ID desk'",
    )
    victim.add_argument("series_id")
    victim.add_argument("victim_id", help="pseudonymous id within the series, e.g. v1")
    victim.add_argument(
        "status", nargs="?", choices=tuple(STATUS_BY_NAME), help="required for a new victim"
    )
    desk = victim.add_mutually_exclusive_group()
    desk.add_argument("--desk", help="responsible desk (a role contact)")
    desk.add_argument("--clear-desk", action="store_true", help="remove the responsible desk")
    add_node_options(victim)
    victim.set_defaults(func=lambda ns: run_command(_victim, ns))


def _print_json(message: Message) -> None:
    write_json(message, sys.stdout)


def _stats(ns: argparse.Namespace) -> int:
    with registry_stub(ns) as stub:
        _print_json(stub.GetStats(registry_pb2.GetStatsRequest(), timeout=ns.timeout))
    return exit_codes.OK


def media_ids_given(ns: argparse.Namespace) -> list[str]:
    """The media ids on the command line and in `--file` (one per line), checked, each once."""
    ids = list(ns.media_ids)
    if ns.file is not None:
        if not ns.file.is_file():
            raise InvalidArgument(f"{ns.file}: no such file")
        lines = ns.file.read_text(encoding="utf-8").splitlines()
        ids.extend(line.strip() for line in lines if line.strip())
    if not ids:
        raise InvalidArgument("no media ids given")
    for media_id in ids:
        check_id("media id", media_id)
    return list(dict.fromkeys(ids))


def _retract(ns: argparse.Namespace) -> int:
    ids = media_ids_given(ns)
    retracted = already = not_found = 0
    with registry_stub(ns) as stub:
        for start in range(0, len(ids), 10_000):
            request = registry_pb2.RetractMediaRequest(media_ids=ids[start : start + 10_000])
            response = stub.RetractMedia(request, timeout=ns.timeout)
            retracted += response.retracted
            already += response.already_retracted
            not_found += response.not_found
    print(f"retracted {retracted} media; {already} already retracted; {not_found} unknown")
    if not_found:
        # The rest were retracted, but what was named includes ids that are no media here.
        print(
            f"hashex: {not_found} of the ids given are not media of this node (media ids are "
            "as `hashex lookup` shows them, e.g. sha256:<hex>)",
            file=sys.stderr,
        )
        return exit_codes.NOT_FOUND
    return exit_codes.OK


def _series_set(ns: argparse.Namespace) -> int:
    request = registry_pb2.UpsertSeriesRequest(series_id=ns.series_id, name=ns.name or "")
    if ns.name is not None or ns.clear_name:
        request.update_mask.paths.append("name")
    with registry_stub(ns) as stub:
        response = stub.UpsertSeries(request, timeout=ns.timeout)
    print(f"series {ns.series_id} {'created' if response.created else 'updated'}")
    return exit_codes.OK


def _series_show(ns: argparse.Namespace) -> int:
    with registry_stub(ns) as stub:
        request = registry_pb2.GetSeriesRequest(origin=ns.origin, series_id=ns.series_id)
        _print_json(stub.GetSeries(request, timeout=ns.timeout).series)
    return exit_codes.OK


def _victim(ns: argparse.Namespace) -> int:
    request = registry_pb2.UpdateVictimRequest(
        series_id=ns.series_id, victim_id=ns.victim_id, responsible_desk=ns.desk or ""
    )
    request.update_mask.SetInParent()
    if ns.status:
        request.status = STATUS_BY_NAME[ns.status]
        request.update_mask.paths.append("status")
    if ns.desk is not None or ns.clear_desk:
        request.update_mask.paths.append("responsible_desk")
    if not request.update_mask.paths:
        raise InvalidArgument("nothing to change: give a status, --desk or --clear-desk")
    with registry_stub(ns) as stub:
        response = stub.UpdateVictim(request, timeout=ns.timeout)
    created = "created" if response.created else "updated"
    status = STATUS_NAMES[response.victim.status]
    desk = response.victim.responsible_desk or "no desk"
    print(f"victim {ns.victim_id} of {ns.series_id} {created}: {status} ({desk})")
    return exit_codes.OK
