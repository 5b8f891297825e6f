"""What flags read of the registry's linkage: the read API of docs/linkage.md as a Protocol.

Sync never reads the registry's tables directly; `RegistryStore` implements this Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class LinkageEvent:
    id: int
    series_row: int


@dataclass(frozen=True)
class SeriesRef:
    row: int
    origin: str
    series_id: str


@dataclass(frozen=True)
class SeriesLink:
    a: SeriesRef
    b: SeriesRef
    linked: bool
    linked_media: int
    exact_media: int
    near_media: int
    closest_distance: int | None
    cluster_id: int


@dataclass(frozen=True)
class VictimSummary:
    identified_since: datetime | None
    in_progress: bool
    unidentified: bool
    desks: tuple[str, ...]


@dataclass(frozen=True)
class MediaEvidence:
    linked_media: int
    exact_media: int
    closest_distance: int | None


class LinkageReader(Protocol):
    async def linkage_events_after(
        self, conn: Any, *, after_id: int, limit: int
    ) -> list[LinkageEvent]: ...

    async def series_links_of(self, conn: Any, *, series_rows: list[int]) -> list[SeriesLink]: ...

    async def victim_summaries(
        self, conn: Any, *, series_rows: list[int]
    ) -> dict[int, VictimSummary]: ...

    async def media_linked_to_series(
        self, conn: Any, *, series_row: int
    ) -> dict[str, MediaEvidence]: ...
