"""Pure conversions between the registry's domain types and the rows its statements send and
return: staging a batch for COPY, and folding result rows into model records. No SQL here (it all
lives in store.py) and no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.core.algorithms import ALGORITHMS, Algorithm, SignalValue
from services.core.errors import FailedPrecondition
from services.registry.cases import CaseSealer
from services.registry.model import (
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


@dataclass
class StagedBatch:
    """A batch merged per media id and flattened into the rows COPY sends to the staging tables."""

    media: list[tuple[str, int, int | None, str | None, int]]
    signals: list[tuple[str, int, bytes, int | None]]
    series: list[tuple[str, str]]
    cases: list[tuple[str, bytes, bytes]]
    # Occurrences beyond the first of a media id in the batch (counted as unchanged).
    repeats: int


def stage_batch(batch: Sequence[MediaSubmission], sealer: CaseSealer | None) -> StagedBatch:
    last: dict[str, MediaSubmission] = {}
    signals: dict[str, dict[tuple[int, bytes], int | None]] = {}
    cases: dict[str, dict[bytes, bytes]] = {}
    for item in batch:
        last[item.media_id] = item
        known = signals.setdefault(item.media_id, {})
        for signal in item.signals:
            # The first quality seen for a value stays, as it does once stored.
            known.setdefault((int(signal.algorithm), signal.value), signal.quality)
        if not item.case_data.is_empty():
            if sealer is None:
                raise FailedPrecondition("case data cannot be stored here: no case key")
            sealed = cases.setdefault(item.media_id, {})
            digest = sealer.digest(item.case_data)
            if digest not in sealed:
                sealed[digest] = sealer.seal(item.case_data)
    return StagedBatch(
        media=[_media_row(item) for item in last.values()],
        signals=[(m, a, v, q) for m, known in signals.items() for (a, v), q in known.items()],
        series=[(m, s) for m, item in last.items() for s in dict.fromkeys(item.series_ids)],
        cases=[(m, d, s) for m, sealed in cases.items() for d, s in sealed.items()],
        repeats=len(batch) - len(last),
    )


def _media_row(item: MediaSubmission) -> tuple[str, int, int | None, str | None, int]:
    scheme = int(item.category.scheme) if item.category else None
    code = item.category.code if item.category else None
    return (item.media_id, int(item.media_type), scheme, code, item.flags.to_bits())


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
