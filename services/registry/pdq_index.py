"""The registry's in-memory PDQ near-match index, kept in step with the database.

Live entries sit in a few immutable segments (multi-index hash tables, see `pdq_segment`) plus a
small brute-force delta of recent additions. Removing a media row tombstones it in the segments
that hold it and drops it from the delta; tombstoned entries are filtered from hits and dropped
for good when their segment is rebuilt.

Segments grow geometrically, like an LSM tree: a full delta becomes a segment, and a segment is
merged with those after it when together they reach a quarter of the one before. Rebuilding one
10M-hash structure every few thousand additions would cost seconds per flush; this way each
hash is re-indexed a handful of times over its life and a query visits only a few segments.
`rebuild()` merges everything into one segment, the fastest layout to query. To fill an index
from many batches at start, `loader()` packs them and indexes them with a single build.

Answers are bounded: `limit` keeps the nearest hits per query, chosen on numpy arrays in each
segment and again across segments, so only what is returned becomes Python objects; and the
queries searched together shrink with the distance so that one block's probe and candidate
arrays stay within `pdq_segment.BLOCK_BYTES` (64 MiB). `query_cost` prices a query in units of
one hash scanned, for callers that budget work before they start it.

Threads: every mutation publishes a new immutable `_State`, so `query` reads one reference and
never locks. Writers hold `_write_lock` only to compute and swap the next state. A merge builds
outside that lock and, when it swaps its result in, re-applies the tombstones that arrived
while it ran; `_merge_lock` keeps merges one at a time. A merge runs on the thread whose `add`
or `remove_rows` made it due (seconds at 10M hashes): call those from a worker thread, not an
event loop. Writers arriving meanwhile do not wait for it.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np

from services.core.errors import InvalidArgument
from services.registry.pdq_hits import Mask, Matches, Rows, Words
from services.registry.pdq_layout import scan_cost
from services.registry.pdq_segment import (
    HASH_BYTES,
    MAX_QUERY_DISTANCE,
    Entries,
    Segment,
    queries_per_block,
    sorted_by_row,
)

# What a query costs outside the segments (packing, merging, building the answer), in units
# of one hash scanned, as the segments' costs are (see pdq_layout.SearchEstimate).
QUERY_CALL_UNITS = 5_000.0
# A segment is merged into the one before it once it reaches 1/_GROWTH of that one's size.
_GROWTH = 4
# A segment whose tombstoned share passes 1/_DEAD_SHARE is rebuilt without them.
_DEAD_SHARE = 4


@dataclass(frozen=True)
class NearHit:
    """A stored PDQ value within range of a query: its media row, the value, the distance."""

    row_id: int
    value: bytes
    distance: int


def nearest(answers: Iterable[Iterable[NearHit]], limit: int) -> list[NearHit]:
    """The first `limit` hits of several answers to one query, each sorted as `query` sorts
    them (by distance, row, value)."""
    return list(islice(heapq.merge(*answers, key=_order), limit))


def _order(hit: NearHit) -> tuple[int, int, bytes]:
    return hit.distance, hit.row_id, hit.value


@dataclass(frozen=True, eq=False)
class _Part:
    """A segment together with the rows tombstoned in it since it was built."""

    segment: Segment
    dead_rows: Rows
    dead_count: int

    @staticmethod
    def of(segment: Segment) -> _Part:
        return _Part(segment, np.empty(0, np.int64), 0)

    @property
    def live(self) -> int:
        return len(self.segment.entries) - self.dead_count

    def kill(self, rows: Rows) -> _Part:
        """The same part with `rows` (sorted, unique) tombstoned; self if none of them is here."""
        _, counts = self.segment.entries.row_ranges(rows)
        present = counts > 0
        if self.dead_rows.size:
            present &= ~np.isin(rows, self.dead_rows, assume_unique=True)
        if not present.any():
            return self
        dead = np.union1d(self.dead_rows, rows[present])
        return _Part(self.segment, dead, self.dead_count + int(counts[present].sum()))

    def live_entries(self) -> Entries:
        entries = self.segment.entries
        if not self.dead_count:
            return entries
        return entries.without_rows(self.dead_rows)

    def search(
        self, queries: Words, max_distance: int, limit: int | None, helper: Executor | None
    ) -> Matches:
        return self.segment.search(
            queries, max_distance, dead_rows=self.dead_rows, limit=limit, helper=helper
        )


@dataclass(frozen=True, eq=False)
class _State:
    parts: tuple[_Part, ...]
    delta: Entries

    def __len__(self) -> int:
        return sum(p.live for p in self.parts) + len(self.delta)

    def cost(self, max_distance: int) -> float:
        """One query's expected cost here, in units of one hash scanned."""
        segments = sum(p.segment.cost(max_distance) for p in self.parts)
        delta = scan_cost(len(self.delta)) if len(self.delta) else 0.0
        return QUERY_CALL_UNITS + segments + delta

    def block_size(self, max_distance: int) -> int:
        """Queries to search together so that a block's arrays stay within BLOCK_BYTES."""
        per_query = max((p.segment.query_bytes(max_distance) for p in self.parts), default=0)
        return queries_per_block(per_query)

    def stored(self, rows: Rows, words: Words) -> Mask:
        """Which pairs are already live anywhere, so that adding them again changes nothing."""
        found = self.delta.stored(rows, words, np.empty(0, np.int64))
        for part in self.parts:
            found |= part.segment.entries.stored(rows, words, part.dead_rows)
        return found


@dataclass(frozen=True)
class _MergePlan:
    start: int
    inputs: tuple[_Part, ...]


class PdqIndex:
    """Exact-recall Hamming range search over PDQ hashes, each tagged with its media row id."""

    def __init__(
        self, *, delta_limit: int = 4096, build_threads: int = 2, query_threads: int = 2
    ) -> None:
        """`build_threads` sort chunk tables in parallel; `query_threads` split `query_many`,
        and with two or more a lone query's scan of a large segment runs on two threads (the
        helper's thread is started on first use)."""
        if delta_limit < 1 or build_threads < 1 or query_threads < 1:
            raise ValueError("delta_limit, build_threads and query_threads must be at least 1")
        self._delta_limit = delta_limit
        self._build_threads = build_threads
        self._query_threads = query_threads
        self._scan_helper = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="pdq-scan")
            if query_threads > 1
            else None
        )
        self._state = _State((), Entries.empty())
        self._write_lock = threading.Lock()
        self._merge_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._state)

    @property
    def nbytes(self) -> int:
        """Bytes held by the index arrays, for stats; excludes a merge's transient copy."""
        state = self._state
        return sum(p.segment.nbytes + p.dead_rows.nbytes for p in state.parts) + (
            state.delta.nbytes
        )

    @property
    def segment_count(self) -> int:
        """Segments a query visits; each adds ~0.1 ms to a query (more while not yet indexed)."""
        return len(self._state.parts)

    @property
    def pending_count(self) -> int:
        """Entries in the delta, which every query scans by brute force."""
        return len(self._state.delta)

    def add(self, row_ids: Sequence[int], values: Sequence[bytes]) -> None:
        """Store each (row, value) pair once; may merge segments on the calling thread."""
        self._add_packed(*_pack(row_ids, values))

    def loader(self) -> PdqLoader:
        """A loader that gathers many batches and adds them with a single build."""
        return PdqLoader(self)

    def _add_packed(self, rows: Rows, words: Words) -> None:
        rows, words = _first_of_each_pair(rows, words)
        with self._write_lock:
            state = self._state
            fresh = ~state.stored(rows, words)
            if not fresh.all():
                rows, words = rows[fresh], words[fresh]
            if rows.size:
                delta = state.delta.merged([Entries.from_words(rows, words)])
                self._state = _State(state.parts, delta)
        self._merge_while_needed()

    def remove_rows(self, row_ids: Iterable[int]) -> None:
        """Drop every entry of these media rows; tombstones past a share trigger a rebuild."""
        rows = np.unique(np.fromiter(row_ids, dtype=np.int64))
        if not rows.size:
            return
        with self._write_lock:
            state = self._state
            parts = tuple(p.kill(rows) for p in state.parts)
            self._state = _State(parts, state.delta.without_rows(rows))
        self._merge_while_needed()

    def rebuild(self) -> None:
        """Fold the delta, every segment and all tombstones into one segment. Only the caller
        waits: queries, and writes (kept for after the swap), go on from other threads."""
        with self._merge_lock:
            plan = self._plan(full=True)
            if plan is not None:
                self._merge(plan)

    def query(self, value: bytes, max_distance: int, *, limit: int | None = None) -> list[NearHit]:
        """The live entries within `max_distance` (inclusive), sorted by (distance, row_id,
        value); only the first `limit` of them when a limit is given."""
        _check_distance(max_distance)
        _check_limit(limit)
        one = _pack_one(value)[None, :]
        return _search(self._state, one, max_distance, limit, self._scan_helper)[0]

    def query_many(
        self, values: Sequence[bytes], max_distance: int, *, limit: int | None = None
    ) -> list[list[NearHit]]:
        """`query` for each value, all answered from the same consistent snapshot."""
        _check_distance(max_distance)
        _check_limit(limit)
        state = self._state
        words = _pack_values(values)
        block = state.block_size(max_distance)
        blocks = np.array_split(words, max(1, -(-len(values) // block)))
        threads = min(self._query_threads, len(blocks))

        # A lone value is a lone query: its scan may be split like `query`'s.
        helper = self._scan_helper if len(values) == 1 else None

        def search(queries: Words) -> list[list[NearHit]]:
            return _search(state, queries, max_distance, limit, helper)

        if threads <= 1:
            return [hits for queries in blocks for hits in search(queries)]
        # Gathers, sorts and FAISS scans release the GIL, so a second thread overlaps them.
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return [hits for answers in pool.map(search, blocks) for hits in answers]

    def query_cost(self, max_distance: int) -> float:
        """Expected cost of one query at `max_distance` against the current state, in units
        of one hash scanned from memory (pdq_layout.UNIT_NS, about 1 ns of one core here): the
        sum over segments of the cheaper of probing and scanning, plus the delta's scan and a
        per-query constant (QUERY_CALL_UNITS, and SCAN_CALL_UNITS per segment). Never more
        than scanning every entry held plus those constants; cheap (arithmetic over a few
        segments, the plan shapes behind it cached per layout and distance)."""
        _check_distance(max_distance)
        return self._state.cost(max_distance)

    def _merge_while_needed(self) -> None:
        """Run due merges here unless another thread is merging (its loop will see our work)."""
        while self._merge_due():
            if not self._merge_lock.acquire(blocking=False):
                return
            try:
                while (plan := self._plan(full=False)) is not None:
                    self._merge(plan)
            finally:
                self._merge_lock.release()

    def _merge_due(self) -> bool:
        state = self._state
        return len(state.delta) > self._delta_limit or _merge_start(state.parts) is not None

    def _plan(self, *, full: bool) -> _MergePlan | None:
        """Freeze the delta into an unindexed segment if due, then choose what to merge."""
        with self._write_lock:
            state = self._state
            parts = state.parts
            if len(state.delta) and (full or len(state.delta) > self._delta_limit):
                parts = (*parts, _Part.of(Segment(state.delta, None)))
                self._state = _State(parts, Entries.empty())
            start = _full_merge_start(parts) if full else _merge_start(parts)
            if start is None:
                return None
            return _MergePlan(start, parts[start:])

    def _merge(self, plan: _MergePlan) -> None:
        """Build outside the write lock, then swap in and carry over tombstones added meanwhile."""
        live = [p.live_entries() for p in plan.inputs]
        entries = live[0].merged(live[1:]) if len(live) > 1 else live[0]
        built = Segment(entries, None)
        if len(entries):
            built = Segment.indexed(entries, threads=self._build_threads)
        with self._write_lock:
            state = self._state
            current = state.parts[plan.start : plan.start + len(plan.inputs)]
            if any(c.segment is not i.segment for c, i in zip(current, plan.inputs, strict=True)):
                raise RuntimeError("PDQ index segments changed under a merge")
            merged = _Part.of(built)
            for now, before in zip(current, plan.inputs, strict=True):
                newly_dead = np.setdiff1d(now.dead_rows, before.dead_rows, assume_unique=True)
                merged = merged.kill(newly_dead)
            after = state.parts[plan.start + len(plan.inputs) :]
            kept = (merged,) if merged.live else ()
            self._state = _State((*state.parts[: plan.start], *kept, *after), state.delta)


class PdqLoader:
    """Fills an index from many batches (the database streamed at start) with one merge; one
    loader per producer thread.

    Each `add` only validates and packs its batch; `commit` adds them all at once. Feeding the
    batches to `PdqIndex.add` instead would re-index the largest segment every time the newer
    ones reach a quarter of it: at 10M hashes in 100k batches, ~25 s instead of ~8 s.
    """

    def __init__(self, index: PdqIndex) -> None:
        self._index = index
        self._rows: list[Rows] = []
        self._words: list[Words] = []

    def add(self, row_ids: Sequence[int], values: Sequence[bytes]) -> None:
        rows, words = _pack(row_ids, values)
        self._rows.append(rows)
        self._words.append(words)

    def commit(self) -> None:
        """Make every batch given so far searchable; the loader can then be used again."""
        if not self._rows:
            return
        rows, words = np.concatenate(self._rows), np.concatenate(self._words)
        self._rows, self._words = [], []
        self._index._add_packed(rows, words)


def _merge_start(parts: tuple[_Part, ...]) -> int | None:
    """First segment of the tail due for merging, or None when the shape is fine as it is."""
    if not parts:
        return None
    start = len(parts) - 1
    tail = parts[start].live
    while start > 0 and parts[start - 1].live < _GROWTH * tail:
        start -= 1
        tail += parts[start].live
    for i, part in enumerate(parts[:start]):
        if part.dead_count * _DEAD_SHARE > len(part.segment.entries):
            return i
    last = parts[-1]
    if start == len(parts) - 1 and last.segment.tables is not None:
        return start if last.dead_count * _DEAD_SHARE > len(last.segment.entries) else None
    return start


def _full_merge_start(parts: tuple[_Part, ...]) -> int | None:
    if not parts:
        return None
    only = parts[0]
    if len(parts) == 1 and only.segment.tables is not None and not only.dead_count:
        return None
    return 0


def _search(
    state: _State,
    queries: Words,
    max_distance: int,
    limit: int | None,
    helper: Executor | None,
) -> list[list[NearHit]]:
    """Answers for a batch of queries, each sorted by (distance, row_id, value) and cut to
    `limit` before any NearHit is made."""
    found = [part.search(queries, max_distance, limit, helper) for part in state.parts]
    if len(state.delta):
        found.append(state.delta.scan(queries, max_distance, np.empty(0, np.int64), limit))
    return _near_hits(Matches.concatenate(found).nearest(limit), queries.shape[0])


def _near_hits(matches: Matches, queries: int) -> list[list[NearHit]]:
    """Matches sorted by query, as one list of NearHit per query."""
    grouped: list[list[NearHit]] = [[] for _ in range(queries)]
    raw = matches.hashes.tobytes()
    for i, (query, row, dist) in enumerate(
        zip(matches.query.tolist(), matches.row.tolist(), matches.distance.tolist(), strict=True)
    ):
        grouped[query].append(NearHit(row, raw[i * HASH_BYTES : (i + 1) * HASH_BYTES], dist))
    return grouped


def _check_distance(max_distance: int) -> None:
    if not 0 <= max_distance <= MAX_QUERY_DISTANCE:
        raise InvalidArgument(
            f"PDQ max distance must be between 0 and {MAX_QUERY_DISTANCE}, not {max_distance}"
        )


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"a PDQ query limit is at least 1, not {limit}")


def _pack(row_ids: Sequence[int], values: Sequence[bytes]) -> tuple[Rows, Words]:
    """Rows as int64 and values as (n, 4) uint64 words, rejecting any value not 32 bytes long."""
    count = len(values)
    if len(row_ids) != count:
        raise InvalidArgument(f"{len(row_ids)} row ids for {count} PDQ values")
    return np.fromiter(row_ids, dtype=np.int64, count=count), _pack_values(values)


def _pack_values(values: Sequence[bytes]) -> Words:
    count = len(values)
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=count)
    if (lengths != HASH_BYTES).any():
        raise InvalidArgument(f"a PDQ value is {HASH_BYTES} bytes long")
    if not count:
        return np.empty((0, 4), dtype=np.uint64)
    return np.frombuffer(b"".join(values), dtype=np.uint64).reshape(count, 4)


def _pack_one(value: bytes) -> Words:
    if len(value) != HASH_BYTES:
        raise InvalidArgument(f"a PDQ value is {HASH_BYTES} bytes long, not {len(value)}")
    return np.frombuffer(value, dtype=np.uint64)


def _first_of_each_pair(rows: Rows, words: Words) -> tuple[Rows, Words]:
    """Drop repeated (row, value) pairs within one batch; only rows seen twice are compared."""
    rows, words = sorted_by_row(rows, words)
    repeated = rows[1:] == rows[:-1]
    if not repeated.any():
        return rows, words
    suspect = np.flatnonzero(np.concatenate(([False], repeated)) | np.append(repeated, False))
    keys = (*(words[suspect, w] for w in (3, 2, 1, 0)), rows[suspect])
    ranked = suspect[np.lexsort(keys)]
    same = (rows[ranked[1:]] == rows[ranked[:-1]]) & (words[ranked[1:]] == words[ranked[:-1]]).all(
        axis=1
    )
    keep = np.ones(rows.shape[0], dtype=np.bool_)
    keep[ranked[1:][same]] = False
    return rows[keep], words[keep]
