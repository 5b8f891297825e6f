"""The hash file: what `hashex hash` writes and `hashex submit` reads, as JSON Lines or CSV.

One record per file with the same fields in both formats. Reading validates every value with the
algorithm plug-ins, so a bad line is named (`line 7: md5 needs 32 hex characters, got 31`) before
anything reaches a node.

Paths are kept byte-exact: a seized disk may hold names that are not UTF-8, which Python carries
as surrogate escapes; files are written and read with `errors="surrogateescape"` so such a name
comes back as the same bytes instead of failing or being silently altered.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

from services.core.algorithms import BY_NAME, SignalValue, make_signal
from services.core.errors import FieldProblem, InvalidArgument
from services.core.filehash import Digests, ImageHashes, Undecodable

HashFileFormat = Literal["jsonl", "csv"]
FORMATS: tuple[HashFileFormat, ...] = ("jsonl", "csv")
MEDIA_TYPES = ("image", "video")
HASH_COLUMNS = ("md5", "sha1", "sha256", "pdq")
# `note`: why a record lacks what it would otherwise have (an image that could not be decoded has
# its exact hashes only); empty for most records.
COLUMNS = ("path", "size_bytes", "media_type", *HASH_COLUMNS, "pdq_quality", "note")
ENCODING = "utf-8"
ERRORS = "surrogateescape"
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
_QUOTE_LIMIT = 16


@dataclass(frozen=True)
class HashRecord:
    """One hashed file. Hashes are lowercase hex or None; at least one is present."""

    path: str
    size_bytes: int | None
    media_type: str
    md5: str | None = None
    sha1: str | None = None
    sha256: str | None = None
    pdq: str | None = None
    pdq_quality: int | None = None
    note: str | None = None

    def signals(self) -> list[SignalValue]:
        return record_signals(self)

    def as_dict(self) -> dict[str, str | int | None]:
        return {column: getattr(self, column) for column in COLUMNS}

    @staticmethod
    def from_image_hashes(hashes: ImageHashes) -> HashRecord:
        exact = Digests(hashes.size_bytes, hashes.md5, hashes.sha1, hashes.sha256)
        return _image_record(
            hashes.path, exact, pdq=hashes.pdq.hex(), pdq_quality=hashes.pdq_quality
        )


def record_of_undecodable(outcome: Undecodable) -> HashRecord:
    """The exact hashes of an image that could not be decoded, marked so (no PDQ)."""
    return _image_record(
        outcome.path, outcome.digests, note=f"not decoded, no pdq: {outcome.reason}"
    )


def _image_record(path: Path, exact: Digests, **rest: Any) -> HashRecord:
    return HashRecord(
        path=str(path),
        size_bytes=exact.size_bytes,
        media_type="image",
        md5=exact.md5.hex(),
        sha1=exact.sha1.hex(),
        sha256=exact.sha256.hex(),
        **rest,
    )


def record_signals(record: HashRecord) -> list[SignalValue]:
    """The record's hashes as signals, PDQ carrying its quality."""
    signals = []
    for name in HASH_COLUMNS:
        value: str | None = getattr(record, name)
        if value is not None:
            quality = record.pdq_quality if name == "pdq" else None
            signals.append(make_signal(BY_NAME[name], value, quality))
    return signals


# --- writing -------------------------------------------------------------------------------------


class RecordWriter(Protocol):
    def write(self, record: HashRecord) -> None: ...


class JsonLinesWriter:
    """One JSON object per line, every column present (null when absent)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def write(self, record: HashRecord) -> None:
        self._out.write(json.dumps(record.as_dict(), ensure_ascii=False) + "\n")


class CsvWriter:
    """A header row, then one row per record; `out` must be opened with `newline=""` so that a
    carriage return inside a path is written as data, not translated.

    Rows end in CRLF (RFC 4180) on purpose: the csv module quotes a field only for the characters
    of its line terminator, so with a bare LF a path holding a lone CR would split its row.
    """

    def __init__(self, out: TextIO) -> None:
        self._csv = csv.writer(out, lineterminator="\r\n")
        self._csv.writerow(COLUMNS)

    def write(self, record: HashRecord) -> None:
        self._csv.writerow(["" if v is None else v for v in record.as_dict().values()])


def record_writer(fmt: HashFileFormat, out: TextIO) -> RecordWriter:
    return CsvWriter(out) if fmt == "csv" else JsonLinesWriter(out)


def write_records(records: Iterable[HashRecord], out: TextIO, fmt: HashFileFormat) -> int:
    """Write every record; returns how many."""
    writer = record_writer(fmt, out)
    count = 0
    for record in records:
        writer.write(record)
        count += 1
    return count


def format_for_path(path: Path) -> HashFileFormat | None:
    """The format a file name announces, or None when its extension says nothing."""
    suffix = path.suffix.lower()
    if suffix in _JSON_SUFFIXES:
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return None


# --- reading -------------------------------------------------------------------------------------


def read_hash_file(path: Path) -> Iterator[HashRecord]:
    """The records of a hash file, validated; raises InvalidArgument naming each bad line.

    Records are yielded up to the first bad line; reading then continues only to list more
    problems (up to InvalidArgument.MAX_PROBLEMS) before raising. A caller that must send nothing
    when any line is bad should therefore read the file to the end before sending.
    """
    try:
        fmt = format_for_path(path) or _sniff_format(path)
        with path.open(encoding="utf-8-sig", errors=ERRORS, newline="") as stream:
            lines = _json_lines(stream) if fmt == "jsonl" else _csv_lines(stream)
            yield from _validated(lines)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror or exc}") from None


def _sniff_format(path: Path) -> HashFileFormat:
    with path.open("rb") as stream:
        for line in stream:
            stripped = line.lstrip(b"\xef\xbb\xbf \t\r\n")
            if stripped:
                return "jsonl" if stripped.startswith(b"{") else "csv"
    return "csv"


# A parsed line: its number and either its fields or what made it unparseable.
_Line = tuple[int, Mapping[str, object] | FieldProblem]


def _validated(lines: Iterator[_Line]) -> Iterator[HashRecord]:
    problems: list[FieldProblem] = []
    for number, fields in lines:
        try:
            if isinstance(fields, FieldProblem):
                raise InvalidArgument(fields)
            record = record_from_fields(fields)
        except InvalidArgument as exc:
            problems.extend(exc.within(f"line {number}").problems)
            if len(problems) >= InvalidArgument.MAX_PROBLEMS:
                break
            continue
        if not problems:
            yield record
    if problems:
        raise InvalidArgument(problems)


def _json_lines(stream: TextIO) -> Iterator[_Line]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except ValueError as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            yield number, FieldProblem("", f"not valid JSON ({detail})")
            continue
        if not isinstance(fields, dict):
            yield number, FieldProblem("", "expected a JSON object {...}")
            continue
        yield number, fields


def _csv_lines(stream: TextIO) -> Iterator[_Line]:
    reader = csv.reader(stream)
    header: list[str] | None = None
    while True:
        first_line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield first_line, FieldProblem("", f"not valid CSV ({exc})")
            return
        if not row:
            continue
        if header is None:
            header = _checked_header(row, first_line)
            continue
        if len(row) != len(header):
            problem = f"has {len(row)} fields but the header has {len(header)}"
            yield first_line, FieldProblem("", problem)
            continue
        yield first_line, dict(zip(header, row, strict=True))


def _checked_header(row: list[str], line: int) -> list[str]:
    header = [name.strip().lower() for name in row]
    if "path" not in header or not set(HASH_COLUMNS) & set(header):
        raise InvalidArgument(
            FieldProblem(
                f"line {line}",
                "the header must name path and at least one of "
                + ", ".join(HASH_COLUMNS)
                + "; columns: "
                + ", ".join(COLUMNS),
            )
        )
    return header


# --- validation ----------------------------------------------------------------------------------


def record_from_fields(fields: Mapping[str, object]) -> HashRecord:
    """A valid record from loosely typed fields (JSON values or CSV text), or every problem.

    Blank text counts as absent, so CSV and JSON mean the same thing; unknown fields are ignored
    so that other tools' extra columns do not stop an import.
    """
    problems: list[str] = []
    path = _path(fields.get("path"), problems)
    size = _whole_number("size_bytes", fields.get("size_bytes"), problems)
    media_type = _media_type(fields.get("media_type"), problems)
    hashes = {name: _hash(name, fields.get(name), problems) for name in HASH_COLUMNS}
    quality = _whole_number("pdq_quality", fields.get("pdq_quality"), problems)
    if quality is not None and _blank(fields.get("pdq")):
        problems.append("pdq_quality is given without a pdq hash")
    elif quality is not None and not 0 <= quality <= 100:
        problems.append(f"pdq_quality must be 0-100, got {quality}")
    if not problems and all(value is None for value in hashes.values()):
        problems.append("no hash: give at least one of " + ", ".join(HASH_COLUMNS))
    if problems:
        raise InvalidArgument([FieldProblem("", p) for p in problems])
    note = fields.get("note")
    kept = note.strip() if isinstance(note, str) and note.strip() else None
    return HashRecord(path, size, media_type, pdq_quality=quality, note=kept, **hashes)


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _path(value: object, problems: list[str]) -> str:
    # Not stripped: blanks at either end of a file name are part of it.
    if isinstance(value, str) and value:
        return value
    problems.append("path is required" if _blank(value) else "path must be text")
    return ""


def _whole_number(name: str, value: object, problems: list[str]) -> int | None:
    if _blank(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        problems.append(f"{name} must be a whole number, got {_quote(value)}")
        return None
    if number < 0:
        problems.append(f"{name} must not be negative, got {number}")
        return None
    return number


def _media_type(value: object, problems: list[str]) -> str:
    if isinstance(value, str) and value.strip().lower() in MEDIA_TYPES:
        return value.strip().lower()
    choices = " or ".join(MEDIA_TYPES)
    if _blank(value):
        problems.append(f"media_type is required ({choices})")
    else:
        problems.append(f"media_type must be {choices}, got {_quote(value)}")
    return ""


def _hash(name: str, value: object, problems: list[str]) -> str | None:
    if _blank(value):
        return None
    if not isinstance(value, str):
        problems.append(f"{name} must be hex text, got {_quote(value)}")
        return None
    try:
        return BY_NAME[name].parse_hex(value).hex()
    except InvalidArgument as exc:
        problems.extend(p.description for p in exc.problems)
        return None


def _quote(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    if len(text) > _QUOTE_LIMIT:
        text = text[:_QUOTE_LIMIT] + "…"
    return repr(text)
