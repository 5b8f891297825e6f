"""Flag ids: the same situation is one flag on every node (docs/linkage.md)."""

from __future__ import annotations

import hashlib
from enum import Enum

from services.core.errors import InvalidArgument
from services.sync.flags.reader import SeriesRef


class FlagKind(Enum):
    ALREADY_IDENTIFIED = "ALREADY_IDENTIFIED"
    CONCURRENT_WORK = "CONCURRENT_WORK"
    NEW_MATERIAL = "NEW_MATERIAL"


def _key(ref: SeriesRef) -> str:
    return f"{ref.origin}/{ref.series_id}"


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def already_identified_id(x: SeriesRef, y: SeriesRef) -> str:
    """X (no identified victim) overlaps Y (identified): directed, X first."""
    return _digest([FlagKind.ALREADY_IDENTIFIED.value, _key(x), _key(y)])


def concurrent_work_id(x: SeriesRef, y: SeriesRef) -> str:
    """Both in progress: the pair sorted, so either side computes the same id."""
    return _digest([FlagKind.CONCURRENT_WORK.value, *sorted((_key(x), _key(y)))])


def new_material_id(x: SeriesRef, source_origin: str) -> str:
    """Media of agency `source_origin` link to X: `kind|A/X|S`."""
    return _digest([FlagKind.NEW_MATERIAL.value, _key(x), source_origin])


def check_flag_id(value: str) -> str:
    """`value` if it is a flag id (64 lowercase hex characters); InvalidArgument otherwise."""
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidArgument(f"flag_id: a flag id is 64 lowercase hex characters, got {value!r}")
    return value
