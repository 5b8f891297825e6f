"""A verified batch flattened into the rows COPY sends to the apply staging tables.

Within a batch only the newest entry of each record matters (entries carry full state), so
entries are folded per media id and per series id first; the store then applies each staged
record only when its seq is newer than the one that last set it. Pure: no SQL, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.sync.changelog import (
    Change,
    ReplicatedMedia,
    ReplicatedRetraction,
    ReplicatedSeries,
)


@dataclass
class StagedApply:
    media: list[tuple[str, int, int | None, str | None, int, datetime, int]] = field(
        default_factory=list
    )
    signals: list[tuple[str, int, bytes, int | None]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    series: list[tuple[str, str, datetime, int]] = field(default_factory=list)
    victims: list[tuple[str, str, int, str, datetime]] = field(default_factory=list)
    # (media id, seq, changed_at) of retractions.
    retractions: list[tuple[str, int, datetime]] = field(default_factory=list)

    def tables(self) -> list[tuple[str, Sequence[tuple[Any, ...]]]]:
        return [
            ("sync_stage_media", self.media),
            ("sync_stage_signals", self.signals),
            ("sync_stage_links", self.links),
            ("sync_stage_series", self.series),
            ("sync_stage_victims", self.victims),
        ]


def stage_changes(changes: Sequence[Change]) -> StagedApply:
    media: dict[str, ReplicatedMedia | ReplicatedRetraction] = {}
    series: dict[str, ReplicatedSeries] = {}
    for change in changes:  # in seq order: the last one of each record wins
        if isinstance(change, ReplicatedMedia | ReplicatedRetraction):
            media[change.media_id] = change
        elif isinstance(change, ReplicatedSeries):
            series[change.series_id] = change
    staged = StagedApply()
    for media_id, item in sorted(media.items()):
        if isinstance(item, ReplicatedRetraction):
            staged.retractions.append((media_id, item.seq, item.changed_at))
            continue
        category = item.category
        staged.media.append(
            (
                media_id,
                int(item.media_type),
                int(category.scheme) if category else None,
                category.code if category else None,
                item.flags.to_bits(),
                item.first_seen,
                item.seq,
            )
        )
        staged.signals.extend(
            (media_id, int(s.algorithm), s.value, s.quality) for s in item.signals
        )
        staged.links.extend((media_id, series_id) for series_id in item.series_ids)
    for series_id, record in sorted(series.items()):
        staged.series.append((series_id, record.name, record.updated_at, record.seq))
        staged.victims.extend(
            (series_id, v.victim_id, int(v.status), v.responsible_desk, v.updated_at)
            for v in record.victims
        )
    return staged
