"""From records read out of a file to SubmitMedia batches: each record becomes a
MediaSubmission and is checked here with the node's own validator, so a record the node would
refuse is rejected with its position in the file instead of failing the batch it travels in.

Media ids are derived from the strongest cryptographic hash, as the node derives them (a PDQ-only
record is `pdq:<hex>` of its first PDQ hash): a file tool's own record number (VICS `MediaID`) is
not an identity across files, and deriving keeps importing the same hashes twice idempotent.
The checks are those of the node's validator that a record read by a format reader can fail
(its signals are parsed already; its series ids are made valid here): the signal limits, the
case data's lengths and characters. Series named in the file get a series id (the name
itself when it is a valid id, else a readable slug with a digest of the name); the name travels
with UpsertSeries once per import.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from hashex.v1 import common_pb2, registry_pb2
from services.cli.formats.records import ImportedMedia
from services.core.algorithms import Algorithm, SignalValue, derived_media_id, distinct_signals
from services.core.errors import InvalidArgument
from services.registry import convert
from services.registry.contract import signal_set_problems
from services.registry.model import (
    ID_PATTERN,
    MAX_NAME_CHARS,
    MAX_PATH_CHARS,
    Category,
    MediaFlags,
    check_text,
)

_NOT_ID = re.compile(r"[^A-Za-z0-9._:-]+")
_SLUG_CHARS = 80


def series_id_for(name: str) -> str:
    """The series id a series named `name` in a file gets: `name` itself when it is a valid id,
    else its slug and 8 hex digits of its digest (`op-lantern-2019-3f9a2c1d`)."""
    stripped = name.strip()
    if ID_PATTERN.fullmatch(stripped):
        return stripped
    slug = _NOT_ID.sub("-", stripped).strip("-.:_")[:_SLUG_CHARS] or "series"
    digest = hashlib.blake2b(stripped.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{slug}-{digest}"


@dataclass(frozen=True)
class Defaults:
    """What the command line adds to every record: the file's own values take precedence for
    category and media type; flags and series are added to the file's."""

    category: Category | None = None
    flags: MediaFlags = field(default_factory=MediaFlags)
    series_ids: tuple[str, ...] = ()
    case_reference: str = ""
    exhibit_reference: str = ""
    keep_paths: bool = True


@dataclass(frozen=True)
class Prepared:
    """A record ready to send, with the series names its batch must carry."""

    record: ImportedMedia
    media_id: str
    message: registry_pb2.MediaSubmission
    series_names: dict[str, str]


def prepare(record: ImportedMedia, defaults: Defaults) -> Prepared:
    """The record as a MediaSubmission, or InvalidArgument saying why the node would refuse it."""
    names = {series_id_for(n): n.strip() for n in record.series_names if n.strip()}
    series_ids = tuple(dict.fromkeys((*defaults.series_ids, *names)))
    flags = _either(record.flags, defaults.flags)
    message = registry_pb2.MediaSubmission(
        signals=[convert.signal_to_proto(s) for s in record.signals],
        series_ids=series_ids,
    )
    if record.media_type:
        message.media_type = common_pb2.MediaType.ValueType(record.media_type)
    if flags.to_bits():
        message.flags.victim_identified = flags.victim_identified
        message.flags.offender_identified = flags.offender_identified
        message.flags.distributed = flags.distributed
        message.flags.self_generated = flags.self_generated
    category = record.category or defaults.category
    if category is not None:
        message.category.scheme = common_pb2.CategoryScheme.ValueType(category.scheme)
        message.category.code = category.code
    path = _joined_paths(record.file_paths) if defaults.keep_paths and record.file_paths else ""
    case_reference = record.case_reference or defaults.case_reference
    if case_reference or defaults.exhibit_reference or path:
        message.case_data.case_reference = case_reference
        message.case_data.exhibit_reference = defaults.exhibit_reference
        message.case_data.file_path = path
    problems = signal_set_problems(distinct_signals(record.signals))
    if not record.signals:
        problems.append("no hash")
    if case_reference:
        problems.extend(_text_problems("case reference", case_reference))
    if path:
        problems.extend(_text_problems("file path", path, MAX_PATH_CHARS))
    if problems:
        raise InvalidArgument("; ".join(problems))
    media_id = media_id_of(record.signals)
    message.media_id = media_id
    return Prepared(record, media_id, message, {i: n for i, n in names.items() if i != n})


def media_id_of(signals: tuple[SignalValue, ...]) -> str:
    """The id the node would derive; for a record with PDQ hashes only, its first one's."""
    derived = derived_media_id(list(signals))
    if derived is not None:
        return derived
    pdq = min(s.value for s in signals if s.algorithm == Algorithm.PDQ)
    return f"pdq:{pdq.hex()}"


def _text_problems(kind: str, value: str, limit: int = MAX_NAME_CHARS) -> list[str]:
    try:
        check_text(kind, value, limit)
    except InvalidArgument as error:
        return [str(p) for p in error.problems]
    return []


def _either(given: MediaFlags, added: MediaFlags) -> MediaFlags:
    return MediaFlags.from_bits(given.to_bits() | added.to_bits())


def _joined_paths(paths: tuple[str, ...]) -> str:
    """Every path the file gives for the media, one per line, as many whole ones as the case
    record holds (a path longer than that alone is refused by the validator, with its record)."""
    printable = [
        p.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for p in paths
    ]
    kept: list[str] = []
    length = 0
    for path in printable:
        extra = len(path) + (1 if kept else 0)
        if kept and length + extra > MAX_PATH_CHARS:
            break
        kept.append(path)
        length += extra
    return "\n".join(kept)
