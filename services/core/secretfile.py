"""Secret files (keys) in a node's data directory: created 0600 from the first byte, refused when
anyone but the owner can read them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from services.core.errors import FailedPrecondition


def write_secret(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 holding `data`; an existing file is never overwritten."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def read_secret(path: Path) -> bytes:
    """The bytes of `path`, or FailedPrecondition when it is missing or readable by others."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FailedPrecondition(
            f"key file {path} is missing; run `hashex node init` to create the node's keys"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FailedPrecondition(
            f"key file {path} is accessible to group or others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`"
        )
    return path.read_bytes()
