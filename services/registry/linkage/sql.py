"""The linker's statements (tables of registry migration 0009)."""

from __future__ import annotations

# One linker at a time per database, whatever the processes: its chunks are serialised.
LINKER_LOCK = 0x6C696E6B  # "link"


def _take(queue: str, column: str) -> str:
    """Take up to $2 queued rows that waited at least $1 seconds, oldest first, each with
    whether something changed it (false: only a rebuild queued it, at '-infinity'). Names are
    this module's constants, never input."""
    return f"""
WITH taken AS (
    DELETE FROM {queue} WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {queue}
        WHERE queued_at <= clock_timestamp() - make_interval(secs => $1)
        ORDER BY queued_at, {column} LIMIT $2))
    RETURNING {column}, queued_at
)
SELECT {column}, bool_or(queued_at > '-infinity') AS changed FROM taken GROUP BY 1
"""  # noqa: S608


TAKE_MEDIA = _take("linkage_pending_media", "media_row")
TAKE_SERIES = _take("linkage_pending_series", "series_row")

PENDING_COUNTS = """
SELECT (SELECT count(*) FROM linkage_pending_media) AS media,
       (SELECT count(*) FROM linkage_pending_series) AS series
"""

LIVE_MEDIA = """
SELECT id, origin FROM media WHERE id = ANY($1::bigint[]) AND retracted_at IS NULL
"""

# Other-origin live media sharing an exact signal (every algorithm but PDQ), at most $2 per
# (media, signal) in row order: a hash shared by a million media costs $2 rows, not a million.
EXACT_CANDIDATES = """
SELECT s1.media_row AS media_row, x.other, x.origin
FROM signals s1
JOIN media m ON m.id = s1.media_row
CROSS JOIN LATERAL (
    SELECT s2.media_row AS other, o.origin
    FROM signals s2 JOIN media o ON o.id = s2.media_row
    WHERE s2.algorithm = s1.algorithm AND s2.value = s1.value
      AND o.origin <> m.origin AND o.retracted_at IS NULL
    ORDER BY s2.media_row
    LIMIT $2
) x
WHERE s1.media_row = ANY($1::bigint[]) AND s1.algorithm <> 4
"""

MATCHABLE_PDQ = """
SELECT media_row, value FROM signals
WHERE media_row = ANY($1::bigint[]) AND algorithm = 4 AND (quality IS NULL OR quality >= $2)
"""

# The PDQ hits ($1 rows, $2 values) that are still stored and matchable ($3: the minimum quality)
# on a live media, with its origin: an index answer is checked against the chunk's snapshot.
LIVE_PDQ_HITS = """
SELECT h.media_row, h.value, m.origin
FROM unnest($1::bigint[], $2::bytea[]) AS h(media_row, value)
JOIN media m ON m.id = h.media_row AND m.retracted_at IS NULL
WHERE EXISTS (
    SELECT 1 FROM signals s
    WHERE s.algorithm = 4 AND s.value = h.value AND s.media_row = h.media_row
      AND (s.quality IS NULL OR s.quality >= $3))
"""

# The matchable PDQ values of live media $1, with their origin.
LIVE_PDQ_OF = """
SELECT s.media_row, s.value, m.origin
FROM signals s JOIN media m ON m.id = s.media_row AND m.retracted_at IS NULL
WHERE s.media_row = ANY($1::bigint[]) AND s.algorithm = 4
  AND (s.quality IS NULL OR s.quality >= $2)
"""

# The matchable PDQ values of the live media queued after the first $2 ready entries (ready:
# waited $1 seconds), each with its origin and whether a change queued it (not only a rebuild).
PEEK_PDQ = """
WITH next AS (
    SELECT media_row, queued_at FROM linkage_pending_media
    WHERE queued_at <= clock_timestamp() - make_interval(secs => $1)
    ORDER BY queued_at, media_row OFFSET $2 LIMIT $2
), rows AS (
    SELECT media_row, bool_or(queued_at > '-infinity') AS changed FROM next GROUP BY 1
)
SELECT s.media_row, s.value, m.origin, n.changed
FROM rows n
JOIN media m ON m.id = n.media_row AND m.retracted_at IS NULL
JOIN signals s ON s.media_row = n.media_row AND s.algorithm = 4
  AND (s.quality IS NULL OR s.quality >= $3)
"""

# The links of media $1, each with the origin of each side (null for a media gone).
LINKS_OF = """
SELECT l.low_row, l.high_row, l.exact, l.distance, a.origin AS low_origin, b.origin AS high_origin
FROM (
    SELECT low_row, high_row, exact, distance FROM media_links WHERE low_row = ANY($1::bigint[])
    UNION
    SELECT low_row, high_row, exact, distance FROM media_links WHERE high_row = ANY($1::bigint[])
) l
LEFT JOIN media a ON a.id = l.low_row
LEFT JOIN media b ON b.id = l.high_row
"""

DROP_LINKS = """
DELETE FROM media_links l USING unnest($1::bigint[], $2::bigint[]) AS g(low_row, high_row)
WHERE l.low_row = g.low_row AND l.high_row = g.high_row
"""

INSERT_LINKS = """
INSERT INTO media_links (low_row, high_row, exact, distance)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::boolean[], $4::smallint[])
ORDER BY 1, 2
ON CONFLICT (low_row, high_row) DO UPDATE
SET exact = EXCLUDED.exact, distance = EXCLUDED.distance
"""

SET_TRUNCATED = """
WITH dropped AS (DELETE FROM media_link_truncated WHERE media_row = ANY($1::bigint[]))
INSERT INTO media_link_truncated (media_row) SELECT unnest($2::bigint[])
ON CONFLICT DO NOTHING
"""

SERIES_OF_MEDIA = """
SELECT DISTINCT series_row FROM media_series WHERE media_row = ANY($1::bigint[])
"""

# The evidence of every pair of series $1 with series of other origins, counted from the side
# of series $1 (both sides' distinct media come out of the same links).
PAIR_EVIDENCE = """
WITH fm AS (
    SELECT ms.series_row AS s, ms.media_row AS m
    FROM media_series ms WHERE ms.series_row = ANY($1::bigint[])
), d AS (
    SELECT fm.s, fm.m, l.high_row AS n, l.exact, l.distance
    FROM fm JOIN media_links l ON l.low_row = fm.m
    UNION ALL
    SELECT fm.s, fm.m, l.low_row AS n, l.exact, l.distance
    FROM fm JOIN media_links l ON l.high_row = fm.m
)
SELECT d.s, ms2.series_row AS t,
       count(DISTINCT d.m) AS linked_s, count(DISTINCT d.m) FILTER (WHERE d.exact) AS exact_s,
       count(DISTINCT d.n) AS linked_t, count(DISTINCT d.n) FILTER (WHERE d.exact) AS exact_t,
       min(d.distance) AS closest
FROM d
JOIN media_series ms2 ON ms2.media_row = d.n
JOIN series a ON a.id = d.s
JOIN series b ON b.id = ms2.series_row AND b.origin <> a.origin
GROUP BY 1, 2
"""

SERIES_SIZES = "SELECT id, media_count FROM series WHERE id = ANY($1::bigint[])"

EXISTING_SERIES = "SELECT id FROM series WHERE id = ANY($1::bigint[])"

PAIRS_OF = """
SELECT low_series, high_series, linked, linked_low, linked_high, exact_low, exact_high,
       closest_distance
FROM series_links WHERE low_series = ANY($1::bigint[])
UNION
SELECT low_series, high_series, linked, linked_low, linked_high, exact_low, exact_high,
       closest_distance
FROM series_links WHERE high_series = ANY($1::bigint[])
"""

DROP_PAIRS_OF = """
DELETE FROM series_links
WHERE low_series = ANY($1::bigint[]) OR high_series = ANY($1::bigint[])
"""

INSERT_PAIRS = """
INSERT INTO series_links (low_series, high_series, linked, linked_low, linked_high, exact_low,
                          exact_high, closest_distance)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::boolean[], $4::int[], $5::int[],
                     $6::int[], $7::int[], $8::smallint[])
ORDER BY 1, 2
"""

LINKED_NEIGHBOURS = """
SELECT low_series, high_series FROM series_links
WHERE linked AND (low_series = ANY($1::bigint[]) OR high_series = ANY($1::bigint[]))
"""

CLUSTER_MEMBERS = """
SELECT c2.series_row FROM series_clusters c1
JOIN series_clusters c2 ON c2.cluster_id = c1.cluster_id
WHERE c1.series_row = ANY($1::bigint[])
"""

CLUSTERS_OF = """
SELECT series_row, cluster_id FROM series_clusters WHERE series_row = ANY($1::bigint[])
"""

DROP_CLUSTERS_OF = "DELETE FROM series_clusters WHERE series_row = ANY($1::bigint[])"

INSERT_CLUSTERS = """
INSERT INTO series_clusters (series_row, cluster_id)
SELECT * FROM unnest($1::bigint[], $2::bigint[]) ORDER BY 1
"""

APPEND_EVENTS = """
INSERT INTO linkage_events (series_row)
SELECT s FROM unnest($1::bigint[]) AS s JOIN series se ON se.id = s ORDER BY s
"""

# A rebuild queues every media and series not queued yet ahead of what waits: each is linked
# anew from what is stored (what a change queued keeps its place, and is announced).
QUEUE_ALL_MEDIA = """
INSERT INTO linkage_pending_media (media_row, queued_at) SELECT id, '-infinity' FROM media
ON CONFLICT (media_row) DO NOTHING
"""

QUEUE_ALL_SERIES = """
INSERT INTO linkage_pending_series (series_row, queued_at) SELECT id, '-infinity' FROM series
ON CONFLICT (series_row) DO NOTHING
"""
