"""Records replicated from a peer, as the registry applies them: the changes a verified batch
carries (parsed and validated by services.sync.entries) and their flattening into the rows COPY
sends to the apply staging tables (services/registry/store_replicated.py).

Within a batch only the newest entry of each record matters (entries carry full state), so
entries are folded per media id and per series id first; the store then applies each staged
record only when its seq is newer than the one that last set it. Signals become rows of the
signals table once the media they belong to have rows. Pure: no SQL, no I/O.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.core.algorithms import ALGORITHMS, Algorithm, SignalValue
from services.registry import model
from services.registry.model import PdqEntry


@dataclass(frozen=True)
class ReplicatedMedia:
    """A peer's media record as of entry `seq` of its log (full state)."""

    seq: int
    changed_at: datetime
    media_id: str
    signals: tuple[SignalValue, ...]
    media_type: model.MediaType
    category: model.Category | None
    flags: model.MediaFlags
    series_ids: tuple[str, ...]
    first_seen: datetime


@dataclass(frozen=True)
class ReplicatedRetraction:
    seq: int
    changed_at: datetime
    media_id: str


@dataclass(frozen=True)
class ReplicatedSeries:
    """A peer's series with all its victims as of entry `seq`."""

    seq: int
    changed_at: datetime
    series_id: str
    name: str
    victims: tuple[model.VictimRecord, ...]
    updated_at: datetime


ReplicatedChange = ReplicatedMedia | ReplicatedRetraction | ReplicatedSeries


@dataclass(frozen=True)
class ReplicatedApplied:
    """What applying one batch of a peer's changes did to the PDQ index's input: hashes that
    became matchable and media rows that stopped matching."""

    added: list[PdqEntry]
    removed_rows: list[int]


@dataclass
class StagedMedia:
    """Media states to apply, one list per column of the media table (sent as one array
    parameter each), in media id order."""

    media_ids: list[str] = field(default_factory=list)
    media_types: list[int] = field(default_factory=list)
    category_schemes: list[int | None] = field(default_factory=list)
    category_codes: list[str | None] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)
    first_seen: list[datetime] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.media_ids)

    def append(self, item: ReplicatedMedia) -> None:
        category = item.category
        self.media_ids.append(item.media_id)
        self.media_types.append(int(item.media_type))
        self.category_schemes.append(int(category.scheme) if category else None)
        self.category_codes.append(category.code if category else None)
        self.flags.append(item.flags.to_bits())
        self.first_seen.append(item.first_seen)
        self.seqs.append(item.seq)

    def columns(self) -> tuple[list[Any], ...]:
        return (
            self.media_ids,
            self.media_types,
            self.category_schemes,
            self.category_codes,
            self.flags,
            self.first_seen,
            self.seqs,
        )

    def without(self, media_ids: Container[str]) -> StagedMedia:
        """The staged media other than `media_ids`, in the same order."""
        rest = StagedMedia()
        kept = [i for i, media_id in enumerate(self.media_ids) if media_id not in media_ids]
        for mine, theirs in zip(self.columns(), rest.columns(), strict=True):
            theirs.extend(mine[i] for i in kept)
        return rest


@dataclass
class StagedApply:
    media: StagedMedia = field(default_factory=StagedMedia)
    # Media id → its signals, for `signal_rows` once the media have rows.
    signals: dict[str, tuple[SignalValue, ...]] = field(default_factory=dict)
    # Media id → the series ids it names (media naming none are left out).
    links: dict[str, tuple[str, ...]] = field(default_factory=dict)
    series: list[tuple[str, str, datetime, int]] = field(default_factory=list)
    victims: list[tuple[str, str, int, str, datetime]] = field(default_factory=list)
    # (media id, seq, changed_at) of retractions.
    retractions: list[tuple[str, int, datetime]] = field(default_factory=list)

    def tables(self) -> list[tuple[str, Sequence[tuple[Any, ...]]]]:
        """The staging tables filled before series apply (media go as array parameters;
        signals and series links wait for media rows)."""
        return [
            ("replica_stage_series", self.series),
            ("replica_stage_victims", self.victims),
        ]


def stage_changes(changes: Sequence[ReplicatedChange]) -> StagedApply:
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
        staged.media.append(item)
        staged.signals[media_id] = item.signals
        if item.series_ids:
            staged.links[media_id] = item.series_ids
    for series_id, record in sorted(series.items()):
        staged.series.append((series_id, record.name, record.updated_at, record.seq))
        staged.victims.extend(
            (series_id, v.victim_id, int(v.status), v.responsible_desk, v.updated_at)
            for v in record.victims
        )
    return staged


# (media row, algorithm, value, quality): a row of the signals table.
SignalRow = tuple[int, int, bytes, int | None]


def signal_rows(
    staged: StagedApply, rows_of: Mapping[str, int], existing: Set[int]
) -> tuple[list[SignalRow], list[SignalRow]]:
    """The signals of the applied media (`rows_of`: media id → row), split in two: those of media
    this batch created, which cannot conflict with any row (in batch order: sorting them by the
    table's key cost the event loop more than it saved PostgreSQL), and those of media that
    existed before (`existing`), of which the store keeps only the ones not held yet."""
    created: list[SignalRow] = []
    known: list[SignalRow] = []
    for media_id, signals in staged.signals.items():
        row = rows_of.get(media_id)
        if row is not None:
            rows = known if row in existing else created
            rows.extend([(row, int(s.algorithm), s.value, s.quality) for s in signals])
    return created, known


def link_rows(
    staged: StagedApply, rows_of: Mapping[str, int], series_rows: Mapping[str, int]
) -> list[tuple[int, int]]:
    """The (media row, series row) links the applied media (`rows_of`: media id → row) name,
    sorted: the media_series rows they state in full."""
    return sorted(
        (row, series_rows[series_id])
        for media_id, row in rows_of.items()
        for series_id in staged.links.get(media_id, ())
    )


def linked_series(staged: StagedApply, media_ids: Iterable[str]) -> list[str]:
    """The series ids named by the media `media_ids`, each once, sorted."""
    return sorted({s for media_id in media_ids for s in staged.links.get(media_id, ())})


_PDQ = int(Algorithm.PDQ)
_PDQ_MIN_QUALITY = ALGORITHMS[Algorithm.PDQ].min_match_quality


def matchable(rows: Sequence[SignalRow]) -> list[PdqEntry]:
    """The PDQ hashes among `rows` usable for near matching."""
    return [
        PdqEntry(row, value)
        for row, algorithm, value, quality in rows
        if algorithm == _PDQ and (quality is None or quality >= _PDQ_MIN_QUALITY)
    ]
