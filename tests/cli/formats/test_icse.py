"""ICSE CSV exports: read by header name whatever the export's shape, every kept value exact, every
bad row named by its line, and a generated export read back exactly as the model that wrote it."""

from __future__ import annotations

import base64
import csv
import io
import re
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.cli.formats.icse import read_icse
from services.cli.formats.records import (
    FormatError,
    ImportedMedia,
    Position,
    ReadRecord,
    Rejected,
    UnusedCounts,
)
from services.cli.formats.table import MAX_LINE_CHARS
from services.core.algorithms import Algorithm, SignalValue
from services.registry.model import Category, CategoryScheme, MediaFlags, MediaType

MD5 = bytes(range(16))
SHA1 = bytes(range(100, 120))
PHOTODNA = bytes(range(144))
SHORT_HEADER = (
    "MD5;SHA1;PhotoDNA;Image ID;Is distributed;Victim identified;Offender identified;"
    "Series name;Number of submissions;File Available;Media Type;Baseline"
)
LONG_HEADER = SHORT_HEADER + ";ZZ40;Lace;Investigation name;Agency"
BASELINE_YES = Category(CategoryScheme.INTERPOL_BASELINE, "yes")
BASELINE_NO = Category(CategoryScheme.INTERPOL_BASELINE, "no")


def export(tmp_path: Path, text: str, *, bom: bool = False) -> Path:
    """`text` written byte for byte (no newline translation) as an export."""
    path = tmp_path / "export.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def read(path: Path) -> list[ReadRecord]:
    return list(read_icse(path))


def signals(*pairs: tuple[Algorithm, bytes]) -> tuple[SignalValue, ...]:
    return tuple(SignalValue(algorithm, value) for algorithm, value in pairs)


def test_the_short_export_keeps_every_value(tmp_path: Path) -> None:
    rows = [
        f"{MD5.hex()};{SHA1.hex()};{PHOTODNA.hex()};17;Y;N;Y;Beach;3;Y;Image;Y",
        f"{MD5.hex().upper()};;;18;;;;;1;N;Video;N",
        f"{MD5.hex()[:31]};;;19;N;N;N;;1;N;Image;",
    ]
    path = export(tmp_path, "\r\n".join([SHORT_HEADER, *rows]) + "\r\n")

    first, second, third = read(path)

    assert first == ImportedMedia(
        Position(1, 2),
        signals((Algorithm.MD5, MD5), (Algorithm.SHA1, SHA1), (Algorithm.PHOTODNA, PHOTODNA)),
        media_type=MediaType.IMAGE,
        category=BASELINE_YES,
        flags=MediaFlags(distributed=True, offender_identified=True),
        series_names=("Beach",),
        unused_fields=("Image ID", "Number of submissions", "File Available"),
    )
    assert second == ImportedMedia(
        Position(2, 3),
        signals((Algorithm.MD5, MD5)),
        media_type=MediaType.VIDEO,
        category=BASELINE_NO,
        unused_fields=("Image ID", "Number of submissions", "File Available"),
    )
    assert third == Rejected(Position(3, 4), "MD5: md5 needs 32 hex characters, got 31")


def test_the_long_export_keeps_the_investigation_and_counts_unknown_algorithms(
    tmp_path: Path,
) -> None:
    rows = [
        f"{MD5.hex()};;;1;;;;;;;;;zz40-value;lace-value;Op Tulip;NL",
        f"{MD5.hex()};;;;;;;;;;;;;;;",
        f";{SHA1.hex()};;2;;;;;;;;;;lace-value;;",
    ]
    path = export(tmp_path, "\n".join([LONG_HEADER, *rows]) + "\n")

    records = read(path)

    assert all(isinstance(r, ImportedMedia) for r in records)
    media = [r for r in records if isinstance(r, ImportedMedia)]
    assert [m.case_reference for m in media] == ["Op Tulip", "", ""]
    assert media[0].unused_fields == ("Image ID", "ZZ40", "Lace", "Agency")
    assert media[1].unused_fields == ()
    counts = UnusedCounts()
    for m in media:
        counts.add(m.unused_fields)
    assert counts.by_field == {"Image ID": 2, "ZZ40": 1, "Lace": 2, "Agency": 1}
    # Case data stays out of what may be logged.
    assert "Op Tulip" not in repr(media[0])


@pytest.mark.parametrize(
    ("yes", "no"),
    [
        ("Y", "N"),
        ("y", "n"),
        ("Yes", "No"),
        ("YES", "no"),
        ("True", "False"),
        ("true", "FALSE"),
        ("1", "0"),
        (" Y ", " N "),
    ],
)
def test_flags_in_every_spelling(tmp_path: Path, yes: str, no: str) -> None:
    header = "MD5;Is distributed;Victim identified;Offender identified;Baseline"
    rows = [f"{MD5.hex()};{yes};{no};{yes};{yes}", f"{MD5.hex()};{no};{yes};{no};{no}"]
    path = export(tmp_path, "\n".join([header, *rows]))

    first, second = read(path)

    assert isinstance(first, ImportedMedia) and isinstance(second, ImportedMedia)
    assert first.flags == MediaFlags(distributed=True, offender_identified=True)
    assert first.category == BASELINE_YES
    assert second.flags == MediaFlags(victim_identified=True)
    assert second.category == BASELINE_NO


def test_values_outside_their_spellings_are_rejected_naming_the_column(tmp_path: Path) -> None:
    header = "MD5;Victim identified;Media Type;Baseline;Investigation name"
    rows = [
        f"{MD5.hex()};maybe;Image;Y;Op Tulip",
        f"{MD5.hex()};Y;Picture;Y;Op Tulip",
        f"{MD5.hex()};Y;Image;perhaps;Op Tulip",
    ]
    path = export(tmp_path, "\n".join([header, *rows]))

    assert read(path) == [
        Rejected(
            Position(1, 2),
            "Victim identified: expected Y/N, Yes/No, True/False or 1/0, got 'maybe'",
        ),
        Rejected(Position(2, 3), "Media Type: must be image or video, got 'Picture'"),
        Rejected(
            Position(3, 4), "Baseline: expected Y/N, Yes/No, True/False or 1/0, got 'perhaps'"
        ),
    ]


def test_photodna_as_base64_and_hex_of_any_case(tmp_path: Path) -> None:
    rows = [
        f"{MD5.hex().upper()};{base64.b64encode(PHOTODNA).decode()}",
        f"{MD5.hex()};{PHOTODNA.hex().upper()}",
        f"{MD5.hex()};{base64.b64encode(PHOTODNA[:100]).decode()}",
    ]
    path = export(tmp_path, "\n".join(["md5;photodna", *rows]))

    first, second, third = read(path)

    expected = signals((Algorithm.MD5, MD5), (Algorithm.PHOTODNA, PHOTODNA))
    assert isinstance(first, ImportedMedia) and first.signals == expected
    assert isinstance(second, ImportedMedia) and second.signals == expected
    assert third == Rejected(
        Position(3, 4),
        "photodna: photodna needs 288 hex characters or 192 of base64, got 136",
    )


def test_a_header_without_a_hash_column_stops_the_file(tmp_path: Path) -> None:
    path = export(tmp_path, "Image ID;Series name;Agency\n1;Beach;NL\n")

    with pytest.raises(FormatError) as raised:
        read(path)

    assert raised.value.position == Position(0, line=1)
    assert raised.value.reason == (
        "the header names no hash column; found 'Image ID', 'Series name', 'Agency'; "
        "needed at least one of MD5, SHA1, SHA256, PDQ, PhotoDNA"
    )


def test_a_column_named_twice_stops_the_file(tmp_path: Path) -> None:
    path = export(tmp_path, "\n\nMD5;SHA1;md5\n")

    with pytest.raises(FormatError) as raised:
        read(path)

    assert raised.value.position == Position(0, line=3)
    assert raised.value.reason == "column 'md5' appears twice in the header"


@pytest.mark.parametrize("text", ["", "\n \r\n\n"])
def test_an_empty_file_is_no_export(tmp_path: Path, text: str) -> None:
    with pytest.raises(FormatError, match="the file is empty"):
        read(export(tmp_path, text))


def test_a_row_of_the_wrong_width_is_rejected_at_its_line(tmp_path: Path) -> None:
    text = f"MD5;SHA1;Series name\n{MD5.hex()};{SHA1.hex()}\n\n{MD5.hex()};;;\n{MD5.hex()};;\n"

    records = read(export(tmp_path, text))

    assert records[:2] == [
        Rejected(Position(1, 2), "expected 3 fields as in the header, found 2"),
        Rejected(Position(2, 4), "expected 3 fields as in the header, found 4"),
    ]
    assert isinstance(records[2], ImportedMedia)
    assert records[2].position == Position(3, 5)


def test_a_row_without_a_hash_is_rejected(tmp_path: Path) -> None:
    records = read(export(tmp_path, "MD5;SHA1;Series name\n;;Beach\n"))

    assert records == [Rejected(Position(1, 2), "no hash: give at least one of MD5, SHA1")]


def test_a_quoted_field_across_lines_keeps_later_line_numbers_right(tmp_path: Path) -> None:
    text = (
        "MD5;Series name;Investigation name\r\n"
        f'{MD5.hex()};"Beach\r\nsecond line\nthird";"Op; Tulip"\r\n'
        f"{MD5.hex()[:-1]};;\r\n"
        f'{MD5.hex()};"""quoted""";\r\n'
    )

    first, second, third = read(export(tmp_path, text))

    assert isinstance(first, ImportedMedia)
    assert first.series_names == ("Beach\r\nsecond line\nthird",)
    assert first.case_reference == "Op; Tulip"
    assert second == Rejected(Position(2, 5), "MD5: md5 needs 32 hex characters, got 31")
    assert isinstance(third, ImportedMedia)
    assert third.position == Position(3, 6)
    assert third.series_names == ('"quoted"',)


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_a_header_without_semicolons_gives_the_delimiter(tmp_path: Path, delimiter: str) -> None:
    header = delimiter.join(["Series name", "MD5", "Media Type"])
    row = delimiter.join(["Beach; Dunes", MD5.hex(), "video"])
    path = export(tmp_path, f"{header}\n{row}\n", bom=True)

    assert read(path) == [
        ImportedMedia(
            Position(1, 2),
            signals((Algorithm.MD5, MD5)),
            media_type=MediaType.VIDEO,
            series_names=("Beach; Dunes",),
        )
    ]


def test_a_bom_and_header_blanks_and_case_do_not_matter(tmp_path: Path) -> None:
    path = export(tmp_path, f' md5 ;"SHA1 "\n{MD5.hex()};{SHA1.hex()}\n', bom=True)

    assert read(path) == [
        ImportedMedia(Position(1, 2), signals((Algorithm.MD5, MD5), (Algorithm.SHA1, SHA1)))
    ]


def test_text_the_csv_module_cannot_parse_stops_the_file_at_its_row(tmp_path: Path) -> None:
    # An unclosed quote swallows the rest of the file until the csv field limit stops it.
    text = f'MD5;Series name\n{MD5.hex()};ok\n{MD5.hex()};"open\n' + "x" * 200_000 + "\n"

    records = read_icse(export(tmp_path, text))

    assert isinstance(next(records), ImportedMedia)
    with pytest.raises(FormatError) as raised:
        next(records)
    assert raised.value.position == Position(2, 3)
    assert "not valid CSV" in raised.value.reason


@pytest.mark.parametrize(
    ("before", "position"), [("", Position(0, line=1)), (f"MD5\n{MD5.hex()}\n", Position(2, 3))]
)
def test_a_line_too_long_for_an_export_stops_it(
    tmp_path: Path, before: str, position: Position
) -> None:
    path = export(tmp_path, before + "x" * (MAX_LINE_CHARS + 1) + "\n")

    with pytest.raises(FormatError) as raised:
        read(path)

    assert raised.value.position == position
    assert "is longer than" in raised.value.reason


def test_a_missing_file_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="cannot read"):
        read(tmp_path / "absent.csv")


# --- generated exports against their model -------------------------------------------------------

FLAG_COLUMNS = {
    "Is distributed": "distributed",
    "Victim identified": "victim_identified",
    "Offender identified": "offender_identified",
}
YES = ["Y", "y", "Yes", "YES", "True", "true", "1"]
NO = ["N", "n", "No", "no", "False", "FALSE", "0"]
EXTRA_COLUMNS = ["Image ID", "Number of submissions", "File Available", "ZZ40", "Lace", "Agency"]
HASHES = [("MD5", Algorithm.MD5, 16), ("SHA1", Algorithm.SHA1, 20)]
HASHES.append(("PhotoDNA", Algorithm.PHOTODNA, 144))
# Text as exports hold it: any characters but NUL (and surrogates, which UTF-8 cannot carry).
cell_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


def hex_cell(value: bytes) -> st.SearchStrategy[str]:
    return st.sampled_from([value.hex(), value.hex().upper()])


def yes_no_cell(answer: bool | None) -> st.SearchStrategy[str]:
    return st.just("") if answer is None else st.sampled_from(YES if answer else NO)


@st.composite
def hash_cells(draw: st.DrawFn, header: list[str]) -> tuple[dict[str, str], list[SignalValue]]:
    """The hash cells of a row (at least one hash) and its signals in header order."""
    cells = dict.fromkeys(["MD5", "SHA1", "PhotoDNA"], "")
    found: dict[str, SignalValue] = {}
    for name, algorithm, size in HASHES:
        value = draw(st.none() | st.binary(min_size=size, max_size=size))
        if value is None:
            continue
        if name == "PhotoDNA" and draw(st.booleans()):
            cells[name] = base64.b64encode(value).decode()
        else:
            cells[name] = draw(hex_cell(value))
        found[name] = SignalValue(algorithm, value)
    if not found:
        cells["MD5"] = MD5.hex()
        found["MD5"] = SignalValue(Algorithm.MD5, MD5)
    return cells, [found[name] for name in header if name in found]


@st.composite
def rows(draw: st.DrawFn, header: list[str], written: list[str]) -> tuple[list[str], ImportedMedia]:
    """The cells of one row of `header` (whose names are `written` so) and the record it must
    read back as (at position 0: the caller knows where it goes)."""
    cells, found = draw(hash_cells(header))
    flags: dict[str, bool] = {}
    for name, flag in FLAG_COLUMNS.items():
        answer = draw(st.none() | st.booleans())
        cells[name] = draw(yes_no_cell(answer))
        flags.update({flag: True} if answer else {})
    baseline = draw(st.none() | st.booleans())
    cells["Baseline"] = draw(yes_no_cell(baseline))
    cells["Media Type"] = draw(st.sampled_from(["", "image", "Image", "VIDEO", "video"]))
    for name in ["Series name", "Investigation name", *EXTRA_COLUMNS]:
        cells[name] = draw(cell_text)
    series = cells["Series name"].strip()
    media = ImportedMedia(
        Position(0),
        tuple(found),
        media_type={"image": MediaType.IMAGE, "video": MediaType.VIDEO}.get(
            cells["Media Type"].lower()
        ),
        category=None if baseline is None else (BASELINE_YES if baseline else BASELINE_NO),
        flags=MediaFlags(**flags),
        series_names=(series,) if series else (),
        case_reference=cells["Investigation name"].strip(),
        unused_fields=tuple(
            label
            for name, label in zip(header, written, strict=True)
            if name in EXTRA_COLUMNS and cells[name].strip()
        ),
    )
    return [cells[name] for name in header], media


@st.composite
def exports(draw: st.DrawFn) -> tuple[str, list[ImportedMedia]]:
    """The text of an export (shuffled columns, optional extras, any delimiter) and its model."""
    kept = ["MD5", "SHA1", "PhotoDNA", *FLAG_COLUMNS, "Baseline", "Media Type", "Series name"]
    kept.append("Investigation name")
    extras = draw(st.lists(st.sampled_from(EXTRA_COLUMNS), unique=True))
    header = draw(st.permutations(kept + extras))
    written = [draw(st.sampled_from([n, n.upper(), n.lower()])) for n in header]
    delimiter = draw(st.sampled_from([";", ",", "\t"]))
    out = io.StringIO()
    # CRLF as RFC 4180 says: the csv module then quotes a lone CR too, which a bare LF would not.
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(written)
    line = 2
    model: list[ImportedMedia] = []
    for number in range(1, draw(st.integers(0, 6)) + 1):
        cells, media = draw(rows(header, written))
        start = out.tell()
        writer.writerow(cells)
        model.append(replace(media, position=Position(number, line)))
        line += len(re.findall(r"\r\n|\r|\n", out.getvalue()[start:]))
    return out.getvalue(), model


@settings(max_examples=200, deadline=None)
@given(exports(), st.booleans())
def test_a_generated_export_reads_back_as_its_model(
    generated: tuple[str, list[ImportedMedia]], bom: bool
) -> None:
    text, model = generated
    with tempfile.TemporaryDirectory() as folder:
        assert read(export(Path(folder), text, bom=bom)) == model
