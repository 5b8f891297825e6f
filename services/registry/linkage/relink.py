"""Relinking a chunk's media, the linker's first step (docs/linkage.md "Media links"): the
candidates of each live media by exact signal (SQL) and by PDQ (NearSearch), at most
MAX_LINKS_PER_MEDIA each (exact first, then the closest), written where they differ from what
is stored.
"""

from __future__ import annotations

from typing import Any

from services.core.algorithms import ALGORITHMS, Algorithm
from services.registry.linkage import sql
from services.registry.linkage.evidence import LinkageSettings, MediaLink
from services.registry.linkage.near import NearSearch, scope_of
from services.registry.linkage.origin_indexes import origin_rank

MAX_LINKS_PER_MEDIA = 1_000
PDQ_MIN_QUALITY = ALGORITHMS[Algorithm.PDQ].min_match_quality
_NO_DISTANCE = 1_000


class MediaRelinker:
    def __init__(self, *, near: NearSearch, node_id: str, settings: LinkageSettings) -> None:
        self._near = near
        self._node_id = node_id
        self._settings = settings

    async def relink(self, conn: Any, media: list[int], rebuild_only: set[int]) -> set[int]:
        """Replace the links of `media` (in the chunk's transaction `conn`); the media whose
        links changed, on either side.

        A replicated media that only a rebuild queued is relinked to the media of origins
        ranked above its own alone (origin_rank: this node's records first, then origins by
        name); its links to the others are theirs to relink (they are rebuilt too), so each
        pair is searched once, from its lower side. An own media is the lowest rank anyway."""
        origins = {r[0]: r[1] for r in await conn.fetch(sql.LIVE_MEDIA, media)}
        ranked = {m for m in rebuild_only if origins.get(m, self._node_id) != self._node_id}
        chunk = set(media)

        def in_scope(end: int, other: str | None) -> bool:
            return end in chunk and not (end in ranked and not self._above(other, origins[end]))

        old = {
            (r[0], r[1]): (r[2], r[3])
            for r in await conn.fetch(sql.LINKS_OF, media)
            if in_scope(r[0], r[5]) or in_scope(r[1], r[4])
        }
        found, truncated = await self._candidates(conn, origins, ranked, old)
        # Only what differs is written: a rebuild that finds what is stored writes nothing.
        gone = sorted(old.keys() - found.keys())
        if gone:
            await conn.execute(sql.DROP_LINKS, [k[0] for k in gone], [k[1] for k in gone])
        keys = sorted(k for k, v in found.items() if old.get(k) != v)
        if keys:
            await conn.execute(
                sql.INSERT_LINKS,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [found[k][0] for k in keys],
                [found[k][1] for k in keys],
            )
        await conn.execute(sql.SET_TRUNCATED, media, sorted(truncated))
        touched = {m for key in (*gone, *keys) for m in key}
        return touched

    def _above(self, other_origin: str | None, origin: str) -> bool:
        """Whether a media of `other_origin` ranks above one of `origin`; a media whose origin
        is unknown (gone) counts as above, so that its link is relinked."""
        if other_origin is None:
            return True
        return origin_rank(other_origin, self._node_id) > origin_rank(origin, self._node_id)

    async def _candidates(
        self,
        conn: Any,
        origins: dict[int, str],
        ranked: set[int],
        old: dict[tuple[int, int], tuple[bool, int | None]],
    ) -> tuple[dict[tuple[int, int], tuple[bool, int | None]], set[int]]:
        """The links of the live media `origins` (of `ranked`, to media ranked above only), at
        most MAX_LINKS_PER_MEDIA each."""
        live = sorted(origins)
        per_media: dict[int, dict[int, list[Any]]] = {m: {} for m in live}
        if not live:
            return {}, set()
        for r in await conn.fetch(sql.EXACT_CANDIDATES, live, MAX_LINKS_PER_MEDIA + 1):
            if r[0] in ranked and not self._above(r[2], origins[r[0]]):
                continue
            per_media[r[0]].setdefault(r[1], [False, None])[0] = True
        await self._near_links(conn, origins, ranked, old, per_media)
        found: dict[tuple[int, int], tuple[bool, int | None]] = {}
        truncated: set[int] = set()
        for m, others in per_media.items():
            best = sorted(
                others.items(),
                key=lambda kv: (
                    not kv[1][0],
                    _NO_DISTANCE if kv[1][1] is None else kv[1][1],
                    kv[0],
                ),
            )
            if len(best) > MAX_LINKS_PER_MEDIA:
                truncated.add(m)
            for other, (exact, distance) in best[:MAX_LINKS_PER_MEDIA]:
                key = _pair(m, other)
                MediaLink(key[0], key[1], exact, distance)  # the link's own checks
                found[key] = _better(found.get(key), (exact, distance))
        return found, truncated

    async def _near_links(
        self,
        conn: Any,
        origins: dict[int, str],
        ranked: set[int],
        old: dict[tuple[int, int], tuple[bool, int | None]],
        per_media: dict[int, dict[int, list[Any]]],
    ) -> None:
        rows = await conn.fetch(sql.MATCHABLE_PDQ, sorted(origins), PDQ_MIN_QUALITY)
        if not rows:
            return
        node = self._node_id
        queries = [
            (r[0], bytes(r[1]), scope_of(origins[r[0]], changed=r[0] not in ranked, node_id=node))
            for r in rows
        ]
        answers, ahead = await self._near.answer(queries)
        hits: dict[tuple[int, int, bytes], int] = {}
        for query, found in zip(queries, answers, strict=True):
            for other, value, d in found:
                key = (query[0], other, value)
                hits[key] = min(d, hits.get(key, d))
        if hits:
            wanted = sorted({(h[1], h[2]) for h in hits})
            live = {
                (r[0], bytes(r[1])): r[2]
                for r in await conn.fetch(
                    sql.LIVE_PDQ_HITS,
                    [w[0] for w in wanted],
                    [w[1] for w in wanted],
                    PDQ_MIN_QUALITY,
                )
            }
            for (m, other, value), d in hits.items():
                other_origin = live.get((other, value))
                if other_origin is None or other_origin == origins[m]:
                    continue
                if m in ranked and not self._above(other_origin, origins[m]):
                    continue
                _note_distance(per_media[m], other, d)
        if ahead:
            await self._keep_found_meanwhile(conn, origins, ranked, old, rows, ahead, per_media)

    async def _keep_found_meanwhile(
        self,
        conn: Any,
        origins: dict[int, str],
        ranked: set[int],
        old: dict[tuple[int, int], tuple[bool, int | None]],
        rows: list[Any],
        ahead: set[int],
        per_media: dict[int, dict[int, list[Any]]],
    ) -> None:
        """Stored PDQ links of media answered ahead that their answer lacks: linked from the
        other side meanwhile. Kept, at the distance of the stored values, while within range."""
        lacking = [
            (m, other)
            for low, high in (k for k, v in old.items() if v[1] is not None)
            for m, other in ((low, high), (high, low))
            if m in ahead and m in per_media and per_media[m].get(other, [False, None])[1] is None
        ]
        if not lacking:
            return
        values: dict[int, list[int]] = {}
        for r in rows:
            values.setdefault(r[0], []).append(int.from_bytes(r[1]))
        others: dict[int, tuple[str, list[int]]] = {}
        for r in await conn.fetch(
            sql.LIVE_PDQ_OF, sorted({o for _, o in lacking}), PDQ_MIN_QUALITY
        ):
            others.setdefault(r[0], (r[2], []))[1].append(int.from_bytes(r[1]))
        limit = self._settings.pdq_max_distance
        for m, other in lacking:
            if other not in others or m not in values:
                continue
            other_origin, other_values = others[other]
            if other_origin == origins[m]:
                continue
            if m in ranked and not self._above(other_origin, origins[m]):
                continue
            d = min((a ^ b).bit_count() for a in values[m] for b in other_values)
            if d <= limit:
                _note_distance(per_media[m], other, d)


def _note_distance(candidates: dict[int, list[Any]], other: int, distance: int) -> None:
    """Keep the closer PDQ distance to `other` among a media's candidates."""
    slot = candidates.setdefault(other, [False, None])
    if slot[1] is None or distance < slot[1]:
        slot[1] = distance


def _pair(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _better(
    held: tuple[bool, int | None] | None, found: tuple[bool, int | None]
) -> tuple[bool, int | None]:
    """A pair seen from both of its media: exact if either saw it so, the closer distance."""
    if held is None:
        return found
    distances = [d for d in (held[1], found[1]) if d is not None]
    return held[0] or found[0], min(distances) if distances else None
