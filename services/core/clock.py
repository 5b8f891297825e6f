"""The time a node's timers run on: holds, keep-alives, poll pauses, backoff, pull deadlines.

Production runs on `SYSTEM_CLOCK`. A test injects a `Clock` running `rate` times faster than
real time, so that ten minutes of an idle federation pass in a few real seconds with every
timer keeping its configured value: spans are stated in the clock's seconds and converted with
`real_s` wherever they are handed to asyncio or gRPC. Wall-clock moments shown to people
(`last OK`, audit times) stay real.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Clock:
    rate: float = 1.0

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"a clock's rate must be positive, not {self.rate}")

    def monotonic(self) -> float:
        """Seconds of this clock since an arbitrary start."""
        return time.monotonic() * self.rate

    def real_s(self, seconds: float) -> float:
        """The real seconds that `seconds` of this clock take."""
        return seconds / self.rate

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(self.real_s(seconds))


SYSTEM_CLOCK = Clock()
