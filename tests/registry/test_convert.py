"""Validation of requests: every malformed item is named, nothing is half-accepted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from hashex.v1 import common_pb2, registry_pb2
from services.core.algorithms import Algorithm
from services.core.errors import InvalidArgument
from services.registry import convert

MD5 = "9e107d9d372bb6826bd81d3542a419d6"
SHA256 = "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592"
PDQ = "f" * 64


def sig(algorithm: int, value: str, quality: int | None = None) -> common_pb2.Signal:
    message = common_pb2.Signal(algorithm=algorithm, value=value)
    if quality is not None:
        message.quality = quality
    return message


def media(*signals: common_pb2.Signal, media_id: str = "") -> registry_pb2.MediaSubmission:
    return registry_pb2.MediaSubmission(media_id=media_id, signals=list(signals))


def problems(error: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [str(p) for p in error.value.problems]


def test_valid_batch_derives_media_id_from_strongest_hash() -> None:
    request = registry_pb2.SubmitMediaRequest(
        media=[media(sig(1, MD5.upper()), sig(3, SHA256), sig(4, PDQ, 90))]
    )
    [submission] = convert.submit_batch_from_proto(request)
    assert submission.media_id == f"sha256:{SHA256}"
    assert {s.algorithm for s in submission.signals} == {
        Algorithm.MD5,
        Algorithm.SHA256,
        Algorithm.PDQ,
    }


@pytest.mark.parametrize(
    ("signal", "expected"),
    [
        (sig(1, MD5[:-1]), "media[1].signals[0].value: md5 needs 32 hex characters, got 31"),
        (sig(1, "z" * 32), "media[1].signals[0].value: md5 value is not hexadecimal (found 'z')"),
        (sig(99, MD5), "media[1].signals[0].algorithm: unknown algorithm number 99"),
        (sig(0, MD5), "media[1].signals[0].algorithm: algorithm is required"),
        (sig(1, ""), "media[1].signals[0].value: md5 value is empty"),
        (sig(4, PDQ, 101), "media[1].signals[0].quality: pdq quality must be 0-100, got 101"),
        (sig(1, MD5, 50), "media[1].signals[0].quality: md5 has no quality; leave it out"),
    ],
)
def test_malformed_signal_is_named(signal: common_pb2.Signal, expected: str) -> None:
    request = registry_pb2.SubmitMediaRequest(media=[media(sig(1, MD5)), media(signal)])
    with pytest.raises(InvalidArgument) as error:
        convert.submit_batch_from_proto(request)
    assert problems(error) == [expected]


def test_every_problem_is_reported_at_once() -> None:
    request = registry_pb2.SubmitMediaRequest(
        media=[media(sig(1, "00")), media(), media(sig(4, PDQ))]
    )
    with pytest.raises(InvalidArgument) as error:
        convert.submit_batch_from_proto(request)
    assert problems(error) == [
        "media[0].signals[0].value: md5 needs 32 hex characters, got 2",
        "media[1].signals: at least one signal is required",
        "media[2].media_id: required when the media has no cryptographic hash",
    ]


def test_oversized_and_empty_batches() -> None:
    with pytest.raises(InvalidArgument, match="the batch has 1001 media; the limit is 1000"):
        convert.submit_batch_from_proto(
            registry_pb2.SubmitMediaRequest(media=[media(sig(1, MD5))] * 1001)
        )
    with pytest.raises(InvalidArgument, match="the batch is empty"):
        convert.submit_batch_from_proto(registry_pb2.SubmitMediaRequest())
    lookup = registry_pb2.LookupRequest(signals=[sig(1, MD5)] * 10_001)
    with pytest.raises(InvalidArgument, match="10001 signals; the limit is 10000"):
        convert.lookup_from_proto(lookup, default_max_distance=31)
    retract = registry_pb2.RetractMediaRequest(media_ids=["m"] * 10_001)
    with pytest.raises(InvalidArgument, match="media_ids: the batch has 10001 ids; the limit"):
        convert.retract_from_proto(retract)
    with pytest.raises(InvalidArgument, match="media_ids: at least one media id is required"):
        convert.retract_from_proto(registry_pb2.RetractMediaRequest())


def test_duplicate_media_id_in_one_batch_is_refused() -> None:
    request = registry_pb2.SubmitMediaRequest(media=[media(sig(1, MD5)), media(sig(1, MD5))])
    with pytest.raises(InvalidArgument) as error:
        convert.submit_batch_from_proto(request)
    assert problems(error) == [f"media[1].media_id: media id 'md5:{MD5}' also at media[0]"]


def test_bad_ids_category_and_distance() -> None:
    bad = media(sig(1, MD5), media_id="has space")
    bad.category.CopyFrom(common_pb2.Category(scheme=1, code="7"))
    bad.series_ids.append("")
    with pytest.raises(InvalidArgument) as error:
        convert.submit_batch_from_proto(registry_pb2.SubmitMediaRequest(media=[bad]))
    text = problems(error)
    assert text[0].startswith("media[0].media_id: media id 'has space' must be")
    assert text[1] == "media[0].category: '7' is not a vics-us category; valid: 0, 1, 2, 3, 4"
    assert text[2].startswith("media[0].series_ids[0]: series id '' must be")
    lookup = registry_pb2.LookupRequest(signals=[sig(4, PDQ)], pdq_max_distance=65)
    with pytest.raises(InvalidArgument, match="pdq_max_distance: 65 is above the limit of 64"):
        convert.lookup_from_proto(lookup, default_max_distance=31)


def test_lookup_defaults() -> None:
    request = registry_pb2.LookupRequest(signals=[sig(4, PDQ.upper(), 30)])
    signals, distance, limit = convert.lookup_from_proto(request, default_max_distance=31)
    assert distance == 31 and limit == convert.DEFAULT_MAX_MATCHES
    assert signals[0].value == bytes.fromhex(PDQ) and not signals[0].usable_for_near_match()


def test_same_hash_with_and_without_quality_is_kept_once() -> None:
    request = registry_pb2.SubmitMediaRequest(
        media=[media(sig(4, PDQ, 90), sig(4, PDQ.upper()), media_id="m1")]
    )
    [submission] = convert.submit_batch_from_proto(request)
    assert [(s.value.hex(), s.quality) for s in submission.signals] == [(PDQ, 90)]


@given(
    st.datetimes(
        min_value=datetime(1, 1, 1),
        max_value=datetime(9999, 12, 31),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
    )
)
def test_timestamps_equal_the_library_conversion(moment: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(moment)
    assert convert.timestamp(moment) == expected


_odd_signal = st.builds(
    sig,
    st.sampled_from([0, 1, 2, 3, 4, 5, 9]),
    st.one_of(
        st.sampled_from([MD5, MD5.upper(), " " + MD5, MD5[:31], SHA256, PDQ, "0" * 40, "zz" * 16]),
        st.binary(min_size=16, max_size=16).map(bytes.hex),
        st.binary(min_size=32, max_size=32).map(bytes.hex),
        st.just("00 " * 15 + "00"),
    ),
    st.one_of(st.none(), st.sampled_from([0, 49, 100, 101])),
)


@given(
    signals=st.lists(_odd_signal, max_size=18),
    media_id=st.sampled_from(["", "m-1", "bad id", "x" * 129]),
    media_type=st.sampled_from([0, 1, 2, 7]),
    category=st.one_of(
        st.none(),
        st.tuples(
            st.sampled_from([0, 1, 2, 5, 7, 9]), st.sampled_from(["1", "a", "A", " 3", "99"])
        ),
    ),
    series=st.lists(st.sampled_from(["s1", "s1", "S.2", "bad id", ""]), max_size=18),
    path=st.sampled_from(["", "/x.jpg", "a\x00b", "p" * 4097]),
)
def test_the_fast_path_accepts_exactly_what_full_validation_does(
    signals: list[common_pb2.Signal],
    media_id: str,
    media_type: int,
    category: tuple[int, str] | None,
    series: list[str],
    path: str,
) -> None:
    """A bulk submission skips the problem-collecting path when the media is valid as it
    stands; its answer must be the one the full path gives (what it declines goes through the
    full path, which accepts it or names its problems)."""
    message = media(*signals, media_id=media_id)
    message.media_type = media_type  # type: ignore[assignment]
    if category is not None:
        message.category.scheme = category[0]  # type: ignore[assignment]
        message.category.code = category[1]
    message.series_ids.extend(series)
    message.case_data.file_path = path
    fast = convert._valid_submission(message)
    try:
        full = convert.checked_submission(message)
    except InvalidArgument:
        full = None
    if fast is not None:
        assert fast == full


def test_a_canonical_media_takes_the_fast_path() -> None:
    message = media(sig(1, MD5), sig(4, PDQ, 90), media_id="")
    message.series_ids.extend(["s1", "s2"])
    message.category.scheme = common_pb2.CATEGORY_SCHEME_VICS_UK
    message.category.code = "3"
    fast = convert._valid_submission(message)
    assert fast is not None
    assert fast == convert.checked_submission(message)
    assert fast.media_id == f"md5:{MD5}"
