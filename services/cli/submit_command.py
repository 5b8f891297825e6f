"""`hashex submit FILE`: send the output of `hashex hash` to the node with category, series and case
options. The whole file is validated before anything is sent; each batch is stored in one
transaction on the node.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from hashex.v1 import common_pb2, registry_pb2
from services.cli import exit_codes
from services.cli.hashfile import HashRecord, read_hash_file, record_signals
from services.cli.node_client import add_node_options, registry_stub, run_command
from services.core.errors import InvalidArgument
from services.registry.convert import signal_to_proto
from services.registry.model import CaseData, Category, check_id, check_text

BATCH = 1000
FLAG_NAMES = ("victim-identified", "offender-identified", "distributed", "self-generated")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "submit",
        help="submit a hash file (from `hashex hash`) to the node",
        description=(
            "Submit every record of a hash file written by `hashex hash` (JSON Lines or CSV) to "
            "your node. The case and exhibit references and the file paths stay on the node, "
            "encrypted; they are never shared. Submitting the same file again stores nothing new. "
            "Media already stored are merged, never erased: their hashes and series are added "
            "to, --category and --flag set only when given (`hashex media` clears them, moves "
            "media out of a series and restores retracted media)."
        ),
        epilog=(
            "example:\n  hashex submit seizure.jsonl --category vics-us:1 --series op-lantern "
            "--case-ref 'NCA/2026/0042' --exhibit-ref 'EX-7'"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="hash file (.jsonl or .csv)")
    parser.add_argument(
        "--category", help="SCHEME:CODE, e.g. vics-us:1, caid-uk:A, interpol-baseline:yes"
    )
    parser.add_argument(
        "--series", action="append", default=[], help="series id (repeat for several)"
    )
    parser.add_argument("--case-ref", default="", help="case reference (kept on the node only)")
    parser.add_argument("--exhibit-ref", default="", help="exhibit reference (node only)")
    parser.add_argument(
        "--flag", action="append", default=[], choices=FLAG_NAMES, help="set a media flag"
    )
    parser.add_argument(
        "--no-paths", action="store_true", help="do not keep the file paths as case data"
    )
    add_node_options(parser)
    parser.set_defaults(func=lambda ns: run_command(_submit, ns))


def _submit(ns: argparse.Namespace) -> int:
    if not ns.file.is_file():
        raise InvalidArgument(f"{ns.file}: no such file")
    category = Category.parse_text(ns.category) if ns.category else None
    for series_id in ns.series:
        check_id("--series", series_id)
    check_text("--case-ref", ns.case_ref)
    check_text("--exhibit-ref", ns.exhibit_ref)
    records = list(read_hash_file(ns.file))
    if not records:
        raise InvalidArgument(f"{ns.file}: no records")
    template = _template(ns, category)
    with registry_stub(ns) as stub:
        response = stub.SubmitMedia(_requests(records, template, ns), timeout=ns.timeout)
    print(
        f"submitted {response.received} media: {response.created} new, "
        f"{response.updated} updated, {response.unchanged} already stored",
        file=sys.stderr,
    )
    if response.retracted:
        print(
            f"{response.retracted} of them had been retracted and were left as they are; "
            "`hashex media restore MEDIA_ID...` brings a media back",
            file=sys.stderr,
        )
    return exit_codes.OK


def _template(ns: argparse.Namespace, category: Category | None) -> registry_pb2.MediaSubmission:
    flags = set(ns.flag)
    template = registry_pb2.MediaSubmission(
        flags=common_pb2.MediaFlags(
            victim_identified="victim-identified" in flags,
            offender_identified="offender-identified" in flags,
            distributed="distributed" in flags,
            self_generated="self-generated" in flags,
        ),
        series_ids=list(dict.fromkeys(ns.series)),
    )
    if category is not None:
        template.category.CopyFrom(
            common_pb2.Category(
                scheme=common_pb2.CategoryScheme.ValueType(category.scheme), code=category.code
            )
        )
    return template


def _requests(
    records: Sequence[HashRecord], template: registry_pb2.MediaSubmission, ns: argparse.Namespace
) -> Iterator[registry_pb2.SubmitMediaRequest]:
    for start in range(0, len(records), BATCH):
        yield registry_pb2.SubmitMediaRequest(
            media=[_submission(r, template, ns) for r in records[start : start + BATCH]]
        )


def _printable(path: str) -> str:
    """A path that is valid UTF-8 (names read with surrogateescape get backslash escapes)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _submission(
    record: HashRecord, template: registry_pb2.MediaSubmission, ns: argparse.Namespace
) -> registry_pb2.MediaSubmission:
    media = registry_pb2.MediaSubmission()
    media.CopyFrom(template)
    media.signals.extend(signal_to_proto(s) for s in record_signals(record))
    media.media_type = (
        common_pb2.MEDIA_TYPE_VIDEO if record.media_type == "video" else common_pb2.MEDIA_TYPE_IMAGE
    )
    case = CaseData(ns.case_ref, ns.exhibit_ref, "" if ns.no_paths else _printable(record.path))
    if not case.is_empty():
        media.case_data.CopyFrom(
            registry_pb2.CaseData(
                case_reference=case.case_reference,
                exhibit_reference=case.exhibit_reference,
                file_path=case.file_path,
            )
        )
    return media
