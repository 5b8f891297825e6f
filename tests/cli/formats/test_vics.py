"""The VICS reader: every version, profile and shape, what each Media field means, each
document-level problem located exactly, and any odd but legal document read as its model."""

from __future__ import annotations

import base64
import json
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.cli.formats.records import (
    FormatError,
    ImportedMedia,
    Position,
    ReadRecord,
    Rejected,
)
from services.cli.formats.vics import open_vics, read_vics
from services.core.algorithms import Algorithm, SignalValue
from services.registry.model import Category, CategoryScheme, MediaFlags
from tests.cli.formats.vics_documents import DocumentModel, documents

MD5 = "9e107d9d372bb6826bd81d3542a419d6"
SHA1 = "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"
SHA256 = "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592"
PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
PHOTODNA_BYTES = bytes(range(144))
PHOTODNA = base64.b64encode(PHOTODNA_BYTES).decode()
URL_2X = "http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/{profile}/$metadata#{shape}"
NO_HASH = "no hash: none of MD5, SHA1, SHA256, PDQ, PhotoDNA is given"
URL_1X = "http://github.com/ICMEC/ProjectVic/DataModels/{version}.xml#{shape}"


def sig(algorithm: Algorithm, hex_text: str) -> SignalValue:
    return SignalValue(algorithm, bytes.fromhex(hex_text))


def write(text: str | bytes) -> Path:
    """`text` in a file of its own (tests here use no fixtures, so hypothesis can share them)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as file:
        file.write(data)
    return Path(file.name)


def read(text: str | bytes, **options: int) -> list[ReadRecord]:
    path = write(text)
    try:
        with open_vics(path, **options) as document:
            return list(document.records())
    finally:
        path.unlink()


def doc_2x(media: list[object], profile: str = "US") -> str:
    url = URL_2X.format(profile=profile, shape="Media")
    return json.dumps({"@odata.context": url, "value": media}, indent=2)


def only(records: list[ReadRecord]) -> ImportedMedia:
    assert len(records) == 1
    record = records[0]
    assert isinstance(record, ImportedMedia), record
    return record


def reason_of(media: dict[str, object]) -> str:
    [record] = read(doc_2x([media]))
    assert isinstance(record, Rejected), record
    return record.reason


def failure(text: str | bytes, **options: int) -> tuple[list[ReadRecord], FormatError]:
    """The records yielded before the FormatError, and the error."""
    path = write(text)
    seen: list[ReadRecord] = []
    try:
        with pytest.raises(FormatError) as caught, open_vics(path, **options) as document:
            for record in document.records():
                seen.append(record)
    finally:
        path.unlink()
    return seen, caught.value


# What each version, profile and shape means.


def test_a_full_2x_media() -> None:
    text = """{
  "@odata.context": "http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/US/$metadata#Media",
  "value": [
    {
      "MediaID": 7, "Category": 2, "MD5": "%s", "SHA1": "%s", "PhotoDNA": "%s",
      "VictimIdentified": true, "OffenderIdentified": false, "IsDistributed": "True",
      "IsPrecategorized": true, "Series": "Blue Series", "Tags": ["a"], "MediaSize": 1234,
      "DateUpdated": "2024-01-01T00:00:00Z",
      "MediaFiles": [{"FileName": "a.jpg", "FilePath": "C:\\\\Cases\\\\17"}]
    }
  ]
}""" % (MD5.upper(), SHA1, PHOTODNA)  # noqa: UP031
    path = write(text)
    with open_vics(path) as document:
        assert (document.version, document.profile, document.shape) == ("2.0", "US", "media")
        assert document.scheme is CategoryScheme.VICS_US
        record = only(list(document.records()))
        assert document.unused_root_fields == ()
    path.unlink()
    assert record.position == Position(1, 4, 5)
    assert record.signals == (
        sig(Algorithm.MD5, MD5),
        sig(Algorithm.SHA1, SHA1),
        SignalValue(Algorithm.PHOTODNA, PHOTODNA_BYTES),
    )
    assert record.category == Category(CategoryScheme.VICS_US, "2")
    assert record.flags == MediaFlags(victim_identified=True, distributed=True)
    assert record.series_names == ("Blue Series",)
    assert record.file_paths == ("C:\\Cases\\17\\a.jpg",)
    assert record.unused_fields == (
        "MediaID",
        "IsPrecategorized",
        "Tags",
        "MediaSize",
        "DateUpdated",
    )
    assert "Cases" not in repr(record)


@pytest.mark.parametrize(
    ("written", "profile", "scheme"),
    [
        ("US", "US", CategoryScheme.VICS_US),
        ("us", "US", CategoryScheme.VICS_US),
        ("Default", "Default", CategoryScheme.VICS_DEFAULT),
        ("DEFAULT", "Default", CategoryScheme.VICS_DEFAULT),
        ("UK", "UK", CategoryScheme.VICS_UK),
        ("custom", "CUSTOM", CategoryScheme.VICS_CUSTOM),
    ],
)
def test_each_2x_profile_is_its_own_scheme(
    written: str, profile: str, scheme: CategoryScheme
) -> None:
    path = write(doc_2x([{"MD5": MD5, "Category": "3"}], profile=written))
    with open_vics(path) as document:
        assert (document.profile, document.scheme) == (profile, scheme)
        assert only(list(document.records())).category == Category(scheme, "3")
    path.unlink()


def test_custom_profile_takes_its_whole_range() -> None:
    assert only(read(doc_2x([{"MD5": MD5, "Category": 99}], "CUSTOM"))).category == Category(
        CategoryScheme.VICS_CUSTOM, "99"
    )


@pytest.mark.parametrize("version", ["1.0", "1.3", "1.9"])
def test_1x_media_with_alternative_hashes(version: str) -> None:
    text = json.dumps(
        {
            "odata.metadata": URL_1X.format(version=version, shape="Media"),
            "value": [
                {
                    "MediaID": 1,
                    "Category": 5,
                    "MD5": MD5,
                    "AlternativeHashes": [
                        {"HashName": "PhotoDNA", "HashValue": PHOTODNA},
                        {"HashName": "sha256", "HashValue": SHA256.upper()},
                        {"HashName": "PDQ", "HashValue": PDQ},
                        {"HashName": "md5", "HashValue": MD5.upper()},
                        {"HashName": "Whirlpool", "HashValue": "00"},
                    ],
                }
            ],
        }
    )
    path = write(text)
    with open_vics(path) as document:
        assert (document.version, document.profile, document.shape) == (version, None, "media")
        assert document.scheme is CategoryScheme.VICS_LEGACY
        record = only(list(document.records()))
    path.unlink()
    assert record.signals == (
        sig(Algorithm.MD5, MD5),
        SignalValue(Algorithm.PHOTODNA, PHOTODNA_BYTES),
        sig(Algorithm.SHA256, SHA256),
        sig(Algorithm.PDQ, PDQ),
    )
    assert record.category == Category(CategoryScheme.VICS_LEGACY, "5")
    assert record.unused_fields == ("MediaID", "AlternativeHashes.Whirlpool")


@pytest.mark.parametrize(
    "context",
    [
        ("odata.metadata", URL_1X.format(version="1.3", shape="Cases")),
        ("@odata.context", URL_2X.format(profile="UK", shape="Cases")),
    ],
)
def test_cases_shape_numbers_media_across_cases(context: tuple[str, str]) -> None:
    text = (
        "{" + json.dumps(context[0]) + ": " + json.dumps(context[1]) + ', "value": [\n'
        ' {"CaseNumber": "C-1", "Media": [\n'
        f'  {{"MD5": "{MD5}"}},\n'
        f'  {{"MD5": "{MD5}", "Category": 9}}\n'
        ' ], "Contact": {"Name": "x"}},\n'
        ' {"Media": null, "CaseNumber": "C-2"},\n'
        f' {{"Media": [{{"SHA1": "{SHA1}"}}], "CaseNumber": "C-3"}}\n'
        "]}"
    )
    path = write(text)
    with open_vics(path) as document:
        assert document.shape == "cases"
        records = list(document.records())
        assert document.unused_case_fields.by_field == {"Case.CaseNumber": 3, "Case.Contact": 1}
    path.unlink()
    assert [r.position for r in records] == [
        Position(1, 3, 3),
        Position(2, 4, 3),
        Position(3, 7, 13),
    ]
    assert isinstance(records[1], Rejected)
    assert records[1].reason.startswith("Category: '9' is not a vics-")
    assert isinstance(records[2], ImportedMedia)
    assert records[2].signals == (sig(Algorithm.SHA1, SHA1),)


def test_byte_order_mark_is_accepted() -> None:
    record = only(read(b"\xef\xbb\xbf" + doc_2x([{"MD5": MD5}]).encode()))
    assert record.position == Position(1, 4, 5)


def test_hex_in_either_case_is_the_same_signal() -> None:
    upper = only(read(doc_2x([{"MD5": MD5.upper(), "SHA1": SHA1.upper()}])))
    lower = only(read(doc_2x([{"MD5": MD5, "SHA1": SHA1}])))
    assert upper.signals == lower.signals == (sig(Algorithm.MD5, MD5), sig(Algorithm.SHA1, SHA1))


def test_photodna_as_hex_is_accepted() -> None:
    record = only(read(doc_2x([{"PhotoDNA": PHOTODNA_BYTES.hex().upper()}])))
    assert record.signals == (SignalValue(Algorithm.PHOTODNA, PHOTODNA_BYTES),)


@pytest.mark.parametrize(
    ("stated", "flag"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("TRUE", True),
        ("False", False),
        ("false", False),
        (None, False),
    ],
)
def test_flags_are_parsed_never_judged_by_truthiness(stated: object, flag: bool) -> None:
    media = {"MD5": MD5, "VictimIdentified": stated, "OffenderIdentified": stated}
    media["IsDistributed"] = stated
    expected = MediaFlags(flag, flag, flag)
    assert only(read(doc_2x([media]))).flags == expected
    assert only(read(doc_2x([{"MD5": MD5}]))).flags == MediaFlags()


@pytest.mark.parametrize(
    ("stated", "category"),
    [(None, None), (3, "3"), ("3", "3"), (" 0 ", "0"), (4.0, "4")],
)
def test_category_as_number_string_or_null(stated: object, category: str | None) -> None:
    found = only(read(doc_2x([{"MD5": MD5, "Category": stated}]))).category
    assert found == (None if category is None else Category(CategoryScheme.VICS_US, category))
    assert only(read(doc_2x([{"MD5": MD5}]))).category is None


@pytest.mark.parametrize("precategorized", [True, False, "true", None])
def test_is_precategorized_never_overrides_the_category(precategorized: object) -> None:
    media = {"MD5": MD5, "Category": None, "IsPrecategorized": precategorized}
    record = only(read(doc_2x([media])))
    assert record.category is None
    assert record.unused_fields == ("IsPrecategorized",)


def test_unknown_fields_are_counted_never_an_error() -> None:
    text = json.dumps(
        {
            "odata.count": 1,
            "@odata.context": URL_2X.format(profile="US", shape="Media"),
            "value": [{"MD5": MD5, "Exifs": [{"a": 1}], "Comments": None, "md5": "x"}],
            "odata.nextLink": "next",
        }
    )
    path = write(text)
    with open_vics(path) as document:
        record = only(list(document.records()))
        assert document.unused_root_fields == ("odata.count", "odata.nextLink")
    path.unlink()
    assert record.unused_fields == ("Exifs", "Comments", "md5")


def test_media_sharing_an_md5_are_separate_records() -> None:
    records = read(doc_2x([{"MD5": MD5, "Series": "A"}, {"MD5": MD5.upper(), "Series": "B"}]))
    assert [r.series_names for r in records if isinstance(r, ImportedMedia)] == [("A",), ("B",)]
    assert [r.position.record for r in records] == [1, 2]


def test_one_value_given_twice_is_one_signal() -> None:
    media = {
        "MD5": MD5,
        "AlternativeHashes": [
            {"HashName": "MD5", "HashValue": MD5.upper()},
            {"HashName": "Md5", "HashValue": MD5},
        ],
    }
    assert only(read(doc_2x([media]))).signals == (sig(Algorithm.MD5, MD5),)


def test_value_before_the_context_key() -> None:
    text = (
        '{"value": [\n'
        f'  {{"MD5": "{MD5}", "Category": "4"}},\n'
        f'  {{"SHA1": "{SHA1}"}}\n'
        "],\n"
        ' "odata.count": 2,\n'
        f' "@odata.context": "{URL_2X.format(profile="UK", shape="Media")}"}}'
    )
    path = write(text)
    with open_vics(path, chunk_bytes=7) as document:
        assert document.scheme is CategoryScheme.VICS_UK
        records = list(document.records())
        assert document.unused_root_fields == ("odata.count",)
    path.unlink()
    assert [r.position for r in records] == [Position(1, 2, 3), Position(2, 3, 3)]
    assert isinstance(records[0], ImportedMedia)
    assert records[0].category == Category(CategoryScheme.VICS_UK, "4")


@pytest.mark.parametrize(
    ("files", "paths"),
    [
        ([{"FileName": "a.jpg", "FilePath": "C:\\Cases\\17"}], ("C:\\Cases\\17\\a.jpg",)),
        ([{"FileName": "a.jpg", "FilePath": "C:\\Cases\\17\\"}], ("C:\\Cases\\17\\a.jpg",)),
        ([{"FileName": "a.jpg", "FilePath": "/mnt/e01/dcim"}], ("/mnt/e01/dcim/a.jpg",)),
        ([{"FileName": "a.jpg", "FilePath": "/mnt/e01/a.jpg"}], ("/mnt/e01/a.jpg",)),
        ([{"FileName": "a.jpg", "FilePath": "D:"}], ("D:\\a.jpg",)),
        ([{"FileName": "a.jpg"}], ("a.jpg",)),
        ([{"FilePath": "/x/y.png", "FileName": None}], ("/x/y.png",)),
        (
            [{"FileName": "a.jpg", "FilePath": "/p"}, {"FileName": "b.jpg", "FilePath": "/q"}],
            ("/p/a.jpg", "/q/b.jpg"),
        ),
        ([], ()),
    ],
)
def test_media_files_give_full_paths(files: list[object], paths: tuple[str, ...]) -> None:
    assert only(read(doc_2x([{"MD5": MD5, "MediaFiles": files}]))).file_paths == paths


# Records that cannot be stored: the reason names the field, the rest goes on.


@pytest.mark.parametrize(
    ("media", "reason"),
    [
        ({"MD5": MD5[:-1]}, "MD5: md5 needs 32 hex characters, got 31"),
        ({"SHA1": "g" * 40}, "SHA1: sha1 value is not hexadecimal (found 'g')"),
        ({"MD5": 123}, "MD5: must be a string of hex digits, got 123"),
        ({"PhotoDNA": "not base64!"}, "PhotoDNA: not base64 (nor 288 hex characters)"),
        (
            {"PhotoDNA": base64.b64encode(bytes(143)).decode()},
            "PhotoDNA: photodna needs 144 bytes, got 143",
        ),
        (
            {"MD5": MD5, "Category": 5},
            "Category: '5' is not a vics-us category; valid: 0, 1, 2, 3, 4",
        ),
        ({"MD5": MD5, "Category": "two"}, "Category: must be a whole number, got 'two'"),
        ({"MD5": MD5, "Category": True}, "Category: must be a whole number, got true"),
        ({"MD5": MD5, "VictimIdentified": 1}, "VictimIdentified: must be true or false, got 1"),
        ({"MD5": MD5, "IsDistributed": "yes"}, "IsDistributed: must be true or false, got 'yes'"),
        (
            {"MD5": MD5, "IsPrecategorized": "no"},
            "IsPrecategorized: must be true or false, got 'no'",
        ),
        ({"MD5": MD5, "Series": 3}, "Series: must be a string, got 3"),
        ({"MD5": MD5, "MediaFiles": "x"}, "MediaFiles: must be an array, got a string"),
        (
            {"MD5": MD5, "MediaFiles": [{"FileName": 7}]},
            "MediaFiles[0].FileName: must be a string, got a number",
        ),
        (
            {"MD5": MD5, "AlternativeHashes": {"HashName": "MD5"}},
            "AlternativeHashes: must be an array, got an object",
        ),
        (
            {"AlternativeHashes": [{"HashName": "SHA1", "HashValue": "ab"}]},
            "AlternativeHashes.SHA1: sha1 needs 40 hex characters, got 2",
        ),
        ({"MediaID": 1, "Series": "A"}, NO_HASH),
        ({"MD5": "", "SHA1": None}, NO_HASH),
        (
            {"MD5": 1, "Category": 9},
            "MD5: must be a string of hex digits, got 1; "
            "Category: '9' is not a vics-us category; valid: 0, 1, 2, 3, 4",
        ),
    ],
)  # fmt: skip
def test_a_wrong_field_rejects_its_record(media: dict[str, object], reason: str) -> None:
    assert reason_of(media) == reason


def test_a_rejected_record_does_not_stop_the_rest() -> None:
    records = read(doc_2x([{"MD5": 1}, "not an object", {"MD5": MD5}]))
    assert [type(r) for r in records] == [Rejected, Rejected, ImportedMedia]
    assert records[1] == Rejected(Position(2, 7, 5), "a Media must be a JSON object, got a string")


# Problems of the document: located exactly; what came before stands.

CONTEXT_US = f'"@odata.context": "{URL_2X.format(profile="US", shape="Media")}"'


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_truncated_file(chunk: int) -> None:
    text = "{" + CONTEXT_US + ', "value": [\n' + f' {{"MD5": "{MD5}"}},\n {{"MD5": "{MD5[:9]}'
    seen, error = failure(text, chunk_bytes=chunk)
    assert [r.position for r in seen] == [Position(1, 2, 2)]
    assert error.position == Position(2, 3, 20)
    assert str(error) == "record 2 (line 3, column 20): the file ends inside the JSON (truncated?)"


@pytest.mark.parametrize("chunk", [1, 1 << 20])
def test_syntax_error_inside_a_record(chunk: int) -> None:
    text = "{" + CONTEXT_US + ', "value": [\n' + f' {{"MD5": "{MD5}"}},\n {{"MD5" "x"}}]}}'
    seen, error = failure(text, chunk_bytes=chunk)
    assert len(seen) == 1
    assert str(error) == "record 2 (line 3, column 9): invalid JSON: Expecting ':' delimiter"


def test_syntax_error_between_records() -> None:
    text = "{" + CONTEXT_US + ', "value": [\n' + f' {{"MD5": "{MD5}"}}\n {{"MD5": "x"}}]}}'
    seen, error = failure(text)
    assert len(seen) == 1
    assert str(error) == "line 3, column 2: invalid JSON: expected ',' or ']' after an element"


def test_invalid_utf8_is_located() -> None:
    text = ("{" + CONTEXT_US + ', "value": [\n' + f' {{"MD5": "{MD5}", "Series": "').encode()
    seen, error = failure(text + b'\xe9t\xe9"}]}', chunk_bytes=4)
    assert seen == []
    assert str(error) == "record 1 (line 2, column 57): the file is not UTF-8 text (byte 0xe9)"


def test_a_record_over_the_limit() -> None:
    big = {"MD5": MD5, "Tags": "x" * 500}
    seen, error = failure(doc_2x([{"MD5": MD5}, big]), max_record_chars=300)
    assert len(seen) == 1
    assert str(error) == "record 2 (line 7, column 5): a single value is longer than 300 characters"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1, column 1: not a VICS file: the file is empty"),
        ("[]", "line 1, column 1: not a VICS file: the document is an array, not an object"),
        (
            '{"@odata.id": "x",\n "value": []}',
            'line 1, column 1: not a VICS file: the root object has no "@odata.context" (2.0)'
            ' or "odata.metadata" (1.x) key',
        ),
        (
            '{"@odata.context": "http://x/DataModels/3.0.xml/US/$metadata#Media", "value": []}',
            "line 1, column 20: not a known VICS 2.0 data model in '@odata.context':"
            " 'http://x/DataModels/3.0.xml/US/$metadata#Media'"
            " (expected .../DataModels/2.0.xml/<profile>/$metadata#Media or #Cases)",
        ),
        (
            '{"value": [], "odata.metadata": "http://x/DataModels/2.0.xml/US/$metadata#Media"}',
            "line 1, column 33: not a known VICS 1.x data model in 'odata.metadata':"
            " 'http://x/DataModels/2.0.xml/US/$metadata#Media'"
            " (expected .../DataModels/1.<n>.xml#Media or #Cases)",
        ),
        (
            '{"@odata.context": "http://x/DataModels/2.0.xml/NZ/$metadata#Media", "value": []}',
            "line 1, column 20: unknown VICS 2.0 profile 'NZ' in '@odata.context':"
            " 'http://x/DataModels/2.0.xml/NZ/$metadata#Media'; known: Default, US, UK, CUSTOM",
        ),
        (
            '{"odata.metadata": "http://x/DataModels/1.3.xml#Media"}',
            'line 1, column 1: the root object has no "value" array of records',
        ),
        (
            '{"odata.metadata": "http://x/DataModels/1.3.xml#Media", "value": {"MD5": "x"}}',
            'line 1, column 66: "value" must be an array, got an object',
        ),
        (
            '{"value": 3, "odata.metadata": "http://x/DataModels/1.3.xml#Media"}',
            'line 1, column 11: "value" must be an array, got a number',
        ),
        (
            '{"odata.metadata": "http://x/DataModels/1.3.xml#Cases", "value": [{"Media": 1}]}',
            'line 1, column 77: "Media of Case 1" must be an array, got a number',
        ),
        (
            '{"odata.metadata": "http://x/DataModels/1.3.xml#Cases", "value": [[]]}',
            "line 1, column 67: Case 1 must be an object, got an array",
        ),
        (
            '{"odata.metadata": "http://x/DataModels/1.3.xml#Media", "value": []} []',
            "line 1, column 70: unexpected text after the end of the document",
        ),
        (
            '{"odata.metadata": 13, "value": []}',
            "line 1, column 20: \"odata.metadata\" must be a string, got int",
        ),
    ],
)  # fmt: skip
def test_document_problems(text: str, message: str) -> None:
    _, error = failure(text)
    assert str(error) == message


def test_read_vics_raises_after_the_records_before() -> None:
    path = write("{" + CONTEXT_US + f', "value": [{{"MD5": "{MD5}"}}, {{')
    records = read_vics(path)
    assert isinstance(next(records), ImportedMedia)
    with pytest.raises(FormatError, match="truncated"):
        next(records)
    path.unlink()


def test_memory_stays_flat_with_value_before_the_context(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    media = json.dumps({"MD5": MD5, "Tags": "t" * 3000})
    with path.open("w") as out:
        out.write('{"value": [\n')
        out.write(",\n".join([media] * 6000))  # 18 MB
        out.write('],\n "odata.metadata": "http://x/DataModels/1.3.xml#Media"}')
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_vics(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 6000
    assert peak < 8 << 20


# Any odd but legal document reads as exactly what it states.


@settings(max_examples=120, deadline=None)
@given(model=documents(), bom=st.booleans(), chunk=st.sampled_from([1, 3, 16, 1 << 20]))
def test_any_legal_document_reads_as_its_model(model: DocumentModel, bom: bool, chunk: int) -> None:
    path = write((b"\xef\xbb\xbf" if bom else b"") + model.text.encode("utf-8"))
    try:
        with open_vics(path, chunk_bytes=chunk) as document:
            assert (document.version, document.profile) == (model.version, model.profile)
            assert (document.shape, document.scheme) == (model.shape, model.scheme)
            records = list(document.records())
            assert set(document.unused_root_fields) == model.unused_root_fields
            assert document.unused_case_fields.by_field == model.unused_case_fields
    finally:
        path.unlink()
    assert len(records) == len(model.media)
    for number, (record, media, (line, column)) in enumerate(
        zip(records, model.media, model.places, strict=True), start=1
    ):
        assert isinstance(record, ImportedMedia), record
        assert record.position == Position(number, line, column)
        assert set(record.signals) == media.signals
        assert len(record.signals) == len(media.signals)
        assert record.category == media.category
        assert record.flags == media.flags
        assert record.series_names == media.series_names
        assert record.file_paths == media.file_paths
        assert set(record.unused_fields) == media.unused_fields
