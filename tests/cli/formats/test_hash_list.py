"""Hash lists: a bare hash told by its length (never guessed between sha256 and pdq), `ALGO:HEX`,
a forced algorithm, and tables with a header such as `hashex hash --format csv` writes."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.cli.formats.hash_list import read_hash_list
from services.cli.formats.records import (
    FormatError,
    ImportedMedia,
    Position,
    ReadRecord,
    Rejected,
)
from services.cli.formats.table import MAX_LINE_CHARS
from services.cli.hashfile import HashRecord, write_records
from services.core.algorithms import BY_NAME, Algorithm, AlgorithmSpec, SignalValue
from services.registry.model import MediaType

MD5 = bytes(range(16))
SHA1 = bytes(range(100, 120))
SHA256 = bytes(range(32))
PHOTODNA = bytes(range(144))
AMBIGUITY = "64 hex characters may be sha256 or pdq: give --algorithm"


def hash_list(tmp_path: Path, text: str, *, bom: bool = False) -> Path:
    path = tmp_path / "hashes.txt"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def read(path: Path, algorithm: AlgorithmSpec | None = None) -> list[ReadRecord]:
    return list(read_hash_list(path, algorithm=algorithm))


def media(record: int, line: int, *signals: tuple[Algorithm, bytes]) -> ImportedMedia:
    return ImportedMedia(Position(record, line), tuple(SignalValue(a, v) for a, v in signals))


def test_bare_hashes_are_told_by_their_length(tmp_path: Path) -> None:
    lines = [MD5.hex(), SHA1.hex().upper(), PHOTODNA.hex(), base64.b64encode(PHOTODNA).decode()]
    path = hash_list(tmp_path, "\n".join(f"  {line}\t" for line in lines) + "\n", bom=True)

    assert read(path) == [
        media(1, 1, (Algorithm.MD5, MD5)),
        media(2, 2, (Algorithm.SHA1, SHA1)),
        media(3, 3, (Algorithm.PHOTODNA, PHOTODNA)),
        media(4, 4, (Algorithm.PHOTODNA, PHOTODNA)),
    ]


def test_comments_and_blank_lines_are_skipped_but_counted_as_lines(tmp_path: Path) -> None:
    text = f"# exported 2024-05-01, case list\r\n\r\n   \r\n{MD5.hex()}\r\n# more\r\n{SHA1.hex()}"

    assert read(hash_list(tmp_path, text)) == [
        media(1, 4, (Algorithm.MD5, MD5)),
        media(2, 6, (Algorithm.SHA1, SHA1)),
    ]


def test_bad_lines_are_rejected_at_their_line(tmp_path: Path) -> None:
    text = "\n".join([MD5.hex()[:31], "", "x" * 32, MD5.hex(), "md6:abcd", "photodna:" + "ab" * 10])

    assert read(hash_list(tmp_path, text)) == [
        Rejected(
            Position(1, 1),
            "31 characters are no hash: md5 (32 hex), sha1 (40 hex) or photodna "
            "(288 hex or 192 base64) expected",
        ),
        Rejected(Position(2, 3), "md5 value is not hexadecimal (found 'x')"),
        media(3, 4, (Algorithm.MD5, MD5)),
        Rejected(
            Position(4, 5), "unknown algorithm 'md6'; known: md5, sha1, sha256, pdq, photodna"
        ),
        Rejected(Position(5, 6), "photodna needs 288 hex characters or 192 of base64, got 20"),
    ]


def test_algo_hex_lines_name_their_algorithm(tmp_path: Path) -> None:
    text = f"md5:{MD5.hex()}\nSHA256: {SHA256.hex()}\npdq:{SHA256.hex().upper()}\n"

    assert read(hash_list(tmp_path, text)) == [
        media(1, 1, (Algorithm.MD5, MD5)),
        media(2, 2, (Algorithm.SHA256, SHA256)),
        media(3, 3, (Algorithm.PDQ, SHA256)),
    ]


def test_64_hex_characters_stop_the_list_without_an_algorithm(tmp_path: Path) -> None:
    records = read_hash_list(hash_list(tmp_path, f"{MD5.hex()}\n\n{SHA256.hex()}\n{MD5.hex()}\n"))

    assert next(records) == media(1, 1, (Algorithm.MD5, MD5))
    with pytest.raises(FormatError) as raised:
        next(records)
    assert raised.value.position == Position(2, 3)
    assert raised.value.reason == AMBIGUITY


def test_64_characters_that_are_not_hex_are_only_rejected(tmp_path: Path) -> None:
    records = read(hash_list(tmp_path, "g" * 64 + "\n" + MD5.hex()))

    assert records[1] == media(2, 2, (Algorithm.MD5, MD5))
    assert isinstance(records[0], Rejected)
    assert records[0].reason.startswith("64 characters are no hash")


@pytest.mark.parametrize("name", ["sha256", "pdq"])
def test_a_given_algorithm_applies_to_every_bare_line(tmp_path: Path, name: str) -> None:
    spec = BY_NAME[name]
    text = f"{SHA256.hex()}\n{MD5.hex()}\n{name}:{SHA256.hex()}\nmd5:{MD5.hex()}\n"

    assert read(hash_list(tmp_path, text), spec) == [
        media(1, 1, (spec.algorithm, SHA256)),
        Rejected(Position(2, 2), f"{name} needs 64 hex characters, got 32"),
        media(3, 3, (spec.algorithm, SHA256)),
        Rejected(Position(4, 4), f"the line is md5 but --algorithm is {name}"),
    ]


def test_a_given_photodna_takes_base64_too(tmp_path: Path) -> None:
    text = f"{base64.b64encode(PHOTODNA).decode()}\n{PHOTODNA.hex()}\n"

    assert read(hash_list(tmp_path, text), BY_NAME["photodna"]) == [
        media(1, 1, (Algorithm.PHOTODNA, PHOTODNA)),
        media(2, 2, (Algorithm.PHOTODNA, PHOTODNA)),
    ]


def test_an_empty_list_holds_nothing(tmp_path: Path) -> None:
    assert read(hash_list(tmp_path, "# nothing found\n\n")) == []


# --- tables --------------------------------------------------------------------------------------


def test_the_csv_of_hashex_hash_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "hashes.csv"
    pdq = bytes(range(50, 82))
    written = [
        HashRecord(
            path="/case/a\r\nb.jpg",
            size_bytes=10,
            media_type="image",
            md5=MD5.hex(),
            sha1=SHA1.hex(),
            sha256=SHA256.hex(),
            pdq=pdq.hex(),
            pdq_quality=80,
        ),
        HashRecord(path=" c.mp4", size_bytes=None, media_type="video", sha256=SHA256.hex()),
    ]
    with path.open("w", encoding="utf-8", newline="") as out:
        write_records(written, out, "csv")

    first, second = read(path)

    assert first == ImportedMedia(
        Position(1, 2),
        (
            SignalValue(Algorithm.MD5, MD5),
            SignalValue(Algorithm.SHA1, SHA1),
            SignalValue(Algorithm.SHA256, SHA256),
            SignalValue(Algorithm.PDQ, pdq, 80),
        ),
        media_type=MediaType.IMAGE,
        file_paths=("/case/a\r\nb.jpg",),
        unused_fields=("size_bytes",),
    )
    assert second == ImportedMedia(
        Position(2, 4),
        (SignalValue(Algorithm.SHA256, SHA256),),
        media_type=MediaType.VIDEO,
        file_paths=(" c.mp4",),
    )


def test_a_table_of_any_delimiter_names_its_algorithms(tmp_path: Path) -> None:
    text = (
        "# a comment before the header\n"
        "PhotoDNA;Note;MD5\n"
        f"{base64.b64encode(PHOTODNA).decode()};seen twice;{MD5.hex().upper()}\n"
        f";;{MD5.hex()[:30]}\n"
        ";;\n"
        f"{PHOTODNA.hex()};only one\n"
    )

    assert read(hash_list(tmp_path, text), BY_NAME["sha256"]) == [
        ImportedMedia(
            Position(1, 3),
            (SignalValue(Algorithm.PHOTODNA, PHOTODNA), SignalValue(Algorithm.MD5, MD5)),
            unused_fields=("Note",),
        ),
        Rejected(Position(2, 4), "MD5: md5 needs 32 hex characters, got 30"),
        Rejected(Position(3, 5), "no hash: give at least one of PhotoDNA, MD5"),
        Rejected(Position(4, 6), "expected 3 fields as in the header, found 2"),
    ]


def test_table_values_outside_their_range_are_rejected(tmp_path: Path) -> None:
    text = (
        "md5,pdq,pdq_quality,media_type\n"
        f"{MD5.hex()},,50,image\n"
        f"{MD5.hex()},{SHA256.hex()},101,\n"
        f"{MD5.hex()},{SHA256.hex()},high,photo\n"
    )

    assert read(hash_list(tmp_path, text)) == [
        Rejected(Position(1, 2), "pdq_quality is given without a pdq hash"),
        Rejected(Position(2, 3), "pdq_quality: pdq quality must be 0-100, got 101"),
        Rejected(
            Position(3, 4),
            "pdq_quality: must be a whole number, got 'high'; "
            "media_type: must be image or video, got 'photo'",
        ),
    ]


def test_a_delimited_first_line_without_an_algorithm_stops_the_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError) as raised:
        read(hash_list(tmp_path, f"\nfile,hash\na.jpg,{MD5.hex()}\n"))

    assert raised.value.position == Position(0, line=2)
    assert raised.value.reason == (
        "the header names no hash column; found 'file', 'hash'; "
        "needed at least one of md5, sha1, sha256, pdq, photodna"
    )


# --- generated lists against their model ---------------------------------------------------------

# The algorithms a bare line is told by, and how each may be written.
LENGTH_TOLD = [("md5", Algorithm.MD5, 16), ("sha1", Algorithm.SHA1, 20)]
LENGTH_TOLD.append(("photodna", Algorithm.PHOTODNA, 144))


@st.composite
def lines(draw: st.DrawFn) -> tuple[str, SignalValue | None]:
    """One line of a list and the signal it holds (None: a comment or a blank line)."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(["", "   ", "# note", "  #x,y;z"])), None
    name, algorithm, size = draw(st.sampled_from(LENGTH_TOLD))
    value = draw(st.binary(min_size=size, max_size=size))
    text = draw(st.sampled_from([value.hex(), value.hex().upper()]))
    if algorithm is Algorithm.PHOTODNA and draw(st.booleans()):
        text = base64.b64encode(value).decode()
    if draw(st.booleans()):
        text = f"{draw(st.sampled_from([name, name.upper()]))}:{text}"
    blanks = st.sampled_from(["", " ", "\t"])
    return draw(blanks) + text + draw(blanks), SignalValue(algorithm, value)


@settings(max_examples=200, deadline=None)
@given(st.lists(lines(), max_size=12), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_a_generated_list_reads_back_as_its_model(
    generated: list[tuple[str, SignalValue | None]], end: str, bom: bool
) -> None:
    model = []
    for number, (_, signal) in enumerate(generated, start=1):
        if signal is not None:
            model.append(ImportedMedia(Position(len(model) + 1, number), (signal,)))
    with tempfile.TemporaryDirectory() as folder:
        path = hash_list(Path(folder), end.join(text for text, _ in generated), bom=bom)
        assert read(path) == model


def test_a_line_too_long_for_a_hash_list_stops_it_without_reading_it_whole(
    tmp_path: Path,
) -> None:
    path = hash_list(tmp_path, f"{MD5.hex()}\n\n" + "0" * (MAX_LINE_CHARS + 1) + f"\n{MD5.hex()}")

    records = read_hash_list(path)

    assert next(records) == media(1, 1, (Algorithm.MD5, MD5))
    with pytest.raises(FormatError) as raised:
        next(records)
    assert raised.value.position == Position(2, 3)
    assert raised.value.reason.startswith(f"a line is longer than {MAX_LINE_CHARS} characters")
