"""From media links to linked series and clusters: the evidence rules of docs/linkage.md.

Two series are linked only when enough of their media are linked: at least `min_linked_media`
media on the smaller side, and at least `min_linked_fraction` of the smaller series, so that one
stray near match never merges two series. Linked series form clusters (connected components),
each named by its smallest series row, which makes a cluster's id independent of the order in
which links were found: an incremental computation and a rebuild from scratch agree. Pure
functions: no gRPC, no SQL.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from services.core.errors import InvalidArgument

# A PDQ pair farther apart than this is never a link: the node's index answers exactly up to it.
MAX_LINK_DISTANCE = 31


@dataclass(frozen=True)
class LinkageSettings:
    """The node's `[linkage]` settings."""

    min_linked_media: int = 3
    min_linked_fraction: float = 0.2
    pdq_max_distance: int = MAX_LINK_DISTANCE

    def __post_init__(self) -> None:
        if self.min_linked_media < 1:
            raise InvalidArgument("linkage.min_linked_media must be at least 1")
        if not 0.0 < self.min_linked_fraction <= 1.0:
            raise InvalidArgument("linkage.min_linked_fraction must be above 0 and at most 1")
        if not 0 <= self.pdq_max_distance <= MAX_LINK_DISTANCE:
            raise InvalidArgument(f"linkage.pdq_max_distance must be 0-{MAX_LINK_DISTANCE}")


@dataclass(frozen=True)
class MediaLink:
    """Media rows `low_row` < `high_row` (of different origins) share an exact signal (`exact`)
    and/or hold PDQ values `distance` apart (None: no PDQ pair within the threshold)."""

    low_row: int
    high_row: int
    exact: bool
    distance: int | None

    def __post_init__(self) -> None:
        if self.low_row >= self.high_row:
            raise ValueError("a media link names its smaller row first")
        if not self.exact and self.distance is None:
            raise ValueError("a media link is exact or has a PDQ distance")


@dataclass(frozen=True)
class PairEvidence:
    """Linked media between series `low` and `high` (rows, low < high)."""

    low: int
    high: int
    # Distinct media of each series linked to some media of the other.
    linked_low: int
    linked_high: int
    # Distinct media of each series with an exact link to the other.
    exact_low: int
    exact_high: int
    closest_distance: int | None

    @property
    def linked_media(self) -> int:
        return min(self.linked_low, self.linked_high)

    @property
    def exact_media(self) -> int:
        return min(self.exact_low, self.exact_high, self.linked_media)

    @property
    def near_media(self) -> int:
        return max(self.linked_media - self.exact_media, 0)

    def passes(self, size_low: int, size_high: int, settings: LinkageSettings) -> bool:
        """Whether the pair is LINKED, given each series' media count."""
        smaller = min(size_low, size_high)
        if smaller <= 0 or self.linked_media < settings.min_linked_media:
            return False
        return self.linked_media >= settings.min_linked_fraction * smaller


@dataclass
class _Sides:
    linked: tuple[set[int], set[int]] = field(default_factory=lambda: (set(), set()))
    exact: tuple[set[int], set[int]] = field(default_factory=lambda: (set(), set()))
    closest: int | None = None


def pair_evidence(
    links: Iterable[MediaLink], series_of: Mapping[int, Collection[int]]
) -> dict[tuple[int, int], PairEvidence]:
    """The evidence of every series pair the links touch; `series_of` maps a media row to its
    series rows (media in no series are left out)."""
    sides: dict[tuple[int, int], _Sides] = {}
    for link in links:
        for a in series_of.get(link.low_row, ()):
            for b in series_of.get(link.high_row, ()):
                if a == b:
                    continue
                # The media on the smaller series' side first.
                media = (link.low_row, link.high_row) if a < b else (link.high_row, link.low_row)
                _note(sides.setdefault((min(a, b), max(a, b)), _Sides()), *media, link)
    return {
        key: PairEvidence(
            key[0],
            key[1],
            len(found.linked[0]),
            len(found.linked[1]),
            len(found.exact[0]),
            len(found.exact[1]),
            found.closest,
        )
        for key, found in sides.items()
    }


def _note(found: _Sides, low_media: int, high_media: int, link: MediaLink) -> None:
    found.linked[0].add(low_media)
    found.linked[1].add(high_media)
    if link.exact:
        found.exact[0].add(low_media)
        found.exact[1].add(high_media)
    if link.distance is not None and (found.closest is None or link.distance < found.closest):
        found.closest = link.distance


def clusters(linked_pairs: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Series row -> cluster id (the smallest row of its connected component), for every series
    in a linked pair; a series in none is a cluster of its own and is left out."""
    parent: dict[int, int] = {}

    def root(row: int) -> int:
        while parent[row] != row:
            parent[row] = parent[parent[row]]
            row = parent[row]
        return row

    for a, b in linked_pairs:
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {row: root(row) for row in parent}
