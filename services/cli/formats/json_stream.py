"""A JSON document read in pieces, for files far larger than memory: walk the members of an object
and the elements of an array one at a time, each with the line and column where it starts.

Only the structure the caller walks through (`members`, `items`, `values`) is parsed here in
Python; every value the caller takes whole is decoded by the C scanner of the standard library
(`JSONDecoder.raw_decode`) straight from a text buffer, which is what makes a million small
records a second possible. The buffer holds about one chunk (1 MiB of the file) plus the value
being decoded; a value that runs past the end of the buffer is decoded again once more text is
in, and one longer than `max_value_chars` is refused, so memory stays flat whatever the file size.

Whether a failed decode means "malformed" or "the rest is not read yet" is decided by the file:
only once it is exhausted (or the failure lies well before the end of the buffer) is it an error.
Lines are counted with `str.count` between the places a location is asked for, never character
by character. Columns count characters (code points), both 1-based. A UTF-8 byte order mark is
skipped; bytes that are not UTF-8 are an error located at the first of them, raised only when
the walk reaches it (values before it are still delivered).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

CHUNK_BYTES = 1 << 20
MAX_VALUE_CHARS = 16 << 20
_BLANKS = re.compile(r"[ \t\n\r]*")
_BLANK_CHARS = " \t\n\r"
# A failed decode this close to the end of the buffer may be a value cut by the buffer's end
# (the longest such cut, `\u12` or `fals`, is under 8 characters from it).
_CUT_MARGIN = 8
_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
_CUT_NUMBER = re.compile(r"[.eE][+-]?")
_NUMBER_CHARS = re.compile(r"[0-9.eE+-]*")
_KINDS = {"{": "object", "[": "array", '"': "string", "t": "boolean", "f": "boolean", "n": "null"}


@dataclass(frozen=True)
class Location:
    """Line and column (1-based, in characters) of a place in the text."""

    line: int
    column: int


class JsonStreamError(Exception):
    """The text is not the JSON expected at `location`. `inside_element` is true when the
    problem lies inside an element `values()` was decoding (its caller's record)."""

    def __init__(self, location: Location, reason: str, *, inside_element: bool = False) -> None:
        super().__init__(f"line {location.line}, column {location.column}: {reason}")
        self.location = location
        self.reason = reason
        self.inside_element = inside_element

    def in_element(self) -> JsonStreamError:
        return JsonStreamError(self.location, self.reason, inside_element=True)


class JsonStream:
    """One pass over the JSON text of `raw` (a binary file, read in `chunk_bytes` pieces).

    The walk is driven by the caller: at an object, `members()` yields each key and leaves the
    cursor on its value, which the caller must consume (`read_value`, `skip_value`, or walk into
    it) before asking for the next key; `items()` does the same for the elements of an array, and
    `values()` decodes each element itself. `finish()` checks nothing but blanks follow.
    """

    def __init__(
        self,
        raw: BinaryIO,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        max_value_chars: int = MAX_VALUE_CHARS,
    ) -> None:
        self._raw = raw
        self._chunk_bytes = chunk_bytes
        self._max_value_chars = max_value_chars
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._json = json.JSONDecoder(strict=False)
        self._buf = ""
        self._pos = 0
        self._exhausted = False
        # Set when the file holds bytes that are not UTF-8: raised once the walk reaches them.
        self._bad_bytes: str | None = None
        # Line counting: `_line` is the line of buffer index `_mark`, which starts at index
        # `_line_start` (negative once the buffer has been shifted past it).
        self._mark = 0
        self._line = 1
        self._line_start = 0

    # The walk.

    def peek_kind(self) -> str:
        """The JSON type of the next value ("object", "array", "string", "number", "boolean",
        "null"), or "end" when the text ends."""
        char = self._next_char()
        if not char:
            return "end"
        return _KINDS.get(char, "number" if char in "-0123456789" else "invalid")

    def location(self) -> Location:
        """Where the next value (or token) starts."""
        self._next_char()
        return self._location_of(self._pos)

    def members(self) -> Iterator[str]:
        """The keys of the object at the cursor, in file order; after each the cursor is on its
        value, which the caller consumes before asking for the next key."""
        self._open("{", "an object")
        char = self._next_char()
        if char == "}":
            self._pos += 1
            return
        while True:
            if char != '"':
                raise self._unexpected("a key in double quotes")
            key = self._decode()
            if self._next_char() != ":":
                raise self._unexpected("':' after the key")
            self._pos += 1
            if not self._next_char():
                raise self._truncated()
            yield str(key)
            char = self._next_char()
            if char == ",":
                self._pos += 1
                char = self._next_char()
            elif char == "}":
                self._pos += 1
                return
            else:
                raise self._unexpected("',' or '}' after a member")

    def items(self) -> Iterator[Location]:
        """The location of each element of the array at the cursor; after each the cursor is on
        the element, which the caller consumes before asking for the next."""
        self._open("[", "an array")
        char = self._next_char()
        if char == "]":
            self._pos += 1
            return
        while True:
            if not char:
                raise self._truncated()
            yield self._location_of(self._pos)
            char = self._next_char()
            if char == ",":
                self._pos += 1
                char = self._next_char()
            elif char == "]":
                self._pos += 1
                return
            else:
                raise self._unexpected("',' or ']' after an element")

    def values(self) -> Iterator[tuple[object, int, int]]:
        """Each element of the array at the cursor, decoded whole, with its line and column.

        The hot loop of a reader: an element that fits in the buffer, and the separator after
        it, are handled here inline; anything else (a refill, an error) takes the general path.
        """
        self._open("[", "an array")
        char = self._next_char()
        if char == "]":
            self._pos += 1
            return
        raw_decode = self._json.raw_decode
        blanks = _BLANKS.match
        limit = self._max_value_chars
        while True:
            if not char:
                raise self._truncated()
            buf, pos = self._buf, self._pos
            if newlines := buf.count("\n", self._mark, pos):
                self._line += newlines
                self._line_start = buf.rfind("\n", self._mark, pos) + 1
            self._mark = pos
            line, column = self._line, pos - self._line_start + 1
            try:
                value, end = raw_decode(buf, pos)
            except (json.JSONDecodeError, RecursionError):
                end = len(buf)
            if end >= len(buf) or value.__class__ is not dict or end - pos > limit:
                try:
                    value = self._decode()
                except JsonStreamError as error:
                    raise error.in_element() from None
                buf, end = self._buf, self._pos
            # The separator and the blanks after it, as long as the buffer holds them.
            if end + 1 < len(buf) and buf[end] == ",":
                end += 1
                if buf[end] in _BLANK_CHARS:
                    found = blanks(buf, end)
                    end = found.end() if found else end
                self._pos = end
                yield value, line, column
                char = buf[end] if end < len(buf) else self._next_char()
                continue
            self._pos = end
            yield value, line, column
            char = self._next_char()
            if char == ",":
                self._pos += 1
                char = self._next_char()
            elif char == "]":
                self._pos += 1
                return
            else:
                raise self._unexpected("',' or ']' after an element")

    def read_value(self) -> object:
        """The value at the cursor, decoded whole (at most `max_value_chars` long)."""
        if not self._next_char():
            raise self._truncated()
        return self._decode()

    def skip_value(self, depth: int = 0) -> None:
        """Step over the value at the cursor without holding it: a container that does not fit
        in the buffer is walked element by element (a skipped array may hold millions)."""
        char = self._next_char()
        if char in ("{", "[") and depth < 32:
            try:
                _, end = self._json.raw_decode(self._buf, self._pos)
            except (json.JSONDecodeError, RecursionError):
                end = len(self._buf)
            if end < len(self._buf):
                self._pos = end
            elif char == "{":
                for _ in self.members():
                    self.skip_value(depth + 1)
            else:
                for _ in self.items():
                    self.skip_value(depth + 1)
            return
        self.read_value()

    def finish(self) -> None:
        """Check that only blanks follow the document."""
        if self._next_char():
            raise self._error(self._pos, "unexpected text after the end of the document")

    # Decoding.

    def _decode(self) -> object:
        """Decode the value starting at the cursor (not a blank), refilling the buffer while the
        value may run past its end."""
        start = self._pos
        while True:
            try:
                value, end = self._json.raw_decode(self._buf, start)
            except json.JSONDecodeError as error:
                self._check_failure(error.pos, error.msg)
            except RecursionError:
                raise self._error(start, "values nested too deeply") from None
            else:
                if end - start > self._max_value_chars:
                    raise self._too_long(start)
                if self._complete(value, end) or self._at_end():
                    self._pos = end
                    return value
            if len(self._buf) - start > self._max_value_chars:
                raise self._too_long(start)
            start = self._fill(start)

    def _too_long(self, start: int) -> JsonStreamError:
        limit = self._max_value_chars
        size = (
            f"{limit >> 20} MiB" if limit >> 20 and not limit % (1 << 20) else f"{limit} characters"
        )
        return self._error(start, f"a single value is longer than {size}")

    def _complete(self, value: object, end: int) -> bool:
        """Whether a value decoded up to `end` is whole: a number (`12` of `12.5e3`) may go on
        in the next chunk when nothing but what a number may hold follows it in the buffer."""
        buf = self._buf
        if isinstance(value, int | float) and not isinstance(value, bool):
            found = _NUMBER_CHARS.match(buf, end)
            return (found.end() if found else end) < len(buf)
        return end < len(buf)

    def _check_failure(self, at: int, message: str) -> None:
        """Raise unless the decode that failed at `at` may succeed with more text."""
        if not self._at_end():
            if message.startswith("Unterminated string") or at >= len(self._buf) - _CUT_MARGIN:
                return  # the value may go on in the next chunk
            raise self._error(at, f"invalid JSON: {message}")
        if _cut_short(self._buf[at:], message):
            raise self._truncated()
        raise self._error(at, f"invalid JSON: {message}")

    # The buffer.

    def _next_char(self) -> str:
        """The next character that is not a blank (the cursor moved onto it), "" at the end."""
        while True:
            pos = self._pos
            buf = self._buf
            if pos < len(buf) and buf[pos] not in _BLANK_CHARS:
                return buf[pos]
            match = _BLANKS.match(buf, pos)
            pos = match.end() if match else pos
            self._pos = pos
            if pos < len(buf):
                return buf[pos]
            if self._at_end():
                return ""
            self._fill(pos)

    def _at_end(self) -> bool:
        """True when no more text will come (raising if what comes next is not UTF-8)."""
        if self._bad_bytes is not None:
            raise self._error(len(self._buf), self._bad_bytes)
        return self._exhausted

    def _fill(self, keep_from: int) -> int:
        """Read the next chunk, dropping the text before `keep_from`; its new index."""
        self._advance_mark(keep_from)
        self._buf = self._buf[keep_from:]
        self._pos -= keep_from
        self._mark -= keep_from
        self._line_start -= keep_from
        chunk = self._raw.read(self._chunk_bytes)
        final = not chunk
        try:
            self._buf += self._decoder.decode(chunk, final)
        except UnicodeDecodeError as error:
            self._buf += bytes(error.object[: error.start]).decode("utf-8")
            bad = bytes(error.object[error.start : error.start + 1])
            self._bad_bytes = f"the file is not UTF-8 text (byte 0x{bad.hex()})"
        self._exhausted = final
        return 0

    # Locations and errors.

    def _advance_mark(self, index: int) -> None:
        buf = self._buf
        newlines = buf.count("\n", self._mark, index)
        if newlines:
            self._line += newlines
            self._line_start = buf.rfind("\n", self._mark, index) + 1
        self._mark = index

    def _location_of(self, index: int) -> Location:
        """The location of buffer index `index` (never before one asked for earlier)."""
        self._advance_mark(index)
        return Location(self._line, index - self._line_start + 1)

    def _open(self, char: str, what: str) -> None:
        if self._next_char() != char:
            raise self._unexpected(what)
        self._pos += 1

    def _unexpected(self, what: str) -> JsonStreamError:
        if not self._next_char():
            return self._truncated()
        return self._error(self._pos, f"invalid JSON: expected {what}")

    def _truncated(self) -> JsonStreamError:
        return self._error(len(self._buf), "the file ends inside the JSON (truncated?)")

    def _error(self, index: int, reason: str) -> JsonStreamError:
        return JsonStreamError(self._location_of(max(index, self._mark)), reason)


def _cut_short(rest: str, message: str) -> bool:
    """Whether a decode that failed on `rest` (the text from the failure to the end of the file)
    failed because the text stops: an open string, a literal, number or escape cut short."""
    if message.startswith("Unterminated string") or not rest.strip(_BLANK_CHARS):
        return True
    if message.startswith("Invalid \\") and len(rest) < 6:
        return True
    return any(word.startswith(rest) for word in _LITERALS) or bool(_CUT_NUMBER.fullmatch(rest))
