"""Immutable pieces of the PDQ near-match index: row-sorted entry sets and their chunk tables.

Nothing here changes after it is built, so a query thread can read a segment while a writer
builds its replacement; `services.registry.pdq_index` owns the mutable state and the locks.

A hash is kept as four native-endian uint64 words split into two (n, 2) arrays: the low half
alone rejects almost every false candidate (two random 128-bit halves are within 31 bits with
probability ~1e-9), so the high half is read only for the few survivors. At 10M hashes a
candidate's cost is its random memory read, hence the split and the 16-byte record view used
for gathers (numpy releases the GIL for 1-D takes, not for row takes of 2-D arrays).

Which chunk keys to probe is `services.registry.pdq_layout`'s business; recall is exact.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from services.registry.pdq_layout import ChunkLayout, layout_for

HASH_BYTES = 32
MAX_QUERY_DISTANCE = 64
# Above this share of a segment's size the candidate list costs more than a linear scan.
SCAN_SHARE = 0.25
_RECORD = np.dtype((np.void, 16))
_HASH_RECORD = np.dtype((np.void, HASH_BYTES))

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

    @staticmethod
    def concatenate(parts: list[Hits]) -> Hits:
        if len(parts) == 1:
            return parts[0]
        return Hits(
            np.concatenate([Hits.none().query, *(p.query for p in parts)]),
            np.concatenate([Hits.none().position, *(p.position for p in parts)]),
            np.concatenate([Hits.none().distance, *(p.distance for p in parts)]),
        )

    def for_queries(self, numbers: Positions) -> Hits:
        """Renumber queries of a sub-batch back to the batch they were taken from."""
        return Hits(numbers[self.query], self.position, self.distance)

    def where(self, keep: Mask) -> Hits:
        return Hits(self.query[keep], self.position[keep], self.distance[keep])


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


def sorted_by_row(rows: Rows, words: Words) -> tuple[Rows, Words]:
    """Sort unless already sorted, the usual case: the database streams hashes by row id."""
    if rows.shape[0] > 1 and (rows[1:] < rows[:-1]).any():
        order = np.argsort(rows, kind="stable")
        records = np.ascontiguousarray(words).view(_HASH_RECORD).reshape(-1)
        return rows[order], records.take(order).view(np.uint64).reshape(-1, 4)
    return rows, words


@dataclass(frozen=True, eq=False)
class Entries:
    """(row, hash) pairs sorted by row, so each row's entries are one slice found by bisection."""

    rows: Rows
    lo: Words
    hi: Words

    @staticmethod
    def empty() -> Entries:
        return Entries(
            np.empty(0, np.int64), np.empty((0, 2), np.uint64), np.empty((0, 2), np.uint64)
        )

    @staticmethod
    def from_words(rows: Rows, words: Words) -> Entries:
        rows, words = sorted_by_row(rows, words)
        return Entries(
            np.ascontiguousarray(rows),
            np.ascontiguousarray(words[:, :2]),
            np.ascontiguousarray(words[:, 2:]),
        )

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @cached_property
    def lo_records(self) -> npt.NDArray[np.void]:
        """`lo` as one 16-byte record per hash, for GIL-free 1-D gathers."""
        return self.lo.view(_RECORD).reshape(-1)

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.lo.nbytes + self.hi.nbytes)

    def words(self, positions: Positions | None = None) -> Words:
        """Rebuild full (k, 4) hashes; only done for hits and merges, never per candidate."""
        if positions is None:
            return np.hstack((self.lo, self.hi))
        return np.hstack((self.lo[positions], self.hi[positions]))

    def row_ranges(self, rows: Rows) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Start and count of each given row's slice (count 0 where the row is absent)."""
        starts = np.searchsorted(self.rows, rows, side="left").astype(np.int64)
        ends = np.searchsorted(self.rows, rows, side="right").astype(np.int64)
        return starts, ends - starts

    def stored(self, rows: Rows, words: Words, dead_rows: Rows) -> Mask:
        """Which of the given pairs are held here on a row that has not been tombstoned."""
        starts, counts = self.row_ranges(rows)
        if dead_rows.size:
            counts[np.isin(rows, dead_rows)] = 0
        found = np.zeros(rows.shape[0], dtype=np.bool_)
        if not counts.any():
            return found
        owner = repeat_each(np.arange(rows.shape[0], dtype=np.int64), counts)
        at = expand_ranges(starts, counts)
        same = (self.words(at) == words[owner]).all(axis=1)
        found[owner[same]] = True
        return found

    def without_rows(self, rows: Rows) -> Entries:
        if not self.rows.size or not rows.size:
            return self
        keep = ~np.isin(self.rows, rows)
        if keep.all():
            return self
        return Entries(self.rows[keep], self.lo[keep], self.hi[keep])

    def merged(self, others: list[Entries]) -> Entries:
        """One row-sorted set holding this and `others`; the caller guarantees no duplicates."""
        parts = [p for p in (self, *others) if len(p)]
        if len(parts) <= 1:
            return parts[0] if parts else self
        rows = np.concatenate([p.rows for p in parts])
        words = np.concatenate([p.words() for p in parts])
        return Entries.from_words(rows, words)

    def scan(self, queries: Words, max_distance: int) -> Hits:
        """Brute force: for the small delta, and for radii where probing would touch most rows."""
        found = []
        for i, query in enumerate(queries):
            dist = np.bitwise_count(self.lo[:, 0] ^ query[0]).astype(np.int64)
            dist += np.bitwise_count(self.lo[:, 1] ^ query[1])
            dist += np.bitwise_count(self.hi[:, 0] ^ query[2])
            dist += np.bitwise_count(self.hi[:, 1] ^ query[3])
            at = np.flatnonzero(dist <= max_distance)
            found.append(Hits(np.full(at.shape[0], i, dtype=np.intp), at, dist[at]))
        return Hits.concatenate(found)

    def verify(self, probed: Hits, queries: Words, max_distance: int) -> Hits:
        """Exact distances of candidates (repeats included); the unique ones in range remain."""
        owner, candidates = probed.query, probed.position
        low = self.lo_records.take(candidates).view(np.uint64).reshape(-1, 2)
        # A lone query is XORed as a scalar: two gathers fewer on its hot path.
        single = queries.shape[0] == 1
        near = np.bitwise_count(low[:, 0] ^ (queries[0, 0] if single else queries[owner, 0]))
        near += np.bitwise_count(low[:, 1] ^ (queries[0, 1] if single else queries[owner, 1]))
        kept = np.flatnonzero(near <= max_distance)
        pairs, first = np.unique(owner[kept] * len(self) + candidates[kept], return_index=True)
        owner, positions = np.divmod(pairs, len(self))
        high = self.hi[positions]
        dist = near[kept[first]].astype(np.int64)
        dist += np.bitwise_count(high[:, 0] ^ queries[owner, 2])
        dist += np.bitwise_count(high[:, 1] ^ queries[owner, 3])
        within = dist <= max_distance
        return Hits(owner[within], positions[within], dist[within])


@dataclass(frozen=True, eq=False)
class ChunkTables:
    """Per chunk, positions sorted by chunk value, and where each (chunk, value) run starts.

    All chunks share one `perm` and one `bounds` array (chunk i's key k is entry
    layout.bases[i] + k) so one gather fetches every probe's range. Positions and bounds are
    uint32: 4 bytes per chunk per hash is most of the index's memory.
    """

    layout: ChunkLayout
    perm: npt.NDArray[np.uint32]
    bounds: npt.NDArray[np.uint32]

    @staticmethod
    def build(
        entries: Entries, *, threads: int = 2, layout: ChunkLayout | None = None
    ) -> ChunkTables:
        """Sort (key << 32 | position) per chunk: numpy's SIMD sort of uint64 beats argsort, and
        releases the GIL, so chunks are built in parallel."""
        n = len(entries)
        if n >= 1 << 32:
            raise ValueError("a PDQ index segment holds fewer than 2**32 hashes")
        layout = layout if layout is not None else layout_for(n)
        perm = np.empty(len(layout.widths) * n, dtype=np.uint32)
        bounds = np.zeros(layout.key_count + 1, dtype=np.uint32)
        word_columns = [entries.lo[:, 0], entries.lo[:, 1], entries.hi[:, 0], entries.hi[:, 1]]
        positions = np.arange(n, dtype=np.uint64)

        def build_chunk(chunk: int) -> None:
            column = layout.column(word_columns, chunk)
            keyed = (column << np.uint64(32)) | positions
            keyed.sort()
            perm[chunk * n : (chunk + 1) * n] = keyed
            counts = np.bincount(column.astype(np.intp), minlength=1 << layout.widths[chunk])
            start = layout.bases[chunk]
            bounds[start + 1 : start + counts.shape[0] + 1] = np.cumsum(counts) + chunk * n

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            list(pool.map(build_chunk, range(len(layout.widths))))
        return ChunkTables(layout, perm, bounds)

    @property
    def nbytes(self) -> int:
        return int(self.perm.nbytes + self.bounds.nbytes)

    def probe(self, queries: Words, max_distance: int, limit: int) -> tuple[Hits, Mask]:
        """Every position in every probed bucket (repeats included, distance unknown) and
        which queries were probed: past `limit` candidates a query is left to a linear scan."""
        plan = self.layout.probe_plan(max_distance)
        if plan is None or plan.masks.shape[0] > limit:
            return Hits.none(), np.zeros(queries.shape[0], dtype=np.bool_)
        keys = plan.keys(self.layout.query_chunks(queries))
        starts = self.bounds[keys].astype(np.int64)
        counts = self.bounds[keys + 1] - starts
        totals = counts.sum(axis=1)
        probed = totals <= limit
        if not probed.all():
            starts, counts, totals = starts[probed], counts[probed], totals[probed]
        candidates = self.perm[expand_ranges(starts.ravel(), counts.ravel())].astype(np.intp)
        if queries.shape[0] == 1:
            owner = np.zeros(candidates.shape[0], dtype=np.intp)
        else:
            owner = repeat_each(np.flatnonzero(probed).astype(np.int64), totals)
        return Hits(owner, candidates, np.empty(0, np.int64)), probed


@dataclass(frozen=True, eq=False)
class Segment:
    """An entry set with (or, while it is being indexed, without) its chunk tables."""

    entries: Entries
    tables: ChunkTables | None

    @staticmethod
    def indexed(
        entries: Entries, *, threads: int = 2, layout: ChunkLayout | None = None
    ) -> Segment:
        return Segment(entries, ChunkTables.build(entries, threads=threads, layout=layout))

    @property
    def nbytes(self) -> int:
        return self.entries.nbytes + (self.tables.nbytes if self.tables is not None else 0)

    def search(self, queries: Words, max_distance: int) -> Hits:
        """Every entry within `max_distance` of each query, once per query."""
        if self.tables is None:
            return self.entries.scan(queries, max_distance)
        limit = int(len(self.entries) * SCAN_SHARE)
        probed, done = self.tables.probe(queries, max_distance, limit)
        found = self.entries.verify(probed, queries, max_distance)
        if done.all():
            return found
        rest = np.flatnonzero(~done)
        scanned = self.entries.scan(queries[rest], max_distance)
        return Hits.concatenate([found, scanned.for_queries(rest)])
