"""`hashex export vics`: write this node's own media as a VICS JSON file other tools read.

Only what the node may disclose leaves it: its own media (never another origin's, which are
that agency's to share), without case data (file paths and references stay on the node), and
without retracted media. Each media's category is written when its scheme is the one of the
profile asked for (a Project VIC number is never reinterpreted across profiles); the others are
written uncategorised and counted. VICS holds one series per media: the first is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TextIO

import grpc

from hashex.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.cli import exit_codes
from services.cli.formats.records import ImportedMedia, Position
from services.cli.node_client import add_node_options, registry_stub, run_command
from services.registry import convert
from services.registry.model import MediaType

VERSIONS = ("2.0", "1.3")
PROFILES = ("US", "Default", "UK", "CUSTOM")
SHAPES = ("media", "cases")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "export",
        help="export this node's own media as a VICS JSON file",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    kinds = parser.add_subparsers(dest="kind", metavar="FORMAT", required=True)
    vics = kinds.add_parser("vics", help="Project VIC VICS JSON (2.0 or 1.3)")
    vics.add_argument("--version", choices=VERSIONS, default="2.0", help="(default: %(default)s)")
    vics.add_argument(
        "--profile",
        choices=PROFILES,
        default="US",
        help="VICS 2.0 category profile (default: %(default)s); 1.3 has none",
    )
    vics.add_argument(
        "--shape",
        choices=SHAPES,
        default="media",
        help="a flat hash set of Media, or a case export of one Case (default: %(default)s)",
    )
    vics.add_argument("--out", type=Path, help="write here (default: standard output)")
    add_node_options(vics)
    vics.set_defaults(func=lambda ns: run_command(_export_vics, ns))


def _export_vics(ns: argparse.Namespace) -> int:
    from services.cli.formats.vics_write import write_vics

    profile = ns.profile if ns.version == "2.0" else None
    with registry_stub(ns) as stub, _output(ns.out) as out:
        counts = write_vics(
            out, _media(stub, ns.timeout), version=ns.version, profile=profile, shape=ns.shape
        )
    print(f"exported {counts.written:,} media", file=sys.stderr)
    if counts.categories_left_out:
        print(
            f"{counts.categories_left_out:,} of them have a category of another scheme than "
            f"the {profile or 'VICS ' + ns.version} profile's and were written uncategorised",
            file=sys.stderr,
        )
    if counts.series_left_out:
        print(
            f"{counts.series_left_out:,} belong to several series; VICS holds one, the first "
            "was written",
            file=sys.stderr,
        )
    return exit_codes.OK


class _output:
    """Standard output, or a file written whole or not at all (a temporary file renamed)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._temporary: Path | None = None
        self._stream: TextIO = sys.stdout

    def __enter__(self) -> TextIO:
        if self._path is not None:
            descriptor, name = tempfile.mkstemp(
                dir=self._path.parent or Path("."), prefix=f".{self._path.name}."
            )
            self._temporary = Path(name)
            self._stream = os.fdopen(descriptor, "w", encoding="utf-8")
        return self._stream

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if self._temporary is None:
            self._stream.flush()
            return
        self._stream.close()
        if kind is None and self._path is not None:
            os.replace(self._temporary, self._path)
        else:
            self._temporary.unlink(missing_ok=True)


def _media(stub: registry_pb2_grpc.RegistryStub, timeout: float) -> Iterator[ImportedMedia]:
    """The node's media as records to write, a page at a time. A stream that outlives its
    deadline after delivering media goes on from the last media received, so `--timeout`
    bounds the wait for a page, not the length of the export."""
    after = ""
    number = 0
    while True:
        received = 0
        call = stub.ExportMedia(
            registry_pb2.ExportMediaRequest(after_media_id=after), timeout=timeout
        )
        try:
            for page in call:
                for media in page.media:
                    number += 1
                    received += 1
                    yield _record(media, page.series_names, number)
                    after = media.media_id
            return
        except grpc.RpcError as error:
            cut_off = (
                isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            )
            if not (cut_off and received):
                raise


_TYPES = {
    common_pb2.MEDIA_TYPE_IMAGE: MediaType.IMAGE,
    common_pb2.MEDIA_TYPE_VIDEO: MediaType.VIDEO,
}


def _record(media: common_pb2.Media, names: Mapping[str, str], number: int) -> ImportedMedia:
    return ImportedMedia(
        position=Position(number),
        signals=tuple(convert.signal_from_proto(s) for s in media.signals),
        media_type=_TYPES.get(media.media_type),
        category=convert.category_from_proto(media.category)
        if media.HasField("category")
        else None,
        flags=convert.flags_from_proto(media.flags),
        series_names=tuple(names.get(s, s) for s in media.series_ids),
    )
