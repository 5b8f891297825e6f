"""Decoding requests: every valid request of the contract decodes as the runtime parses it, and
an undecodable one is refused with InvalidArgument naming where it went wrong, never anything
else. The runtime (upb) is the oracle: the walk refuses only what it refuses."""

from __future__ import annotations

import time
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal.encoder import _VarintBytes
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given
from hypothesis import strategies as st

from hashex.v1 import common_pb2, federation_pb2, registry_pb2
from services.core.errors import InvalidArgument
from services.core.request_decoding import (
    MAX_DEPTH,
    MAX_FIELDS_EXAMINED,
    decode_request,
    first_wire_problem,
    request_class_of,
)


def _request_classes() -> list[type[Message]]:
    classes: dict[str, type[Message]] = {}
    for file in (registry_pb2.DESCRIPTOR, federation_pb2.DESCRIPTOR):
        for service in file.services_by_name.values():
            for method in service.methods:
                classes[method.input_type.full_name] = GetMessageClass(method.input_type)
    return [classes[name] for name in sorted(classes)]


REQUEST_CLASSES = _request_classes()


def _everything_class() -> type[Message]:
    """A test-only type with what no request has: packed scalars of each wire type, a map, a
    bytes field and recursion (so the walk goes on in Python where the parser cannot judge)."""
    file = descriptor_pb2.FileDescriptorProto(
        name="hashex_test/everything.proto", package="hashex_test", syntax="proto3"
    )
    message = file.message_type.add(name="Everything")
    entry = message.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    F = descriptor_pb2.FieldDescriptorProto
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    repeated, optional = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    for name, number, kind, label, type_name in [
        ("ints", 1, F.TYPE_SINT64, repeated, ""),
        ("fixed", 2, F.TYPE_FIXED32, repeated, ""),
        ("doubles", 3, F.TYPE_DOUBLE, repeated, ""),
        ("labels", 4, F.TYPE_MESSAGE, repeated, ".hashex_test.Everything.LabelsEntry"),
        ("child", 5, F.TYPE_MESSAGE, optional, ".hashex_test.Everything"),
        ("flag", 6, F.TYPE_BOOL, optional, ""),
        ("blob", 7, F.TYPE_BYTES, optional, ""),
        ("names", 8, F.TYPE_STRING, repeated, ""),
    ]:
        field = message.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return GetMessageClass(pool.FindMessageTypeByName("hashex_test.Everything"))


Everything = _everything_class()

_F = FieldDescriptor
_SCALAR_VALUES: dict[int, st.SearchStrategy[Any]] = {
    _F.TYPE_DOUBLE: st.floats(allow_nan=False),
    _F.TYPE_FLOAT: st.floats(allow_nan=False, width=32),
    _F.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    _F.TYPE_SINT64: st.integers(-(2**63), 2**63 - 1),
    _F.TYPE_SFIXED64: st.integers(-(2**63), 2**63 - 1),
    _F.TYPE_UINT64: st.integers(0, 2**64 - 1),
    _F.TYPE_FIXED64: st.integers(0, 2**64 - 1),
    _F.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    _F.TYPE_SINT32: st.integers(-(2**31), 2**31 - 1),
    _F.TYPE_SFIXED32: st.integers(-(2**31), 2**31 - 1),
    _F.TYPE_ENUM: st.integers(-(2**31), 2**31 - 1),  # proto3 enums are open
    _F.TYPE_UINT32: st.integers(0, 2**32 - 1),
    _F.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    _F.TYPE_BOOL: st.booleans(),
    _F.TYPE_STRING: st.text(max_size=20),
    _F.TYPE_BYTES: st.binary(max_size=20),
}


@st.composite
def messages_of(draw: st.DrawFn, message_class: type[Message], depth: int = 0) -> Message:
    """Any valid `message_class`: each field set or not, nested messages a few levels deep."""
    message = message_class()
    descriptor: Descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        child = field.message_type
        if child is not None and child.GetOptions().map_entry:
            key, value = (_SCALAR_VALUES[f.type] for f in child.fields)
            getattr(message, field.name).update(draw(st.dictionaries(key, value, max_size=3)))
        elif child is not None:
            if depth >= 3:
                continue
            child_class = GetMessageClass(child)
            if field.is_repeated:
                items = draw(st.lists(messages_of(child_class, depth + 1), max_size=3))
                getattr(message, field.name).extend(items)
            else:
                getattr(message, field.name).CopyFrom(draw(messages_of(child_class, depth + 1)))
        elif field.is_repeated:
            getattr(message, field.name).extend(
                draw(st.lists(_SCALAR_VALUES[field.type], max_size=4))
            )
        else:
            setattr(message, field.name, draw(_SCALAR_VALUES[field.type]))
    return message


any_request = st.sampled_from([*REQUEST_CLASSES, Everything]).flatmap(messages_of)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with a few bytes changed, inserted, deleted, or cut off."""
    buffer = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, len(buffer)))
        byte = draw(st.sampled_from([0x00, 0x07, 0x80, 0xC3, 0xFF]) | st.integers(0, 255))
        if kind == "set" and at < len(buffer):
            buffer[at] = byte
        elif kind == "insert":
            buffer.insert(at, byte)
        elif kind == "delete" and at < len(buffer):
            del buffer[at]
        else:
            del buffer[at:]
    return bytes(buffer)


def refusal(message_class: type[Message], data: bytes, **kwargs: Any) -> str:
    with pytest.raises(InvalidArgument) as refused:
        decode_request(message_class, data, **kwargs)
    return str(refused.value)


def runtime_refuses(message_class: type[Message], data: bytes) -> bool:
    try:
        message_class.FromString(data)
    except DecodeError:
        return True
    return False


@given(any_request)
def test_every_valid_request_decodes_as_it_was_sent(message: Message) -> None:
    data = message.SerializeToString()
    assert decode_request(type(message), data) == message
    assert first_wire_problem(type(message), data) is None


@given(any_request, st.data())
def test_a_mutated_request_decodes_as_the_runtime_parses_it_or_is_refused_saying_where(
    message: Message, data: st.DataObject
) -> None:
    message_class = type(message)
    changed = data.draw(mutated(message.SerializeToString()))
    try:
        expected = message_class.FromString(changed)
    except DecodeError:
        expected = None
    try:
        decoded = decode_request(message_class, changed, stream_index=3)
    except InvalidArgument as error:
        assert expected is None
        [problem] = error.problems
        assert problem.field.startswith("message[3]")
        # The walk found the problem itself: never the whole-message fallback.
        assert "not a valid" not in problem.description
        assert "_pb2" not in str(error) and "<class" not in str(error)
    else:
        assert decoded == expected


@given(any_request, st.data())
def test_a_request_cut_short_is_refused_saying_where_or_parses_as_its_fields_so_far(
    message: Message, data: st.DataObject
) -> None:
    whole = message.SerializeToString()
    cut = whole[: data.draw(st.integers(0, max(0, len(whole) - 1)))]
    if runtime_refuses(type(message), cut):
        problem = first_wire_problem(type(message), cut)
        assert problem is not None and problem.description


# Bytes that look like protobuf more often than random ones: tags of fields 1-5 of each wire
# type, varint continuation, bad UTF-8, small lengths.
_WIRE_BYTES = st.sampled_from(
    [0x08, 0x0A, 0x0B, 0x0C, 0x0D, 0x0F, 0x10, 0x12, 0x15, 0x1A, 0x22, 0x2A]
)
_WIRE_BYTES |= st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0xC3, 0xFF]) | st.integers(
    0, 255
)
_STRICTER_THAN_THE_RUNTIME = ("uses groups", "sent as", "names field number 0")


@given(
    st.sampled_from([*REQUEST_CLASSES, Everything, struct_pb2.Struct]),
    st.lists(_WIRE_BYTES, max_size=14),
)
def test_the_walk_finds_a_problem_exactly_where_the_runtime_refuses(
    message_class: type[Message], values: list[int]
) -> None:
    data = bytes(values)
    problem = first_wire_problem(message_class, data)
    if runtime_refuses(message_class, data):
        assert problem is not None and "not a valid" not in problem.description
    else:  # only what the runtime lets through silently, never anything else
        assert problem is None or any(s in problem.description for s in _STRICTER_THAN_THE_RUNTIME)


def _submission(media_count: int = 3) -> registry_pb2.SubmitMediaRequest:
    return registry_pb2.SubmitMediaRequest(
        media=[
            registry_pb2.MediaSubmission(
                media_id=f"m{i}",
                signals=[common_pb2.Signal(algorithm=1, value="ab" * 16) for _ in range(4)],
                series_ids=["s-one", "s-two"],
            )
            for i in range(media_count)
        ]
    )


def _with_bad_utf8(request: Message, placeholder: str) -> bytes:
    data = request.SerializeToString()
    assert data.count(placeholder.encode()) == 1
    return data.replace(placeholder.encode(), b"\xc3" + placeholder.encode()[1:])


@pytest.mark.parametrize(
    ("place", "expected"),
    [
        ("series", "media[2].series_ids[1]: not valid UTF-8"),
        ("case", "media[1].case_data.file_path: not valid UTF-8"),
        ("signal", "media[0].signals[3].value: not valid UTF-8"),
    ],
)
def test_bad_utf8_in_a_nested_string_names_its_path(place: str, expected: str) -> None:
    request = _submission()
    if place == "series":
        request.media[2].series_ids[1] = "XX-bad"
    elif place == "case":
        request.media[1].case_data.file_path = "XX-bad"
    else:
        request.media[0].signals[3].value = "XX-bad"
    assert refusal(registry_pb2.SubmitMediaRequest, _with_bad_utf8(request, "XX-bad")) == expected


def test_a_bad_message_of_a_stream_is_named_by_its_position() -> None:
    request = _submission()
    request.media[2].series_ids[1] = "XX-bad"
    data = _with_bad_utf8(request, "XX-bad")
    assert refusal(registry_pb2.SubmitMediaRequest, data, stream_index=4) == (
        "message[4].media[2].series_ids[1]: not valid UTF-8"
    )


def _lookup_stream(lookup: bytes) -> bytes:
    """A LookupStreamRequest whose `lookup` (field 2) holds exactly `lookup`."""
    return b"\x0a\x02b1" + b"\x12" + _VarintBytes(len(lookup)) + lookup


@pytest.mark.parametrize(
    ("lookup", "expected"),
    [
        (b"\x10\xff", "lookup.pdq_max_distance: truncated varint"),
        (b"\x10" + b"\x80" * 10 + b"\x00", "lookup.pdq_max_distance: varint longer than 10 bytes"),
        (
            b"\x11\x01\x02\x03",
            "lookup.pdq_max_distance: sent as a 64-bit value, but a uint32 field is sent as a "
            "varint",
        ),
        (b"\x17", "lookup.pdq_max_distance: invalid wire type 7"),
        (
            b"\x13\x14\x0c",
            "lookup.pdq_max_distance: uses groups (wire types 3 and 4), which proto3 messages "
            "never use",
        ),
        (b"\x0a\x28\x08\x01", "lookup.signals[0]: truncated message: declares 40 bytes, 2 remain"),
        (
            b"\x0a\x00\x0a\x03\x08",
            "lookup.signals[1]: truncated message: declares 3 bytes, 1 remain",
        ),
        (b"\x0a\x02\x08\xff", "lookup.signals[0].algorithm: truncated varint"),
        (
            b"\x0a\x03\x12\x05a",
            "lookup.signals[0].value: truncated string: declares 5 bytes, 1 remain",
        ),
        (b"\x0a\x01\x00", "lookup.signals[0]: field tag at byte 8 names field number 0"),
        (
            b"\x0a\x02\x2d\x01",
            "lookup.signals[0]: field 5 (not in hashex.v1.Signal): truncated 32-bit value: "
            "needs 4 bytes, 1 remain",
        ),
        (b"\x0a\x80\x80\x80\x80\x80\x00", "lookup.signals[0]: length longer than 5 bytes"),
        (b"\xff\xff\xff\xff\x7f", "lookup: field tag at byte 6 is over 32 bits"),
        (b"\x80\x80\x80\x80\x80\x00", "lookup: field tag at byte 6 longer than 5 bytes"),
        (b"\xff", "lookup: truncated field tag at byte 6"),
    ],
)
def test_a_malformed_field_is_named_with_what_is_wrong(lookup: bytes, expected: str) -> None:
    data = _lookup_stream(lookup)
    assert runtime_refuses(registry_pb2.LookupStreamRequest, data)
    assert refusal(registry_pb2.LookupStreamRequest, data) == expected


def test_a_problem_outside_any_known_field_names_the_field_number_and_the_type() -> None:
    assert refusal(registry_pb2.GetStatsRequest, b"\x0f") == (
        "field 1 (not in hashex.v1.GetStatsRequest): invalid wire type 7"
    )
    assert (
        refusal(registry_pb2.GetStatsRequest, b"\x00") == "field tag at byte 0 names field number 0"
    )


def test_a_field_sent_with_another_wire_type_is_named_where_the_message_fails() -> None:
    # The runtime keeps `signals` sent as a varint as an unknown field; it refuses the message
    # only for the varint cut short after it. The walk names the first of the two.
    data = b"\x08\x05\x10"
    assert runtime_refuses(registry_pb2.LookupRequest, data)
    assert refusal(registry_pb2.LookupRequest, data) == (
        "signals[0]: sent as a varint, but a hashex.v1.Signal field is sent as a "
        "length-delimited value"
    )


def _entry(key: bytes, value: bytes) -> bytes:
    body = b"\x0a" + _VarintBytes(len(key)) + key + b"\x12" + _VarintBytes(len(value)) + value
    return b"\x22" + _VarintBytes(len(body)) + body


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x0a\x02\x02\x04" + b"\x0a\x02\x06\x80", "ints[3]: truncated varint"),
        (
            b"\x15\x01\x00\x00\x00" + b"\x12\x07" + b"\x00" * 7,
            "fixed[1]: packed 32-bit values: 7 bytes is not a multiple of 4",
        ),
        (
            b"\x1a\x03\x00\x00\x00",
            "doubles[0]: packed 64-bit values: 3 bytes is not a multiple of 8",
        ),
        (_entry(b"a", b"1") + _entry(b"\xc3X", b"2"), "labels[1].key: not valid UTF-8"),
        (_entry(b"a", b"\xff"), "labels[0].value: not valid UTF-8"),
        (b"\x3a\x02\xff", "blob: truncated bytes: declares 2 bytes, 1 remain"),
        (b"\x0a\x05\x01", "ints[0]: truncated packed list: declares 5 bytes, 1 remain"),
    ],
)
def test_packed_lists_and_map_entries_are_indexed_by_element(data: bytes, expected: str) -> None:
    assert runtime_refuses(Everything, data)
    assert refusal(Everything, data) == expected


def test_a_recursive_type_is_walked_to_the_problem_and_its_depth_limit() -> None:
    deep = Everything(names=["ok"])
    for _ in range(5):
        deep = Everything(child=deep)
    data = _with_bad_utf8(deep, "ok")
    assert refusal(Everything, data) == "child.child.child.child.child.names[0]: not valid UTF-8"

    def nested(levels: int) -> bytes:
        data = b""
        for _ in range(levels):
            data = b"\x2a" + _VarintBytes(len(data)) + data
        return data

    assert Everything.FromString(nested(MAX_DEPTH)).child.child.child is not None
    too_deep = nested(MAX_DEPTH + 1)
    assert runtime_refuses(Everything, too_deep)
    path = ".".join(["child"] * (MAX_DEPTH + 1))
    assert refusal(Everything, too_deep) == f"{path}: nested more than {MAX_DEPTH} messages deep"


def test_a_struct_too_deep_is_refused_by_the_runtime_and_the_walk_alike() -> None:
    value: struct_pb2.Value = struct_pb2.Value(string_value="x")
    for _ in range(MAX_DEPTH // 2):
        value = struct_pb2.Value(list_value=struct_pb2.ListValue(values=[value]))
    data = struct_pb2.ListValue(values=[value]).SerializeToString()
    assert runtime_refuses(struct_pb2.ListValue, data)
    assert refusal(struct_pb2.ListValue, data).endswith(
        f"nested more than {MAX_DEPTH} messages deep"
    )


def test_the_walk_looks_at_so_many_fields_at_most_then_refuses_the_message_whole() -> None:
    ids = [f"m{i}" for i in range(MAX_FIELDS_EXAMINED)]
    data = registry_pb2.RetractMediaRequest(media_ids=ids).SerializeToString()
    assert refusal(registry_pb2.RetractMediaRequest, data[:-1] + b"\xff") == (
        f"media_ids[{MAX_FIELDS_EXAMINED - 1}]: not valid UTF-8"
    )
    started = time.perf_counter()
    message = refusal(registry_pb2.RetractMediaRequest, data + b"\x0a\x01\xff")
    assert message == (
        "not a valid hashex.v1.RetractMediaRequest message (no problem found in its first "
        f"{MAX_FIELDS_EXAMINED} fields, and no more are examined)"
    )
    assert time.perf_counter() - started < 5  # about 0.1 s; generous for a shared machine


def test_only_the_parts_that_fail_are_walked_so_a_large_batch_is_still_named() -> None:
    """The batch holds more fields than the walk may look at, but the walk looks only at the
    media of the batch and then inside the one media that does not parse."""
    request = _submission(media_count=1000)
    for media in request.media:
        media.series_ids.extend(f"s{i}" for i in range(MAX_FIELDS_EXAMINED // 1000))
    request.media[999].case_data.file_path = "XX-bad"
    data = _with_bad_utf8(request, "XX-bad")
    assert refusal(registry_pb2.SubmitMediaRequest, data) == (
        "media[999].case_data.file_path: not valid UTF-8"
    )


def test_the_message_class_is_found_from_a_generated_deserializer() -> None:
    assert request_class_of(registry_pb2.LookupRequest.FromString) is registry_pb2.LookupRequest
    assert request_class_of(None) is None
    assert request_class_of(bytes) is None
    assert request_class_of(registry_pb2.LookupRequest.SerializeToString) is None
