"""What a format reader yields: one record of the file, either as media to store or as the reason
it cannot be, each with its position in the file. A document-level problem (a wrong root key, an
unknown version, truncated JSON, a missing column) is a `FormatError` raised where it is found:
the records yielded before it stand, nothing after it is read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from services.core.algorithms import SignalValue
from services.core.errors import InvalidArgument
from services.registry.model import Category, MediaFlags, MediaType


@dataclass(frozen=True)
class Position:
    """Where a record or a problem is: the record's number in the file (1-based, counting every
    record the reader met, good or bad; 0 when before any record) and, for text formats, the
    1-based line and column of its first character."""

    record: int
    line: int | None = None
    column: int | None = None

    def text(self) -> str:
        """ "record 17 (line 40, column 5)", "record 17 (line 40)", "line 3" or "record 17"."""
        where = ""
        if self.line is not None:
            where = f"line {self.line}" + (f", column {self.column}" if self.column else "")
        if self.record == 0:
            return where or "start of file"
        return f"record {self.record}" + (f" ({where})" if where else "")


@dataclass(frozen=True)
class ImportedMedia:
    """One media record read from a file, validated (every signal parsed by its algorithm
    plug-in), not yet sent. `None` and empty mean "the file does not say": an import never
    erases what the node holds."""

    position: Position
    signals: tuple[SignalValue, ...]
    media_type: MediaType | None = None
    category: Category | None = None
    # Only flags the file states true; a flag stated false or absent changes nothing.
    flags: MediaFlags = field(default_factory=MediaFlags)
    # Series as the file names them (a VICS `Series` string, an ICSE "Series name").
    series_names: tuple[str, ...] = ()
    # Case data, kept on the node only (sealed, never federated): file paths as found.
    file_paths: tuple[str, ...] = ()
    case_reference: str = ""
    # Names of the fields of the record that hashex read but does not keep (`Tags`,
    # `MediaSize`, a column of an algorithm it does not know): counted in the summary.
    unused_fields: tuple[str, ...] = ()

    def __repr__(self) -> str:  # file paths and case references are case data: never logged
        return f"ImportedMedia({self.position.text()}, {len(self.signals)} signals)"


@dataclass(frozen=True)
class Rejected:
    """A record that cannot be stored, and why (`MD5: md5 needs 32 hex characters, got 31`)."""

    position: Position
    reason: str

    def text(self) -> str:
        return f"{self.position.text()}: {self.reason}"


ReadRecord = ImportedMedia | Rejected
# Told the binary stream a reader opened, so a caller can follow how far it has read
# (`stream.tell()`, for progress); None: nobody asks.
Opened = Callable[[BinaryIO], None] | None


class FormatError(InvalidArgument):
    """The file as a whole cannot be read further: `position` says where."""

    def __init__(self, position: Position, reason: str) -> None:
        super().__init__(f"{position.text()}: {reason}")
        self.position = position
        self.reason = reason


@dataclass
class UnusedCounts:
    """How often each unused field was met, for the summary."""

    by_field: dict[str, int] = field(default_factory=dict)

    def add(self, names: tuple[str, ...]) -> None:
        for name in names:
            self.by_field[name] = self.by_field.get(name, 0) + 1
