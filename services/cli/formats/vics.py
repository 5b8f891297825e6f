"""The Project VIC VICS JSON reader (data models 1.x and 2.0, Media and Cases shapes), streaming:
a file of millions of Media is read with flat memory, one record at a time, each with its place
in the file.

A document is one JSON object: its context key (`odata.metadata` in 1.x, `@odata.context` in
2.0) names the version, the profile and the shape, and its `value` array holds the Media (or
Cases, each with a `Media` array). JSON members come in any order, so `value` may precede the
context: then the file is walked once to find the context, stepping over `value` without keeping
it, and walked again to deliver the records (which needs a file that can be read twice, not a
pipe).

Record numbers count every Media met, across Cases, good or bad. What each Media means is
`vics_media`'s business; problems of the document itself (not VICS, an unknown version, broken
JSON) raise `FormatError` where they are found, and the records yielded before it stand.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from services.cli.formats.json_stream import (
    CHUNK_BYTES,
    MAX_VALUE_CHARS,
    JsonStream,
    JsonStreamError,
    Location,
)
from services.cli.formats.records import FormatError, Opened, Position, ReadRecord, UnusedCounts
from services.cli.formats.vics_context import (
    CONTEXT_KEYS,
    KEY_1X,
    KEY_2X,
    Shape,
    VicsContext,
    context_from,
)
from services.cli.formats.vics_media import CategoryTable, media_record
from services.registry.model import CategoryScheme

# One record may be at most this long (characters of its JSON text).
MAX_RECORD_CHARS = MAX_VALUE_CHARS


class VicsDocument:
    """An open VICS file whose context has been read: its facts, then its records (once).

    Root members other than the context and `value` are listed in `unused_root_fields`, and the
    members of Cases other than `Media` counted in `unused_case_fields` (as `Case.<name>`, once
    per case); both are complete once `records()` is exhausted.
    """

    def __init__(self, raw: BinaryIO, stream: JsonStream, root: Iterator[str], head: _Head) -> None:
        self._raw = raw
        self._stream = stream
        self._root = root
        self.context = head.context
        self._unused_root = list(head.unused_root)
        self.unused_case_fields = UnusedCounts()
        self._categories = CategoryTable(head.context.scheme)
        self._met = 0
        self._started = False

    @property
    def version(self) -> str:
        return self.context.version

    @property
    def profile(self) -> str | None:
        return self.context.profile

    @property
    def shape(self) -> Shape:
        return self.context.shape

    @property
    def scheme(self) -> CategoryScheme:
        return self.context.scheme

    @property
    def unused_root_fields(self) -> tuple[str, ...]:
        return tuple(self._unused_root)

    def records(self) -> Iterator[ReadRecord]:
        """Every Media of the document in file order, then a check of the rest of it."""
        if self._started:
            raise RuntimeError("the records of a VICS document can be read once")
        self._started = True
        try:
            if self.context.shape == "media":
                yield from self._media_array("value")
            else:
                yield from self._cases()
            for key in self._root:
                if key == "value":
                    raise _problem(self._stream.location(), 'a second "value" member')
                self._stream.skip_value()
                if key not in CONTEXT_KEYS:
                    self._unused_root.append(key)
            self._stream.finish()
        except JsonStreamError as error:
            record = self._met + 1 if error.inside_element else 0
            raise FormatError(
                Position(record, error.location.line, error.location.column), error.reason
            ) from None

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> VicsDocument:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _media_array(self, where: str) -> Iterator[ReadRecord]:
        stream = self._stream
        kind = stream.peek_kind()
        if kind != "array":
            raise _problem(
                stream.location(), f'"{where}" must be an array, got {_with_article(kind)}'
            )
        categories = self._categories
        met = self._met
        for value, line, column in stream.values():
            met += 1
            self._met = met
            yield media_record(value, Position(met, line, column), categories)

    def _cases(self) -> Iterator[ReadRecord]:
        stream = self._stream
        kind = stream.peek_kind()
        if kind != "array":
            raise _problem(
                stream.location(), f'"value" must be an array, got {_with_article(kind)}'
            )
        for number, where in enumerate(stream.items(), start=1):
            kind = stream.peek_kind()
            if kind != "object":
                raise _problem(where, f"Case {number} must be an object, got {_with_article(kind)}")
            for key in stream.members():
                if key != "Media":
                    stream.skip_value()
                    self.unused_case_fields.add((f"Case.{key}",))
                elif stream.peek_kind() == "null":
                    stream.skip_value()
                else:
                    yield from self._media_array(f"Media of Case {number}")


@dataclass(frozen=True)
class _Head:
    """What the walk up to `value` found: the context and the other root members met."""

    context: VicsContext
    unused_root: tuple[str, ...]


def open_vics(
    path: Path,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    max_record_chars: int = MAX_RECORD_CHARS,
    opened: Opened = None,
) -> VicsDocument:
    """The VICS document at `path`, its context read, positioned on its first record.
    (`chunk_bytes` and `max_record_chars` exist for tests that cross chunk edges and limits.)"""
    raw = path.open("rb")
    if opened is not None:
        opened(raw)
    try:
        stream = JsonStream(raw, chunk_bytes=chunk_bytes, max_value_chars=max_record_chars)
        found = _walk_to_value(stream, None)
        if isinstance(found, VicsContext):
            # `value` came before the context: start again, now knowing what it holds.
            if not raw.seekable():
                raise FormatError(
                    Position(0, 1, 1),
                    '"value" comes before the context key: the file must be read twice,'
                    " which a pipe cannot be",
                )
            raw.seek(0)
            stream = JsonStream(raw, chunk_bytes=chunk_bytes, max_value_chars=max_record_chars)
            found = _walk_to_value(stream, found)
            assert not isinstance(found, VicsContext)  # `value` is met, the context known
        root, head = found
        return VicsDocument(raw, stream, root, head)
    except JsonStreamError as error:
        raw.close()
        where = error.location
        raise FormatError(Position(0, where.line, where.column), error.reason) from None
    except BaseException:
        raw.close()
        raise


def read_vics(path: Path, *, opened: Opened = None) -> Iterator[ReadRecord]:
    """Every Media of the VICS file at `path`, as `open_vics(path).records()`."""
    with open_vics(path, opened=opened) as document:
        yield from document.records()


def _walk_to_value(
    stream: JsonStream, known: VicsContext | None
) -> tuple[Iterator[str], _Head] | VicsContext:
    """Walk the root members until the cursor is on `value` with the context known: the rest
    of the root's members and the head. When `value` comes first (and `known` is None), step
    over it and return the context found after it instead."""
    start = stream.location()
    kind = stream.peek_kind()
    if kind != "object":
        what = (
            "the file is empty"
            if kind == "end"
            else f"the document is {_with_article(kind)}, not an object"
        )
        raise FormatError(Position(0, start.line, start.column), f"not a VICS file: {what}")
    root = stream.members()
    context = known
    context_key: str | None = None
    value_seen = False
    unused: list[str] = []
    for key in root:
        where = stream.location()
        if key in CONTEXT_KEYS:
            if context_key is not None:
                raise _problem(where, f'a second context key "{key}" (after "{context_key}")')
            context_key = key
            try:
                stated = context_from(key, stream.read_value())
            except ValueError as error:
                raise _problem(where, str(error)) from None
            context = context or stated
        elif key == "value":
            if context is not None:
                return root, _Head(context, tuple(unused))
            if value_seen:
                raise _problem(where, 'a second "value" member')
            if stream.peek_kind() != "array":
                raise _problem(
                    where, f'"value" must be an array, got {_with_article(stream.peek_kind())}'
                )
            stream.skip_value()
            value_seen = True
        else:
            stream.skip_value()
            unused.append(key)
    stream.finish()
    if context is None:
        raise _problem(
            start,
            f'not a VICS file: the root object has no "{KEY_2X}" (2.0) or "{KEY_1X}" (1.x) key',
        )
    if not value_seen:
        raise _problem(start, 'the root object has no "value" array of records')
    return context


def _problem(where: Location, reason: str) -> FormatError:
    return FormatError(Position(0, where.line, where.column), reason)


def _with_article(kind: str) -> str:
    """ "an object", "a string", "null" (a JSON type named in a message)."""
    special = {"null": "null", "end": "nothing", "invalid": "invalid JSON"}
    if kind in special:
        return special[kind]
    return ("an " if kind[0] in "aeiou" else "a ") + kind
