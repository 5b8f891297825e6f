"""`hashex import vics|icse|list FILE`: read a hash set in the format another tool wrote and store
it at the node, at the scale of a national set.

The file is read as a stream (memory stays flat whatever its size) and sent in batches, each
stored in one transaction; progress shows on stderr. A malformed record is reported with its
position and the rest goes on (`--strict`: the whole file is checked first and nothing is stored
unless every record is good). An interrupted import resumes where it stopped when the same
command runs again (`--restart` starts over). See docs/formats.md for how each format's fields
map to hashex's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from services.cli import exit_codes
from services.cli.formats.records import FormatError, Opened, Position, ReadRecord, Rejected
from services.cli.import_batches import Defaults, prepare
from services.cli.import_run import ImportOptions, ImportRun, interrupted
from services.cli.import_state import FileIdentity, ImportCounts, StateFile
from services.cli.node_client import (
    CommandFailed,
    add_node_options,
    node_address,
    registry_stub,
    run_command,
)
from services.cli.progress import RecordProgress
from services.core.algorithms import spec_for_name
from services.core.errors import InvalidArgument
from services.registry.model import Category, MediaFlags, check_id, check_text

BATCH = 1000
# Rejections printed one by one; past this only their number (all are counted).
SHOWN_REJECTIONS = 50
FLAG_NAMES = ("victim-identified", "offender-identified", "distributed", "self-generated")
Reader = Callable[[Path, argparse.Namespace, Opened], Iterator[ReadRecord]]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "import",
        help="import a VICS JSON, ICSE CSV or hash-list file into the node",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="kind", metavar="FORMAT", required=True)
    vics = kinds.add_parser(
        "vics",
        help="Project VIC VICS JSON (1.x and 2.0; hash sets and case exports)",
        description="Import a VICS JSON file: versions 1.x (odata.metadata) and 2.0 "
        "(@odata.context, profiles US, UK, Default, CUSTOM), flat hash sets and case exports. "
        "Categories keep the profile they were given under. File names and paths (MediaFiles) "
        "are kept on the node as case data, encrypted, never shared.",
    )
    icse = kinds.add_parser(
        "icse",
        help="an Interpol ICSE CSV export",
        description="Import an ICSE CSV export (semicolon-separated, columns by header name). "
        "`Baseline` becomes an interpol-baseline category; `Investigation name` is kept on the "
        "node as the case reference.",
    )
    hash_list = kinds.add_parser(
        "list",
        help="a plain list of hashes, one per line, or a CSV with a header",
        description="Import a list of hashes: one per line (the algorithm told by its length, "
        "or given with --algorithm; 64 hex characters need it: sha256 or pdq), or a CSV whose "
        "header names the algorithms (as `hashex hash --format csv` writes).",
    )
    hash_list.add_argument("--algorithm", help="md5, sha1, sha256, pdq or photodna")
    for kind in (vics, icse, hash_list):
        _add_common(kind)
    vics.set_defaults(func=lambda ns: run_command(_import, ns), reader=_vics)
    icse.set_defaults(func=lambda ns: run_command(_import, ns), reader=_icse)
    hash_list.set_defaults(func=lambda ns: run_command(_import, ns), reader=_list)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="check the whole file first and store nothing unless every record is good",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="ignore where an interrupted import of this file stopped and start over",
    )
    parser.add_argument(
        "--category",
        help="SCHEME:CODE for records the file gives no category (e.g. vics-us:1)",
    )
    parser.add_argument(
        "--series", action="append", default=[], help="add every record to this series"
    )
    parser.add_argument(
        "--flag", action="append", default=[], choices=FLAG_NAMES, help="set a flag on every record"
    )
    parser.add_argument("--case-ref", default="", help="case reference (kept on the node only)")
    parser.add_argument("--exhibit-ref", default="", help="exhibit reference (node only)")
    parser.add_argument(
        "--no-paths", action="store_true", help="do not keep the file's paths as case data"
    )
    parser.add_argument(
        "--batch-size", type=int, default=BATCH, help="records per batch, 1-1000 (%(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    add_node_options(parser)


def _vics(path: Path, ns: argparse.Namespace, opened: Opened) -> Iterator[ReadRecord]:
    from services.cli.formats.vics import read_vics

    return read_vics(path, opened=opened)


def _icse(path: Path, ns: argparse.Namespace, opened: Opened) -> Iterator[ReadRecord]:
    from services.cli.formats.icse import read_icse

    return read_icse(path, opened=opened)


def _list(path: Path, ns: argparse.Namespace, opened: Opened) -> Iterator[ReadRecord]:
    from services.cli.formats.hash_list import read_hash_list

    algorithm = spec_for_name(ns.algorithm) if ns.algorithm else None
    return read_hash_list(path, algorithm=algorithm, opened=opened)


class _Reading:
    """How far into the file the reader is (the binary stream it opened), for progress."""

    def __init__(self) -> None:
        self._stream: BinaryIO | None = None

    def opened(self, stream: BinaryIO) -> None:
        self._stream = stream

    def position(self) -> int:
        stream = self._stream
        if stream is None or stream.closed:
            return 0
        return stream.tell()


def _defaults(ns: argparse.Namespace) -> Defaults:
    for series_id in ns.series:
        check_id("--series", series_id)
    check_text("--case-ref", ns.case_ref)
    check_text("--exhibit-ref", ns.exhibit_ref)
    if not 1 <= ns.batch_size <= BATCH:
        raise InvalidArgument(f"--batch-size must be 1-{BATCH}, got {ns.batch_size}")
    flags = set(ns.flag)
    return Defaults(
        category=Category.parse_text(ns.category) if ns.category else None,
        flags=MediaFlags(
            "victim-identified" in flags,
            "offender-identified" in flags,
            "distributed" in flags,
            "self-generated" in flags,
        ),
        series_ids=tuple(dict.fromkeys(ns.series)),
        case_reference=ns.case_ref,
        exhibit_reference=ns.exhibit_ref,
        keep_paths=not ns.no_paths,
    )


def _import(ns: argparse.Namespace) -> int:
    if not ns.file.is_file():
        raise InvalidArgument(f"{ns.file}: no such file")
    defaults = _defaults(ns)
    reader: Reader = ns.reader
    if ns.strict:
        _check_all(reader(ns.file, ns, None), defaults)
    state = StateFile(
        FileIdentity.of(ns.file), ns.kind, node_address(ns), StateFile.default_directory()
    )
    saved, note = (None, "") if ns.restart else state.load()
    if note:
        print(f"hashex: {note}", file=sys.stderr)
    counts = saved.counts if saved else ImportCounts()
    skip = saved.records_done if saved else 0
    if saved:
        print(
            f"resuming the import of {ns.file} after record {skip:,} "
            f"({counts.imported + counts.merged + counts.duplicate:,} stored before)",
            file=sys.stderr,
        )
    reading = _Reading()
    size = ns.file.stat().st_size
    progress = RecordProgress.for_stream(size, reading.position, sys.stderr, quiet=ns.quiet)
    shown = _Rejections(progress.note)
    options = ImportOptions(defaults, ns.batch_size, ns.timeout, strict=ns.strict)
    try:
        with registry_stub(ns) as stub:
            run = ImportRun(
                stub, options, state, shown.report, progress.advance, counts=counts, skip=skip
            )
            run.run(reader(ns.file, ns, reading.opened))
    except FormatError as error:
        progress.finish()
        _summary(ns.file, counts, shown)
        print(f"hashex: {ns.file}: {error}", file=sys.stderr)
        state.remove()
        stored = counts.imported + counts.merged + counts.duplicate + counts.retracted
        return exit_codes.PARTIAL if stored else exit_codes.BAD_INPUT
    except CommandFailed as failure:
        progress.finish()
        code = failure.exit_code
        if code == exit_codes.BAD_INPUT and counts.imported + counts.merged + counts.duplicate:
            code = exit_codes.PARTIAL  # refused midway: not "nothing stored"
        raise interrupted(counts, state, str(failure), code) from None
    except KeyboardInterrupt:
        progress.finish()
        raise interrupted(counts, state, "interrupted") from None
    progress.finish()
    state.remove()
    _summary(ns.file, counts, shown)
    return exit_codes.PARTIAL if counts.rejected else exit_codes.OK


def _check_all(records: Iterator[ReadRecord], defaults: Defaults) -> None:
    """--strict: every record must be good before anything is sent."""
    checked = 0
    try:
        for record in records:
            _check_one(record, defaults)
            checked += 1
    except FormatError as error:
        raise InvalidArgument(f"{error}; nothing was stored (--strict)") from None
    if not checked:
        raise InvalidArgument("the file holds no records; nothing was stored")


def _check_one(record: ReadRecord, defaults: Defaults) -> None:
    if isinstance(record, Rejected):
        raise InvalidArgument(f"{record.text()}; nothing was stored (--strict)")
    try:
        prepare(record, defaults)
    except InvalidArgument as error:
        raise InvalidArgument(
            f"{record.position.text()}: {error}; nothing was stored (--strict)"
        ) from None


class _Rejections:
    def __init__(self, show: Callable[[str], None]) -> None:
        self._show = show
        self.count = 0

    def report(self, position: Position, reason: str) -> None:
        self.count += 1
        if self.count <= SHOWN_REJECTIONS:
            self._show(f"rejected {position.text()}: {reason}")


def _summary(path: Path, counts: ImportCounts, shown: _Rejections) -> None:
    lines = [
        f"{path}: {counts.read:,} records read: {counts.imported:,} imported, "
        f"{counts.merged:,} merged into media already stored, {counts.duplicate:,} duplicates "
        f"(already stored as they are), {counts.rejected:,} rejected"
    ]
    if shown.count > SHOWN_REJECTIONS:
        lines.append(f"({shown.count - SHOWN_REJECTIONS:,} more rejections not shown)")
    if counts.retracted:
        lines.append(
            f"{counts.retracted:,} were retracted media, left as they are (`hashex media "
            "restore MEDIA_ID...` brings one back)"
        )
    if counts.unused_fields:
        unused = ", ".join(f"{name} ({n:,})" for name, n in sorted(counts.unused_fields.items()))
        lines.append(f"fields not kept: {unused}")
    for line in lines:
        print(line, file=sys.stderr)
