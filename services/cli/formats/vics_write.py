"""The VICS JSON writer: media as a Project VIC file (data model 1.3 or 2.0, Media or Cases
shape) that the tools of other agencies, and `vics.read_vics`, read back.

The output is streamed, one Media a line, so a million media never sit in memory. Only what may
leave the node is written: hashes, category, flags and a series name, never file paths or case
references. Two things VICS cannot carry are left out and counted, so the caller can say so:
a category of another scheme than the profile's (a number means something else under each
profile), and every series name after the first (`Series` is one string).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

from services.cli.formats.records import ImportedMedia
from services.cli.formats.vics_context import VicsContext, context_to_write
from services.core.algorithms import Algorithm, SignalValue
from services.core.errors import InvalidArgument

# The algorithms with a top-level field of their own (PhotoDNA only in 2.0); the rest, and any
# second value of one of these, go in AlternativeHashes.
_TOP_LEVEL = {Algorithm.MD5: "MD5", Algorithm.SHA1: "SHA1"}
_ALTERNATIVE_NAMES = {
    Algorithm.MD5: "MD5",
    Algorithm.SHA1: "SHA1",
    Algorithm.SHA256: "SHA256",
    Algorithm.PDQ: "PDQ",
    Algorithm.PHOTODNA: "PhotoDNA",
}


@dataclass(frozen=True)
class VicsWriteCounts:
    """What was written, and what VICS could not carry."""

    written: int
    # Media whose category is of another scheme than the profile's: written without Category.
    categories_left_out: int
    # Media with more than one series name: only the first is written.
    series_left_out: int


def write_vics(
    out: TextIO,
    media: Iterable[ImportedMedia],
    *,
    version: str,
    profile: str | None,
    shape: str,
) -> VicsWriteCounts:
    """Write `media` to `out` as one VICS document; InvalidArgument for a version, profile or
    shape that cannot be written (before anything is)."""
    try:
        context = context_to_write(version, profile, shape)
    except ValueError as error:
        raise InvalidArgument(str(error)) from None
    out.write(f'{{{json.dumps(context.key())}: {json.dumps(context.url())}, "value": [')
    if context.shape == "cases":
        out.write('{"Media": [')
    written = categories_left_out = series_left_out = 0
    for item in media:
        written += 1
        entry, category_left_out = _media_entry(item, written, context)
        categories_left_out += category_left_out
        series_left_out += len(item.series_names) > 1
        out.write(("\n" if written == 1 else ",\n") + json.dumps(entry))
    if context.shape == "cases":
        out.write("]}")
    out.write("\n]}\n")
    return VicsWriteCounts(written, categories_left_out, series_left_out)


def _media_entry(
    item: ImportedMedia, media_id: int, context: VicsContext
) -> tuple[dict[str, object], bool]:
    """The Media object of `item`, and whether its category had to be left out."""
    entry: dict[str, object] = {"MediaID": media_id}
    category_left_out = False
    if item.category is not None:
        if item.category.scheme == context.scheme:
            entry["Category"] = int(item.category.code)
        else:
            category_left_out = True
    top_level = dict(_TOP_LEVEL)
    if context.profile is not None:
        top_level[Algorithm.PHOTODNA] = "PhotoDNA"
    alternatives: list[dict[str, str]] = []
    for signal in item.signals:
        name = top_level.pop(signal.algorithm, None)
        if name is not None:
            entry[name] = _text(signal)
        else:
            name = _ALTERNATIVE_NAMES[signal.algorithm]
            alternatives.append({"HashName": name, "HashValue": _text(signal)})
    if alternatives:
        entry["AlternativeHashes"] = alternatives
    entry["VictimIdentified"] = item.flags.victim_identified
    entry["OffenderIdentified"] = item.flags.offender_identified
    entry["IsDistributed"] = item.flags.distributed
    if item.series_names:
        entry["Series"] = item.series_names[0]
    return entry, category_left_out


def _text(signal: SignalValue) -> str:
    """PhotoDNA as base64 (as VICS carries it), MD5 and SHA1 as uppercase hex (as Project VIC
    tools write them), SHA256 and PDQ as lowercase hex."""
    if signal.algorithm is Algorithm.PHOTODNA:
        return base64.b64encode(signal.value).decode("ascii")
    if signal.algorithm in (Algorithm.MD5, Algorithm.SHA1):
        return signal.value.hex().upper()
    return signal.value.hex()
