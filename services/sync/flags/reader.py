"""What flags read of the registry's linkage: the read API of docs/linkage.md as a Protocol.

Sync never reads the registry's tables directly; `RegistryStore` implements this Protocol, and
the records it answers with are the registry's (services/registry/linkage/read.py).
"""

from __future__ import annotations

from typing import Any, Protocol

from services.registry.linkage.read import (
    LINKAGE_EVENTS_CHANNEL,
    LinkageEvent,
    MediaEvidence,
    SeriesLink,
    SeriesRef,
    VictimSummary,
)

__all__ = [
    "LINKAGE_EVENTS_CHANNEL",
    "LinkageEvent",
    "LinkageReader",
    "MediaEvidence",
    "SeriesLink",
    "SeriesRef",
    "VictimSummary",
]


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

    async def series_refs(self, conn: Any, *, series_rows: list[int]) -> dict[int, SeriesRef]: ...
