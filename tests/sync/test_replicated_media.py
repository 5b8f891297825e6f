"""Parsing a replicated media record: the fast path taken for canonical records accepts nothing
the field-by-field check refuses and returns the same record; everything else is named."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashex.v1 import common_pb2, federation_pb2
from services.core.errors import InvalidArgument
from services.registry.change_entries import media_entry
from services.registry.replicated import ReplicatedMedia
from services.sync.entries import _canonical_media, _check_limits, _checked_media, parse_entry
from tests.sync.helpers import CAID_A, ORIGIN, md5, media_record, pdq, sha1

MOMENT = datetime(2026, 11, 2, tzinfo=UTC)
MD5_HEX = "9e107d9d372bb6826bd81d3542a419d6"

HEX_LENGTHS = {1: 32, 2: 40, 3: 64, 4: 64, 5: 288}


def _signal(algorithm: int, variant: int, quality: int | None) -> common_pb2.Signal:
    """Mostly a canonical value of the algorithm's length, else one of the ways to get it wrong
    or to write it non-canonically."""
    text = ("9e107d9d" * 36)[: HEX_LENGTHS.get(algorithm, 32)]
    text = {
        6: text.upper(),
        7: f" {text} ",
        8: text[:-2] + " " + text[-1],  # a blank between bytes: fromhex would skip it
        9: text[:-1] + "g",
        10: text[:-1] + "٣",  # a non-ASCII digit
        11: text[:-2],
    }.get(variant, text)
    signal = common_pb2.Signal(algorithm=algorithm, value=text)  # type: ignore[arg-type]
    if quality is not None:
        signal.quality = quality
    return signal


signals = st.builds(
    _signal,
    st.sampled_from([1, 1, 2, 3, 4, 4, 5] * 3 + [0, 6]),
    st.integers(0, 47),
    st.sampled_from([None] * 12 + [0, 50, 100, 101]),
)
ids = st.sampled_from(["m1", "bench-00000001", "s:1"] * 4 + ["", "has space", "x" * 129, "ü"])
# Distinct PDQ hashes in canonical order, around the limit of 8 per media.
pdq_runs = st.integers(6, 10).map(
    lambda count: [
        common_pb2.Signal(algorithm=4, value=f"{i:02x}" * 32, quality=90) for i in range(count)
    ]
)
categories = st.one_of(
    st.none(),
    st.builds(
        lambda scheme, code: common_pb2.Category(scheme=scheme, code=code),
        st.sampled_from([1, 2, 2, 3, 0, 4]),
        st.sampled_from(["1", "A", "B", "yes"] * 2 + ["a", " B ", "YES", "9", ""]),
    ),
)


@settings(max_examples=500)
@given(
    media_id=ids,
    signal_list=st.lists(signals, max_size=3)
    | st.lists(signals, min_size=16, max_size=17)
    | pdq_runs,
    media_type=st.sampled_from([0, 0, 1, 1, 2, 3]),
    category=categories,
    series_ids=st.lists(ids, max_size=2)
    | st.lists(st.sampled_from([f"s{i}" for i in range(18)]), min_size=15, max_size=17),
)
def test_the_fast_path_agrees_with_the_checked_path(
    media_id: str,
    signal_list: list[common_pb2.Signal],
    media_type: int,
    category: common_pb2.Category | None,
    series_ids: list[str],
) -> None:
    media = common_pb2.Media(
        origin=ORIGIN,
        media_id=media_id,
        signals=signal_list,
        media_type=media_type,  # type: ignore[arg-type]
        series_ids=series_ids,
    )
    if category is not None:
        media.category.CopyFrom(category)
    fast = _canonical_media(7, MOMENT, media)
    try:
        checked: ReplicatedMedia | InvalidArgument = _checked_media(7, MOMENT, media)
        _check_limits(checked)
    except InvalidArgument as error:
        checked = error
    if fast is not None:
        assert fast == checked


def test_a_canonical_record_takes_the_fast_path() -> None:
    record = media_record("m", md5("m"), sha1("m"), pdq("m"), category=CAID_A, series_ids=("s",))
    entry = federation_pb2.ChangeEntry.FromString(media_entry(3, MOMENT, record))
    fast = _canonical_media(3, MOMENT, entry.media)
    assert fast is not None
    assert fast == _checked_media(3, MOMENT, entry.media)
    assert fast.signals == (md5("m"), sha1("m"), pdq("m"))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (MD5_HEX[:-2] + " 6", "entry 1.signals[0].value: md5 value is not hexadecimal (found ' ')"),
        (MD5_HEX[:-2], "entry 1.signals[0].value: md5 needs 32 hex characters, got 30"),
    ],
)
def test_a_bad_record_is_named_as_before(value: str, problem: str) -> None:
    entry = federation_pb2.ChangeEntry(
        seq=1,
        media=common_pb2.Media(
            origin=ORIGIN, media_id="m", signals=[common_pb2.Signal(algorithm=1, value=value)]
        ),
    )
    with pytest.raises(InvalidArgument) as error:
        parse_entry(entry.SerializeToString(), origin=ORIGIN)
    assert str(error.value) == problem
