"""Interpol ICSE CSV exports: one media per row, read by the names in the header.

Exports differ between ICSE versions and the options chosen when exporting (a short one is
`MD5;SHA1;PhotoDNA;Image ID;Is distributed;Victim identified;Offender identified;Series name;
Number of submissions;File Available;Media Type;Baseline`, longer ones add `ZZ40;Lace;
Investigation name;Agency`), so no column is found by its position. Semicolons are ICSE's
delimiter; a header with none but with commas or tabs (a file re-saved by a spreadsheet) is read
with those.

Kept: the hashes hashex knows, the three flags (only those stated true: an import never clears
what a node holds), the series, the media type, the Baseline answer and, as case data that stays
on the node, the investigation name. Everything else with a value, including the columns of
algorithms hashex does not know (ZZ40, Lace), is named in `unused_fields` for the summary.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import compress, product
from pathlib import Path

from services.cli.formats.records import (
    FormatError,
    ImportedMedia,
    Opened,
    Position,
    ReadRecord,
)
from services.cli.formats.table import (
    TableHeader,
    TableLayout,
    bounded_lines,
    delimiter_of,
    first_content_line,
    is_blank,
    open_text,
    parse_header,
    quoted,
    table_records,
)
from services.registry.model import Category, CategoryScheme, MediaFlags

HASH_COLUMNS = ("MD5", "SHA1", "SHA256", "PDQ", "PhotoDNA")
# Header name (lower case) → the MediaFlags field it sets.
FLAG_COLUMNS = {
    "is distributed": "distributed",
    "victim identified": "victim_identified",
    "offender identified": "offender_identified",
}
# The other columns kept, in the order of IcseColumns' fields.
KEPT_COLUMNS = ("series name", "media type", "baseline", "investigation name")
YES_NO_SPELLINGS = "Y/N, Yes/No, True/False or 1/0"
_ANSWERS = {"y": True, "yes": True, "true": True, "1": True}
_ANSWERS |= {"n": False, "no": False, "false": False, "0": False}
# The spellings exports use, looked up as they are before trimming and folding case.
_YES_NO = {form: a for word, a in _ANSWERS.items() for form in (word, word.upper(), word.title())}
_BASELINE = {True: Category(CategoryScheme.INTERPOL_BASELINE, "yes")}
_BASELINE[False] = Category(CategoryScheme.INTERPOL_BASELINE, "no")
# Every set of flags a row can state, built once (in FLAG_COLUMNS order): rows share them.
_FLAG_SETS = {
    stated: MediaFlags(**dict.fromkeys(stated, True))
    for mask in product((False, True), repeat=len(FLAG_COLUMNS))
    for stated in [tuple(compress(FLAG_COLUMNS.values(), mask))]
}


def read_icse(path: Path, *, opened: Opened = None) -> Iterator[ReadRecord]:
    """The rows of the ICSE export at `path`, in file order, each imported or rejected.

    FormatError, before any row, for an empty file, a header naming no hash column or naming one
    twice; later only for text the csv module cannot parse.
    """
    with open_text(path, opened) as stream:
        lines = bounded_lines(stream)
        first = first_content_line(lines)
        if first is None:
            raise FormatError(
                Position(0),
                "the file is empty; an ICSE export starts with a header row naming its "
                "columns, e.g. MD5;SHA1;PhotoDNA;Media Type",
            )
        line, text = first
        header = parse_header(text, line=line, delimiter=delimiter_of(text) or ";")
        yield from table_records(lines, header, IcseColumns.of(header).record)


def yes_no(label: str, text: str, problems: list[str]) -> bool | None:
    """The answer in a Y/N cell; blank says nothing, anything else adds a problem."""
    answer = _YES_NO.get(text)
    if answer is None and not is_blank(text):
        answer = _ANSWERS.get(text.strip().lower())
        if answer is None:
            problems.append(f"{label}: expected {YES_NO_SPELLINGS}, got {quoted(text)}")
    return answer


@dataclass(frozen=True)
class IcseColumns:
    """Where each kept column of one export is (None: the export has no such column)."""

    layout: TableLayout
    # (position, name as written, MediaFlags field)
    flags: tuple[tuple[int, str, str], ...]
    series: int | None
    media_type: int | None
    baseline: int | None
    investigation: int | None

    @staticmethod
    def of(header: TableHeader) -> IcseColumns:
        """The columns of `header`; FormatError when it names no hash column."""
        index = header.index()
        flags = tuple(
            (index[name], header.label(index[name]), field)
            for name, field in FLAG_COLUMNS.items()
            if name in index
        )
        kept = [index.get(name) for name in KEPT_COLUMNS]
        layout = TableLayout.of(header, HASH_COLUMNS, [*kept, *(f[0] for f in flags)])
        return IcseColumns(layout, flags, *kept)

    def record(self, position: Position, row: list[str]) -> ReadRecord:
        """The media in `row` (as many fields as the header), or every problem it has."""
        problems: list[str] = []
        signals = self.layout.signals(row, problems)
        flags = self._flags(row, problems)
        media_type = self.layout.media_type(self.media_type, row, problems)
        category = self._baseline(row, problems)
        rejected = self.layout.rejected(position, signals, problems)
        if rejected is not None:
            return rejected
        series = "" if self.series is None else row[self.series].strip()
        return ImportedMedia(
            position,
            tuple(signals),
            media_type=media_type,
            category=category,
            flags=flags,
            series_names=(series,) if series else (),
            case_reference="" if self.investigation is None else row[self.investigation].strip(),
            unused_fields=self.layout.unused_in(row),
        )

    def _flags(self, row: list[str], problems: list[str]) -> MediaFlags:
        # The exact spellings first, without a call: this runs for every flag of every row.
        stated = [
            field
            for i, label, field in self.flags
            if _YES_NO.get(row[i]) or (row[i] not in _YES_NO and yes_no(label, row[i], problems))
        ]
        return _FLAG_SETS[tuple(stated)]

    def _baseline(self, row: list[str], problems: list[str]) -> Category | None:
        if self.baseline is None:
            return None
        answer = yes_no(self.layout.header.label(self.baseline), row[self.baseline], problems)
        return None if answer is None else _BASELINE[answer]
