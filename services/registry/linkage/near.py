"""The linker's PDQ candidates: the registry's index queried for a chunk's media, and answered
ahead for the chunk that comes next while this one's statements run (the index's threads on one
core, PostgreSQL on the other).

An answer computed ahead is as good as one computed in the chunk's transaction: it is computed
only for media that settled (the index then held every value committed before them), and a media
committed later finds this one itself when its own chunk comes. What a chunk takes from an answer
is checked against what is stored then (services/registry/linkage/linker.py): a hit whose media
is gone, retracted or no longer holds that value is dropped, and a stored PDQ link that an
answer computed ahead lacks (found meanwhile from the other side) is kept while the stored
values are still within the threshold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from services.registry.pdq_indexes import PdqIndexes

# (media row, PDQ value, whether to search the own records too)
Query = tuple[int, bytes, bool]
# (media row, PDQ value, distance)
Hit = tuple[int, bytes, int]


class NearSearch:
    def __init__(self, index: PdqIndexes, *, distance: int, limit: int) -> None:
        self._index = index
        self._distance = distance
        self._limit = limit
        self._ahead: dict[Query, list[Hit]] = {}
        self._next: dict[Query, list[Hit]] = {}

    async def answer(self, queries: Sequence[Query]) -> tuple[list[list[Hit]], set[int]]:
        """The hits of each query, and the media rows whose answer was computed ahead."""
        missing = [q for q in queries if q not in self._ahead]
        fresh = dict(zip(missing, await asyncio.to_thread(self._search, missing), strict=True))
        ahead = {q[0] for q in queries if q in self._ahead}
        return [self._ahead[q] if q in self._ahead else fresh[q] for q in queries], ahead

    async def compute_ahead(self, queries: Sequence[Query]) -> None:
        """Answer `queries` now, for the chunk after the current one (see `advance`)."""
        answers = await asyncio.to_thread(self._search, queries)
        self._next = dict(zip(queries, answers, strict=True))

    def advance(self) -> None:
        """The answers computed ahead become the next chunk's; older ones are dropped."""
        self._ahead, self._next = self._next, {}

    def forget(self) -> None:
        self._ahead, self._next = {}, {}

    def _search(self, queries: Sequence[Query]) -> list[list[Hit]]:
        answers: dict[int, list[Hit]] = {}
        for to_all in (False, True):
            group = [i for i, q in enumerate(queries) if q[2] is to_all]
            if not group:
                continue
            values = [queries[i][1] for i in group]
            if to_all:
                found = self._index.query_many(values, self._distance, limit=self._limit)
            else:
                found = self._index.replicated.query_many(values, self._distance, limit=self._limit)
            for i, hits in zip(group, found, strict=True):
                answers[i] = [(h.row_id, h.value, h.distance) for h in hits]
        return [answers[i] for i in range(len(queries))]
