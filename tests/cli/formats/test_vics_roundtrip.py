"""The VICS writer: valid JSON in the agreed layout, no case data ever, and whatever it writes
reads back (`read_vics`) as the same signals, category, flags and first series."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.cli.formats.records import ImportedMedia, Position
from services.cli.formats.vics import open_vics
from services.cli.formats.vics_write import VicsWriteCounts, write_vics
from services.core.algorithms import ALGORITHMS, Algorithm, SignalValue
from services.core.errors import InvalidArgument
from services.registry.model import CATEGORY_CODES, Category, CategoryScheme, MediaFlags

MD5 = bytes.fromhex("9e107d9d372bb6826bd81d3542a419d6")
SHA256 = bytes(range(32))
PROFILE_SCHEMES = {
    "US": CategoryScheme.VICS_US,
    "Default": CategoryScheme.VICS_DEFAULT,
    "UK": CategoryScheme.VICS_UK,
    "CUSTOM": CategoryScheme.VICS_CUSTOM,
}
# (version, profile) of every kind of document the writer makes.
TARGETS = [("1.3", None), *(("2.0", profile) for profile in PROFILE_SCHEMES)]
AT = Position(1)


def written(
    items: list[ImportedMedia], version: str, profile: str | None, shape: str
) -> tuple[str, VicsWriteCounts]:
    out = io.StringIO()
    counts = write_vics(out, items, version=version, profile=profile, shape=shape)
    return out.getvalue(), counts


def read_back(text: str) -> tuple[list[ImportedMedia], str, str | None, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        file.write(text)
    path = Path(file.name)
    try:
        with open_vics(path) as document:
            records = list(document.records())
            facts = (document.version, document.profile, document.shape)
    finally:
        path.unlink()
    assert all(isinstance(r, ImportedMedia) for r in records), records
    return [r for r in records if isinstance(r, ImportedMedia)], *facts


def test_the_layout_of_a_2x_media_document() -> None:
    item = ImportedMedia(
        AT,
        (SignalValue(Algorithm.MD5, MD5), SignalValue(Algorithm.SHA256, SHA256)),
        category=Category(CategoryScheme.VICS_US, "1"),
        flags=MediaFlags(victim_identified=True),
        series_names=("Blue",),
    )
    plain = ImportedMedia(AT, (SignalValue(Algorithm.MD5, MD5),))
    text, counts = written([item, plain], "2.0", "US", "media")
    assert text == (
        '{"@odata.context": "http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/US/'
        '$metadata#Media", "value": [\n'
        '{"MediaID": 1, "Category": 1, "MD5": "9E107D9D372BB6826BD81D3542A419D6", '
        '"AlternativeHashes": [{"HashName": "SHA256", "HashValue": "' + SHA256.hex() + '"}], '
        '"VictimIdentified": true, "OffenderIdentified": false, "IsDistributed": false, '
        '"Series": "Blue"},\n'
        '{"MediaID": 2, "MD5": "9E107D9D372BB6826BD81D3542A419D6", "VictimIdentified": false, '
        '"OffenderIdentified": false, "IsDistributed": false}\n'
        "]}\n"
    )
    assert counts == VicsWriteCounts(written=2, categories_left_out=0, series_left_out=0)


def test_the_layout_of_a_1x_cases_document() -> None:
    photodna = SignalValue(Algorithm.PHOTODNA, bytes(144))
    text, _ = written([ImportedMedia(AT, (photodna,))], "1.3", None, "cases")
    document = json.loads(text)
    assert list(document) == ["odata.metadata", "value"]
    assert document["odata.metadata"] == (
        "http://github.com/ICMEC/ProjectVic/DataModels/1.3.xml#Cases"
    )
    [case] = document["value"]
    assert list(case) == ["Media"]
    assert case["Media"][0]["AlternativeHashes"] == [
        {"HashName": "PhotoDNA", "HashValue": "A" * 192}
    ]


def test_an_empty_document_is_valid() -> None:
    for shape in ("media", "cases"):
        text, counts = written([], "2.0", "UK", shape)
        assert json.loads(text)["value"] == ([] if shape == "media" else [{"Media": []}])
        assert counts.written == 0


def test_case_data_is_never_written() -> None:
    item = ImportedMedia(
        AT,
        (SignalValue(Algorithm.MD5, MD5),),
        file_paths=("C:\\Cases\\secret-name.jpg",),
        case_reference="OP-TANGO-17",
    )
    for version, profile in TARGETS:
        for shape in ("media", "cases"):
            text, _ = written([item], version, profile, shape)
            assert "secret-name" not in text
            assert "OP-TANGO" not in text
            assert "MediaFiles" not in text


def test_what_vics_cannot_carry_is_counted() -> None:
    md5 = (SignalValue(Algorithm.MD5, MD5),)
    items = [
        ImportedMedia(AT, md5, category=Category(CategoryScheme.CAID_UK, "A")),
        ImportedMedia(AT, md5, category=Category(CategoryScheme.VICS_UK, "2")),
        ImportedMedia(AT, md5, series_names=("first", "second")),
    ]
    text, counts = written(items, "2.0", "UK", "media")
    assert counts == VicsWriteCounts(written=3, categories_left_out=1, series_left_out=1)
    back, *_ = read_back(text)
    assert [r.category for r in back] == [None, Category(CategoryScheme.VICS_UK, "2"), None]
    assert back[2].series_names == ("first",)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"version": "3.0", "profile": None}, "VICS version '3.0' cannot be written; use one of"),
        ({"version": "2.0", "profile": None}, "VICS 2.0 needs a profile, one of Default, US"),
        ({"version": "2.0", "profile": "NZ"}, "VICS 2.0 needs a profile, one of Default, US"),
        ({"version": "1.3", "profile": "US"}, "VICS 1.3 has no profile; leave it out"),
    ],
)
def test_unwritable_targets_are_refused_before_writing(
    target: dict[str, str | None], message: str
) -> None:
    out = io.StringIO()
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(")):
        write_vics(
            out, [], version=target["version"] or "", profile=target["profile"], shape="media"
        )
    assert out.getvalue() == ""


def test_profile_is_accepted_in_any_case() -> None:
    text, _ = written([], "2.0", "default", "media")
    assert "/2.0.xml/Default/$metadata#Media" in text


def signal_values(algorithm: Algorithm) -> st.SearchStrategy[SignalValue]:
    size = ALGORITHMS[algorithm].byte_length
    return st.binary(min_size=size, max_size=size).map(lambda v: SignalValue(algorithm, v))


any_signal = st.sampled_from(list(Algorithm)).flatmap(signal_values)
any_category = st.none() | st.sampled_from(list(CategoryScheme)).flatmap(
    lambda scheme: st.sampled_from(CATEGORY_CODES[scheme]).map(lambda c: Category(scheme, c))
)
imported_media = st.builds(
    ImportedMedia,
    position=st.just(AT),
    # Several values of one algorithm too: the first at top level, the others alternative.
    signals=st.lists(any_signal, min_size=1, max_size=5, unique=True).map(tuple),
    category=any_category,
    flags=st.builds(MediaFlags, st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    series_names=st.lists(st.text(min_size=1, max_size=10).filter(str.strip), max_size=3).map(
        tuple
    ),
)


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(imported_media, max_size=6),
    target=st.sampled_from(TARGETS),
    shape=st.sampled_from(["media", "cases"]),
)
def test_what_is_written_reads_back(
    items: list[ImportedMedia], target: tuple[str, str | None], shape: str
) -> None:
    version, profile = target
    text, counts = written(items, version, profile, shape)
    json.loads(text)  # valid JSON, whatever the content
    back, read_version, read_profile, read_shape = read_back(text)
    assert (read_version, read_profile, read_shape) == (version, profile, shape)
    scheme = CategoryScheme.VICS_LEGACY if profile is None else PROFILE_SCHEMES[profile]
    assert len(back) == counts.written == len(items)
    for item, record in zip(items, back, strict=True):
        # VICS carries no PDQ quality: a signal is its algorithm and value.
        assert {(s.algorithm, s.value) for s in record.signals} == {
            (s.algorithm, s.value) for s in item.signals
        }
        in_profile = item.category is not None and item.category.scheme == scheme
        assert record.category == (item.category if in_profile else None)
        stated = item.flags
        assert record.flags == MediaFlags(
            stated.victim_identified, stated.offender_identified, stated.distributed
        )
        assert record.series_names == item.series_names[:1]
        assert record.file_paths == ()
    assert counts.categories_left_out == sum(
        item.category is not None and item.category.scheme != scheme for item in items
    )
    assert counts.series_left_out == sum(len(item.series_names) > 1 for item in items)
