"""One VICS Media object (as decoded JSON) turned into an `ImportedMedia`, or into a `Rejected`
naming every field that is wrong.

What the fields mean, for both 1.x and 2.0:
- hashes: `MD5`, `SHA1`, `SHA256`, `PDQ` (hex, any case), `PhotoDNA` (base64 of 144 bytes, or
  288 hex characters) and `AlternativeHashes` (`{"HashName", "HashValue"}` pairs, the name
  matched to an algorithm in any case); null or "" is "not given"; the same value twice is one
  signal.
- `Category`: a number or numeric string of the document's scheme; null or missing is "not
  stated". `IsPrecategorized` is checked but never overrides it.
- flags: JSON booleans or "true"/"false" in any case, never judged by truthiness ("false" is
  false); only those stated true are set.
- `Series`: one name; `MediaFiles`: each file's full path (case data, kept off every log line).
- every other field (`MediaID`, `Tags`, `MediaSize`, ...) is counted as unused, never an error.
"""

from __future__ import annotations

import binascii
import re

from services.cli.formats.records import ImportedMedia, Position, ReadRecord, Rejected
from services.core.algorithms import BY_NAME, Algorithm, AlgorithmSpec, SignalValue, make_signal
from services.core.errors import InvalidArgument
from services.registry.model import CATEGORY_CODES, Category, CategoryScheme, MediaFlags

_PHOTODNA = BY_NAME["photodna"]
_PHOTODNA_HEX_CHARS = _PHOTODNA.hex_length
# Field, algorithm and its lengths in hex characters and bytes (looked up once, not per record).
_HEX_FIELDS: tuple[tuple[str, AlgorithmSpec, Algorithm, int, int], ...] = tuple(
    (name, spec, spec.algorithm, spec.hex_length, spec.byte_length)
    for name, spec in (
        ("MD5", BY_NAME["md5"]),
        ("SHA1", BY_NAME["sha1"]),
        ("SHA256", BY_NAME["sha256"]),
        ("PDQ", BY_NAME["pdq"]),
    )
)
_FLAG_FIELDS = ("VictimIdentified", "OffenderIdentified", "IsDistributed")
# Fields whose content an ImportedMedia keeps; any other is reported unused.
_KEPT = frozenset(
    {field[0] for field in _HEX_FIELDS}
    | set(_FLAG_FIELDS)
    | {"PhotoDNA", "Category", "Series", "AlternativeHashes", "MediaFiles"}
)
_HEX = re.compile(r"[0-9a-fA-F]*")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_FLAGS = {
    (victim, offender, distributed): MediaFlags(victim, offender, distributed)
    for victim in (False, True)
    for offender in (False, True)
    for distributed in (False, True)
}
_QUOTE_LIMIT = 16


class CategoryTable:
    """The categories of one scheme by their VICS forms (1 and "1"), built once per document."""

    def __init__(self, scheme: CategoryScheme) -> None:
        self.scheme = scheme
        self._by_form: dict[int | str, Category] = {}
        for code in CATEGORY_CODES[scheme]:
            category = Category(scheme, code)
            self._by_form[code] = category
            if code.isdigit():
                self._by_form[int(code)] = category

    def category(self, raw: object, problems: list[str]) -> Category | None:
        """The category `raw` names, None when not stated; a problem when neither."""
        if raw.__class__ is int or raw.__class__ is str:
            found = self._by_form.get(raw)
            if found is not None:
                return found
        if raw is None:
            return None
        code: str | None = None
        if isinstance(raw, str) and _INTEGER.fullmatch(raw.strip()):
            code = str(int(raw.strip()))
        elif isinstance(raw, int) and not isinstance(raw, bool):
            code = str(raw)
        elif isinstance(raw, float) and raw.is_integer():
            code = str(int(raw))
        if code is None:
            problems.append(f"Category: must be a whole number, got {_shown(raw)}")
            return None
        try:
            return Category.parse(self.scheme, code)
        except InvalidArgument as error:
            problems.append(f"Category: {error}")
            return None


def media_record(obj: object, position: Position, categories: CategoryTable) -> ReadRecord:
    """The record that Media object `obj`, met at `position`, stands for."""
    if not isinstance(obj, dict):
        return Rejected(position, f"a Media must be a JSON object, got {_kind(obj)}")
    problems: list[str] = []
    signals = _top_level_signals(obj, problems)
    unused = [key for key in obj if key not in _KEPT]
    if "AlternativeHashes" in obj:
        _alternative_signals(obj["AlternativeHashes"], signals, unused, problems)
    category = categories.category(obj.get("Category"), problems)
    flags = _flags(obj, problems)
    series = _series(obj.get("Series"), problems)
    paths = _file_paths(obj["MediaFiles"], unused, problems) if "MediaFiles" in obj else ()
    if problems:
        return Rejected(position, "; ".join(problems))
    if not signals:
        return Rejected(position, "no hash: none of MD5, SHA1, SHA256, PDQ, PhotoDNA is given")
    # Positional (fields in declaration order): keywords cost a tenth of the fast path.
    return ImportedMedia(
        position, tuple(signals), None, category, flags, series, paths, "", tuple(unused)
    )


def _top_level_signals(obj: dict[str, object], problems: list[str]) -> list[SignalValue]:
    """The hashes of the fields named for an algorithm: one each, so none repeats another."""
    signals: list[SignalValue] = []
    for name, spec, algorithm, hex_chars, byte_length in _HEX_FIELDS:
        raw = obj.get(name)
        if raw is None or raw == "":
            continue
        # Fast path for the usual well-formed value; anything else gets the plug-in's message.
        # (`bytes.fromhex` skips blanks between pairs, which the length check then refuses.)
        if isinstance(raw, str) and len(raw) == hex_chars:
            try:
                value = bytes.fromhex(raw)
            except ValueError:
                value = b""
            if len(value) == byte_length:
                signals.append(SignalValue(algorithm, value))
                continue
        signal = _hex_signal(name, spec, raw, problems)
        if signal is not None:
            signals.append(signal)
    raw = obj.get("PhotoDNA")
    if raw is not None and raw != "":
        signal = _photodna_signal("PhotoDNA", raw, problems)
        if signal is not None:
            signals.append(signal)
    return signals


def _flags(obj: dict[str, object], problems: list[str]) -> MediaFlags:
    """The flags stated true; IsPrecategorized is checked the same way, then not kept."""
    victim = obj.get("VictimIdentified")
    offender = obj.get("OffenderIdentified")
    distributed = obj.get("IsDistributed")
    if not (
        isinstance(victim, bool) and isinstance(offender, bool) and isinstance(distributed, bool)
    ):
        victim = _flag("VictimIdentified", victim, problems)
        offender = _flag("OffenderIdentified", offender, problems)
        distributed = _flag("IsDistributed", distributed, problems)
    precategorized = obj.get("IsPrecategorized")
    if precategorized is not None and not isinstance(precategorized, bool):
        _flag("IsPrecategorized", precategorized, problems)
    return _FLAGS[victim, offender, distributed]


def _add(signals: list[SignalValue], signal: SignalValue | None) -> None:
    if signal is not None and signal not in signals:
        signals.append(signal)


def _hex_signal(
    name: str, spec: AlgorithmSpec, raw: object, problems: list[str]
) -> SignalValue | None:
    if not isinstance(raw, str):
        problems.append(f"{name}: must be a string of hex digits, got {_shown(raw)}")
        return None
    try:
        return make_signal(spec, raw)
    except InvalidArgument as error:
        problems.append(f"{name}: {error}")
        return None


def _photodna_signal(name: str, raw: object, problems: list[str]) -> SignalValue | None:
    if not isinstance(raw, str):
        problems.append(f"{name}: must be a base64 string, got {_shown(raw)}")
        return None
    text = raw.strip()
    if len(text) == _PHOTODNA_HEX_CHARS and _HEX.fullmatch(text):
        return SignalValue(Algorithm.PHOTODNA, bytes.fromhex(text))
    try:
        value = binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        problems.append(f"{name}: not base64 (nor {_PHOTODNA_HEX_CHARS} hex characters)")
        return None
    if len(value) != _PHOTODNA.byte_length:
        problems.append(
            f"{name}: {_PHOTODNA.name} needs {_PHOTODNA.byte_length} bytes, got {len(value)}"
        )
        return None
    return SignalValue(Algorithm.PHOTODNA, value)


def _alternative_signals(
    raw: object, signals: list[SignalValue], unused: list[str], problems: list[str]
) -> None:
    if not isinstance(raw, list):
        problems.append(f"AlternativeHashes: must be an array, got {_kind(raw)}")
        return
    for index, item in enumerate(raw):
        where = f"AlternativeHashes[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be an object, got {_kind(item)}")
            continue
        name, value = item.get("HashName"), item.get("HashValue")
        if not isinstance(name, str):
            problems.append(f"{where}.HashName: must be a string, got {_shown(name)}")
            continue
        spec = BY_NAME.get(name.strip().lower().replace("-", ""))
        if spec is None:
            label = f"AlternativeHashes.{name}"
            if label not in unused:
                unused.append(label)
        elif value is not None and value != "":
            field = f"AlternativeHashes.{name}"
            if spec is _PHOTODNA:
                _add(signals, _photodna_signal(field, value, problems))
            else:
                _add(signals, _hex_signal(field, spec, value, problems))


def _flag(name: str, raw: object, problems: list[str]) -> bool:
    """True or False as stated; False (not stated) for null or missing."""
    if raw is True:
        return True
    if raw is None or raw is False:
        return False
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text == "true":
            return True
        if text == "false":
            return False
    problems.append(f"{name}: must be true or false, got {_shown(raw)}")
    return False


def _series(raw: object, problems: list[str]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, str):
        problems.append(f"Series: must be a string, got {_shown(raw)}")
        return ()
    return (raw,) if raw.strip() else ()


def _file_paths(raw: object, unused: list[str], problems: list[str]) -> tuple[str, ...]:
    """The full path of each file of `MediaFiles` (never quoted in a problem: case data)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(f"MediaFiles: must be an array, got {_kind(raw)}")
        return ()
    paths: list[str] = []
    for index, item in enumerate(raw):
        where = f"MediaFiles[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be an object, got {_kind(item)}")
            continue
        name, directory = item.get("FileName"), item.get("FilePath")
        for field, value in (("FileName", name), ("FilePath", directory)):
            if value is not None and not isinstance(value, str):
                problems.append(f"{where}.{field}: must be a string, got {_kind(value)}")
        for key in item:
            if key not in ("FileName", "FilePath") and f"MediaFiles.{key}" not in unused:
                unused.append(f"MediaFiles.{key}")
        if isinstance(name, str | None) and isinstance(directory, str | None):
            path = full_path(directory or "", name or "")
            if path and path not in paths:
                paths.append(path)
    return tuple(paths)


def full_path(directory: str, name: str) -> str:
    """`directory` joined with `name` by the separator the directory uses; `directory` itself
    when it already ends with the name (some tools put the whole path in FilePath)."""
    if not directory or not name:
        return directory or name
    separators = [index for index in (directory.rfind("/"), directory.rfind("\\")) if index >= 0]
    if separators:
        separator = directory[max(separators)]
    else:
        # `C:` is a Windows drive; anything else without a separator is taken as POSIX.
        separator = "\\" if re.fullmatch(r"[A-Za-z]:", directory) else "/"
    if directory == name or directory.endswith(("/" + name, "\\" + name)):
        return directory
    if directory.endswith(separator):
        return directory + name
    return directory + separator + name


def _kind(raw: object) -> str:
    """The JSON type of a decoded value, for messages."""
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, int | float):
        return "a number"
    if isinstance(raw, str):
        return "a string"
    if isinstance(raw, list):
        return "an array"
    return "an object"


def _shown(raw: object) -> str:
    """A short form of a wrong scalar for a message (`123`, `'yes'`, `true`), else its type."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float):
        return repr(raw)
    if isinstance(raw, str):
        text = raw if len(raw) <= _QUOTE_LIMIT else raw[:_QUOTE_LIMIT] + "…"
        return repr(text)
    return _kind(raw)
