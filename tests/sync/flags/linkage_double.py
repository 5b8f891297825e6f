"""A test double of the registry's linkage read API (services/sync/flags/reader.py): the
engine's tests set up linkage in memory instead of running the registry's linker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.sync.flags.reader import (
    LinkageEvent,
    MediaEvidence,
    SeriesLink,
    SeriesRef,
    VictimSummary,
)


@dataclass
class InMemoryLinkage:
    """Implements LinkageReader; `touch(row)` appends a linkage event for a series row."""

    links: list[SeriesLink] = field(default_factory=list)
    victims: dict[int, VictimSummary] = field(default_factory=dict)
    media: dict[int, dict[str, MediaEvidence]] = field(default_factory=dict)
    events: list[LinkageEvent] = field(default_factory=list)
    # Series named without a link (NEW_MATERIAL for a series linked to no other series).
    named: dict[int, SeriesRef] = field(default_factory=dict)

    def touch(self, *rows: int) -> None:
        for row in rows:
            self.events.append(LinkageEvent(len(self.events) + 1, row))

    def link(self, link: SeriesLink) -> None:
        """Add or replace the link of the pair, and touch both series."""
        pair = {link.a.row, link.b.row}
        self.links = [k for k in self.links if {k.a.row, k.b.row} != pair] + [link]
        self.touch(link.a.row, link.b.row)

    async def linkage_events_after(
        self, conn: Any, *, after_id: int, limit: int
    ) -> list[LinkageEvent]:
        return [e for e in self.events if e.id > after_id][:limit]

    async def series_links_of(self, conn: Any, *, series_rows: list[int]) -> list[SeriesLink]:
        rows = set(series_rows)
        return [k for k in self.links if k.a.row in rows or k.b.row in rows]

    async def victim_summaries(
        self, conn: Any, *, series_rows: list[int]
    ) -> dict[int, VictimSummary]:
        return {r: self.victims[r] for r in series_rows if r in self.victims}

    async def series_refs(self, conn: Any, *, series_rows: list[int]) -> dict[int, SeriesRef]:
        known = dict(self.named)
        for link in self.links:
            known[link.a.row], known[link.b.row] = link.a, link.b
        return {r: known[r] for r in series_rows if r in known}

    async def media_linked_to_series(
        self, conn: Any, *, series_row: int
    ) -> dict[str, MediaEvidence]:
        return dict(self.media.get(series_row, {}))


def series(row: int, origin: str, series_id: str) -> SeriesRef:
    return SeriesRef(row, origin, series_id)
