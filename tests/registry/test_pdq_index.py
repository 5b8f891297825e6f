"""The PDQ near-match index answers exactly what a brute-force scan answers, whatever its shape.

Every result is checked against a plain numpy popcount over the entries the test believes are
live, at thresholds on both sides of each 16-bit chunk boundary and up to the largest allowed,
on random and on clustered data (many near duplicates, rows holding several values), with the
delta non-empty, with tombstones, after merges and rebuilds, and while another thread rebuilds.
Each search path (probe, probe falling back to a scan per query, scan) is checked on its own,
since which one runs depends on measured prices. No test measures time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from services.core.errors import InvalidArgument
from services.registry.pdq_hits import Matches
from services.registry.pdq_index import QUERY_CALL_UNITS, NearHit, PdqIndex
from services.registry.pdq_layout import (
    NARROW,
    SCAN_CALL_UNITS,
    WIDE,
    ChunkLayout,
    allocate_radii,
    estimate_search,
)
from services.registry.pdq_segment import (
    BLOCK_BYTES,
    QUERY_BLOCK,
    SPLIT_SCAN_FROM,
    Entries,
    Segment,
    groups_within,
    queries_per_block,
)

THRESHOLDS = (0, 1, 15, 16, 31, 32, 47, 48, 64)
CHECKED = (0, 31, 48, 64)
Pairs = set[tuple[int, bytes]]
NO_ROWS = np.empty(0, np.int64)


def random_values(rng: np.random.Generator, count: int) -> list[bytes]:
    return [rng.bytes(32) for _ in range(count)]


def flip_bits(value: bytes, rng: np.random.Generator, bits: int) -> bytes:
    """`value` at Hamming distance exactly `bits`."""
    out = bytearray(value)
    for bit in rng.choice(256, size=bits, replace=False):
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def distance(a: bytes, b: bytes) -> int:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


class BruteForce:
    """The reference: a popcount over every live pair, answers in the index's documented order."""

    def __init__(self, pairs: Pairs) -> None:
        self.listed = sorted(pairs)
        joined = b"".join(v for _, v in self.listed)
        self.words = np.frombuffer(joined, dtype=np.uint64).reshape(-1, 4)

    def query(self, query: bytes, max_distance: int) -> list[NearHit]:
        dist = np.bitwise_count(self.words ^ np.frombuffer(query, dtype=np.uint64)).sum(axis=1)
        hits = [
            NearHit(self.listed[i][0], self.listed[i][1], int(dist[i]))
            for i in np.flatnonzero(dist <= max_distance)
        ]
        return sorted(hits, key=lambda h: (h.distance, h.row_id, h.value))


def brute_force(pairs: Pairs, query: bytes, max_distance: int) -> list[NearHit]:
    return BruteForce(pairs).query(query, max_distance)


def planted_corpus(seed: int, count: int) -> tuple[list[int], list[bytes], list[bytes]]:
    """Random hashes plus near duplicates of some of them at every distance 0..64; returns
    rows, values and queries (each planted original, and fresh random values)."""
    rng = np.random.default_rng(seed)
    values = random_values(rng, count)
    originals = values[: 65 * 2 : 2]
    planted = [flip_bits(v, rng, d) for d, v in enumerate(originals)]
    values += planted
    rows = list(range(len(values)))
    queries = originals + [flip_bits(p, rng, 3) for p in planted[::4]] + random_values(rng, 8)
    return rows, values, queries


def clustered_corpus(seed: int, count: int) -> tuple[list[int], list[bytes], list[bytes]]:
    """A few centres with hundreds of near duplicates each (0-40 bits away), some rows holding
    several values at one distance from a centre (so that values break ties), plus random
    hashes; queries are the centres, near copies of them and random values."""
    rng = np.random.default_rng(seed)
    centres = random_values(rng, 4)
    values = random_values(rng, count)
    rows = list(range(count))
    for c, centre in enumerate(centres):
        for i in range(300):
            values.append(flip_bits(centre, rng, int(rng.integers(0, 41))))
            rows.append(count + c * 1000 + i)
        for i in range(5):  # one row, three values, all 6 bits from the centre
            for _ in range(3):
                values.append(flip_bits(centre, rng, 6))
                rows.append(count + c * 1000 + 500 + i)
    queries = centres + [flip_bits(c, rng, 4) for c in centres] + random_values(rng, 4)
    return rows, values, queries


def as_words(values: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(values), dtype=np.uint64).reshape(-1, 4)


def per_query(matches: Matches, queries: int) -> list[list[NearHit]]:
    """Matches as the index returns them: per query, sorted by (distance, row, value)."""
    answers: list[list[NearHit]] = [[] for _ in range(queries)]
    ordered = matches.nearest(None)
    for i in range(len(ordered)):
        hit = NearHit(int(ordered.row[i]), ordered.hashes[i].tobytes(), int(ordered.distance[i]))
        answers[int(ordered.query[i])].append(hit)
    return answers


def assert_matches_brute_force(index: PdqIndex, pairs: Pairs, queries: list[bytes]) -> None:
    found_any = False
    reference = BruteForce(pairs)
    for max_distance in THRESHOLDS:
        expected = [reference.query(q, max_distance) for q in queries]
        assert index.query_many(queries, max_distance) == expected, max_distance
        for query, want in zip(queries[:6], expected, strict=False):
            assert index.query(query, max_distance) == want
        found_any = found_any or any(len(e) > 1 for e in expected)
    assert found_any, "the planted near duplicates should give multi-hit answers"


CORPORA = {
    "random": lambda: planted_corpus(seed=11, count=2000),
    "clustered": lambda: clustered_corpus(seed=13, count=1500),
}


@pytest.fixture
def corpus() -> tuple[list[int], list[bytes], list[bytes]]:
    return planted_corpus(seed=7, count=3000)


@pytest.mark.parametrize("kind", sorted(CORPORA))
def test_static_segment_matches_brute_force(kind: str) -> None:
    rows, values, queries = CORPORA[kind]()
    index = PdqIndex(delta_limit=10)
    index.add(rows, values)
    index.rebuild()
    assert index.segment_count == 1
    assert len(index) == len(values)
    assert_matches_brute_force(index, set(zip(rows, values, strict=True)), queries)


@pytest.mark.parametrize("kind", sorted(CORPORA))
def test_segments_and_delta_together_match_brute_force(kind: str) -> None:
    rows, values, queries = CORPORA[kind]()
    index = PdqIndex(delta_limit=100)
    for start in range(0, len(values), 170):
        index.add(rows[start : start + 170], values[start : start + 170])
    assert index.segment_count >= 2
    assert index.pending_count > 0
    pairs = set(zip(rows, values, strict=True))
    assert_matches_brute_force(index, pairs, queries)
    index.rebuild()
    assert index.segment_count == 1
    assert_matches_brute_force(index, pairs, queries)


@pytest.mark.parametrize("layout", [NARROW, WIDE], ids=["narrow", "wide"])
@pytest.mark.parametrize("kind", sorted(CORPORA))
@pytest.mark.parametrize("tombstones", [False, True], ids=["live", "tombstones"])
def test_every_search_path_matches_brute_force(
    layout: ChunkLayout, kind: str, tombstones: bool
) -> None:
    """Probing every query, probing with the per-query fall-back to a scan, scanning, and
    whichever `search` picks; WIDE (chosen from 2M hashes on) is forced on a small segment."""
    rows, values, queries = CORPORA[kind]()
    entries = Entries.from_words(np.array(rows, dtype=np.int64), as_words(values))
    segment = Segment.indexed(entries, layout=layout)
    dead = np.unique(np.array(rows[::7], dtype=np.int64)) if tombstones else NO_ROWS
    gone = set(dead.tolist())
    reference = BruteForce({(r, v) for r, v in zip(rows, values, strict=True) if r not in gone})
    words = as_words(queries)
    for d in CHECKED:
        expected = [reference.query(q, d) for q in queries]
        paths = {
            "search": segment.search(words, d, dead_rows=dead, limit=None),
            "probe": segment.probe(words, d, dead_rows=dead, limit=None, fall_back=False),
            "fall back": segment.probe(words, d, dead_rows=dead, limit=None),
            "scan": segment.entries.scan(words, d, dead, None),
        }
        for name, found in paths.items():
            assert per_query(found, len(queries)) == expected, (name, d)
        assert any(len(e) > 50 for e in expected) or kind == "random" or d < 31


def test_clustered_queries_fall_back_to_a_scan_and_the_rest_are_probed() -> None:
    """A query among thousands of near duplicates finds its buckets full; scanning it and
    probing the others in one block still answers each exactly."""
    rng = np.random.default_rng(21)
    centre = random_values(rng, 1)[0]
    values = random_values(rng, 200_000) + [flip_bits(centre, rng, 12) for _ in range(3000)]
    rows = list(range(len(values)))
    segment = Segment.indexed(Entries.from_words(np.array(rows), as_words(values)))
    queries = [centre, *random_values(rng, 5), flip_bits(centre, rng, 3)]
    words = as_words(queries)
    estimate = segment.estimate(31)
    assert segment.tables is not None and estimate is not None and estimate.probe
    paid = estimate.probing_pays(segment.tables.buckets(words, 31)[1].sum(axis=1))
    assert paid.tolist() == [False, True, True, True, True, True, False]
    reference = BruteForce(set(zip(rows, values, strict=True)))
    found = per_query(segment.search(words, 31, dead_rows=NO_ROWS, limit=None), len(queries))
    assert found == [reference.query(q, 31) for q in queries]
    assert len(found[0]) == 3000


@pytest.mark.parametrize("limit", [1, 2, 7])
def test_limit_keeps_the_nearest_in_order(limit: int) -> None:
    """Segments, the delta and tombstones together; ties on distance broken by row, then by
    value (rows holding several values at one distance)."""
    rows, values, queries = clustered_corpus(seed=17, count=1000)
    index = PdqIndex(delta_limit=500)
    index.add(rows[:-400], values[:-400])
    index.rebuild()
    index.add(rows[-400:], values[-400:])
    assert index.pending_count == 400
    index.remove_rows(rows[::11])
    gone = set(rows[::11])
    reference = BruteForce({(r, v) for r, v in zip(rows, values, strict=True) if r not in gone})
    for d in CHECKED:
        expected = [reference.query(q, d)[:limit] for q in queries]
        assert index.query_many(queries, d, limit=limit) == expected, d
        assert [index.query(q, d, limit=limit) for q in queries] == expected, d
    assert any(len(reference.query(q, 64)) > limit for q in queries)


def test_a_million_hashes_are_scanned_at_64_and_probed_at_31() -> None:
    assert not estimate_search(NARROW, 1_000_000, 64).probe
    assert estimate_search(NARROW, 1_000_000, 31).probe
    assert estimate_search(WIDE, 10_000_000, 31).probe
    assert not estimate_search(NARROW, 1000, 31).probe


def test_a_batch_at_48_over_a_million_hashes_scans_where_a_lone_query_probes() -> None:
    """Measured: a batch scans its codes from cache (0.57 ms a query at 1M) and verifies
    candidates at a higher price, so at 48 its probes (1.1 ms) cost more than its scan."""
    assert estimate_search(NARROW, 1_000_000, 48).probe
    assert not estimate_search(NARROW, 1_000_000, 48, batch=True).probe
    assert estimate_search(NARROW, 1_000_000, 31, batch=True).probe
    assert not estimate_search(WIDE, 2_200_000, 52, batch=True).probe
    assert not estimate_search(WIDE, 2_200_000, 52, split=True).probe


@given(
    size=st.integers(0, 50_000_000),
    layout=st.sampled_from([NARROW, WIDE]),
    batch=st.booleans(),
    split=st.booleans(),
)
def test_estimated_cost_grows_with_distance_and_never_passes_a_scan(
    size: int, layout: ChunkLayout, batch: bool, split: bool
) -> None:
    costs = [estimate_search(layout, size, d, batch=batch, split=split).cost for d in range(65)]
    assert costs == sorted(costs)
    assert max(costs) <= SCAN_CALL_UNITS + size


def test_a_lone_query_split_over_two_threads_answers_like_one_scan() -> None:
    """Above SPLIT_SCAN_FROM a lone query's scan runs in two halves; matches on both sides of
    the cut, tombstones and the limit come out as from one scan, and through the index."""
    rng = np.random.default_rng(29)
    count = SPLIT_SCAN_FROM + 1001
    values = random_values(rng, count)
    half = count // 2 & ~1
    centre = values[half]
    for at in (half - 3, half - 1, half + 1, half + 4, 5, count - 2):
        values[at] = flip_bits(centre, rng, 3)
    entries = Entries.from_words(np.arange(count), as_words(values))
    query, dead = as_words([centre]), np.array([half + 4])
    with ThreadPoolExecutor(max_workers=1) as helper:
        for limit in (None, 2):
            # Each part trims to `limit` on its own; the index trims again across parts.
            split = entries.scan(query, 20, dead, limit, helper=helper).nearest(limit)
            whole = entries.scan(query, 20, dead, limit).nearest(limit)
            assert per_query(split, 1) == per_query(whole, 1)
    found = per_query(entries.scan(query, 20, dead, None), 1)[0]
    assert {hit.row_id for hit in found} == {half, half - 3, half - 1, half + 1, 5, count - 2}
    index = PdqIndex()
    index.add(list(range(count)), values)
    index.rebuild()
    index.remove_rows([half + 4])
    assert not estimate_search(NARROW, count, 64, split=True).probe  # the index scans, split
    assert index.query(centre, 64) == found
    assert index.query(centre, 64, limit=2) == found[:2]
    assert index.query_many([centre], 64) == [found]


def test_query_cost_is_monotone_and_capped_by_a_scan_of_everything_held() -> None:
    rows, values, _ = clustered_corpus(seed=19, count=3000)
    index = PdqIndex(delta_limit=300)
    assert index.query_cost(64) == QUERY_CALL_UNITS
    for start in range(0, len(values), 400):
        index.add(rows[start : start + 400], values[start : start + 400])
    index.remove_rows(rows[::5])
    assert index.segment_count >= 2 and index.pending_count > 0
    costs = [index.query_cost(d) for d in range(65)]
    assert costs == sorted(costs)
    constants = QUERY_CALL_UNITS + SCAN_CALL_UNITS * (index.segment_count + 1)
    assert costs[-1] <= constants + len(values)
    with pytest.raises(InvalidArgument):
        index.query_cost(65)


@given(st.lists(st.integers(0, 10_000), max_size=40), st.integers(1, 20_000), st.booleans())
def test_candidate_groups_keep_order_and_budget(sizes: list[int], most: int, odd: bool) -> None:
    totals = np.array(sizes, dtype=np.int64)
    queries = np.arange(len(sizes))[1::2] if odd else np.arange(len(sizes))
    groups = groups_within(queries, totals, most)
    assert [int(q) for g in groups for q in g] == queries.tolist()
    assert all(len(g) == 1 or totals[g].sum() <= most for g in groups)


@given(st.integers(0, 1 << 40))
def test_a_block_holds_what_the_memory_budget_allows(bytes_per_query: int) -> None:
    block = queries_per_block(bytes_per_query)
    assert 1 <= block <= QUERY_BLOCK
    assert block == 1 or block * bytes_per_query <= BLOCK_BYTES


@pytest.mark.parametrize("layout", [NARROW, WIDE], ids=["narrow", "wide"])
def test_query_chunks_cut_like_the_tables(layout: ChunkLayout) -> None:
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**64, size=(50, 4), dtype=np.uint64)
    columns = [words[:, j] for j in range(4)]
    expected = np.stack([layout.column(columns, c) for c in range(len(layout.widths))], axis=1)
    assert np.array_equal(layout.query_chunks(words), expected.astype(np.int64))


@pytest.mark.parametrize("widths", [(16,) * 15, (24,) * 4 + (16,) * 10])
def test_layouts_must_tile_the_words(widths: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="chunk"):
        ChunkLayout(widths, design_size=1)


@pytest.mark.parametrize("layout", [NARROW, WIDE], ids=["narrow", "wide"])
def test_radii_satisfy_the_pigeonhole_bound(layout: ChunkLayout) -> None:
    for max_distance in range(65):
        radii = allocate_radii(layout, max_distance)
        assert sum(r + 1 for r in radii) == max_distance + 1
    assert allocate_radii(NARROW, 31) == (1,) * 16


def test_duplicate_pairs_are_stored_once() -> None:
    rng = np.random.default_rng(1)
    a, b = random_values(rng, 2)
    index = PdqIndex()
    index.add([5, 5, 5, 6], [a, a, b, a])
    index.add([5], [a])
    assert len(index) == 3
    index.rebuild()
    index.add([5, 6], [b, a])
    assert len(index) == 3
    assert [h.row_id for h in index.query(a, 0)] == [5, 6]
    assert index.query(b, 0) == [NearHit(5, b, 0)]


def test_remove_rows_drops_entries_from_segments_and_delta() -> None:
    rng = np.random.default_rng(2)
    values = random_values(rng, 6)
    index = PdqIndex(delta_limit=100)
    index.add([1, 2, 3], values[:3])
    index.rebuild()
    index.add([4, 5, 6], values[3:])
    index.remove_rows([2, 5, 99])
    assert len(index) == 4
    live = {(1, values[0]), (3, values[2]), (4, values[3]), (6, values[5])}
    for value in values:
        assert index.query(value, 64) == brute_force(live, value, 64)
    assert index.query(values[1], 0) == []
    index.rebuild()
    assert len(index) == 4
    assert index.query(values[4], 0) == []
    index.add([2], [values[1]])
    assert index.query(values[1], 0) == [NearHit(2, values[1], 0)]


def test_removed_entries_are_reclaimed_once_they_pile_up() -> None:
    """Half the rows of the big, older segment go: it is rebuilt without them, not just masked."""
    rng = np.random.default_rng(8)
    values = random_values(rng, 440)
    index = PdqIndex(delta_limit=16)
    index.add(list(range(400)), values[:400])
    index.rebuild()
    index.add(list(range(400, 440)), values[400:])
    assert index.segment_count == 2
    before = index.nbytes
    index.remove_rows(range(0, 400, 2))
    assert index.nbytes < before - 200 * 40  # the row id and hash of each removed entry
    assert len(index) == 240
    assert index.query(values[2], 0) == []
    assert index.query(values[3], 0) == [NearHit(3, values[3], 0)]


def test_many_small_additions_keep_few_segments() -> None:
    rng = np.random.default_rng(10)
    values = random_values(rng, 1000)
    index = PdqIndex(delta_limit=16)
    most = 0
    for start in range(0, 1000, 10):
        index.add(list(range(start, start + 10)), values[start : start + 10])
        most = max(most, index.segment_count)
    assert most <= 5
    index.rebuild()
    assert index.segment_count == 1
    assert len(index) == 1000


def test_every_value_of_a_row_matches_and_goes_with_it() -> None:
    rng = np.random.default_rng(4)
    frames = random_values(rng, 3)
    other = random_values(rng, 1)[0]
    index = PdqIndex()
    index.add([10, 10, 10, 11], [*frames, other])
    index.rebuild()
    near = flip_bits(frames[1], rng, 5)
    assert index.query(near, 31) == [NearHit(10, frames[1], 5)]
    index.remove_rows([10])
    assert len(index) == 1
    assert all(index.query(f, 64) == [] for f in frames)


def test_loader_adds_its_batches_at_commit_and_once_each() -> None:
    rng = np.random.default_rng(6)
    values = random_values(rng, 50)
    index = PdqIndex(delta_limit=8)
    index.add([0], [values[0]])
    loader = index.loader()
    loader.add(list(range(30)), values[:30])
    loader.add(list(range(20, 50)), values[20:50])
    assert len(index) == 1
    loader.commit()
    assert len(index) == 50
    assert index.segment_count == 1
    loader.add([7], [values[8]])
    loader.commit()
    pairs = set(enumerate(values)) | {(7, values[8])}
    assert len(index) == len(pairs)
    reference = BruteForce(pairs)
    assert all(index.query(v, 0) == reference.query(v, 0) for v in values)


def test_empty_index_answers_nothing() -> None:
    index = PdqIndex()
    value = bytes(32)
    assert len(index) == 0
    assert index.query(value, 64) == []
    assert index.query_many([], 31) == []
    assert index.query_many([value, value], 31) == [[], []]
    index.rebuild()
    index.remove_rows([1])
    index.add([], [])
    assert len(index) == 0
    assert index.nbytes == 0


def test_bad_values_and_distances_are_refused() -> None:
    index = PdqIndex()
    with pytest.raises(InvalidArgument):
        index.add([1], [bytes(31)])
    with pytest.raises(InvalidArgument):
        index.add([1, 2], [bytes(32)])
    with pytest.raises(InvalidArgument):
        index.query(bytes(32), 65)
    with pytest.raises(InvalidArgument):
        index.query(bytes(33), 31)
    with pytest.raises(InvalidArgument):
        index.query_many([bytes(32), bytes(16)], 31)
    with pytest.raises(ValueError, match="limit"):
        index.query(bytes(32), 31, limit=0)
    assert len(index) == 0


@pytest.mark.parametrize("max_distance", [31, 64])
def test_query_many_in_threads_equals_single_queries(max_distance: int) -> None:
    rows, values, queries = planted_corpus(seed=5, count=2000)
    index = PdqIndex(query_threads=2)
    index.add(rows, values)
    many = (queries * 6)[:300]
    expected = [index.query(q, max_distance, limit=3) for q in many]
    assert index.query_many(many, max_distance, limit=3) == expected


@pytest.fixture
def paused_build(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Hold every segment build until the test says go, so that it can act mid-merge."""
    building, go_on = threading.Event(), threading.Event()
    real_indexed = Segment.indexed

    def held(entries: Entries, *, threads: int = 2) -> Segment:
        building.set()
        assert go_on.wait(timeout=30)
        return real_indexed(entries, threads=threads)

    monkeypatch.setattr(Segment, "indexed", staticmethod(held))
    yield building, go_on
    go_on.set()


def test_queries_and_writes_during_a_rebuild(
    paused_build: tuple[threading.Event, threading.Event],
    corpus: tuple[list[int], list[bytes], list[bytes]],
) -> None:
    """Queries see a consistent index while a rebuild runs; writes made meanwhile survive it."""
    building, go_on = paused_build
    rows, values, queries = corpus
    rng = np.random.default_rng(9)
    index = PdqIndex(delta_limit=100_000)
    index.add(rows, values)
    pairs = set(zip(rows, values, strict=True))
    rebuild = threading.Thread(target=index.rebuild)
    rebuild.start()
    assert building.wait(timeout=30)
    assert_matches_brute_force(index, pairs, queries)
    removed = set(rows[:40:3])
    index.remove_rows(removed)
    extra = random_values(rng, 5)
    index.add([row + 10_000 for row in range(5)], extra)
    pairs = {p for p in pairs if p[0] not in removed} | {
        (r + 10_000, v) for r, v in enumerate(extra)
    }
    assert_matches_brute_force(index, pairs, queries + extra)
    go_on.set()
    rebuild.join(timeout=30)
    assert not rebuild.is_alive()
    assert len(index) == len(pairs)
    assert_matches_brute_force(index, pairs, queries + extra)
    index.rebuild()
    assert_matches_brute_force(index, pairs, queries + extra)


def test_queries_stay_exact_while_another_thread_writes() -> None:
    """A reader never sees a half-applied change: the rows nobody touches are always found."""
    rng = np.random.default_rng(12)
    stable = random_values(rng, 200)
    churn = random_values(rng, 400)
    index = PdqIndex(delta_limit=64)
    index.add(list(range(200)), stable)
    done = threading.Event()

    def write() -> None:
        for start in range(0, len(churn), 100):
            index.add(list(range(1000 + start, 1100 + start)), churn[start : start + 100])
            index.remove_rows(range(1000 + start, 1050 + start))
        index.rebuild()
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    rounds = 0
    while not done.is_set() or rounds == 0:
        answers = index.query_many(stable[rounds % 10 :: 10], 0)
        assert [[h.row_id for h in a] for a in answers] == [
            [i] for i in range(rounds % 10, 200, 10)
        ]
        rounds += 1
    writer.join()
    assert len(index) == 200 + 200


class IndexAgainstModel(RuleBasedStateMachine):
    """Random add/remove/rebuild sequences with a tiny delta, so merges happen all the time."""

    def __init__(self) -> None:
        super().__init__()
        self.index = PdqIndex(delta_limit=5)
        self.pairs: Pairs = set()
        self.rng = np.random.default_rng(0)
        self.pool = random_values(self.rng, 12)

    @rule(data=st.data(), count=st.integers(1, 12))
    def add(self, data: st.DataObject, count: int) -> None:
        rows = data.draw(st.lists(st.integers(0, 30), min_size=count, max_size=count))
        picks = data.draw(st.lists(st.integers(0, 11), min_size=count, max_size=count))
        bits = data.draw(
            st.lists(st.sampled_from((0, 0, 3, 20, 40)), min_size=count, max_size=count)
        )
        values = [flip_bits(self.pool[p], self.rng, b) for p, b in zip(picks, bits, strict=True)]
        self.index.add(rows, values)
        self.pairs |= set(zip(rows, values, strict=True))

    @rule(data=st.data())
    def load(self, data: st.DataObject) -> None:
        loader = self.index.loader()
        for _ in range(data.draw(st.integers(1, 3))):
            rows = data.draw(st.lists(st.integers(0, 30), min_size=1, max_size=6))
            values = [self.pool[data.draw(st.integers(0, 11))] for _ in rows]
            loader.add(rows, values)
            self.pairs |= set(zip(rows, values, strict=True))
        loader.commit()

    @rule(rows=st.lists(st.integers(0, 30), max_size=4))
    def remove(self, rows: list[int]) -> None:
        self.index.remove_rows(rows)
        self.pairs = {p for p in self.pairs if p[0] not in rows}

    @rule()
    def rebuild(self) -> None:
        self.index.rebuild()

    @precondition(lambda self: bool(self.pairs))
    @rule(
        data=st.data(),
        max_distance=st.sampled_from(THRESHOLDS),
        bits=st.integers(0, 40),
        limit=st.none() | st.integers(1, 4),
    )
    def query(self, data: st.DataObject, max_distance: int, bits: int, limit: int | None) -> None:
        _, value = data.draw(st.sampled_from(sorted(self.pairs)))
        query = flip_bits(value, self.rng, bits)
        expected = brute_force(self.pairs, query, max_distance)[:limit]
        assert self.index.query(query, max_distance, limit=limit) == expected

    @invariant()
    def counts_agree(self) -> None:
        assert len(self.index) == len(self.pairs)


TestIndexAgainstModel = IndexAgainstModel.TestCase
TestIndexAgainstModel.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_distance_helper_is_sound() -> None:
    """Guard the reference itself: a wrong brute force would make every test above vacuous."""
    rng = np.random.default_rng(0)
    value = random_values(rng, 1)[0]
    for bits in (0, 1, 31, 64, 256):
        assert distance(value, flip_bits(value, rng, bits)) == bits
        assert brute_force({(1, value)}, flip_bits(value, rng, bits), 31) == (
            [NearHit(1, value, bits)] if bits <= 31 else []
        )
