"""The one JSON style of the CLI: snake_case keys, short lowercase enum words, 64-bit integers as
numbers, every field present (zero counts, empty lists; unset messages null), for each message a
command prints."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from hashex.v1 import common_pb2, federation_pb2, registry_pb2
from services.cli.json_output import enum_word, to_json

# Every message a command prints as JSON (stats, series show, sync status/quarantine/resync,
# lookup --peers).
PRINTED: list[type[Message]] = [
    registry_pb2.GetStatsResponse,
    common_pb2.Series,
    federation_pb2.GetSyncStatusResponse,
    federation_pb2.ListQuarantineResponse,
    federation_pb2.ResyncPeerResponse,
    federation_pb2.PeerOutcome,
]
SNAKE = re.compile(r"[a-z][a-z0-9_]*")
WORD = re.compile(r"[a-z0-9][a-z0-9_]*")
_INT_TYPES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


@pytest.mark.parametrize(
    ("enum", "number", "word"),
    [
        (common_pb2.IdentificationStatus.DESCRIPTOR, 3, "identified"),
        (common_pb2.IdentificationStatus.DESCRIPTOR, 2, "in_progress"),
        (common_pb2.IdentificationStatus.DESCRIPTOR, 0, "unspecified"),
        (common_pb2.HashAlgorithm.DESCRIPTOR, common_pb2.HASH_ALGORITHM_SHA256, "sha256"),
        (registry_pb2.MatchKind.DESCRIPTOR, registry_pb2.MATCH_KIND_NEAR, "near"),
        (
            federation_pb2.PeerLookupOutcome.DESCRIPTOR,
            federation_pb2.PEER_LOOKUP_OUTCOME_TIMED_OUT,
            "timed_out",
        ),
        # A value a newer peer may send that this build does not know: shown, never hidden.
        (common_pb2.IdentificationStatus.DESCRIPTOR, 99, "99"),
    ],
)
def test_enum_words(enum: Any, number: int, word: str) -> None:
    assert enum_word(enum, number) == word


@pytest.mark.parametrize("message_type", PRINTED, ids=lambda t: t.DESCRIPTOR.name)
def test_an_empty_message_still_has_every_field(message_type: type[Message]) -> None:
    shown = to_json(message_type())
    assert set(shown) == {f.name for f in message_type.DESCRIPTOR.fields}
    for field in message_type.DESCRIPTOR.fields:
        value = shown[field.name]
        if field.is_repeated:
            assert value in ([], {})
        elif field.type in _INT_TYPES:
            assert value == 0 and isinstance(value, int)


def test_stats_as_a_unit_reads_them() -> None:
    stats = registry_pb2.GetStatsResponse(
        node_id="gb-nca",
        media_count=6,
        signal_counts=[
            registry_pb2.AlgorithmCount(algorithm=common_pb2.HASH_ALGORITHM_MD5, count=6)
        ],
        started_at=Timestamp(seconds=1_800_000_000),
    )
    shown = to_json(stats)
    assert shown["media_count"] == 6 and shown["retracted_count"] == 0
    assert shown["signal_counts"] == [{"algorithm": "md5", "count": 6}]
    assert shown["started_at"] == "2027-01-15T08:00:00Z"


def _filled(draw: Any, descriptor: Descriptor, message: Message, depth: int) -> None:
    """Set every field of `message` (repeated ones to one element) with drawn values."""
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 2 or field.message_type.GetOptions().map_entry:
                continue
            inner = getattr(message, field.name)
            child = inner.add() if field.is_repeated else inner
            if field.message_type.full_name == "google.protobuf.Timestamp":
                child.seconds = draw(st.integers(0, 253_402_300_799))
            else:
                _filled(draw, field.message_type, child, depth + 1)
            continue
        value = _scalar(draw, field)
        if field.is_repeated:
            getattr(message, field.name).append(value)
        else:
            setattr(message, field.name, value)


def _scalar(draw: Any, field: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return draw(st.sampled_from([v.number for v in field.enum_type.values]))
    if field.type in _INT_TYPES:
        low, high = _INT_TYPES[field.type]
        return draw(st.integers(low, high))
    if field.type == FieldDescriptor.TYPE_BOOL:
        return draw(st.booleans())
    if field.type == FieldDescriptor.TYPE_BYTES:
        return draw(st.binary(max_size=8))
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return float(draw(st.integers(-1000, 1000)))
    return draw(st.text(max_size=8))


def _check(descriptor: Descriptor, message: Message, shown: Any) -> None:
    for field in descriptor.fields:
        assert SNAKE.fullmatch(field.name)
        value = shown[field.name]
        items = list(getattr(message, field.name)) if field.is_repeated else None
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name == "google.protobuf.Timestamp":
                continue
            pairs = (
                zip(items, value, strict=True)
                if items is not None
                else [(getattr(message, field.name), value)]
            )
            for child, child_shown in pairs:
                if child_shown is not None:
                    _check(field.message_type, child, child_shown)
            continue
        for original, printed in zip(
            items if items is not None else [getattr(message, field.name)],
            value if items is not None else [value],
            strict=True,
        ):
            if field.type == FieldDescriptor.TYPE_ENUM:
                long_name = field.enum_type.values_by_number[original].name
                assert WORD.fullmatch(printed) and long_name.endswith("_" + printed.upper())
            elif field.type in _INT_TYPES:
                assert type(printed) is int and printed == original
            elif field.type == FieldDescriptor.TYPE_BYTES:
                assert printed == original.hex()
            else:
                assert printed == original


@pytest.mark.parametrize("message_type", PRINTED, ids=lambda t: t.DESCRIPTOR.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_field_of_a_printed_message_keeps_its_value(
    message_type: type[Message], data: st.DataObject
) -> None:
    message = message_type()
    _filled(data.draw, message_type.DESCRIPTOR, message, 0)
    shown = to_json(message)
    json.dumps(shown)  # serialisable as it is
    _check(message_type.DESCRIPTOR, message, shown)
