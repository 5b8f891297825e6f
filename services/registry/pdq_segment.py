"""Immutable pieces of the PDQ near-match index: row-sorted entry sets and their chunk tables.

Nothing here changes after it is built, so a query thread can read a segment while a writer
builds its replacement; `services.registry.pdq_index` owns the mutable state and the locks.

A hash is kept as one 32-byte record (four native-endian uint64 words) in a single contiguous,
64-byte aligned (n, 4) array. FAISS scans that array in place as (n, 32) binary codes, and a
candidate check gathers the whole record, which then lies in one cache line. Measured at 10M
hashes against the former split into two (n, 2) halves (the low half alone rejecting almost
every candidate, the high half read for survivors only): the same query time within noise,
since a random read costs its cache line, not its bytes.

Which chunk keys to probe, and whether to probe at all, is `services.registry.pdq_layout`'s
business; recall is exact either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import faiss
import numpy as np
import numpy.typing as npt

from services.registry.pdq_hits import (
    Hits,
    Mask,
    Matches,
    Positions,
    Rows,
    Words,
    expand_ranges,
    repeat_each,
)
from services.registry.pdq_layout import (
    ChunkLayout,
    SearchEstimate,
    estimate_search,
    layout_for,
    scan_cost,
)

HASH_BYTES = 32
MAX_QUERY_DISTANCE = 64
_HASH_RECORD = np.dtype((np.void, HASH_BYTES))
_ALIGN_BYTES = 64
# Memory one probed candidate takes while its block is verified (its position, owner, record,
# distances and the temporaries between them), and one probe per query (key, start, count).
CANDIDATE_BYTES = 96
PROBE_BYTES = 40
# What one block's probe and candidate arrays may take at once, and the most queries per block.
BLOCK_BYTES = 64 << 20
QUERY_BLOCK = 128
# Candidates verified together: their gathered records (2 MiB) stay in cache between the four
# passes over them. Measured at 1M hashes, blocks of 128 queries at distance 31: 0.116 ms a
# query in groups of 64k candidates against 0.213 ms in groups of the whole block's 700k.
VERIFY_GROUP = 1 << 16
# From this many hashes (8 MiB of codes) a lone query's scan is split over two threads: it
# streams its codes from memory, and two cores stream them 1.6-1.8x as fast as one.
SPLIT_SCAN_FROM = 1 << 18
# Codes a batch of queries scans together: 1 MiB stays in cache while every query of the
# batch passes over it, 1.7x faster than each query streaming all codes from memory.
_SCAN_TILE = 1 << 15
# The type stubs shipped with faiss-cpu 1.15.1 leave this function out.
_hamming_range_search: Callable[..., None] = faiss.hamming_range_search  # type: ignore[attr-defined]


def scan_codes(
    codes: Words, queries: Words, max_distance: int, *, offset: int = 0
) -> Iterator[Hits]:
    """Every code within `max_distance` of each query (FAISS's popcount over 32-byte codes),
    one tile of codes at a time so that a caller can trim each tile's hits as they come.

    Checked on faiss-cpu 1.15.1: `hamming_range_search` keeps distances strictly below its
    radius (hence + 1), releases the GIL, and runs an OpenMP region over the queries whose
    thread count is per calling thread; one thread avoids a lone query waiting at a barrier
    for a core that is busy elsewhere (parallelism comes from `PdqIndex`'s query threads).
    Positions are those in `codes` plus `offset`.
    """
    count, asked = codes.shape[0], queries.shape[0]
    if not count or not asked:
        return
    faiss.omp_set_num_threads(1)
    mine = np.ascontiguousarray(queries).view(np.uint8)
    tile = count if asked == 1 else _SCAN_TILE
    for start in range(0, count, tile):
        part = codes[start : start + tile]
        result = faiss.RangeSearchResult(asked)
        _hamming_range_search(
            faiss.swig_ptr(mine),
            faiss.swig_ptr(part.view(np.uint8)),
            asked,
            part.shape[0],
            max_distance + 1,
            HASH_BYTES,
            result,
        )
        limits = faiss.rev_swig_ptr(result.lims, asked + 1).astype(np.int64)
        total = int(limits[-1])
        if not total:
            continue
        labels = faiss.rev_swig_ptr(result.labels, total).astype(np.intp)
        distances = faiss.rev_swig_ptr(result.distances, total).astype(np.int64)
        if asked == 1:
            owner = np.zeros(total, dtype=np.intp)
        else:
            owner = repeat_each(np.arange(asked, dtype=np.int64), np.diff(limits))
        yield Hits(owner, labels + (offset + start), distances)


def aligned(words: Words) -> Words:
    """`words` as a C-contiguous (n, 4) uint64 array starting on a cache line (copied if not)."""
    if words.flags.c_contiguous and words.ctypes.data % _ALIGN_BYTES == 0:
        return words
    count = words.shape[0]
    buffer = np.empty(count * 4 + _ALIGN_BYTES // 8, dtype=np.uint64)
    skip = (-buffer.ctypes.data % _ALIGN_BYTES) // 8
    out = buffer[skip : skip + count * 4].reshape(count, 4)
    out[...] = words
    return out


def sorted_by_row(rows: Rows, words: Words) -> tuple[Rows, Words]:
    """Sort unless already sorted, the usual case: the database streams hashes by row id."""
    if rows.shape[0] > 1 and (rows[1:] < rows[:-1]).any():
        order = np.argsort(rows, kind="stable")
        records = np.ascontiguousarray(words).view(_HASH_RECORD).reshape(-1)
        return rows[order], records.take(order).view(np.uint64).reshape(-1, 4)
    return rows, words


@dataclass(frozen=True, eq=False)
class Entries:
    """(row, hash) pairs sorted by row, so each row's entries are one slice found by bisection.
    `hashes` is (n, 4) uint64, C-contiguous and aligned (build with `from_words` or `of`)."""

    rows: Rows
    hashes: Words

    @staticmethod
    def empty() -> Entries:
        return Entries(np.empty(0, np.int64), aligned(np.empty((0, 4), np.uint64)))

    @staticmethod
    def of(rows: Rows, words: Words) -> Entries:
        """Entries from pairs already sorted by row."""
        return Entries(np.ascontiguousarray(rows), aligned(words))

    @staticmethod
    def from_words(rows: Rows, words: Words) -> Entries:
        return Entries.of(*sorted_by_row(rows, words))

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @cached_property
    def records(self) -> npt.NDArray[np.void]:
        """One 32-byte record per hash, for GIL-free 1-D gathers (numpy holds the GIL for row
        takes of 2-D arrays)."""
        return self.hashes.view(_HASH_RECORD).reshape(-1)

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.hashes.nbytes)

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
        same = (self.hashes[at] == words[owner]).all(axis=1)
        found[owner[same]] = True
        return found

    def without_rows(self, rows: Rows) -> Entries:
        if not self.rows.size or not rows.size:
            return self
        keep = ~np.isin(self.rows, rows)
        if keep.all():
            return self
        return Entries.of(self.rows[keep], self.hashes[keep])

    def merged(self, others: list[Entries]) -> Entries:
        """One row-sorted set holding this and `others`; the caller guarantees no duplicates."""
        parts = [p for p in (self, *others) if len(p)]
        if len(parts) <= 1:
            return parts[0] if parts else self
        rows = np.concatenate([p.rows for p in parts])
        words = np.concatenate([p.hashes for p in parts])
        return Entries.from_words(rows, words)

    def matches(self, hits: Hits, dead_rows: Rows, limit: int | None) -> Matches:
        """Hits as rows and values, tombstoned rows left out, at most `limit` per query."""
        rows = self.rows[hits.position]
        if dead_rows.size and rows.size:
            alive = ~np.isin(rows, dead_rows)
            hits, rows = hits.where(alive), rows[alive]
        found = Matches(hits.query, rows, hits.distance, self.hashes[hits.position])
        # The caller orders what it gathers; only trimming needs an order here.
        return found if limit is None or len(found) <= limit else found.nearest(limit)

    def scan(
        self,
        queries: Words,
        max_distance: int,
        dead_rows: Rows,
        limit: int | None,
        *,
        helper: Executor | None = None,
    ) -> Matches:
        """Brute force: for the delta, and wherever probing would cost more. A lone query over
        SPLIT_SCAN_FROM hashes or more scans half of them on `helper`'s thread meanwhile."""
        if not len(self):
            return Matches.none()
        if helper is None or queries.shape[0] != 1 or len(self) < SPLIT_SCAN_FROM:
            return self._scan_part(queries, max_distance, dead_rows, limit, 0, len(self))
        half = len(self) // 2 & ~1  # an even count keeps the second half on a cache line
        first = helper.submit(self._scan_part, queries, max_distance, dead_rows, limit, 0, half)
        second = self._scan_part(queries, max_distance, dead_rows, limit, half, len(self))
        return Matches.concatenate([first.result(), second])

    def _scan_part(
        self,
        queries: Words,
        max_distance: int,
        dead_rows: Rows,
        limit: int | None,
        start: int,
        end: int,
    ) -> Matches:
        codes = self.hashes[start:end]
        return Matches.concatenate(
            [
                self.matches(hits, dead_rows, limit)
                for hits in scan_codes(codes, queries, max_distance, offset=start)
            ]
        )

    def verify(self, probed: Hits, queries: Words, max_distance: int) -> Hits:
        """Exact distances of candidates (repeats included); the unique ones in range remain."""
        owner, candidates = probed.query, probed.position
        got = self.records.take(candidates).view(np.uint64).reshape(-1, 4)
        # A lone query is XORed as scalars. For a batch, each query word is taken per
        # candidate from a 1-D column (2-D fancy indexing is 2-3x slower and holds the GIL).
        lone = queries.shape[0] == 1
        columns = None if lone else np.ascontiguousarray(queries.T)

        def theirs(word: int, who: Positions) -> npt.NDArray[np.uint64] | np.uint64:
            if columns is None:
                scalar: np.uint64 = queries[0, word]
                return scalar
            taken: npt.NDArray[np.uint64] = columns[word].take(who)
            return taken

        # The first two words alone (a lower bound of the distance) reject nearly every
        # candidate that is not a match, so the last two are compared for the rest only:
        # measured at 667k hashes, distance 31, batches of 24, 63 us a query down to 27.
        dist = np.bitwise_count(got[:, 0] ^ theirs(0, owner)).astype(np.uint16)
        dist += np.bitwise_count(got[:, 1] ^ theirs(1, owner))
        kept = np.flatnonzero(dist <= max_distance)
        rest = dist[kept]
        for word in (2, 3):
            rest += np.bitwise_count(got[kept, word] ^ theirs(word, owner[kept]))
        dist[kept] = rest
        kept = kept[rest <= max_distance]
        pairs, first = np.unique(owner[kept] * len(self) + candidates[kept], return_index=True)
        owner, positions = np.divmod(pairs, len(self))
        return Hits(owner, positions, dist[kept[first]].astype(np.int64))


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
        word_columns = [entries.hashes[:, word] for word in range(4)]
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

    def buckets(
        self, queries: Words, max_distance: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Start and size in `perm` of every bucket each query probes: two (q, probes) arrays."""
        plan = self.layout.probe_plan(max_distance)
        keys = plan.keys(self.layout.query_chunks(queries))
        starts = self.bounds[keys].astype(np.int64)
        return starts, self.bounds[keys + 1] - starts

    def candidates(
        self, owners: Positions, starts: npt.NDArray[np.int64], counts: npt.NDArray[np.int64]
    ) -> Hits:
        """Every position in the given buckets (repeats included, distance unknown), each
        tagged with the query (`owners`, one per row of `starts`) that probed it."""
        found = self.perm[expand_ranges(starts.ravel(), counts.ravel())].astype(np.intp)
        if owners.shape[0] == 1:
            owner = np.full(found.shape[0], owners[0], dtype=np.intp)
        else:
            owner = repeat_each(owners.astype(np.int64), counts.sum(axis=1))
        return Hits(owner, found, np.empty(0, np.int64))


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

    def estimate(
        self, max_distance: int, *, batch: bool = False, split: bool = False
    ) -> SearchEstimate | None:
        """The probe-or-scan estimate for one query (alone, its scan split or not, or one of a
        batch), or None when there is nothing to probe."""
        if self.tables is None:
            return None
        size = len(self.entries)
        return estimate_search(self.tables.layout, size, max_distance, batch=batch, split=split)

    def cost(self, max_distance: int) -> float:
        """Expected cost of one query here, in units of one hash scanned (see SearchEstimate)."""
        estimate = self.estimate(max_distance)
        if estimate is None:
            return scan_cost(len(self.entries))
        return estimate.cost

    def query_bytes(self, max_distance: int) -> int:
        """Memory one query's probe and (expected) candidate arrays take here."""
        estimate = self.estimate(max_distance)
        if estimate is None or not estimate.probe:
            return 0
        return int(estimate.probes * PROBE_BYTES + estimate.candidates * CANDIDATE_BYTES)

    def search(
        self,
        queries: Words,
        max_distance: int,
        *,
        dead_rows: Rows,
        limit: int | None,
        helper: Executor | None = None,
    ) -> Matches:
        """The live entries within `max_distance` of each query, at most `limit` (the nearest)
        per query: probed or scanned, whichever the estimate says is cheaper (priced for a lone
        query or for a batch, which scans from cache and verifies at a higher price)."""
        lone = queries.shape[0] == 1
        split = lone and helper is not None and len(self.entries) >= SPLIT_SCAN_FROM
        estimate = self.estimate(max_distance, batch=not lone, split=split)
        if estimate is None or not estimate.probe:
            return self.entries.scan(queries, max_distance, dead_rows, limit, helper=helper)
        return self.probe(queries, max_distance, dead_rows=dead_rows, limit=limit)

    def probe(
        self,
        queries: Words,
        max_distance: int,
        *,
        dead_rows: Rows,
        limit: int | None,
        fall_back: bool = True,
    ) -> Matches:
        """`search` through the chunk tables. A query whose buckets hold more than a scan's
        worth of candidates (clustered data) is scanned instead, unless `fall_back` is False
        (for tests and calibration). Candidates are verified in groups of queries holding
        about VERIFY_GROUP of them (a query alone may exceed it)."""
        estimate = self.estimate(max_distance, batch=queries.shape[0] > 1)
        if self.tables is None or estimate is None:
            raise ValueError("an unindexed segment can only be scanned")
        starts, counts = self.tables.buckets(queries, max_distance)
        totals = counts.sum(axis=1)
        probed = estimate.probing_pays(totals) | (not fall_back)
        found = []
        for group in groups_within(np.flatnonzero(probed), totals, VERIFY_GROUP):
            candidates = self.tables.candidates(group, starts[group], counts[group])
            hits = self.entries.verify(candidates, queries, max_distance)
            found.append(self.entries.matches(hits, dead_rows, limit))
        if not probed.all():
            rest = np.flatnonzero(~probed)
            scanned = self.entries.scan(queries[rest], max_distance, dead_rows, limit)
            found.append(scanned.for_queries(rest))
        return Matches.concatenate(found)


def queries_per_block(bytes_per_query: int) -> int:
    """How many queries to search together so that their probe and candidate arrays stay
    within BLOCK_BYTES: up to QUERY_BLOCK (enough that numpy's per-call cost fades), at least 1."""
    return max(1, min(QUERY_BLOCK, BLOCK_BYTES // max(1, bytes_per_query)))


def groups_within(queries: Positions, totals: npt.NDArray[np.int64], most: int) -> list[Positions]:
    """Consecutive runs of `queries` whose candidate totals add up to at most `most` each (a
    query alone over `most` makes a group of its own)."""
    groups: list[Positions] = []
    start, held = 0, 0
    sizes = totals[queries].tolist()
    for i, size in enumerate(sizes):
        if i > start and held + size > most:
            groups.append(queries[start:i])
            start, held = i, 0
        held += size
    if start < len(sizes):
        groups.append(queries[start:])
    return groups
