"""How the PDQ index cuts a 256-bit hash into chunks, which chunk keys a query probes, and
whether probing a segment is worth it at all.

Pigeonhole, generalised: give chunk i a radius t_i (-1 meaning "not probed") with
sum(t_i + 1) > d. If two hashes are within distance d, some chunk i differs by at most t_i bits
(otherwise the chunk distances would add up to more than d), so probing every key within t_i of
the query's chunk i, for every i, finds every match: recall is exact by construction. The radii
are handed out greedily where the next one costs the least. For 16 chunks of 16 bits and d = 31
that is the classic t_i = 1 everywhere (272 probes).

Why two layouts: a probe costs a couple of random memory reads and each candidate costs one. 16
chunks of 16 bits give buckets of n/65536 hashes, fine up to a few million. Beyond that, 12
chunks of 21-22 bits keep buckets at a few hashes; at 10M and d = 31 a query then touches ~7k
candidates instead of ~41k, for ~2k probes and 128 MiB of bucket bounds.

Probe or scan: the probes grow like ball(width, t) and the candidates like n * ball / 2^width,
so at high distances a probe touches a large share of the segment and a brute-force scan (FAISS
popcount over contiguous 32-byte codes) is cheaper. `estimate_search` prices both in one unit,
"one hash scanned", and the segment takes the cheaper; see `Costs` for how the prices were
measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from itertools import combinations
from math import comb

import numpy as np
import numpy.typing as npt

# The unit all costs are given in: one hash scanned from memory (FAISS popcount over 32-byte
# codes, one query on one thread), measured at 1.05 ns here. See `SearchEstimate`.
UNIT_NS = 1.05
# A scan's fixed cost, and its price per hash while every code stays in cache across queries
# (up to CACHED_SCAN_BYTES of codes; the full price from STREAMED_SCAN_BYTES on, linear between).
SCAN_CALL_UNITS = 7_000.0
CACHED_SCAN_UNITS = 0.55
CACHED_SCAN_BYTES = 12 << 20
STREAMED_SCAN_BYTES = 32 << 20
# A lone query's scan split over two threads takes this much less time (measured 1.3-1.6x at
# 1M-2.2M hashes on 2 shared cores; less than 2x since both halves share memory bandwidth).
SPLIT_SCAN_GAIN = 1.3
# Searched in a batch, a query shares a numpy call with the others of its block (its fixed
# cost is divided by at least this many) and scans codes tile by tile, so they stay cached.
BATCH_SHARE = 16
# A plan this large is never worth building (its masks alone would be tens of MiB).
_MAX_PROBES = 1 << 20


@dataclass(frozen=True)
class ProbePrices:
    """What probing costs with one layout, in units: the fixed cost of one search (its numpy
    calls), one probe (a key, a bounds read, a range to expand), one candidate (a position
    read, a 32-byte gather, a popcount). A layout's bounds table sets the probe's price: 4 MiB
    for 16-bit chunks stays in cache, 128 MiB for 21-22-bit chunks does not.

    `batch_candidate` is a candidate's price when many queries are verified together: the
    query words are gathered per candidate rather than XORed as scalars, about 1.3x the lone
    query's price (measured 23-26 units at 1M, distances 31-48, groups of 64k candidates)."""

    call: float
    probe: float
    candidate: float
    batch_candidate: float


@dataclass(frozen=True)
class ProbePlan:
    """For each probe: which chunk it reads, the XOR mask applied, and the chunk's table base."""

    chunk: npt.NDArray[np.intp]
    masks: npt.NDArray[np.int64]
    bases: npt.NDArray[np.int64]

    def keys(self, query_chunks: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """(q, probes) keys into the shared table, from (q, chunks) query chunk values."""
        return self.bases + (query_chunks[:, self.chunk] ^ self.masks)


@dataclass(frozen=True, eq=False)
class ChunkLayout:
    """Chunk widths in bits, low bits of word 0 first, none straddling two uint64 words (so a
    chunk is one shift and one mask); `design_size` tunes the radius choice, `prices` what a
    probe costs (see `SearchEstimate`)."""

    widths: tuple[int, ...]
    design_size: int
    prices: ProbePrices = ProbePrices(call=43_000.0, probe=9.3, candidate=18.6, batch_candidate=25)
    offsets: tuple[int, ...] = field(init=False)
    bases: tuple[int, ...] = field(init=False)
    _word: npt.NDArray[np.intp] = field(init=False, repr=False)
    _shift: npt.NDArray[np.uint64] = field(init=False, repr=False)
    _mask: npt.NDArray[np.uint64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if sum(self.widths) != 256:
            raise ValueError("chunk widths must cover the 256 bits exactly")
        offsets = np.cumsum((0, *self.widths[:-1]))
        word, shift = np.divmod(offsets, 64)
        if (shift + np.array(self.widths) > 64).any():
            raise ValueError("a chunk must lie within one 64-bit word")
        fields = {
            "offsets": tuple(int(o) for o in offsets),
            "bases": tuple(int(b) for b in np.cumsum((0, *(1 << w for w in self.widths)))),
            "_word": word.astype(np.intp),
            "_shift": shift.astype(np.uint64),
            "_mask": np.array([(1 << w) - 1 for w in self.widths], dtype=np.uint64),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @property
    def key_count(self) -> int:
        """Size of the shared key space: chunk i's keys start at bases[i]."""
        return self.bases[-1]

    def column(self, words: list[npt.NDArray[np.uint64]], chunk: int) -> npt.NDArray[np.uint64]:
        """Chunk `chunk` of every hash, from its four word columns."""
        shifted: npt.NDArray[np.uint64] = words[self._word[chunk]] >> self._shift[chunk]
        masked: npt.NDArray[np.uint64] = shifted & self._mask[chunk]
        return masked

    def query_chunks(self, queries: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """`column` for a (q, 4) batch, all chunks in one pass."""
        return ((queries[:, self._word] >> self._shift) & self._mask).astype(np.int64)

    def probe_plan(self, max_distance: int) -> ProbePlan:
        """The probes for `max_distance`; ask `estimate_search` first whether to probe at all."""
        return _probe_plan(self, max_distance)


@dataclass(frozen=True)
class SearchEstimate:
    """What one query against a segment of `size` hashes is expected to cost, probing or
    scanning, in units of one hash scanned from memory (UNIT_NS, about 1 ns here: 1M units is
    about a millisecond of one core).

    Probing costs prices.call + probes x prices.probe + candidates x prices.candidate; for
    uniformly random hashes the expected candidates are sum_i ball(width_i, t_i) x size /
    2^width_i. Scanning costs SCAN_CALL_UNITS + size x (CACHED_SCAN_UNITS while the codes fit
    in cache, 1 once they stream from memory), SPLIT_SCAN_GAIN times less with `split` (a lone
    query's scan run on two threads).

    How the prices were measured (2 shared cores, 2026-12; `Segment.probe(fall_back=False)`
    against `Entries.scan`, the measuring script not kept): single queries on random hashes at
    10k, 100k, 300k, 1M, 2M, 4M and 10M hashes and distances 0-64, each size in the layout it
    gets. Per point, the median of 40 queries probed (forced for every query) and scanned, and
    the candidates the probes read. The unit is the scan's time per hash from 1M hashes on
    (1.0-1.1 ns; 0.55-0.6 ns up to 400k hashes, whose codes stay cached); the probe prices are a
    least-squares fit, per layout, of probe time on (1, probes, candidates) with each point
    weighted by 1 / time. The fit is within 0.8-1.25x of every point measured, and
    `PdqIndex.query` measured against `query_cost` within 0.5-1.5x. `bench/pdq_index.py
    --thresholds` checks the outcome against FAISS's brute-force scan (bench/README.md).

    With `batch`, the prices are those of one query among many searched together: the call's
    fixed cost shared (BATCH_SHARE), candidates at `batch_candidate`, and the scan at the
    cached price per hash, since a batch scans its codes in tiles that stay in cache while
    every query passes over them (measured 0.54-0.6 units per hash at 1M against 1.0 alone).
    Without this a batch at distance 48 over 1M hashes probed at 1.1 ms a query where its
    scan took 0.57 ms.
    """

    prices: ProbePrices
    size: int
    probes: int
    candidates: float
    batch: bool = False
    split: bool = False

    @property
    def probe_cost(self) -> float:
        if self.probes > _MAX_PROBES:
            return float("inf")
        return self._probes_cost + self.candidates * self._candidate_price

    @property
    def scan_cost(self) -> float:
        if self.batch:
            return SCAN_CALL_UNITS / BATCH_SHARE + self.size * CACHED_SCAN_UNITS
        if self.split:
            return scan_cost(self.size) / SPLIT_SCAN_GAIN
        return scan_cost(self.size)

    @property
    def _probes_cost(self) -> float:
        call = self.prices.call / BATCH_SHARE if self.batch else self.prices.call
        return call + self.probes * self.prices.probe

    @property
    def _candidate_price(self) -> float:
        return self.prices.batch_candidate if self.batch else self.prices.candidate

    @property
    def probe(self) -> bool:
        """Whether probing is expected to be cheaper than a scan."""
        return self.probe_cost < self.scan_cost

    @property
    def cost(self) -> float:
        return min(self.probe_cost, self.scan_cost)

    def probing_pays(self, candidates: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Per query, from the candidates its buckets actually hold (clustered data can hold
        far more than expected): whether reading them still costs less than a scan."""
        return self._probes_cost + candidates * self._candidate_price < self.scan_cost


def scan_cost(size: int) -> float:
    """One query's scan of `size` hashes, in units (see SearchEstimate)."""
    share = (size * 32 - CACHED_SCAN_BYTES) / (STREAMED_SCAN_BYTES - CACHED_SCAN_BYTES)
    per_hash = CACHED_SCAN_UNITS + (1 - CACHED_SCAN_UNITS) * min(1.0, max(0.0, share))
    return SCAN_CALL_UNITS + size * per_hash


def estimate_search(
    layout: ChunkLayout,
    size: int,
    max_distance: int,
    *,
    batch: bool = False,
    split: bool = False,
) -> SearchEstimate:
    """Probe or scan a segment of `size` hashes cut by `layout`, for a lone query (its scan
    `split` over two threads or not) or one of a batch; cheap (the plan's shape is cached per
    layout and distance, the rest is arithmetic)."""
    probes, density = _probe_shape(layout, max_distance)
    return SearchEstimate(layout.prices, size, probes, density * size, batch, split)


@cache
def _probe_shape(layout: ChunkLayout, max_distance: int) -> tuple[int, float]:
    """Probes of the plan, and its expected candidates per stored hash."""
    radii = allocate_radii(layout, max_distance)
    balls = [(_ball(w, t), w) for w, t in zip(layout.widths, radii, strict=True) if t >= 0]
    return sum(b for b, _ in balls), sum(b / (1 << w) for b, w in balls)


@cache
def _probe_plan(layout: ChunkLayout, max_distance: int) -> ProbePlan:
    radii = allocate_radii(layout, max_distance)
    if _probe_shape(layout, max_distance)[0] > _MAX_PROBES:
        raise ValueError(f"no probe plan beyond {_MAX_PROBES} probes: scan instead")
    chunk, masks, bases = [], [], []
    for i, (width, radius) in enumerate(zip(layout.widths, radii, strict=True)):
        if radius < 0:
            continue
        flips = _flip_masks(width, radius)
        chunk.append(np.full(flips.shape[0], i, dtype=np.intp))
        masks.append(flips)
        bases.append(np.full(flips.shape[0], layout.bases[i], dtype=np.int64))
    return ProbePlan(np.concatenate(chunk), np.concatenate(masks), np.concatenate(bases))


def allocate_radii(layout: ChunkLayout, max_distance: int) -> tuple[int, ...]:
    """Radii with sum(t_i + 1) = max_distance + 1, each step raising the cheapest chunk."""
    radii = [-1] * len(layout.widths)

    def step_cost(i: int) -> float:
        width = layout.widths[i]
        prices = layout.prices
        per_probe = prices.probe + prices.candidate * layout.design_size / (1 << width)
        return comb(width, radii[i] + 1) * per_probe

    for _ in range(max_distance + 1):
        cheapest = min(range(len(radii)), key=step_cost)
        radii[cheapest] += 1
    return tuple(radii)


@cache
def _ball(width: int, radius: int) -> int:
    return sum(comb(width, k) for k in range(radius + 1))


@cache
def _flip_masks(width: int, radius: int) -> npt.NDArray[np.int64]:
    """Every `width`-bit XOR mask with at most `radius` bits set."""
    masks = [0]
    for bits in range(1, radius + 1):
        masks.extend(sum(1 << b for b in chosen) for chosen in combinations(range(width), bits))
    return np.array(masks, dtype=np.int64)


# WIDE's batch candidate price: what batches of 128 cost over lone queries at 2.2M hashes,
# distances 40-52, put on the candidates (probes rise in step with them; 48-55 units).
BATCH_WIDE = 52.0
NARROW = ChunkLayout(
    (16,) * 16,
    design_size=1 << 20,
    prices=ProbePrices(call=43_000.0, probe=9.3, candidate=18.6, batch_candidate=25.0),
)
WIDE = ChunkLayout(
    (22, 21, 21) * 4,
    design_size=10_000_000,
    prices=ProbePrices(call=47_000.0, probe=18.0, candidate=25.0, batch_candidate=BATCH_WIDE),
)
# From this many hashes on, WIDE's smaller buckets beat NARROW's fewer probes.
WIDE_FROM = 1 << 21


def layout_for(size: int) -> ChunkLayout:
    return WIDE if size >= WIDE_FROM else NARROW
