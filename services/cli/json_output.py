"""The one JSON style of every `hashex` command that prints JSON.

Keys are the proto field names (snake_case); enum values are short lowercase words (the enum's
own prefix dropped: IDENTIFICATION_STATUS_IDENTIFIED is "identified"); 64-bit integers are JSON
numbers, not strings; every field is present, zero counts and empty lists included; a field
with presence (a message or `optional`) that is not set is null; bytes are lowercase hex (hashes
and digests are hex everywhere in hashex); a Timestamp is RFC 3339 UTC ("2026-11-03T10:00:00Z").

Protobuf's own JSON mapping differs on each of these points (camelCase, long enum names, int64
as strings, defaults dropped), which is why commands do not print it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC
from typing import Any, TextIO

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def enum_word(enum: EnumDescriptor, number: int) -> str:
    """`number` of `enum` as its short lowercase word; a number this build does not know (a newer
    peer's value) as the number itself in text, so nothing is hidden."""
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    prefix = _WORD_BOUNDARY.sub("_", enum.name).upper() + "_"
    name = value.name.removeprefix(prefix)
    return name.lower()


def to_json_value(message: Message) -> dict[str, Any] | str:
    """`message` as a JSON-ready value (a dict; a Timestamp is its RFC 3339 text)."""
    if isinstance(message, Timestamp):
        return message.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    out: dict[str, Any] = {}
    field: Any
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {str(k): _single(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_single(field, v) for v in value]
        elif field.has_presence and not message.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = _single(field, value)
    return out


def to_json(message: Message) -> dict[str, Any]:
    """A message (not a Timestamp) as a JSON object."""
    value = to_json_value(message)
    assert isinstance(value, dict), "a bare Timestamp is not an object"
    return value


def write_json(message: Message, out: TextIO, *, indent: int | None = 2) -> None:
    """One message as a JSON document and a newline."""
    out.write(json.dumps(to_json(message), indent=indent, ensure_ascii=False) + "\n")


def _single(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_json_value(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return enum_word(field.enum_type, value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return bytes(value).hex()
    return value


def _is_map(field: Any) -> bool:
    return bool(
        field.is_repeated
        and field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
    )
