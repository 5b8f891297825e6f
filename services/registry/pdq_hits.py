"""What a PDQ index search finds, as parallel numpy arrays, and how an answer is cut to the
nearest `limit` per query before any Python object is built.

`Hits` are positions inside one entry set; `Matches` carry the row and the value, so matches of
different segments can be merged and ordered by (distance, row, value) together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Rows = npt.NDArray[np.int64]
Words = npt.NDArray[np.uint64]
Positions = npt.NDArray[np.intp]
Distances = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Hits:
    """Parallel arrays: which query (index in the batch), which entry position, what distance."""

    query: Positions
    position: Positions
    distance: Distances

    @staticmethod
    def none() -> Hits:
        return Hits(np.empty(0, np.intp), np.empty(0, np.intp), np.empty(0, np.int64))

    def where(self, keep: Mask) -> Hits:
        return Hits(self.query[keep], self.position[keep], self.distance[keep])


@dataclass(frozen=True)
class Matches:
    """Parallel arrays: query (index in the batch), row id, distance, and the (k, 4) value."""

    query: Positions
    row: Rows
    distance: Distances
    hashes: Words

    @staticmethod
    def none() -> Matches:
        return Matches(
            np.empty(0, np.intp),
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.empty((0, 4), np.uint64),
        )

    @staticmethod
    def concatenate(parts: list[Matches]) -> Matches:
        parts = [p for p in parts if len(p)]
        if len(parts) <= 1:
            return parts[0] if parts else Matches.none()
        return Matches(
            np.concatenate([p.query for p in parts]),
            np.concatenate([p.row for p in parts]),
            np.concatenate([p.distance for p in parts]),
            np.concatenate([p.hashes for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.query.shape[0])

    def for_queries(self, numbers: Positions) -> Matches:
        """Renumber queries of a sub-batch back to the batch they were taken from."""
        return Matches(numbers[self.query], self.row, self.distance, self.hashes)

    def nearest(self, limit: int | None) -> Matches:
        """Sorted by (query, distance, row, value bytes), at most `limit` per query."""
        if len(self) <= 1:
            return self
        order = self._order()
        if limit is not None:
            query = self.query[order]
            rank = np.arange(query.shape[0]) - np.searchsorted(query, query, side="left")
            order = order[rank < limit]
        return Matches(self.query[order], self.row[order], self.distance[order], self.hashes[order])

    def _order(self) -> Positions:
        """Row and distance decide but for a row holding several values at one distance (video
        frames); only then are the values, as big-endian words, compared too."""
        keys: list[npt.NDArray[np.int64] | npt.NDArray[np.uint64]] = [
            self.row,
            self.distance,
            self.query.astype(np.int64),
        ]
        order: Positions = np.lexsort(keys)
        sorted_keys = [key[order] for key in keys]
        if not np.logical_and.reduce([k[1:] == k[:-1] for k in sorted_keys]).any():
            return order
        big_endian = np.ascontiguousarray(self.hashes).view(">u8").astype(np.uint64)
        by_value = [big_endian[:, word] for word in (3, 2, 1, 0)]
        full: Positions = np.lexsort([*by_value, *keys])
        return full


def expand_ranges(starts: npt.NDArray[np.int64], counts: npt.NDArray[np.int64]) -> Positions:
    """Concatenate `range(s, s + c)` for every pair without a Python loop."""
    return _runs(starts, counts, step=1)


def repeat_each(values: npt.NDArray[np.int64], counts: npt.NDArray[np.int64]) -> Positions:
    """`np.repeat(values, counts)`, built from GIL-free steps (np.repeat holds the GIL)."""
    return _runs(values, counts, step=0)


def _runs(firsts: npt.NDArray[np.int64], counts: npt.NDArray[np.int64], step: int) -> Positions:
    """Runs `first, first + step, ...` of each length, as a cumulative sum of increments: one
    scatter and one cumsum, both of which let a second query thread run meanwhile."""
    nonempty = counts > 0
    if not nonempty.all():
        firsts, counts = firsts[nonempty], counts[nonempty]
    if not counts.size:
        return np.empty(0, dtype=np.intp)
    ends = np.cumsum(counts)
    increments = np.full(int(ends[-1]), step, dtype=np.intp)
    increments[0] = firsts[0]
    increments[ends[:-1]] = firsts[1:] - firsts[:-1] - step * (counts[:-1] - 1)
    return np.cumsum(increments)
