"""The one way tests wait for something that happens in its own time (a node healing, a record
arriving at a peer): poll a check until it holds or a deadline passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_for(check: Callable[[], Awaitable[bool]], timeout_s: float, failure: str) -> None:
    """Await `check()` until it is true; AssertionError saying `failure` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{failure} within {timeout_s:.0f} s")
        await asyncio.sleep(0.05)
