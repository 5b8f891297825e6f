"""Hash algorithm plug-ins: text forms round-trip exactly and malformed input is named precisely."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.algorithms import (
    ALGORITHMS,
    BY_NAME,
    Algorithm,
    AlgorithmSpec,
    SignalValue,
    derived_media_id,
    format_signal_text,
    make_signal,
    parse_signal_text,
    spec_for_name,
    spec_for_number,
)
from services.core.errors import InvalidArgument

SPECS = list(ALGORITHMS.values())
BLANKS = st.text(alphabet=" \t\r\n", max_size=3)


@st.composite
def spec_and_value(draw: st.DrawFn) -> tuple[AlgorithmSpec, bytes]:
    spec = draw(st.sampled_from(SPECS))
    return spec, draw(st.binary(min_size=spec.byte_length, max_size=spec.byte_length))


def any_case(data: st.DataObject, text: str) -> str:
    flips = data.draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips, strict=True))


@given(st.data(), spec_and_value())
def test_hex_round_trips_in_any_case_with_blanks(
    data: st.DataObject, drawn: tuple[AlgorithmSpec, bytes]
) -> None:
    spec, value = drawn
    text = spec.format_hex(value)
    assert text == text.lower()
    assert len(text) == spec.hex_length
    written = data.draw(BLANKS) + any_case(data, text) + data.draw(BLANKS)
    assert spec.parse_hex(written) == value


@given(st.data(), spec_and_value())
def test_signal_text_round_trips(data: st.DataObject, drawn: tuple[AlgorithmSpec, bytes]) -> None:
    spec, value = drawn
    signal = SignalValue(spec.algorithm, value)
    text = format_signal_text(signal)
    assert text == f"{spec.name}:{value.hex()}"
    written = data.draw(BLANKS) + any_case(data, text) + data.draw(BLANKS)
    assert parse_signal_text(written) == signal


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("md5:" + "a" * 31, "md5 needs 32 hex characters, got 31"),
        ("sha1:" + "a" * 41, "sha1 needs 40 hex characters, got 41"),
        ("sha256:" + "0" * 63, "sha256 needs 64 hex characters, got 63"),
        ("pdq:" + "f" * 65, "pdq needs 64 hex characters, got 65"),
        ("photodna:" + "ab" * 143, "photodna needs 288 hex characters, got 286"),
        ("md5:" + "g" * 32, "md5 value is not hexadecimal (found 'g')"),
        ("md5:0x" + "a" * 30, "md5 value is not hexadecimal (found 'x')"),
        ("md5:" + "a" * 15 + " " + "a" * 16, "md5 value is not hexadecimal (found ' ')"),
        # Digits of other scripts are not hexadecimal even though str.isdigit() says so.
        ("md5:" + "\u0663" * 32, "md5 value is not hexadecimal (found '\u0663')"),
        ("md5:", "md5 value is empty"),
        ("md5:   ", "md5 value is empty"),
        (
            "sha512:" + "a" * 128,
            "unknown algorithm 'sha512'; known: md5, sha1, sha256, pdq, photodna",
        ),
        (
            "averyveryverylongname:aa",
            "unknown algorithm 'averyveryverylon…'; known: md5, sha1, sha256, pdq, photodna",
        ),
        ("", "empty hash; write it as ALGO:HEX, e.g. md5:9e107d9d..."),
        (" \t\n", "empty hash; write it as ALGO:HEX, e.g. md5:9e107d9d..."),
        (
            "a" * 32,
            "'aaaaaaaaaaaaaaaa…' has no algorithm; write it as ALGO:HEX, e.g. md5:9e107d9d...",
        ),
        ("abc", "'abc' has no algorithm; write it as ALGO:HEX, e.g. md5:9e107d9d..."),
        (":abc", "':abc' has no algorithm; write it as ALGO:HEX, e.g. md5:9e107d9d..."),
    ],
)
def test_malformed_signal_text_is_named_exactly(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_signal_text(text)
    assert str(caught.value) == message


def test_error_never_echoes_a_long_value() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_signal_text("md5:" + "z" * 10_000)
    assert str(caught.value) == "md5 needs 32 hex characters, got 10000"


@pytest.mark.parametrize(
    ("name", "quality", "message"),
    [
        ("pdq", 101, "pdq quality must be 0-100, got 101"),
        ("pdq", -1, "pdq quality must be 0-100, got -1"),
        ("pdq", True, "pdq quality must be 0-100, got True"),
        ("md5", 50, "md5 has no quality; leave it out"),
        ("sha256", 0, "sha256 has no quality; leave it out"),
        ("photodna", 100, "photodna has no quality; leave it out"),
    ],
)
def test_bad_quality_is_named_exactly(name: str, quality: int, message: str) -> None:
    spec = BY_NAME[name]
    with pytest.raises(InvalidArgument) as caught:
        make_signal(spec, "a" * spec.hex_length, quality)
    assert str(caught.value) == message


@pytest.mark.parametrize("quality", [0, 49, 50, 100, None])
def test_pdq_quality_in_range_is_kept(quality: int | None) -> None:
    signal = make_signal(BY_NAME["pdq"], "F" * 64, quality)
    assert signal.quality == quality
    assert signal.usable_for_near_match() is (quality is None or quality >= 50)


def test_wrong_byte_length_is_refused_when_formatting() -> None:
    with pytest.raises(InvalidArgument) as caught:
        BY_NAME["sha1"].format_hex(b"\x00" * 19)
    assert str(caught.value) == "sha1 needs 20 bytes, got 19"


def test_algorithm_lookup_by_name_and_number() -> None:
    assert spec_for_name(" SHA256 ").algorithm is Algorithm.SHA256
    assert spec_for_number(4).name == "pdq"
    with pytest.raises(InvalidArgument, match=r"^algorithm is required$"):
        spec_for_number(0)
    with pytest.raises(InvalidArgument, match=r"^unknown algorithm number 9$"):
        spec_for_number(9)


def _signal(algorithm: Algorithm, fill: int) -> SignalValue:
    return SignalValue(algorithm, bytes([fill]) * ALGORITHMS[algorithm].byte_length)


@given(st.sets(st.sampled_from(list(Algorithm))))
def test_derived_media_id_prefers_the_strongest_hash(algorithms: set[Algorithm]) -> None:
    signals = [_signal(a, int(a)) for a in sorted(algorithms)]
    expected: str | None = None
    for preferred in (Algorithm.SHA256, Algorithm.SHA1, Algorithm.MD5):
        if preferred in algorithms:
            expected = (
                f"{ALGORITHMS[preferred].name}:{_signal(preferred, int(preferred)).value.hex()}"
            )
            break
    else:
        if Algorithm.PHOTODNA in algorithms:
            digest = hashlib.sha256(_signal(Algorithm.PHOTODNA, 5).value).hexdigest()
            expected = f"photodna-sha256:{digest}"
    assert derived_media_id(signals) == expected
    assert derived_media_id(list(reversed(signals))) == expected


def test_derived_media_id_examples() -> None:
    md5 = _signal(Algorithm.MD5, 1)
    sha1 = _signal(Algorithm.SHA1, 2)
    pdq = _signal(Algorithm.PDQ, 4)
    assert derived_media_id([md5, sha1, pdq]) == "sha1:" + "02" * 20
    assert derived_media_id([pdq, md5]) == "md5:" + "01" * 16
    assert derived_media_id([pdq]) is None
    assert derived_media_id([]) is None
