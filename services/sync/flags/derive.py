"""Which flags a node's linkage raises (docs/linkage.md "Kinds"). Pure: no gRPC, no SQL.

A node derives only from what it holds, so a policy is honoured by construction: a series
replicated without victim status has no identified victim here and raises no ALREADY_IDENTIFIED.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from services.sync.flags.ids import (
    FlagKind,
    already_identified_id,
    concurrent_work_id,
    new_material_id,
)
from services.sync.flags.reader import MediaEvidence, SeriesLink, SeriesRef, VictimSummary


@dataclass(frozen=True)
class Evidence:
    linked_media: int
    exact_media: int
    near_media: int
    closest_distance: int | None


@dataclass(frozen=True)
class DerivedFlag:
    id: str
    kind: FlagKind
    series: SeriesRef
    other_series: SeriesRef | None  # None for NEW_MATERIAL
    other_agency: str
    evidence: Evidence
    identified_agency: str | None = None
    identified_desk: str | None = None
    identified_since: datetime | None = None


def _identified(v: VictimSummary | None) -> bool:
    return v is not None and v.identified_since is not None


def _link_evidence(link: SeriesLink) -> Evidence:
    return Evidence(link.linked_media, link.exact_media, link.near_media, link.closest_distance)


def _already_identified(
    x: SeriesRef, y: SeriesRef, link: SeriesLink, vy: VictimSummary
) -> DerivedFlag:
    return DerivedFlag(
        id=already_identified_id(x, y),
        kind=FlagKind.ALREADY_IDENTIFIED,
        series=x,
        other_series=y,
        other_agency=y.origin,
        evidence=_link_evidence(link),
        identified_agency=y.origin,
        identified_desk=vy.desks[0] if vy.desks else None,
        identified_since=vy.identified_since,
    )


def flags_of_link(link: SeriesLink, victims: Mapping[int, VictimSummary]) -> list[DerivedFlag]:
    """ALREADY_IDENTIFIED (either direction) and CONCURRENT_WORK for one series pair."""
    a, b = link.a, link.b
    if not link.linked or a.origin == b.origin:
        return []
    va, vb = victims.get(a.row), victims.get(b.row)
    out: list[DerivedFlag] = []
    if _identified(vb) and not _identified(va):
        assert vb is not None
        out.append(_already_identified(a, b, link, vb))
    if _identified(va) and not _identified(vb):
        assert va is not None
        out.append(_already_identified(b, a, link, va))
    if va is not None and vb is not None and va.in_progress and vb.in_progress:
        first, second = sorted((a, b), key=lambda r: (r.origin, r.series_id))
        out.append(
            DerivedFlag(
                id=concurrent_work_id(a, b),
                kind=FlagKind.CONCURRENT_WORK,
                series=first,
                other_series=second,
                other_agency=second.origin,
                evidence=_link_evidence(link),
            )
        )
    return out


def new_material_flags(
    x: SeriesRef,
    victim: VictimSummary | None,
    by_origin: Mapping[str, MediaEvidence],
    *,
    min_linked_media: int,
) -> list[DerivedFlag]:
    """NEW_MATERIAL(X, S): media of S link to X, X has no identified victim, evidence enough."""
    if _identified(victim):
        return []
    out: list[DerivedFlag] = []
    for origin, ev in sorted(by_origin.items()):
        if origin == x.origin:
            continue
        if ev.linked_media < min_linked_media and ev.exact_media == 0:
            continue
        near = max(ev.linked_media - ev.exact_media, 0)
        out.append(
            DerivedFlag(
                id=new_material_id(x, origin),
                kind=FlagKind.NEW_MATERIAL,
                series=x,
                other_series=None,
                other_agency=origin,
                evidence=Evidence(ev.linked_media, ev.exact_media, near, ev.closest_distance),
            )
        )
    return out


@dataclass(frozen=True)
class RaiseDecision:
    """What to do with a derived flag given the evidence already stored for its id."""

    raise_new: bool
    evidence_changed: bool


def decide(flag: DerivedFlag, stored: Evidence | None) -> RaiseDecision:
    """Raised once: an existing id is never raised again; evidence updated only when changed."""
    if stored is None:
        return RaiseDecision(raise_new=True, evidence_changed=False)
    return RaiseDecision(raise_new=False, evidence_changed=stored != flag.evidence)
