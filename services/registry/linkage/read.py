"""What the registry's linkage tells its readers (sync's overlap flags): events, series pairs,
victims and the media of other origins linked to a series (docs/linkage.md "Read API").

Every read takes the caller's connection, so a reader can hold one snapshot across them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.registry.model import IdentificationStatus

# Notified at the commit of each linker chunk that appended linkage events: a reader following
# them (the flag engine) wakes at once instead of at its next poll.
LINKAGE_EVENTS_CHANNEL = "hashex_linkage_events"


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


_EVENTS_AFTER = """
SELECT id, series_row FROM linkage_events WHERE id > $1 ORDER BY id LIMIT $2
"""

_LINKS_OF = """
SELECT l.*, a.origin AS a_origin, a.series_id AS a_series, b.origin AS b_origin,
       b.series_id AS b_series, coalesce(c.cluster_id, l.low_series) AS cluster_id
FROM series_links l
JOIN series a ON a.id = l.low_series
JOIN series b ON b.id = l.high_series
LEFT JOIN series_clusters c ON c.series_row = l.low_series
WHERE l.low_series = ANY($1::bigint[]) OR l.high_series = ANY($1::bigint[])
ORDER BY l.low_series, l.high_series
"""

_VICTIMS_OF = """
SELECT series_row, status, responsible_desk, updated_at FROM victims
WHERE series_row = ANY($1::bigint[]) ORDER BY series_row, victim_id
"""

_LINKED_TO_SERIES = """
WITH d AS (
    SELECT l.high_row AS n, l.exact, l.distance
    FROM media_series ms JOIN media_links l ON l.low_row = ms.media_row
    WHERE ms.series_row = $1
    UNION ALL
    SELECT l.low_row AS n, l.exact, l.distance
    FROM media_series ms JOIN media_links l ON l.high_row = ms.media_row
    WHERE ms.series_row = $1
)
SELECT m.origin, count(DISTINCT d.n) AS linked, count(DISTINCT d.n) FILTER (WHERE d.exact) AS
       exact, min(d.distance) AS closest
FROM d JOIN media m ON m.id = d.n AND m.retracted_at IS NULL
GROUP BY m.origin ORDER BY m.origin
"""

_SERIES_REFS = "SELECT id, origin, series_id FROM series WHERE id = ANY($1::bigint[])"

_IDENTIFIED = (IdentificationStatus.IDENTIFIED, IdentificationStatus.SAFEGUARDED)


async def linkage_events_after(conn: Any, *, after_id: int, limit: int) -> list[LinkageEvent]:
    return [LinkageEvent(r[0], r[1]) for r in await conn.fetch(_EVENTS_AFTER, after_id, limit)]


async def series_links_of(conn: Any, *, series_rows: list[int]) -> list[SeriesLink]:
    out = []
    for r in await conn.fetch(_LINKS_OF, series_rows):
        linked = min(r["linked_low"], r["linked_high"])
        exact = min(r["exact_low"], r["exact_high"], linked)
        out.append(
            SeriesLink(
                a=SeriesRef(r["low_series"], r["a_origin"], r["a_series"]),
                b=SeriesRef(r["high_series"], r["b_origin"], r["b_series"]),
                linked=r["linked"],
                linked_media=linked,
                exact_media=exact,
                near_media=max(linked - exact, 0),
                closest_distance=r["closest_distance"],
                cluster_id=r["cluster_id"],
            )
        )
    return out


async def victim_summaries(conn: Any, *, series_rows: list[int]) -> dict[int, VictimSummary]:
    grouped: dict[int, list[Any]] = {}
    for r in await conn.fetch(_VICTIMS_OF, series_rows):
        grouped.setdefault(r["series_row"], []).append(r)
    out = {}
    for row, victims in grouped.items():
        identified = [v for v in victims if v["status"] in _IDENTIFIED]
        desks = sorted({v["responsible_desk"] for v in identified if v["responsible_desk"]})
        out[row] = VictimSummary(
            identified_since=min((v["updated_at"] for v in identified), default=None),
            in_progress=any(v["status"] == IdentificationStatus.IN_PROGRESS for v in victims),
            unidentified=not identified,
            desks=tuple(desks),
        )
    return out


async def media_linked_to_series(conn: Any, *, series_row: int) -> dict[str, MediaEvidence]:
    return {
        r["origin"]: MediaEvidence(r["linked"], r["exact"], r["closest"])
        for r in await conn.fetch(_LINKED_TO_SERIES, series_row)
    }


async def series_refs(conn: Any, *, series_rows: list[int]) -> dict[int, SeriesRef]:
    """The series among `series_rows` that exist, by row."""
    return {
        r["id"]: SeriesRef(r["id"], r["origin"], r["series_id"])
        for r in await conn.fetch(_SERIES_REFS, series_rows)
    }
