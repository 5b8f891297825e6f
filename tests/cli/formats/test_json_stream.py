"""The streamed JSON walk: values and their places survive any chunk size, problems are located
exactly, and memory stays flat however long the array."""

from __future__ import annotations

import io
import json
import random
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.cli.formats.json_stream import JsonStream, JsonStreamError, Location

CHUNKS = (1, 2, 3, 5, 64, 1 << 20)
TRUNCATED = "the file ends inside the JSON (truncated?)"
NO_SEPARATOR = "invalid JSON: expected ',' or ']' after an element"


def stream_of(text: str | bytes, chunk_bytes: int = 1 << 20, **limits: int) -> JsonStream:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return JsonStream(io.BytesIO(data), chunk_bytes=chunk_bytes, **limits)


def error_of(text: str | bytes, chunk_bytes: int, walk: str = "values") -> JsonStreamError:
    stream = stream_of(text, chunk_bytes)
    with pytest.raises(JsonStreamError) as caught:
        if walk == "values":
            list(stream.values())
        else:
            stream.skip_value()
        stream.finish()
    return caught.value


@pytest.mark.parametrize("chunk", CHUNKS)
def test_members_and_values_with_their_places(chunk: int) -> None:
    text = '{"a": 1,\n "list": [\n  {"x": "é"}, 12345,\n\t"s"  ], "z": null}'
    stream = stream_of(text, chunk)
    seen: list[object] = []
    for key in stream.members():
        seen.append(key)
        if key == "list":
            seen.extend(stream.values())
        else:
            seen.append(stream.read_value())
    stream.finish()
    assert seen == ["a", 1, "list", ({"x": "é"}, 3, 3), (12345, 3, 15), ("s", 4, 2), "z", None]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_number_cut_by_the_chunk_edge_is_read_whole(chunk: int) -> None:
    assert [v for v, _, _ in stream_of("[1234567890, -2.5e10]", chunk).values()] == [
        1234567890,
        -2.5e10,
    ]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_byte_order_mark_is_skipped_and_columns_count_characters(chunk: int) -> None:
    text = '\ufeff[\n"ü€😀", {"k": 1}]'
    assert list(stream_of(text, chunk).values()) == [("ü€😀", 2, 1), ({"k": 1}, 2, 8)]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_items_leave_each_element_to_the_caller(chunk: int) -> None:
    stream = stream_of('[{"Media": [1, 2], "n": "x"}, {"Media": []}]', chunk)
    walked: list[object] = []
    for where in stream.items():
        walked.append(where)
        for key in stream.members():
            if key == "Media":
                walked.append([value for value, _, _ in stream.values()])
            else:
                stream.skip_value()
    assert walked == [Location(1, 2), [1, 2], Location(1, 31), []]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_skip_value_steps_over_nested_containers(chunk: int) -> None:
    stream = stream_of('{"skip": [[1, {"a": [2, "]"]}], {}], "keep": true}', chunk)
    kept = {}
    for key in stream.members():
        if key == "skip":
            stream.skip_value()
        else:
            kept[key] = stream.read_value()
    stream.finish()
    assert kept == {"keep": True}


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(
    ("text", "where", "reason", "inside"),
    [
        ('[{"a": 1},\n {"b": 2', Location(2, 9), TRUNCATED, True),
        ('[{"a": 1},\n {"b": "x', Location(2, 10), TRUNCATED, True),
        ('[{"a": 1},\n', Location(2, 1), TRUNCATED, False),
        ('[{"a": 1} {"b": 2}]', Location(1, 11), NO_SEPARATOR, False),
        ('[{"a": 1},\n  {"b" 2}]', Location(2, 8), "invalid JSON: Expecting ':' delimiter", True),
        ('[1, tru]', Location(1, 5), "invalid JSON: Expecting value", True),
        ('[1,]', Location(1, 4), "invalid JSON: Expecting value", True),
        ("[1] 2", Location(1, 5), "unexpected text after the end of the document", False),
        (b'[1, "a\xff"]', Location(1, 7), "the file is not UTF-8 text (byte 0xff)", True),
    ],
)  # fmt: skip
def test_problems_are_located(
    chunk: int, text: str | bytes, where: Location, reason: str, inside: bool
) -> None:
    error = error_of(text, chunk)
    assert (error.location, error.reason, error.inside_element) == (where, reason, inside)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_problems_inside_a_skipped_value_are_located(chunk: int) -> None:
    error = error_of("[[1, 2], [3,\n 4 5]]", chunk, walk="skip")
    assert (error.location, error.reason) == (
        Location(2, 4),
        "invalid JSON: expected ',' or ']' after an element",
    )


def test_values_before_a_non_utf8_byte_are_delivered() -> None:
    stream = stream_of(b'["a", "b", "\xc3\x28"]', 2)
    values = stream.values()
    assert [next(values)[0], next(values)[0]] == ["a", "b"]
    with pytest.raises(JsonStreamError, match="not UTF-8"):
        next(values)


def test_a_value_over_the_limit_is_refused() -> None:
    stream = stream_of('[{"a": "' + "x" * 300 + '"}]', 16, max_value_chars=100)
    with pytest.raises(JsonStreamError) as caught:
        list(stream.values())
    assert caught.value.reason == "a single value is longer than 100 characters"
    assert caught.value.inside_element


class _Generated(io.RawIOBase):
    """A long JSON array produced on demand: a test of memory needs no file of that size."""

    def __init__(self, parts: Iterator[bytes]) -> None:
        self._parts = parts
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._left:
            part = next(self._parts, None)
            if part is None:
                return 0
            self._left = part
        size = min(len(buffer), len(self._left))
        buffer[:size] = self._left[:size]
        self._left = self._left[size:]
        return size


def _long_array(count: int) -> Iterator[bytes]:
    yield b'{"skipped": ['
    element = json.dumps({"Tags": "t" * 2000, "n": 1}).encode()
    for index in range(count):
        yield (b",\n" if index else b"") + element
    yield b'], "read": ['
    for index in range(count):
        yield (b",\n" if index else b"") + element
    yield b"]}"


def test_memory_stays_flat_over_a_long_array() -> None:
    count = 8000  # two arrays of 16 MB each
    stream = JsonStream(io.BufferedReader(_Generated(_long_array(count))))
    tracemalloc.start()
    try:
        read = 0
        for key in stream.members():
            if key == "skipped":
                stream.skip_value()
            else:
                for _ in stream.values():
                    read += 1
        stream.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read == count
    assert peak < 8 << 20


json_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_text, inner, max_size=4),
    max_leaves=10,
)
BLANKS = ("", " ", "\n", "\r\n", "\t", "\n    ", "   ")


@settings(max_examples=150, deadline=None)
@given(
    elements=st.lists(json_values, max_size=6),
    rnd=st.randoms(use_true_random=False),
    chunk=st.sampled_from(CHUNKS),
    bom=st.booleans(),
)
def test_any_array_reads_back_with_its_places(
    elements: list[object], rnd: random.Random, chunk: int, bom: bool
) -> None:
    text, starts = "[", []
    for index, element in enumerate(elements):
        text += ("," if index else "") + rnd.choice(BLANKS)
        starts.append(len(text))
        indent = rnd.choice([None, 0, 2])
        text += json.dumps(element, indent=indent, ensure_ascii=rnd.random() < 0.5)
        text += rnd.choice(BLANKS)
    text += "]" + rnd.choice(BLANKS)
    expected = [
        (element, text.count("\n", 0, start) + 1, start - text.rfind("\n", 0, start))
        for element, start in zip(elements, starts, strict=True)
    ]
    stream = stream_of(("\ufeff" if bom else "") + text, chunk)
    assert list(stream.values()) == expected
    stream.finish()
