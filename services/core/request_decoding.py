"""Decoding request messages so that an undecodable one is refused naming the field at fault.

The protobuf runtime refuses a malformed message whole ("Error parsing message with type
'hashex.v1.SubmitMediaRequest'"), while the contract promises INVALID_ARGUMENT naming the
offending item, as in `media[2].case_data.file_path: not valid UTF-8`. `decode_request` parses
normally, so a valid message costs nothing more; only when that fails does it walk the bytes,
guided by the message's descriptor, to the first problem. Paths are those of
`services.core.errors.FieldProblem`: proto field names, `[i]` counting the occurrences of a
repeated field (map entries too), `message[n]` for the n-th message of a request stream.

The walk refuses what the runtime (upb 7) refuses, checked against it in the tests:
- a tag that is truncated, longer than 5 bytes, over 32 bits, or names field 0 (which upb lets
  through only in a message without fields);
- wire types 6 and 7;
- a varint that is truncated or longer than 10 bytes, a 32- or 64-bit value cut short, a length
  longer than 5 bytes or running past the end of its message, a packed list of fixed-size
  values whose length is not a multiple of their size;
- a `string` that is not UTF-8 (proto3);
- messages nested more than MAX_DEPTH deep.
It refuses groups (wire types 3 and 4), which no proto3 message uses, where upb would skip an
unknown one. And it names a known field sent with another wire type than its type's: upb does
not refuse such a field, it keeps it as an unknown one (so its value is silently lost), which is
why this is reported only when the message fails for some reason and the walk meets it first.

Bounded work: the walk reads each byte at most once; a nested message is first handed whole to
the runtime's parser and walked only when that fails, so a bad byte deep in a 1,000-media batch
costs one more C parse per level, not a Python walk of the batch. At most MAX_FIELDS_EXAMINED
fields are looked at; past that the message is refused whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from services.core.errors import FieldProblem, InvalidArgument

M = TypeVar("M", bound=Message)

# upb's default nesting limit: a message may hold messages 100 levels deep below it, not 101.
MAX_DEPTH = 100
# About a tenth of a second of walking (about 1 µs a field), and ten times the most fields at
# one level of any request the contract allows (10,000 signals, 10,000 media ids).
MAX_FIELDS_EXAMINED = 100_000

_VARINT, _FIXED64, _LENGTH_DELIMITED, _START_GROUP, _END_GROUP, _FIXED32 = range(6)
_WIRE_NAMES = {
    _VARINT: "a varint",
    _FIXED64: "a 64-bit value",
    _LENGTH_DELIMITED: "a length-delimited value",
    _FIXED32: "a 32-bit value",
}
_F = FieldDescriptor
_SCALARS: dict[int, tuple[str, int]] = {  # field type -> (its name in .proto, its wire type)
    _F.TYPE_DOUBLE: ("double", _FIXED64),
    _F.TYPE_FLOAT: ("float", _FIXED32),
    _F.TYPE_INT64: ("int64", _VARINT),
    _F.TYPE_UINT64: ("uint64", _VARINT),
    _F.TYPE_INT32: ("int32", _VARINT),
    _F.TYPE_FIXED64: ("fixed64", _FIXED64),
    _F.TYPE_FIXED32: ("fixed32", _FIXED32),
    _F.TYPE_BOOL: ("bool", _VARINT),
    _F.TYPE_STRING: ("string", _LENGTH_DELIMITED),
    _F.TYPE_BYTES: ("bytes", _LENGTH_DELIMITED),
    _F.TYPE_UINT32: ("uint32", _VARINT),
    _F.TYPE_ENUM: ("enum", _VARINT),
    _F.TYPE_SFIXED32: ("sfixed32", _FIXED32),
    _F.TYPE_SFIXED64: ("sfixed64", _FIXED64),
    _F.TYPE_SINT32: ("sint32", _VARINT),
    _F.TYPE_SINT64: ("sint64", _VARINT),
}


def decode_request(message_class: type[M], data: bytes, *, stream_index: int | None = None) -> M:
    """`data` parsed as a `message_class`, or InvalidArgument naming the first problem found,
    its path under `message[stream_index]` when the message is one of a request stream."""
    try:
        return message_class.FromString(data)
    except DecodeError:
        pass
    problem = first_wire_problem(message_class, data) or FieldProblem(
        "", f"not a valid {message_class.DESCRIPTOR.full_name} message"
    )
    error = InvalidArgument(problem)
    if stream_index is not None:
        error = error.within(f"message[{stream_index}]")
    raise error


def request_class_of(deserializer: Callable[[bytes], Any] | None) -> type[Message] | None:
    """The message class whose `FromString` `deserializer` is (what generated stubs put in
    their method handlers), or None for anything else."""
    owner = getattr(deserializer, "__self__", None)
    if (
        isinstance(owner, type)
        and issubclass(owner, Message)
        and getattr(deserializer, "__name__", None) == "FromString"
    ):
        return owner
    return None


def first_wire_problem(message_class: type[Message], data: bytes) -> FieldProblem | None:
    """The first problem the walk finds in `data` read as a `message_class`; None when it finds
    none. Bytes the runtime parses have none, unless they hold groups, known fields sent with
    another wire type, or field number 0 (which upb lets through in a message without fields),
    or more than MAX_FIELDS_EXAMINED fields (refused whole)."""
    # The stubs give a union of the Python and the upb descriptor: one type at run time.
    descriptor = cast(Descriptor, message_class.DESCRIPTOR)
    walk = _Walk(data)
    try:
        walk.message(descriptor, 0, len(data), "", 0)
    except _Problem as found:
        return found.problem
    except _OutOfBudget:
        return FieldProblem(
            "",
            f"not a valid {descriptor.full_name} message (no problem found in its first "
            f"{MAX_FIELDS_EXAMINED} fields, and no more are examined)",
        )
    return None


class _Problem(Exception):
    def __init__(self, field: str, description: str) -> None:
        super().__init__(field, description)
        self.problem = FieldProblem(field, description)


class _OutOfBudget(Exception):
    pass


class _Malformed(Exception):
    """A problem of the value at hand, said without its place (the caller knows it)."""


@dataclass(frozen=True, slots=True)
class _Field:
    """What the walk needs of one field, read once per message type."""

    name: str
    repeated: bool
    wire_type: int  # that of its type; -1 for a proto2 group field
    wire_types: frozenset[int]  # those it may arrive with: a repeated scalar also packed
    type_name: str  # in .proto terms: `uint32`, `hashex.v1.Signal`
    kind: str  # `message`, `string`, `bytes` or `packed list`
    child: Descriptor | None


_TRUNCATED, _TOO_LONG = -1, -2


class _Walk:
    """One walk over one request message: positions index `data`, the whole message."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.view = memoryview(data)
        self.fields_left = MAX_FIELDS_EXAMINED

    def message(self, descriptor: Descriptor, start: int, end: int, path: str, depth: int) -> None:
        fields = _fields_of(descriptor)
        occurrences: dict[int, int] = {}  # per repeated field: the elements seen so far
        data, position = self.data, start
        while position < end:
            self._spend()
            tag_at, tag = position, data[position]
            if tag < 0x80:
                position += 1
            else:
                tag, position = _varint(data, position, end, 5)
            if position < 0 or tag > 0xFFFF_FFFF or tag < 8:
                raise _Problem(path, _tag_problem(tag_at, position, tag))
            number, wire_type = tag >> 3, tag & 7
            field = fields.get(number)
            index = occurrences.get(number, 0)
            try:
                if field is not None and wire_type not in field.wire_types:
                    _refuse_wire_type(field, wire_type)
                if wire_type != _LENGTH_DELIMITED:
                    position = _skip_scalar(data, position, end, wire_type)
                    elements = 1
                else:
                    body, position = _length_delimited(data, position, end, field)
                    elements = self._body(field, body, position, path, index, depth) if field else 1
            except _Malformed as malformed:
                if field is None:
                    text = f"field {number} (not in {descriptor.full_name}): {malformed}"
                    raise _Problem(path, text) from None
                raise _Problem(_path(path, field, index), str(malformed)) from None
            occurrences[number] = index + elements

    def _body(self, field: _Field, start: int, end: int, path: str, index: int, depth: int) -> int:
        """Check the body of a length-delimited `field`; the number of elements it holds."""
        if field.child is not None:
            if depth + 1 > MAX_DEPTH:
                raise _Problem(
                    _path(path, field, index), f"nested more than {MAX_DEPTH} messages deep"
                )
            # The runtime's parser judges a part alone only where it cannot nest too deep.
            alone = depth + 1 + _depth_below(field.child) <= MAX_DEPTH
            if not alone or not _parses(field.child, self.view[start:end]):
                self.message(field.child, start, end, _path(path, field, index), depth + 1)
            return 1
        if field.kind == "string":
            try:
                str(self.view[start:end], "utf-8")
            except UnicodeDecodeError:
                raise _Problem(_path(path, field, index), "not valid UTF-8") from None
            return 1
        if field.kind == "bytes":
            return 1
        return self._packed(field, start, end, path, index)

    def _packed(self, field: _Field, start: int, end: int, path: str, index: int) -> int:
        """Check a packed list of scalars; the number of values in it."""
        if field.wire_type != _VARINT:
            size = 8 if field.wire_type == _FIXED64 else 4
            if (end - start) % size:
                raise _Problem(
                    _path(path, field, index),
                    f"packed {size * 8}-bit values: {end - start} bytes is not a multiple "
                    f"of {size}",
                )
            return (end - start) // size
        count, position = 0, start
        while position < end:
            self._spend()
            _, position = _varint(self.data, position, end, 10)
            if position < 0:
                where = _path(path, field, index + count)
                raise _Problem(where, _varint_problem(position, "varint", 10))
            count += 1
        return count

    def _spend(self) -> None:
        self.fields_left -= 1
        if self.fields_left < 0:
            raise _OutOfBudget


def _varint(data: bytes, position: int, end: int, max_bytes: int) -> tuple[int, int]:
    """The varint at `position` and the position after it; that position is _TRUNCATED or
    _TOO_LONG when the varint is."""
    value, shift = 0, 0
    for at in range(position, min(end, position + max_bytes)):
        byte = data[at]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at + 1
        shift += 7
    return value, _TRUNCATED if position + max_bytes > end else _TOO_LONG


def _varint_problem(code: int, what: str, max_bytes: int) -> str:
    return f"truncated {what}" if code == _TRUNCATED else f"{what} longer than {max_bytes} bytes"


def _tag_problem(tag_at: int, position: int, tag: int) -> str:
    what = f"field tag at byte {tag_at}"
    if position < 0:
        return _varint_problem(position, what, 5)
    if tag > 0xFFFF_FFFF:
        return f"{what} is over 32 bits"
    return f"{what} names field number 0"


def _skip_scalar(data: bytes, position: int, end: int, wire_type: int) -> int:
    """The position after a value of `wire_type`, which is not length-delimited."""
    if wire_type == _VARINT:
        _, after = _varint(data, position, end, 10)
        if after < 0:
            raise _Malformed(_varint_problem(after, "varint", 10))
        return after
    if wire_type in (_FIXED64, _FIXED32):
        size = 8 if wire_type == _FIXED64 else 4
        if end - position < size:
            raise _Malformed(
                f"truncated {size * 8}-bit value: needs {size} bytes, {end - position} remain"
            )
        return position + size
    if wire_type in (_START_GROUP, _END_GROUP):
        raise _Malformed("uses groups (wire types 3 and 4), which proto3 messages never use")
    raise _Malformed(f"invalid wire type {wire_type}")


def _length_delimited(
    data: bytes, position: int, end: int, field: _Field | None
) -> tuple[int, int]:
    """Where the body of the length-delimited value at `position` starts and ends."""
    length = data[position] if position < end else 0x80
    if length < 0x80:
        body = position + 1
    else:
        length, body = _varint(data, position, end, 5)
        if body < 0:
            raise _Malformed(_varint_problem(body, "length", 5))
    if length > end - body:
        kind = "value" if field is None else field.kind
        raise _Malformed(f"truncated {kind}: declares {length} bytes, {end - body} remain")
    return body, body + length


def _refuse_wire_type(field: _Field, wire_type: int) -> None:
    """Name a known field sent with a wire type that is valid but not its type's; invalid wire
    types and groups are said as such afterwards."""
    if wire_type in _WIRE_NAMES and field.wire_type in _WIRE_NAMES:
        raise _Malformed(
            f"sent as {_WIRE_NAMES[wire_type]}, but a {field.type_name} field is sent as "
            f"{_WIRE_NAMES[field.wire_type]}"
        )


def _path(path: str, field: _Field, index: int) -> str:
    name = f"{path}.{field.name}" if path else field.name
    return f"{name}[{index}]" if field.repeated else name


_field_tables: dict[str, dict[int, _Field]] = {}


def _fields_of(descriptor: Descriptor) -> dict[int, _Field]:
    table = _field_tables.get(descriptor.full_name)
    if table is None:
        table = {f.number: _field(f) for f in descriptor.fields}
        _field_tables[descriptor.full_name] = table
    return table


def _field(field: FieldDescriptor) -> _Field:
    child = field.message_type
    if child is not None:
        name, wire_type, kind = child.full_name, _LENGTH_DELIMITED, "message"
        if field.type == _F.TYPE_GROUP:
            wire_type = -1
    else:
        name, wire_type = _SCALARS[field.type]
        if field.enum_type is not None:
            name = field.enum_type.full_name
        kind = name if field.type in (_F.TYPE_STRING, _F.TYPE_BYTES) else "packed list"
    packable = field.is_repeated and kind == "packed list"
    return _Field(
        name=field.name,
        repeated=field.is_repeated,
        wire_type=wire_type,
        wire_types=frozenset({wire_type, _LENGTH_DELIMITED} if packable else {wire_type}),
        type_name=name,
        kind=kind,
        child=child,
    )


def _parses(descriptor: Descriptor, body: memoryview) -> bool:
    try:
        GetMessageClass(descriptor).FromString(body)  # type: ignore[arg-type]
    except DecodeError:
        return False
    return True


_depths_below: dict[str, float] = {}


def _depth_below(descriptor: Descriptor, visiting: frozenset[str] = frozenset()) -> float:
    """How many levels of messages a `descriptor` message can hold below itself: infinite for
    a recursive type (google.protobuf.Struct), whose parts the runtime's parser cannot judge
    alone, since it starts counting depth afresh."""
    name = descriptor.full_name
    if name in _depths_below:
        return _depths_below[name]
    if name in visiting:
        return float("inf")  # every type on a cycle is itself recursive, so this is exact
    children = [f.message_type for f in descriptor.fields if f.message_type is not None]
    depth = max((1 + _depth_below(c, visiting | {name}) for c in children), default=0.0)
    _depths_below[name] = depth
    return depth
