"""Where a restored or forked origin's history parts from the one applied here.

An origin refuses a pull whose cursor its own log chain does not confirm (services.sync.sender:
FAILED_PRECONDITION, "history diverged ..."). The chain at a seq commits to every entry up to
it, so if the origin's log agrees with a checkpoint (the chain a batch ending there stated) it
agrees with everything before it: a binary search over the receiver's checkpoints, asking the
origin about each (a pull from that checkpoint, read no further than its first answer), finds
the last seq both histories share and the first checkpoint they do not. Entries the origin
withholds by policy are in its chain too, so this is the origin's own history, not the
receiver's view of it. No SQL, no gRPC: the probe is injected.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from services.sync.batches import Checkpoint

DIVERGED_PREFIX = "history diverged"


@dataclass(frozen=True)
class Divergence:
    """The histories agree up to `agreed` (0: not even at the first checkpoint) and differ by
    `differs` at the latest: the first differing seq lies in agreed+1..differs."""

    agreed: int
    differs: int

    def describe(self, peer_id: str) -> str:
        if self.differs == self.agreed + 1:
            parted = f"from seq {self.differs} on"
        else:
            parted = f"from a seq in {self.agreed + 1}-{self.differs} on"
        same = f" (seqs 1-{self.agreed} are the same)" if self.agreed else ""
        return (
            f"{DIVERGED_PREFIX}: {peer_id}'s change log is not the one applied here {parted}"
            f"{same}: it was restored from a backup, rewound or forked. Nothing more is applied "
            f"from it until `hashex sync resync {peer_id}`"
        )


class HistoryDiverged(Exception):
    """A pull refused because the origin's history parted from the one applied here."""

    def __init__(self, peer_id: str, divergence: Divergence) -> None:
        super().__init__(divergence.describe(peer_id))
        self.divergence = divergence


def is_divergence(error: BaseException) -> bool:
    """Whether a pull failed because the origin's history does not confirm the cursor."""
    code, details = getattr(error, "code", None), getattr(error, "details", None)
    if not (callable(code) and callable(details)):
        return False
    name = getattr(code(), "name", "")
    return name == "FAILED_PRECONDITION" and str(details() or "").startswith(DIVERGED_PREFIX)


async def locate(
    checkpoints: Sequence[Checkpoint],
    cursor_seq: int,
    agrees: Callable[[Checkpoint], Awaitable[bool]],
) -> Divergence:
    """The divergence, from the checkpoints at or below `cursor_seq` (oldest first); `agrees`
    asks the origin whether its chain at a checkpoint is the checkpoint's. The cursor is known
    to differ. About log2(len(checkpoints)) questions."""
    points = [c for c in checkpoints if c.seq < cursor_seq]
    low, high = 0, len(points)  # points[:low] agree, points[high:] differ
    while low < high:
        middle = (low + high) // 2
        if await agrees(points[middle]):
            low = middle + 1
        else:
            high = middle
    agreed = points[low - 1].seq if low else 0
    differs = points[low].seq if low < len(points) else cursor_seq
    return Divergence(agreed, differs)
