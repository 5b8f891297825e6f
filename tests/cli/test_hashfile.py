"""The hash file: both formats round-trip any record, and every bad line is named exactly."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.cli.hashfile import (
    COLUMNS,
    HashFileFormat,
    HashRecord,
    read_hash_file,
    record_from_fields,
    write_records,
)
from services.core.algorithms import BY_NAME, Algorithm, SignalValue
from services.core.errors import InvalidArgument
from services.core.filehash import ImageHashes

MD5 = "9e107d9d372bb6826bd81d3542a419d6"
PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"


def hex_of(name: str) -> st.SearchStrategy[str | None]:
    size = BY_NAME[name].byte_length
    return st.none() | st.binary(min_size=size, max_size=size).map(bytes.hex)


@st.composite
def records(draw: st.DrawFn) -> HashRecord:
    hashes = {name: draw(hex_of(name)) for name in ("md5", "sha1", "sha256", "pdq")}
    if all(v is None for v in hashes.values()):
        hashes["sha256"] = "ab" * 32
    quality = draw(st.none() | st.integers(0, 100)) if hashes["pdq"] else None
    return HashRecord(
        path=draw(st.text(min_size=1)),
        size_bytes=draw(st.none() | st.integers(0, 2**63)),
        media_type=draw(st.sampled_from(["image", "video"])),
        pdq_quality=quality,
        **hashes,
    )


def write_file(path: Path, items: list[HashRecord], fmt: HashFileFormat) -> Path:
    with path.open("w", encoding="utf-8", errors="surrogateescape", newline="") as out:
        write_records(items, out, fmt)
    return path


@given(st.lists(records(), max_size=8), st.sampled_from(["jsonl", "csv"]), st.booleans())
def test_written_records_read_back_equal(
    items: list[HashRecord], fmt: HashFileFormat, named_by_extension: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        name = f"hashes.{fmt}" if named_by_extension else "hashes.out"
        path = write_file(Path(folder) / name, items, fmt)
        assert list(read_hash_file(path)) == items


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_awkward_paths_survive(tmp_path: Path, fmt: HashFileFormat) -> None:
    paths = [
        "a,b \"quoted\", and 'single'",
        "line\nbreak\r\nand\rreturn",
        "\r",
        " leading and trailing ",
        "Ünïcödé/写真/🙂.jpg",
        "not-utf8-\udcff\udcfe.jpg",  # a name that was not UTF-8 on the seized disk
        '=HYPERLINK("x")',
    ]
    items = [HashRecord(p, 1, "image", md5=MD5) for p in paths]
    path = write_file(tmp_path / f"h.{fmt}", items, fmt)
    assert [r.path for r in read_hash_file(path)] == paths
    assert b"\xff\xfe.jpg" in path.read_bytes()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_note_reads_back_and_a_record_without_one_has_none(
    tmp_path: Path, fmt: HashFileFormat
) -> None:
    noted = HashRecord("cut.jpg", 5, "image", md5=MD5, note="not decoded, no pdq: damaged")
    plain = HashRecord("x.jpg", 10, "image", md5=MD5)
    path = write_file(tmp_path / f"h.{fmt}", [noted, plain], fmt)
    assert list(read_hash_file(path)) == [noted, plain]


def test_csv_has_a_header_and_the_same_columns_as_json(tmp_path: Path) -> None:
    record = HashRecord("x.jpg", 10, "image", md5=MD5, pdq=PDQ, pdq_quality=90)
    csv_text = write_file(tmp_path / "h.csv", [record], "csv").read_text()
    json_text = write_file(tmp_path / "h.jsonl", [record], "jsonl").read_text()
    assert csv_text.splitlines() == [",".join(COLUMNS), f"x.jpg,10,image,{MD5},,,{PDQ},90,"]
    assert list(json.loads(json_text)) == list(COLUMNS)


def test_record_from_image_hashes_and_back_to_signals() -> None:
    hashes = ImageHashes(
        Path("d/a.png"), 5, b"\x01" * 16, b"\x02" * 20, b"\x03" * 32, b"\xf0" * 32, 77
    )
    record = HashRecord.from_image_hashes(hashes)
    assert record == HashRecord(
        "d/a.png", 5, "image", "01" * 16, "02" * 20, "03" * 32, "f0" * 32, 77
    )
    assert record.signals() == [
        SignalValue(Algorithm.MD5, b"\x01" * 16),
        SignalValue(Algorithm.SHA1, b"\x02" * 20),
        SignalValue(Algorithm.SHA256, b"\x03" * 32),
        SignalValue(Algorithm.PDQ, b"\xf0" * 32, 77),
    ]


# --- reading what others wrote --------------------------------------------------------------------


def test_hex_is_normalised_and_unknown_keys_ignored(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    line = {"path": "a", "media_type": " IMAGE ", "md5": f" {MD5.upper()} ", "case": "X-1"}
    path.write_text("\n" + json.dumps(line) + "\n\n")
    assert list(read_hash_file(path)) == [HashRecord("a", None, "image", md5=MD5)]


def test_format_is_sniffed_when_the_extension_says_nothing(tmp_path: Path) -> None:
    jsonl = tmp_path / "a.txt"
    jsonl.write_text("\n  " + json.dumps({"path": "a", "media_type": "video", "md5": MD5}) + "\n")
    csv_file = tmp_path / "b"
    csv_file.write_text(f"path,media_type,md5\nb,image,{MD5}\n")
    assert [r.path for r in read_hash_file(jsonl)] == ["a"]
    assert [r.path for r in read_hash_file(csv_file)] == ["b"]


def test_csv_from_a_spreadsheet_with_bom_crlf_and_other_columns(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    text = f"\ufeffPath,Exhibit,MD5,Media_Type\r\nc:\\x.jpg,E1,{MD5},image\r\n"
    path.write_bytes(text.encode())
    assert list(read_hash_file(path)) == [HashRecord("c:\\x.jpg", None, "image", md5=MD5)]


def problems_of(path: Path) -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        list(read_hash_file(path))
    return [str(p) for p in caught.value.problems]


def json_line(**fields: object) -> str:
    return json.dumps({"path": "a.jpg", "media_type": "image", **fields})


@pytest.mark.parametrize(
    ("line", "problems"),
    [
        (json_line(md5="a" * 31), ["md5 needs 32 hex characters, got 31"]),
        (json_line(sha1="z" * 40), ["sha1 value is not hexadecimal (found 'z')"]),
        (json_line(md5=12345), ["md5 must be hex text, got '12345'"]),
        (json_line(), ["no hash: give at least one of md5, sha1, sha256, pdq"]),
        (json_line(md5="", pdq=None), ["no hash: give at least one of md5, sha1, sha256, pdq"]),
        (json_line(md5=MD5, pdq_quality=80), ["pdq_quality is given without a pdq hash"]),
        (json_line(pdq=PDQ, pdq_quality=101), ["pdq_quality must be 0-100, got 101"]),
        (
            json_line(pdq=PDQ, pdq_quality="high"),
            ["pdq_quality must be a whole number, got 'high'"],
        ),
        (json_line(md5=MD5, size_bytes=-1), ["size_bytes must not be negative, got -1"]),
        (json_line(md5=MD5, size_bytes=True), ["size_bytes must be a whole number, got 'true'"]),
        (json_line(md5=MD5, size_bytes=1.5), ["size_bytes must be a whole number, got '1.5'"]),
        (
            json_line(md5=MD5, media_type="audio"),
            ["media_type must be image or video, got 'audio'"],
        ),
        (json_line(md5=MD5, media_type=None), ["media_type is required (image or video)"]),
        (json.dumps({"media_type": "image", "md5": MD5}), ["path is required"]),
        (json_line(md5=MD5, path=["a"]), ["path must be text"]),
        (
            '{"path": "a.jpg",',
            ["not valid JSON (Expecting property name enclosed in double quotes)"],
        ),
        ("[1, 2]", ["expected a JSON object {...}"]),
        (
            json_line(md5="a" * 31, sha256="q", pdq_quality=5),
            [
                "md5 needs 32 hex characters, got 31",
                "sha256 needs 64 hex characters, got 1",
                "pdq_quality is given without a pdq hash",
            ],
        ),
    ],
)
def test_bad_json_line_is_named(tmp_path: Path, line: str, problems: list[str]) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(json_line(md5=MD5) + "\n\n" + line + "\n")
    assert problems_of(path) == [f"line 3: {p}" for p in problems]


def test_records_stop_at_the_first_bad_line_and_all_problems_are_listed(tmp_path: Path) -> None:
    lines = [json_line(md5=MD5, path=str(i)) for i in range(5)]
    lines[1] = json_line(md5="a")
    lines[3] = json_line(md5="b")
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(lines))
    seen: list[str] = []
    with pytest.raises(InvalidArgument) as caught:
        seen.extend(r.path for r in read_hash_file(path))
    assert seen == ["0"]
    assert str(caught.value) == (
        "line 2: md5 needs 32 hex characters, got 1; line 4: md5 needs 32 hex characters, got 1"
    )


def test_problems_are_capped(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text((json_line() + "\n") * 1000)
    problems = problems_of(path)
    assert len(problems) == InvalidArgument.MAX_PROBLEMS
    assert problems[-1].startswith("line 20: ")


def test_csv_line_numbers_count_physical_lines(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text(
        f'path,media_type,md5\n"two\nlines",image,{MD5}\n\nb,image,{MD5[:-1]}\nc,image\n'
    )
    assert problems_of(path) == [
        "line 5: md5 needs 32 hex characters, got 31",
        "line 6: has 2 fields but the header has 3",
    ]


def test_csv_header_must_name_path_and_a_hash(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text(f"file,md5\na,{MD5}\n")
    assert problems_of(path) == [
        "line 1: the header must name path and at least one of md5, sha1, sha256, pdq; "
        "columns: path, size_bytes, media_type, md5, sha1, sha256, pdq, pdq_quality, note"
    ]


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "absent.csv") == [
        f"cannot read {tmp_path / 'absent.csv'}: No such file or directory"
    ]


@given(st.lists(st.text(), max_size=5), st.sampled_from(["jsonl", "csv"]))
def test_any_text_is_read_or_refused_cleanly(lines: list[str], fmt: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzz.{fmt}"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogateescape")
        try:
            for record in read_hash_file(path):
                assert record.signals()
        except InvalidArgument as exc:
            assert exc.problems


def test_record_from_fields_accepts_csv_text() -> None:
    fields = {
        "path": "a",
        "size_bytes": " 12 ",
        "media_type": "image",
        "pdq": PDQ,
        "pdq_quality": "0",
    }
    assert record_from_fields(fields) == HashRecord("a", 12, "image", pdq=PDQ, pdq_quality=0)
