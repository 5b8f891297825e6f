"""The replicated PDQ values as one index per origin, built once at the start of a rebuild, so
that a replicated media can be searched against the origins ranked above its own alone
(relink.py: each pair of two replicated media is then searched once, from its lower side,
and no candidate of the media's own origin is ever read).

A snapshot: it holds what was committed when it was read. That is enough for a rebuild,
whose answers are checked like the ones computed ahead (near.py): a hit that is gone or changed
since is dropped, and a media committed or changed later is queued as a change, searched
against the live indexes, and finds the snapshot's media itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.registry.pdq_index import NearHit, PdqIndex, nearest

# The live replicated media's matchable PDQ values ($1: this node, $2: the minimum quality).
REPLICATED_PDQ = """
SELECT m.origin, s.media_row, s.value
FROM signals s JOIN media m ON m.id = s.media_row AND m.retracted_at IS NULL
WHERE m.origin <> $1 AND s.algorithm = 4 AND (s.quality IS NULL OR s.quality >= $2)
ORDER BY m.origin, s.media_row
"""


def origin_rank(origin: str, node_id: str) -> tuple[bool, str]:
    """The order of a rebuild's ranks: this node's own records first, then origins by name."""
    return origin != node_id, origin


class OriginIndexes:
    def __init__(self, indexes: dict[str, PdqIndex]) -> None:
        self._origins = sorted(indexes)
        self._indexes = indexes

    @staticmethod
    async def read(conn: Any, *, node_id: str, min_quality: int) -> dict[str, list[Any]]:
        """The rows to build from, per origin (in the caller's connection)."""
        by_origin: dict[str, list[Any]] = {}
        for r in await conn.fetch(REPLICATED_PDQ, node_id, min_quality):
            by_origin.setdefault(r[0], []).append(r)
        return by_origin

    @staticmethod
    def build(rows: dict[str, list[Any]]) -> OriginIndexes:
        """One index per origin, each a single segment (blocking: seconds at a million)."""
        indexes: dict[str, PdqIndex] = {}
        for origin, held in rows.items():
            index = PdqIndex()
            loader = index.loader()
            loader.add([r[1] for r in held], [bytes(r[2]) for r in held])
            loader.commit()
            index.rebuild()
            indexes[origin] = index
        return OriginIndexes(indexes)

    def __len__(self) -> int:
        return sum(len(i) for i in self._indexes.values())

    def query_above(
        self, origin: str, values: Sequence[bytes], max_distance: int, *, limit: int
    ) -> list[list[NearHit]]:
        """The nearest `limit` hits of each value among the origins named after `origin`
        (for a replicated media: the replicated origins ranked above its own)."""
        above = [o for o in self._origins if o > origin]
        answers = [self._indexes[o].query_many(values, max_distance, limit=limit) for o in above]
        if not answers:
            return [[] for _ in values]
        if len(answers) == 1:
            return answers[0]
        return [nearest(found, limit) for found in zip(*answers, strict=True)]
