"""Hash lists: one hash per line as many tools write them, or a CSV table of hashes with a header
(what `hashex hash --format csv` writes, and what spreadsheets make of it).

A plain line is a bare hash or `ALGO:HEX`; blank lines and `#` comments are skipped. A bare hash
is told by its length (32 hex md5, 40 sha1, 288 hex or 192 base64 photodna); 64 hex characters
may be sha256 or pdq, which no length can tell apart, so such a list stops with a FormatError
asking for `--algorithm` rather than guess: a wrong guess would store every hash under the wrong
algorithm. With `algorithm` given, every bare hash is of that algorithm.

The file is a table when its first line (neither blank nor a comment) has a delimiter; it must
then name at least one algorithm column. Each row is one media with all its hashes; `pdq_quality`
goes with the pdq hash, `path` is case data kept on the node only, `media_type` is image or video,
and any other column with a value is named in `unused_fields`. `algorithm` does not apply to a
table: its columns name their algorithms.

An empty list (or one of comments only) holds nothing to import and yields nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path

from services.cli.formats.records import (
    FormatError,
    ImportedMedia,
    Opened,
    Position,
    ReadRecord,
    Rejected,
)
from services.cli.formats.table import (
    PHOTODNA_BASE64_LENGTH,
    LineTooLong,
    TableHeader,
    TableLayout,
    bounded_lines,
    delimiter_of,
    first_content_line,
    hash_value,
    open_text,
    parse_header,
    quoted,
    table_records,
    too_long,
)
from services.core.algorithms import BY_NAME, Algorithm, AlgorithmSpec, SignalValue, spec_for_name
from services.core.errors import InvalidArgument

HASH_COLUMNS = tuple(BY_NAME)
# The other columns kept, in the order of HashTableColumns' fields.
KEPT_COLUMNS = ("pdq_quality", "path", "media_type")
AMBIGUOUS_HEX_LENGTH = 64
# Bare hashes by their length; 64 is missing on purpose (sha256 or pdq).
_BY_LENGTH = {
    BY_NAME["md5"].hex_length: BY_NAME["md5"],
    BY_NAME["sha1"].hex_length: BY_NAME["sha1"],
    BY_NAME["photodna"].hex_length: BY_NAME["photodna"],
    PHOTODNA_BASE64_LENGTH: BY_NAME["photodna"],
}
_LENGTHS_KNOWN = "md5 (32 hex), sha1 (40 hex) or photodna (288 hex or 192 base64)"
_PDQ = BY_NAME["pdq"]


def read_hash_list(
    path: Path, *, algorithm: AlgorithmSpec | None = None, opened: Opened = None
) -> Iterator[ReadRecord]:
    """The hashes of the list at `path`, in file order, each imported or rejected.

    FormatError at a bare 64-hex hash when `algorithm` is not given, at a table header naming no
    algorithm or one twice, and at text the csv module cannot parse.
    """
    with open_text(path, opened) as stream:
        lines = bounded_lines(stream)
        first = first_content_line(lines, skip_comments=True)
        if first is None:
            return
        line, text = first
        delimiter = delimiter_of(text)
        if delimiter is None:
            numbered = chain([first], enumerate(lines, start=line + 1))
            yield from _plain_records(numbered, algorithm)
        else:
            header = parse_header(text, line=line, delimiter=delimiter)
            yield from table_records(lines, header, HashTableColumns.of(header).record)


# --- plain lists ---------------------------------------------------------------------------------


def _plain_records(
    lines: Iterable[tuple[int, str]], algorithm: AlgorithmSpec | None
) -> Iterator[ReadRecord]:
    record = number = 0
    try:
        for number, line in lines:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            record += 1
            yield _plain_record(Position(record, number), text, algorithm)
    except LineTooLong:
        raise too_long(Position(record + 1, number + 1)) from None


def _plain_record(position: Position, text: str, algorithm: AlgorithmSpec | None) -> ReadRecord:
    """The media of one plain line (`text` trimmed, not blank)."""
    name, sep, value = text.partition(":")
    if not sep and algorithm is None and _ambiguous(text):
        raise FormatError(
            position,
            f"{AMBIGUOUS_HEX_LENGTH} hex characters may be sha256 or pdq: give --algorithm",
        )
    try:
        spec = _named(name, algorithm) if sep else algorithm or _by_length(text)
        signal = SignalValue(spec.algorithm, hash_value(spec, value if sep else text))
    except InvalidArgument as exc:
        return Rejected(position, str(exc))
    return ImportedMedia(position, (signal,))


def _ambiguous(text: str) -> bool:
    if len(text) != AMBIGUOUS_HEX_LENGTH:
        return False
    try:
        return len(bytes.fromhex(text)) == AMBIGUOUS_HEX_LENGTH // 2
    except ValueError:
        return False


def _named(name: str, algorithm: AlgorithmSpec | None) -> AlgorithmSpec:
    spec = spec_for_name(name)
    if algorithm is not None and spec is not algorithm:
        raise InvalidArgument(f"the line is {spec.name} but --algorithm is {algorithm.name}")
    return spec


def _by_length(text: str) -> AlgorithmSpec:
    spec = _BY_LENGTH.get(len(text))
    if spec is None:
        raise InvalidArgument(f"{len(text)} characters are no hash: {_LENGTHS_KNOWN} expected")
    return spec


# --- tables --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HashTableColumns:
    """Where each kept column of one table is (None: the table has no such column)."""

    layout: TableLayout
    pdq_quality: int | None
    path: int | None
    media_type: int | None

    @staticmethod
    def of(header: TableHeader) -> HashTableColumns:
        """The columns of `header`; FormatError when it names no algorithm."""
        index = header.index()
        kept = [index.get(name) for name in KEPT_COLUMNS]
        return HashTableColumns(TableLayout.of(header, HASH_COLUMNS, kept), *kept)

    def record(self, position: Position, row: list[str]) -> ReadRecord:
        """The media in `row` (as many fields as the header), or every problem it has."""
        problems: list[str] = []
        signals = self.layout.signals(row, problems)
        quality = self._quality(row, problems)
        if quality is not None:
            if not any(s.algorithm is Algorithm.PDQ for s in signals):
                problems.append("pdq_quality is given without a pdq hash")
            signals = [replace(s, quality=quality) if s.spec is _PDQ else s for s in signals]
        media_type = self.layout.media_type(self.media_type, row, problems)
        rejected = self.layout.rejected(position, signals, problems)
        if rejected is not None:
            return rejected
        path = "" if self.path is None else row[self.path]
        return ImportedMedia(
            position,
            tuple(signals),
            media_type=media_type,
            # Not trimmed: blanks at either end of a file name are part of it.
            file_paths=(path,) if path else (),
            unused_fields=self.layout.unused_in(row),
        )

    def _quality(self, row: list[str], problems: list[str]) -> int | None:
        text = "" if self.pdq_quality is None else row[self.pdq_quality].strip()
        if not text:
            return None
        if not (text.isascii() and text.isdigit()):
            problems.append(f"pdq_quality: must be a whole number, got {quoted(text)}")
            return None
        try:
            _PDQ.check_quality(int(text))
        except InvalidArgument as exc:
            problems.append(f"pdq_quality: {exc}")
            return None
        return int(text)
