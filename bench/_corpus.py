"""The media the lookup and sync benches load: N media as one block of random bytes (100 per
media: md5, sha1, sha256, PDQ), so 1M media cost 100 MB, not four million Python objects held for
the whole run; and the loop that submits them through a Registry as a unit's node would.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from _common import latency_summary, progress

from services.core.algorithms import Algorithm, SignalValue
from services.registry.model import MediaSubmission
from services.registry.registry import Registry

PDQ_QUALITY = 90
LAYOUT = ((Algorithm.MD5, 16), (Algorithm.SHA1, 20), (Algorithm.SHA256, 32), (Algorithm.PDQ, 32))
MEDIA_BYTES = sum(size for _, size in LAYOUT)


@dataclass(frozen=True)
class Corpus:
    data: bytes
    n: int

    @classmethod
    def random(cls, n: int, rng: random.Random) -> Corpus:
        return cls(rng.randbytes(n * MEDIA_BYTES), n)

    def value(self, i: int, algorithm: Algorithm) -> bytes:
        offset = i * MEDIA_BYTES
        for candidate, size in LAYOUT:
            if candidate == algorithm:
                return self.data[offset : offset + size]
            offset += size
        raise ValueError(algorithm)

    def signals(self, i: int) -> tuple[SignalValue, ...]:
        return tuple(
            SignalValue(a, self.value(i, a), PDQ_QUALITY if a == Algorithm.PDQ else None)
            for a, _ in LAYOUT
        )


def media_id(i: int) -> str:
    return f"bench-{i:08d}"


@dataclass(frozen=True)
class Loaded:
    seconds: float
    per_s: float
    batch_median_ms: float
    batch_p99_ms: float


async def load(
    registry: Registry,
    n: int,
    submission: Callable[[int], MediaSubmission],
    *,
    batch_size: int,
    label: str = "",
) -> Loaded:
    """Submit media 0..n-1 in batches; the wall time includes building the submissions."""
    seconds: list[float] = []
    started = time.perf_counter()
    step = max(1, n // 10)
    for first in range(0, n, batch_size):
        batch = [submission(i) for i in range(first, min(first + batch_size, n))]
        start = time.perf_counter()
        counts = await registry.submit_batch(batch)
        seconds.append(time.perf_counter() - start)
        if counts.created != len(batch):
            raise RuntimeError(f"batch at {first} created {counts.created} of {len(batch)} media")
        if (first + len(batch)) // step != first // step:
            progress(f"{label}loaded {first + len(batch):,} media")
    total = time.perf_counter() - started
    summary = latency_summary(seconds)
    return Loaded(round(total, 2), round(n / total, 1), summary["median_ms"], summary["p99_ms"])
