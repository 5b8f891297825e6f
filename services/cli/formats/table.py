"""CSV tables read by header name, and the cells every such format shares: hashes, media types and
the columns hashex reads but does not keep.

ICSE exports and hash lists with a header come from many tools, each with its own column order,
delimiter and extra columns, so a table is only ever read by the names in its header. Rows are
read one at a time from the open file (memory stays flat whatever its size); a row's position is
its first line in the file, which stays right when a quoted field spans several lines.

Messages never quote more than a few characters of a cell: a cell may hold case data.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from services.cli.formats.records import FormatError, Opened, Position, ReadRecord, Rejected
from services.cli.hashfile import ERRORS, MEDIA_TYPES
from services.core.algorithms import BY_NAME, Algorithm, AlgorithmSpec, SignalValue
from services.core.errors import InvalidArgument
from services.registry.model import MediaType

# Tried in this order: ICSE writes semicolons, other tools commas or tabs.
DELIMITERS = (";", ",", "\t")
# 144 bytes of PhotoDNA as base64 (no padding needed: 144 is a multiple of 3).
PHOTODNA_BASE64_LENGTH = 192
MEDIA_TYPE_NAMES: dict[str, MediaType] = {name: MediaType[name.upper()] for name in MEDIA_TYPES}
# Far longer than a row of any real export (a few hundred characters).
MAX_LINE_CHARS = 1 << 20
_QUOTE_LIMIT = 16
# How many header names a FormatError lists before "and N more".
_NAMES_LISTED = 16

RowReader = Callable[[Position, list[str]], ReadRecord]


def open_text(path: Path, opened: Opened = None) -> TextIO:
    """`path` for reading as text: a UTF-8 BOM dropped, bytes that are not UTF-8 carried through
    (as in the hash file), line ends left to the csv module so quoted newlines stay data.
    `opened` is told the binary stream beneath."""
    try:
        raw = path.open("rb")
        if opened is not None:
            opened(raw)
        return io.TextIOWrapper(raw, encoding="utf-8-sig", errors=ERRORS, newline="")
    except OSError as exc:
        raise FormatError(Position(0), f"cannot read {path}: {exc.strerror or exc}") from None


def quoted(text: str) -> str:
    """`text` quoted for a message, cut to a few characters."""
    if len(text) > _QUOTE_LIMIT:
        return repr(text[:_QUOTE_LIMIT] + "…")
    return repr(text)


def is_blank(text: str) -> bool:
    return not text or text.isspace()


# --- hashes --------------------------------------------------------------------------------------


def hash_value(spec: AlgorithmSpec, text: str) -> bytes:
    """The value of a hash cell: hex of any case with blanks around it ignored, and for PhotoDNA
    also base64; InvalidArgument saying what is wrong otherwise.

    The common case (exactly the right number of hex characters) costs one `bytes.fromhex`;
    everything else goes through the algorithm's own parser for its exact message.
    """
    if len(text) == spec.hex_length:
        try:
            value = bytes.fromhex(text)
        except ValueError:
            pass
        else:
            # fromhex skips blanks between bytes: a cell with blanks inside comes out short.
            if len(value) == spec.byte_length:
                return value
    if spec.algorithm is Algorithm.PHOTODNA:
        return _photodna_value(spec, text.strip())
    return spec.parse_hex(text)


def _photodna_value(spec: AlgorithmSpec, text: str) -> bytes:
    if len(text) == PHOTODNA_BASE64_LENGTH:
        try:
            value = base64.b64decode(text, validate=True)
        except binascii.Error:
            value = b""
        if len(value) != spec.byte_length:
            raise InvalidArgument(
                f"{spec.name} value of {PHOTODNA_BASE64_LENGTH} characters is not base64 "
                f"of {spec.byte_length} bytes"
            )
        return value
    if text and len(text) != spec.hex_length:
        raise InvalidArgument(
            f"{spec.name} needs {spec.hex_length} hex characters "
            f"or {PHOTODNA_BASE64_LENGTH} of base64, got {len(text)}"
        )
    return spec.parse_hex(text)


# --- the header ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableHeader:
    """The header row: its names as written (trimmed), where it is and the delimiter it uses."""

    names: tuple[str, ...]
    line: int
    delimiter: str

    def index(self) -> dict[str, int]:
        """Each named column's position by its name in lower case."""
        return {name.lower(): i for i, name in enumerate(self.names) if name}

    def label(self, index: int) -> str:
        """The column's name as written, or "column 7" for a column without one."""
        return self.names[index] or f"column {index + 1}"

    def problem(self, reason: str) -> FormatError:
        return FormatError(Position(0, line=self.line), reason)

    def listed_names(self) -> str:
        names = [quoted(self.label(i)) for i in range(len(self.names))]
        more = len(names) - _NAMES_LISTED
        return ", ".join(names[:_NAMES_LISTED]) + (f" and {more} more" if more > 0 else "")


class LineTooLong(Exception):
    """Raised by `bounded_lines`; a reader turns it into a FormatError where it is."""


def bounded_lines(stream: TextIO) -> Iterator[str]:
    """The lines of `stream`, up to one longer than MAX_LINE_CHARS: a file with such a line is no
    text file of hashes (an image or a disk image given by mistake), and reading a line of it
    whole could take all memory."""
    while line := stream.readline(MAX_LINE_CHARS + 1):
        if len(line) > MAX_LINE_CHARS:
            raise LineTooLong
        yield line


def too_long(position: Position) -> FormatError:
    return FormatError(
        position, f"a line is longer than {MAX_LINE_CHARS} characters: this is no text of hashes"
    )


def first_content_line(
    lines: Iterator[str], *, skip_comments: bool = False
) -> tuple[int, str] | None:
    """The first line that is not blank (nor a `#` comment, when asked) and its number."""
    number = 0
    try:
        for number, line in enumerate(lines, start=1):
            stripped = line.strip()
            if stripped and not (skip_comments and stripped.startswith("#")):
                return number, line
    except LineTooLong:
        raise too_long(Position(0, line=number + 1)) from None
    return None


def delimiter_of(line: str) -> str | None:
    """The delimiter a header line uses, or None when it has none of them. Blanks around the line
    do not count: a tab after a bare hash is not a table."""
    stripped = line.strip()
    return next((d for d in DELIMITERS if d in stripped), None)


def parse_header(text: str, *, line: int, delimiter: str) -> TableHeader:
    """The header in `text` (one line), or FormatError when a name appears twice: a table read by
    name cannot say which of the two a value belongs to."""
    names = tuple(name.strip() for name in next(csv.reader([text], delimiter=delimiter)))
    header = TableHeader(names, line, delimiter)
    seen: set[str] = set()
    for name in names:
        key = name.lower()
        if key in seen:
            raise header.problem(f"column {quoted(name)} appears twice in the header")
        if key:
            seen.add(key)
    return header


# --- the rows ------------------------------------------------------------------------------------


def table_records(
    lines: Iterator[str], header: TableHeader, read_row: RowReader
) -> Iterator[ReadRecord]:
    """Every row after the header, as `read_row` makes it, in file order.

    Blank lines are skipped; a row whose field count differs from the header's is rejected (its
    values cannot be told apart); text the csv module cannot parse ends the file with a
    FormatError, since nothing after it can be trusted to start where it seems to.
    """
    reader = csv.reader(lines, delimiter=header.delimiter)
    width = len(header.names)
    record = 0
    lines_before = header.line
    first_line = lines_before + 1
    try:
        for row in reader:
            if row and (len(row) > 1 or not is_blank(row[0])):
                record += 1
                position = Position(record, first_line)
                if len(row) == width:
                    yield read_row(position, row)
                else:
                    reason = f"expected {width} fields as in the header, found {len(row)}"
                    yield Rejected(position, reason)
            first_line = lines_before + reader.line_num + 1
    except csv.Error as exc:
        raise FormatError(Position(record + 1, first_line), f"not valid CSV ({exc})") from None
    except LineTooLong:
        raise too_long(Position(record + 1, first_line)) from None


@dataclass(frozen=True)
class HashColumn:
    index: int
    label: str
    spec: AlgorithmSpec
    # The spec's, copied: read for every cell of every row.
    hex_length: int
    byte_length: int

    @staticmethod
    def at(index: int, label: str, spec: AlgorithmSpec) -> HashColumn:
        return HashColumn(index, label, spec, spec.hex_length, spec.byte_length)


def hash_columns(header: TableHeader, names: tuple[str, ...]) -> tuple[HashColumn, ...]:
    """The columns of `header` named (any case) after an algorithm in `names`, in header order,
    or FormatError when there is none: no row of such a file could be stored, and it is most
    likely not the file meant (or was exported without its hashes)."""
    index = header.index()
    found = [(index[n.lower()], BY_NAME[n.lower()]) for n in names if n.lower() in index]
    if not found:
        raise header.problem(
            f"the header names no hash column; found {header.listed_names()}; "
            f"needed at least one of {', '.join(names)}"
        )
    return tuple(
        HashColumn.at(i, header.label(i), spec) for i, spec in sorted(found, key=lambda f: f[0])
    )


@dataclass(frozen=True)
class TableLayout:
    """What one table's columns hold for a reader: its hashes, and the columns the reader does not
    keep, which a row names in `unused_fields` when it has a value there (so the summary can say
    what the import left behind). The reader keeps its other columns' positions itself."""

    header: TableHeader
    hashes: tuple[HashColumn, ...]
    unused: tuple[tuple[int, str], ...]

    @staticmethod
    def of(
        header: TableHeader, hash_names: tuple[str, ...], kept: Iterable[int | None]
    ) -> TableLayout:
        """The layout of `header`, whose columns `kept` (None: absent) the reader reads itself;
        FormatError when the header names none of `hash_names`."""
        hashes = hash_columns(header, hash_names)
        used = {c.index for c in hashes} | {i for i in kept if i is not None}
        names = range(len(header.names))
        return TableLayout(
            header, hashes, tuple((i, header.label(i)) for i in names if i not in used)
        )

    def signals(self, row: list[str], problems: list[str]) -> list[SignalValue]:
        """The row's hashes (blank cells are absent); a bad one adds `MD5: md5 needs ...`.

        The hot path of every table: a cell of exactly the column's hex length is tried with
        `bytes.fromhex` here, without a call; anything else takes `hash_value` for its message.
        """
        signals = []
        for column in self.hashes:
            text = row[column.index]
            if len(text) == column.hex_length:
                try:
                    value = bytes.fromhex(text)
                except ValueError:
                    value = b""
                if len(value) == column.byte_length:
                    signals.append(SignalValue(column.spec.algorithm, value))
                    continue
            elif not text or text.isspace():
                continue
            try:
                signals.append(SignalValue(column.spec.algorithm, hash_value(column.spec, text)))
            except InvalidArgument as exc:
                problems.append(f"{column.label}: {exc}")
        return signals

    def rejected(
        self, position: Position, signals: list[SignalValue], problems: list[str]
    ) -> Rejected | None:
        """Why the row cannot be stored (every problem found, or its lack of a hash), if so."""
        if problems:
            return Rejected(position, "; ".join(problems))
        if not signals:
            labels = ", ".join(column.label for column in self.hashes)
            return Rejected(position, f"no hash: give at least one of {labels}")
        return None

    def unused_in(self, row: list[str]) -> tuple[str, ...]:
        # A list, not a generator: this runs for every row.
        return tuple([label for i, label in self.unused if row[i] and not row[i].isspace()])

    def media_type(
        self, index: int | None, row: list[str], problems: list[str]
    ) -> MediaType | None:
        """image or video (any case) in column `index`; blank (or no such column) says nothing."""
        if index is None:
            return None
        text = row[index]
        media_type = MEDIA_TYPE_NAMES.get(text.strip().lower())
        if media_type is None and not is_blank(text):
            choices = " or ".join(MEDIA_TYPES)
            problems.append(f"{self.header.label(index)}: must be {choices}, got {quoted(text)}")
        return media_type
