"""The SQL text of the registry's named transactions; services/registry/store.py runs them and
turns their rows into model dataclasses. Kept apart only so each file stays readable.

Staging tables live per connection (created on first use, emptied at each commit), so batches do
not churn the catalogue. Inserts are ordered by key so that concurrent batches lock rows in the
same order.
"""

MEDIA_SELECT = """
SELECT m.id, m.origin, m.media_id, m.media_type, m.category_scheme, m.category_code, m.flags,
       m.first_seen, m.retracted_at IS NOT NULL AS retracted,
       sg.algorithms, sg.sig_values, sg.qualities,
       ARRAY(SELECT se.series_id FROM media_series ms JOIN series se ON se.id = ms.series_row
             WHERE ms.media_row = m.id ORDER BY se.series_id COLLATE "C") AS series_ids
FROM media m
LEFT JOIN LATERAL (
    SELECT array_agg(s.algorithm ORDER BY s.algorithm, s.value) AS algorithms,
           array_agg(s.value ORDER BY s.algorithm, s.value) AS sig_values,
           array_agg(s.quality ORDER BY s.algorithm, s.value) AS qualities
    FROM signals s WHERE s.media_row = m.id
) sg ON true
"""

# Full state of these media (retracted or not), ordered by media id: what the change log records.
MEDIA_STATES = MEDIA_SELECT + "WHERE m.id = ANY($1::bigint[]) ORDER BY m.media_id"

# A page of this node's media for ExportMedia, by the (origin, media_id) key: each page costs
# its own rows whatever the node holds.
_EXPORT_ROWS = """WHERE m.id IN (
    SELECT id FROM media WHERE origin = $1 AND media_id > $2 AND retracted_at IS NULL
    ORDER BY media_id LIMIT $3)
ORDER BY m.media_id"""
EXPORT_PAGE = MEDIA_SELECT + _EXPORT_ROWS

SERIES_NAMES = """
SELECT series_id, name FROM series
WHERE origin = $1 AND series_id = ANY($2::text[]) AND name <> ''
"""

# A batch's media, each with its row when the node holds it already (NULL: new).
CREATE_STAGING = """
SET LOCAL client_min_messages = warning;
CREATE TEMP TABLE IF NOT EXISTS registry_staged_media (
    media_row bigint, media_id text NOT NULL, media_type smallint, category_scheme smallint,
    category_code text, flags smallint NOT NULL
) ON COMMIT DELETE ROWS;
"""

# The media of a batch this node holds already, retracted or not, with their full state: what
# a submission merges into (and checks its limits against), and the state before each change
# that goes to the log with it.
HELD_MEDIA = (
    MEDIA_SELECT + "WHERE m.origin = $1 AND m.media_id = ANY($2::text[]) ORDER BY m.media_id"
)

# The batch's new media (the writers' lock is held: none can appear meanwhile). A type not
# given is an image.
INSERT_NEW_MEDIA = """
INSERT INTO media (origin, media_id, media_type, category_scheme, category_code, flags)
SELECT $1, s.media_id, coalesce(s.media_type, 1), s.category_scheme, s.category_code, s.flags
FROM registry_staged_media s
WHERE s.media_row IS NULL
ORDER BY s.media_id
RETURNING id, media_id, first_seen
"""

# A submission merges into a stored media: the type and the category only where given (staged
# non-NULL), flags only set, never cleared. Retracted media are never staged.
MERGE_MEDIA = """
UPDATE media m
SET media_type = coalesce(s.media_type, m.media_type),
    category_scheme = coalesce(s.category_scheme, m.category_scheme),
    category_code = CASE WHEN s.category_scheme IS NULL THEN m.category_code
                         ELSE s.category_code END,
    flags = m.flags | s.flags,
    updated_at = now()
FROM registry_staged_media s
WHERE m.id = s.media_row
  AND (m.media_type <> coalesce(s.media_type, m.media_type)
       OR (s.category_scheme IS NOT NULL
           AND (m.category_scheme, m.category_code)
               IS DISTINCT FROM (s.category_scheme, s.category_code))
       OR m.flags | s.flags <> m.flags)
RETURNING m.id
"""

SERIES_ROWS_OF = (
    "SELECT id, series_id FROM series WHERE origin = $1 AND series_id = ANY($2::text[])"
)

# Series a submission names that do not exist yet: created unnamed.
CREATE_SERIES = """
INSERT INTO series (origin, series_id)
SELECT $1, series_id FROM unnest($2::text[]) AS series_id ORDER BY 2
RETURNING id, series_id
"""

# A submission adds series memberships to held media; leaving a series is an explicit update
# (LEAVE_SERIES). Returns the memberships that are new.
ADD_SERIES_LINKS = """
INSERT INTO media_series (media_row, series_row)
SELECT * FROM unnest($1::bigint[], $2::bigint[]) ORDER BY 1, 2
ON CONFLICT DO NOTHING
RETURNING media_row
"""

# Signals a held media may not have yet; returns those it did not.
INSERT_SIGNALS = """
INSERT INTO signals (media_row, algorithm, value, quality)
SELECT * FROM unnest($1::bigint[], $2::smallint[], $3::bytea[], $4::smallint[]) AS s(r, a, v, q)
ORDER BY a, v, r
ON CONFLICT (algorithm, value, media_row) DO NOTHING
RETURNING media_row, algorithm, value, quality
"""

INSERT_CASES = """
INSERT INTO case_records (media_row, digest, sealed)
SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS c(r, d, s)
WHERE NOT EXISTS (SELECT 1 FROM case_records x WHERE x.media_row = c.r AND x.digest = c.d)
ORDER BY r, d
ON CONFLICT (media_row, digest) DO NOTHING
"""

TOUCH_MEDIA = "UPDATE media SET updated_at = now() WHERE id = ANY($1::bigint[])"

REPLICATED_SINCE = """
SELECT id, retracted_at IS NOT NULL AS retracted, updated_at FROM media
WHERE updated_at >= $2 AND origin <> $1
"""

MATCHABLE_PDQ_OF = """
SELECT media_row, value FROM signals
WHERE media_row = ANY($1::bigint[]) AND algorithm = 4 AND (quality IS NULL OR quality >= $2)
"""

MATCHABLE_PDQ = """
SELECT s.media_row, s.value, m.origin = $2 AS own
FROM signals s JOIN media m ON m.id = s.media_row AND m.retracted_at IS NULL
WHERE s.algorithm = 4 AND (s.quality IS NULL OR s.quality >= $1)
"""

# Per queried value ($1 algorithms, $2 values), the stored media holding it (not retracted), at
# most $3 each; a stored PDQ hash below quality $4 never matches; $5 (when not NULL) keeps only
# that origin's media (a peer's live lookup sees this node's own records only, chosen here
# before the limit so that replicated records cannot crowd them out).
EXACT_HITS = """
SELECT (q.ord - 1)::int AS query_index, hit.media_row
FROM unnest($1::smallint[], $2::bytea[]) WITH ORDINALITY AS q(algorithm, value, ord)
CROSS JOIN LATERAL (
    SELECT s.media_row
    FROM signals s JOIN media m ON m.id = s.media_row AND m.retracted_at IS NULL
    WHERE s.algorithm = q.algorithm AND s.value = q.value
      AND (s.algorithm <> 4 OR s.quality IS NULL OR s.quality >= $4)
      AND ($5::text IS NULL OR m.origin = $5)
    ORDER BY s.media_row
    LIMIT $3::bigint
) hit
ORDER BY q.ord, hit.media_row
"""

MEDIA_RECORDS = MEDIA_SELECT + "WHERE m.id = ANY($1::bigint[]) AND m.retracted_at IS NULL"

# Series with their victims, one row per (key, series, victim): the series of the media in $1
# (keyed by media row), or the series named by origin $2 and id $3 (keyed 0). The media count is
# the maintained one (migration 0005): reading it costs the same whatever the series' size.
SERIES_ROWS = """
WITH wanted AS (
    SELECT media_row AS key, series_row FROM media_series WHERE media_row = ANY($1::bigint[])
    UNION ALL
    SELECT 0, id FROM series WHERE origin = $2 AND series_id = $3
)
SELECT w.key, se.id AS series_row, se.origin, se.series_id, se.name,
       se.updated_at AS series_updated_at, se.media_count,
       v.victim_id, v.status, v.responsible_desk, v.updated_at AS victim_updated_at
FROM wanted w
JOIN series se ON se.id = w.series_row
LEFT JOIN victims v ON v.series_row = se.id
ORDER BY w.key, se.origin, se.series_id, v.victim_id
"""

# An explicit change (UpdateMedia): $2 the type (NULL keeps it), $3 whether the category is set
# to ($4, $5) (NULL, NULL: cleared), $6 flag bits to set and $7 to clear.
UPDATE_MEDIA = """
UPDATE media m
SET media_type = coalesce($2, m.media_type),
    category_scheme = CASE WHEN $3 THEN $4::smallint ELSE m.category_scheme END,
    category_code = CASE WHEN $3 THEN $5::text ELSE m.category_code END,
    flags = (m.flags | $6::smallint) & ~$7::smallint,
    updated_at = now()
WHERE m.id = ANY($1::bigint[])
  AND (m.media_type <> coalesce($2, m.media_type)
       OR ($3 AND (m.category_scheme, m.category_code) IS DISTINCT FROM ($4, $5))
       OR (m.flags | $6::smallint) & ~$7::smallint <> m.flags)
RETURNING m.id
"""

LEAVE_SERIES = """
DELETE FROM media_series ms
USING series se
WHERE ms.media_row = ANY($1::bigint[]) AND se.id = ms.series_row
  AND se.origin = $2 AND se.series_id = ANY($3::text[])
RETURNING ms.media_row
"""

RESTORE_MEDIA = """
UPDATE media SET retracted_at = NULL, updated_at = now()
WHERE id = ANY($1::bigint[]) AND retracted_at IS NOT NULL
RETURNING id
"""

RETRACT_MEDIA = """
UPDATE media SET retracted_at = now(), updated_at = now()
WHERE origin = $1 AND media_id = ANY($2::text[]) AND retracted_at IS NULL
RETURNING id
"""

# Which of the ids $2 are media of origin $1, retracted or not.
KNOWN_MEDIA_IDS = """
SELECT media_id FROM media WHERE origin = $1 AND media_id = ANY($2::text[])
"""

# `xmax = 0` holds for a freshly inserted row, not for one updated on conflict. A NULL name
# keeps the current one (a new series starts unnamed).
UPSERT_SERIES = """
INSERT INTO series (origin, series_id, name) VALUES ($1, $2, coalesce($3, ''))
ON CONFLICT (origin, series_id) DO UPDATE
SET name = coalesce($3, series.name),
    updated_at = CASE WHEN series.name = coalesce($3, series.name) THEN series.updated_at
                      ELSE now() END
RETURNING xmax = 0 AS created, updated_at = now() AS changed
"""

# The series of this node named $2 (NULL when it does not exist), its victim $3 (victim_id NULL
# when it does not exist) and how many victims it has.
VICTIM_OF_SERIES = """
SELECT se.id AS series_row, v.victim_id, v.status, v.responsible_desk,
       (SELECT count(*) FROM victims c WHERE c.series_row = se.id) AS victims
FROM series se LEFT JOIN victims v ON v.series_row = se.id AND v.victim_id = $3
WHERE se.origin = $1 AND se.series_id = $2
"""

# NULL status or desk ($3, $4) keeps the current one.
UPDATE_VICTIM = """
UPDATE victims
SET status = coalesce($3, status), responsible_desk = coalesce($4, responsible_desk),
    updated_at = CASE WHEN (status, responsible_desk)
                           = (coalesce($3, status), coalesce($4, responsible_desk))
                      THEN updated_at ELSE now() END
WHERE series_row = $1 AND victim_id = $2
RETURNING series_row, victim_id, status, responsible_desk, updated_at AS victim_updated_at,
          false AS created, updated_at = now() AS changed
"""

INSERT_VICTIM = """
INSERT INTO victims (series_row, victim_id, status, responsible_desk) VALUES ($1, $2, $3, $4)
RETURNING series_row, victim_id, status, responsible_desk, updated_at AS victim_updated_at,
          true AS created, true AS changed
"""

TOUCH_SERIES = "UPDATE series SET updated_at = now() WHERE id = $1"

COUNT_TOTALS = """
SELECT (SELECT count(*) FROM media WHERE retracted_at IS NULL) AS media_count,
       (SELECT count(*) FROM media WHERE retracted_at IS NOT NULL) AS retracted_count,
       (SELECT count(*) FROM series) AS series_count
"""

COUNT_SIGNALS = """
SELECT s.algorithm, count(*) AS count
FROM signals s JOIN media m ON m.id = s.media_row AND m.retracted_at IS NULL
GROUP BY s.algorithm
"""

COUNT_VICTIMS = "SELECT status, count(*) AS count FROM victims GROUP BY status"

SEALED_CASES = """
SELECT c.sealed
FROM media m LEFT JOIN case_records c ON c.media_row = m.id
WHERE m.origin = $1 AND m.media_id = $2
ORDER BY c.id
"""
