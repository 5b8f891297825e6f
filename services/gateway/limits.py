"""Per-caller limits: a token bucket of work for each identity, on an injected clock, and a cap
on each identity's calls in flight.

Work, not calls, is what a bucket is charged: a call costs one token and each request message
what it asks for (services.gateway.work: a hash looked up, a media submitted, an id retracted
is one), so a caller sending 10,000-hash lookups spends its budget as fast as one sending ten
thousand single-hash calls, and one caller's heavy lookups cannot starve another's. The cap on
calls in flight bounds how much of the node one caller holds at once.

The key is the caller's identity URI, not its certificate, so a unit holding several
certificates (a renewal overlapping the old one) still shares one budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# Buckets of idle callers are dropped once this many exist (a full bucket carries no state).
_MAX_BUCKETS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`rate_per_s` tokens per second per key, with bursts up to `burst` tokens."""

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @property
    def burst(self) -> float:
        return self._burst

    def try_acquire(self, key: str, cost: float = 1.0) -> bool:
        """Take `cost` tokens for `key`; False (and nothing taken) when its bucket holds
        fewer."""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= _MAX_BUCKETS:
                    self._drop_full(now)
                bucket = self._buckets[key] = _Bucket(self._burst, now)
            else:
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
                bucket.updated = now
            if bucket.tokens < cost:
                return False
            bucket.tokens -= cost
            return True

    def _drop_full(self, now: float) -> None:
        refill_s = self._burst / self._rate
        idle = [k for k, b in self._buckets.items() if now - b.updated >= refill_s]
        for key in idle:
            del self._buckets[key]


class InFlight:
    """At most `limit` calls at a time per key."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def try_enter(self, key: str) -> bool:
        """Count one more call of `key`; False (nothing counted) when it has `limit` already."""
        with self._lock:
            count = self._counts.get(key, 0)
            if count >= self.limit:
                return False
            self._counts[key] = count + 1
            return True

    def leave(self, key: str) -> None:
        with self._lock:
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
            else:
                self._counts.pop(key, None)
