"""Pure conversions between the registry's domain types and the rows its statements send and
return: staging a batch for COPY, and folding result rows into model records. No SQL here (it all
lives in store.py) and no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.core.algorithms import ALGORITHMS, Algorithm, SignalValue, distinct_signals
from services.core.errors import FailedPrecondition
from services.registry.cases import CaseSealer
from services.registry.model import (
    CaseData,
    Category,
    CategoryScheme,
    IdentificationStatus,
    MediaFlags,
    MediaRecord,
    MediaSubmission,
    MediaType,
    PdqEntry,
    SeriesRecord,
    VictimRecord,
)

PDQ_MIN_QUALITY = ALGORITHMS[Algorithm.PDQ].min_match_quality
# Stored numbers to enum members by dictionary: calling an IntEnum per value was a tenth of a
# 1,000-hash lookup.
_ALGORITHM_OF = {int(a): a for a in Algorithm}
_MEDIA_TYPE_OF = {int(t): t for t in MediaType}
_SCHEME_OF = {int(s): s for s in CategoryScheme}
_STATUS_OF = {int(s): s for s in IdentificationStatus}


@dataclass(frozen=True)
class FoldedBatch:
    """A batch with each media id once: its occurrences merged as successive submissions would
    be, and the position of its first occurrence (to name it in an error)."""

    media: dict[str, MediaSubmission]
    positions: dict[str, int]
    # How many submissions each media id had in the batch.
    occurrences: dict[str, int]
    # The case data of every occurrence (each distinct case is stored once).
    cases: dict[str, list[CaseData]]


def fold_batch(batch: Sequence[MediaSubmission]) -> FoldedBatch:
    folded = FoldedBatch({}, {}, {}, {})
    for position, item in enumerate(batch):
        earlier = folded.media.get(item.media_id)
        folded.media[item.media_id] = item if earlier is None else _merged(earlier, item)
        folded.positions.setdefault(item.media_id, position)
        folded.occurrences[item.media_id] = folded.occurrences.get(item.media_id, 0) + 1
        if not item.case_data.is_empty():
            folded.cases.setdefault(item.media_id, []).append(item.case_data)
    return folded


def _merged(earlier: MediaSubmission, later: MediaSubmission) -> MediaSubmission:
    """Two submissions of one media as one: signals, series and case data of both; type and
    category of the later where given; flags set by either. The first quality seen for a signal
    value stays, as it does once stored."""
    signals = {(s.algorithm, s.value): s for s in later.signals}
    signals.update({(s.algorithm, s.value): s for s in earlier.signals})
    return MediaSubmission(
        media_id=earlier.media_id,
        signals=tuple(signals[key] for key in sorted(signals)),
        media_type=later.media_type if later.media_type is not None else earlier.media_type,
        category=later.category if later.category is not None else earlier.category,
        flags=MediaFlags.from_bits(earlier.flags.to_bits() | later.flags.to_bits()),
        series_ids=tuple(dict.fromkeys((*earlier.series_ids, *later.series_ids))),
    )


def created_record(
    origin: str, row_id: int, first_seen: datetime, item: MediaSubmission
) -> MediaRecord:
    """The full state of a media just created from `item`, equal to what MEDIA_STATES reads
    back (tests/registry/test_store_submit.py holds them equal): signals in (algorithm, value)
    order, series ids in byte order, an image unless the type is given."""
    return MediaRecord(
        row_id=row_id,
        origin=origin,
        media_id=item.media_id,
        signals=distinct_signals(item.signals),
        media_type=item.media_type if item.media_type is not None else MediaType.IMAGE,
        category=item.category,
        flags=item.flags,
        series_ids=tuple(sorted(set(item.series_ids))),
        first_seen=first_seen,
    )


def sealed_cases(
    cases: dict[str, list[CaseData]], sealer: CaseSealer | None
) -> list[tuple[str, bytes, bytes]]:
    """(media id, digest, sealed box) for each distinct case of each media."""
    rows: list[tuple[str, bytes, bytes]] = []
    for media_id, given in cases.items():
        if not given:
            continue
        if sealer is None:
            raise FailedPrecondition("case data cannot be stored here: no case key")
        sealed: dict[bytes, bytes] = {}
        for case in given:
            digest = sealer.digest(case)
            if digest not in sealed:
                sealed[digest] = sealer.seal(case)
        rows.extend((media_id, d, box) for d, box in sealed.items())
    return rows


def matchable_entries(new_signals: Sequence[Any], revived: Sequence[Any]) -> list[PdqEntry]:
    """PDQ values that just became matchable: new usable ones, and every usable one of a media
    that was retracted until now (the index dropped them at retraction). Deduplicated."""
    entries = {(r["media_row"], bytes(r["value"])) for r in revived}
    for r in new_signals:
        quality = r["quality"]
        if r["algorithm"] == Algorithm.PDQ and (quality is None or quality >= PDQ_MIN_QUALITY):
            entries.add((r["media_row"], bytes(r["value"])))
    return [PdqEntry(row_id=row, value=value) for row, value in sorted(entries)]


def media_record(row: Any) -> MediaRecord:
    algorithms = row["algorithms"] or []
    signals = tuple(
        SignalValue(_ALGORITHM_OF[a], bytes(v), q)
        for a, v, q in zip(algorithms, row["sig_values"] or [], row["qualities"] or [], strict=True)
    )
    scheme = row["category_scheme"]
    category = Category(_SCHEME_OF[scheme], row["category_code"]) if scheme else None
    return MediaRecord(
        row_id=row["id"],
        origin=row["origin"],
        media_id=row["media_id"],
        signals=signals,
        media_type=_MEDIA_TYPE_OF[row["media_type"]],
        category=category,
        flags=MediaFlags.from_bits(row["flags"]),
        series_ids=tuple(row["series_ids"] or ()),
        first_seen=row["first_seen"],
    )


def group_series(rows: Sequence[Any]) -> dict[int, tuple[SeriesRecord, ...]]:
    """Rows (one per key, series and victim, ordered) folded into series records per key."""
    grouped: dict[int, dict[int, tuple[Any, list[VictimRecord]]]] = {}
    for r in rows:
        per_key = grouped.setdefault(r["key"], {})
        _, victims = per_key.setdefault(r["series_row"], (r, []))
        if r["victim_id"] is not None:
            victims.append(victim_record(r))
    return {
        key: tuple(
            SeriesRecord(
                origin=head["origin"],
                series_id=head["series_id"],
                name=head["name"],
                victims=tuple(victims),
                media_count=head["media_count"],
                updated_at=head["series_updated_at"],
            )
            for head, victims in per_key.values()
        )
        for key, per_key in grouped.items()
    }


def victim_record(row: Any) -> VictimRecord:
    return VictimRecord(
        victim_id=row["victim_id"],
        status=_STATUS_OF[row["status"]],
        responsible_desk=row["responsible_desk"],
        updated_at=row["victim_updated_at"],
    )
