"""Locating where an origin's history parts from the one applied here, and the checkpoints it
is located from."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.sync.batches import Checkpoint
from services.sync.divergence import Divergence, locate
from services.sync.store import CHECKPOINT_SPACING, CHECKPOINTS_KEPT, SyncStore


@given(
    seqs=st.lists(st.integers(1, 500), unique=True, max_size=40).map(sorted),
    cursor=st.integers(1, 501),
    first_differing=st.integers(1, 502),
)
async def test_locate_finds_the_last_agreeing_and_first_differing_checkpoints(
    seqs: list[int], cursor: int, first_differing: int
) -> None:
    """Histories agree at every seq below `first_differing`; the cursor is known to differ."""
    first_differing = min(first_differing, cursor)
    points = [Checkpoint(seq, seq.to_bytes(32, "big")) for seq in seqs]
    asked: list[int] = []

    async def agrees(point: Checkpoint) -> bool:
        asked.append(point.seq)
        return point.seq < first_differing

    found = await locate(points, cursor, agrees)
    below = [s for s in seqs if s < cursor]
    agreed = max((s for s in below if s < first_differing), default=0)
    differs = min((s for s in below if s >= first_differing), default=cursor)
    assert found == Divergence(agreed, differs)
    assert found.agreed < first_differing <= found.differs
    assert len(asked) <= max(1, len(below)).bit_length()


@pytest.mark.parametrize(
    ("divergence", "said"),
    [
        (Divergence(2, 3), "from seq 3 on (seqs 1-2 are the same)"),
        (Divergence(0, 1), "from seq 1 on:"),
        (Divergence(1000, 2000), "from a seq in 1001-2000 on (seqs 1-1000 are the same)"),
        (Divergence(0, 4), "from a seq in 1-4 on:"),
    ],
)
def test_a_divergence_says_where_and_what_to_do(divergence: Divergence, said: str) -> None:
    text = divergence.describe("gb-nca")
    assert said in text and "`hashex sync resync gb-nca`" in text


async def test_checkpoints_are_thinned_to_the_newest_then_one_per_block(
    sync_store: SyncStore, sync_pool: Any
) -> None:
    newest = CHECKPOINTS_KEPT + 3 * CHECKPOINT_SPACING
    async with sync_pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO sync_chain_checkpoints (peer_id, seq, chain) VALUES ($1, $2, $3)",
            [("gb-nca", seq, bytes(32)) for seq in range(1, newest + 1)]
            + [("us-fbi", 1, bytes(32))],
        )
    await sync_store.thin_checkpoints("gb-nca")
    await sync_store.thin_checkpoints("us-fbi")
    kept = [c.seq for c in await sync_store.chain_checkpoints("gb-nca")]
    recent = list(range(newest - CHECKPOINTS_KEPT + 1, newest + 1))
    assert kept[-CHECKPOINTS_KEPT:] == recent
    last_of_block: dict[int, int] = {}
    for seq in range(1, newest + 1):
        last_of_block[seq // CHECKPOINT_SPACING] = seq
    # Older than the newest, only the last of each block (a block's last may be a newest one).
    assert kept[:-CHECKPOINTS_KEPT] == sorted(s for s in last_of_block.values() if s < recent[0])
    assert [c.seq for c in await sync_store.chain_checkpoints("us-fbi")] == [1]
