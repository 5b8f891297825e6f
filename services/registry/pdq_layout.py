"""How the PDQ index cuts a 256-bit hash into chunks, and which chunk keys a query probes.

Pigeonhole, generalised: give chunk i a radius t_i (-1 meaning "not probed") with
sum(t_i + 1) > d. If two hashes are within distance d, some chunk i differs by at most t_i bits
(otherwise the chunk distances would add up to more than d), so probing every key within t_i of
the query's chunk i, for every i, finds every match: recall is exact by construction. The radii
are handed out greedily where the next one costs the fewest expected memory accesses. For 16
chunks of 16 bits and d = 31 that is the classic t_i = 1 everywhere (272 probes).

Why two layouts: a probe costs a couple of random memory reads and each candidate costs one. 16
chunks of 16 bits give buckets of n/65536 hashes, fine up to a few million. Beyond that, 12
chunks of 21-22 bits keep buckets at a few hashes; at 10M and d = 31 a query then touches ~7k
candidates instead of ~41k, for ~2k probes and 128 MiB of bucket bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from itertools import combinations
from math import comb

import numpy as np
import numpy.typing as npt

# Relative cost of one probe (a bounds read and a bucket start) against one candidate check.
_PROBE_COST = 2.0
# Past this many probes the tables lose to a linear scan anyway; building the masks would too.
_MAX_PROBES = 60_000


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
    chunk is one shift and one mask); `design_size` tunes the radius choice."""

    widths: tuple[int, ...]
    design_size: int
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

    def probe_plan(self, max_distance: int) -> ProbePlan | None:
        """The probes for `max_distance`, or None when a linear scan is cheaper."""
        return _probe_plan(self, max_distance)


@cache
def _probe_plan(layout: ChunkLayout, max_distance: int) -> ProbePlan | None:
    radii = allocate_radii(layout, max_distance)
    if sum(_ball(w, t) for w, t in zip(layout.widths, radii, strict=True)) > _MAX_PROBES:
        return None
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
        per_probe = _PROBE_COST + layout.design_size / (1 << width)
        return comb(width, radii[i] + 1) * per_probe

    for _ in range(max_distance + 1):
        cheapest = min(range(len(radii)), key=step_cost)
        radii[cheapest] += 1
    return tuple(radii)


def _ball(width: int, radius: int) -> int:
    return sum(comb(width, k) for k in range(radius + 1))


@cache
def _flip_masks(width: int, radius: int) -> npt.NDArray[np.int64]:
    """Every `width`-bit XOR mask with at most `radius` bits set."""
    masks = [0]
    for bits in range(1, radius + 1):
        masks.extend(sum(1 << b for b in chosen) for chosen in combinations(range(width), bits))
    return np.array(masks, dtype=np.int64)


NARROW = ChunkLayout((16,) * 16, design_size=1 << 20)
WIDE = ChunkLayout((22, 21, 21) * 4, design_size=10_000_000)
# From this many hashes on, WIDE's smaller buckets beat NARROW's fewer probes.
WIDE_FROM = 1 << 21


def layout_for(size: int) -> ChunkLayout:
    return WIDE if size >= WIDE_FROM else NARROW
