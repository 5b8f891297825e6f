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

What a query searches is its scope: every index (None: a replicated media a change queued);
the replicated records (this node's id: an own media, whose links only ever go to replicated
ones); or the replicated origins ranked above another origin (a replicated media that only a
rebuild queued, see relink.py). During a rebuild that last scope is searched in per-origin
indexes read at its start (origin_indexes.py), an answer as old as they are and so checked
like one computed ahead; otherwise in the replicated index, and the relinker drops what lies
below.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from services.registry.linkage.origin_indexes import OriginIndexes
from services.registry.pdq_index import NearHit
from services.registry.pdq_indexes import PdqIndexes

# (media row, PDQ value, scope: None, this node's id or another origin; see above)
Query = tuple[int, bytes, str | None]
# (media row, PDQ value, distance)
Hit = tuple[int, bytes, int]


def scope_of(origin: str, *, changed: bool, node_id: str) -> str | None:
    """What a media's query searches: every index for a replicated media a change queued, else
    the replicated records ranked above its origin (all of them for an own media)."""
    return None if changed and origin != node_id else origin


class NearSearch:
    def __init__(self, index: PdqIndexes, *, node_id: str, distance: int, limit: int) -> None:
        self._index = index
        self._node_id = node_id
        self._by_origin: OriginIndexes | None = None
        self._distance = distance
        self._limit = limit
        self._ahead: dict[Query, list[Hit]] = {}
        self._next: dict[Query, list[Hit]] = {}

    async def answer(self, queries: Sequence[Query]) -> tuple[list[list[Hit]], set[int]]:
        """The hits of each query, and the media rows whose answer was computed ahead (or
        from a rebuild's snapshot)."""
        missing = [q for q in queries if q not in self._ahead]
        fresh = dict(zip(missing, await asyncio.to_thread(self._search, missing), strict=True))
        # A snapshot's answer is as old as the snapshot: checked like one computed ahead.
        ahead = {q[0] for q in queries if q in self._ahead or self._in_snapshot(q[2])}
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

    def use_origin_indexes(self, indexes: OriginIndexes | None) -> None:
        """Search ranked scopes in `indexes` from now on (None: in the replicated index)."""
        self._by_origin = indexes
        self.forget()

    def _in_snapshot(self, scope: str | None) -> bool:
        return self._by_origin is not None and scope is not None and scope != self._node_id

    def _search(self, queries: Sequence[Query]) -> list[list[Hit]]:
        groups: dict[str | None, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(q[2], []).append(i)
        answers: dict[int, list[Hit]] = {}
        for scope, group in groups.items():
            found = self._search_scope(scope, [queries[i][1] for i in group])
            for i, hits in zip(group, found, strict=True):
                answers[i] = [(h.row_id, h.value, h.distance) for h in hits]
        return [answers[i] for i in range(len(queries))]

    def _search_scope(self, scope: str | None, values: list[bytes]) -> list[list[NearHit]]:
        d, limit = self._distance, self._limit
        if scope is None:
            return self._index.query_many(values, d, limit=limit)
        if self._by_origin is not None and self._in_snapshot(scope):
            return self._by_origin.query_above(scope, values, d, limit=limit)
        return self._index.replicated.query_many(values, d, limit=limit)
