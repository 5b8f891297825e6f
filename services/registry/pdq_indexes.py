"""The registry's PDQ hashes in two indexes: this node's own records and those replicated from
peers. A unit's lookup searches both; a peer's live lookup (which may see this node's own
records only) searches the own one alone, so its match limit applies after that choice and
replicated records can never crowd the node's own out, at no cost beyond the search itself.

Both are services.registry.pdq_index.PdqIndex; writes go to the one their records belong to.
Blocking like PdqIndex itself: call mutations from a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.registry.pdq_index import NearHit, PdqIndex, PdqLoader, nearest


class PdqIndexes:
    def __init__(self, *, own: PdqIndex | None = None, replicated: PdqIndex | None = None) -> None:
        self.own = own or PdqIndex()
        self.replicated = replicated or PdqIndex()

    def __len__(self) -> int:
        return len(self.own) + len(self.replicated)

    def loaders(self) -> tuple[PdqLoader, PdqLoader]:
        """Loaders of the own and the replicated index, for filling both at start."""
        return self.own.loader(), self.replicated.loader()

    def query_cost(self, max_distance: int, *, own_only: bool = False) -> float:
        """PdqIndex.query_cost of what `query_many` searches."""
        cost = self.own.query_cost(max_distance)
        return cost if own_only else cost + self.replicated.query_cost(max_distance)

    def query_many(
        self, values: Sequence[bytes], max_distance: int, *, limit: int, own_only: bool = False
    ) -> list[list[NearHit]]:
        """The nearest `limit` hits of each value, sorted by (distance, row, value), among the
        own records, and the replicated ones too unless `own_only`."""
        own = self.own.query_many(values, max_distance, limit=limit)
        if own_only or not len(self.replicated):
            return own
        replicated = self.replicated.query_many(values, max_distance, limit=limit)
        return [nearest((a, b), limit) for a, b in zip(own, replicated, strict=True)]
