"""The SQL text of the registry's named transactions; services/registry/store.py runs them and
turns their rows into model dataclasses. Kept apart only so each file stays readable.

Staging tables live per connection (created on first use, emptied at each commit), so batches do
not churn the catalogue. Inserts are ordered by key so that concurrent batches lock rows in the
same order.
"""

MEDIA_SELECT = """
SELECT m.id, m.origin, m.media_id, m.media_type, m.category_scheme, m.category_code, m.flags,
       m.first_seen, sg.algorithms, sg.sig_values, sg.qualities,
       ARRAY(SELECT se.series_id FROM media_series ms JOIN series se ON se.id = ms.series_row
             WHERE ms.media_row = m.id ORDER BY se.series_id) AS series_ids
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

CREATE_STAGING = """
SET LOCAL client_min_messages = warning;
CREATE TEMP TABLE IF NOT EXISTS registry_stage_media (
    media_id text NOT NULL, media_type smallint NOT NULL, category_scheme smallint,
    category_code text, flags smallint NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS registry_stage_signals (
    media_id text NOT NULL, algorithm smallint NOT NULL, value bytea NOT NULL, quality smallint
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS registry_stage_series (
    media_id text NOT NULL, series_id text NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS registry_stage_cases (
    media_id text NOT NULL, digest bytea NOT NULL, sealed bytea NOT NULL
) ON COMMIT DELETE ROWS;
"""

# Only ids not stored yet, so that resubmissions do not consume identity values.
INSERT_NEW_MEDIA = """
INSERT INTO media (origin, media_id, media_type, category_scheme, category_code, flags)
SELECT $1, s.media_id, s.media_type, s.category_scheme, s.category_code, s.flags
FROM registry_stage_media s
WHERE NOT EXISTS (SELECT 1 FROM media m WHERE m.origin = $1 AND m.media_id = s.media_id)
ORDER BY s.media_id
ON CONFLICT (origin, media_id) DO NOTHING
RETURNING id
"""

# `prior` is the row as the statement found it, so RETURNING can tell a revived media.
# Media of the batch this node already holds: their state before the batch goes with each change
# to the log, so a sender can withdraw a record from a peer once it may no longer see it.
HELD_MEDIA = """
SELECT m.id FROM registry_stage_media s JOIN media m ON m.origin = $1 AND m.media_id = s.media_id
"""

UPDATE_CHANGED_MEDIA = """
UPDATE media m
SET media_type = s.media_type, category_scheme = s.category_scheme,
    category_code = s.category_code, flags = s.flags, retracted_at = NULL, updated_at = now()
FROM registry_stage_media s, media prior
WHERE m.origin = $1 AND m.media_id = s.media_id AND prior.id = m.id
  AND (m.retracted_at IS NOT NULL
       OR (m.media_type, m.category_scheme, m.category_code, m.flags)
          IS DISTINCT FROM (s.media_type, s.category_scheme, s.category_code, s.flags))
RETURNING m.id, prior.retracted_at IS NOT NULL AS was_retracted
"""

CREATE_MISSING_SERIES = """
INSERT INTO series (origin, series_id)
SELECT DISTINCT $1, s.series_id FROM registry_stage_series s
WHERE NOT EXISTS (SELECT 1 FROM series se WHERE se.origin = $1 AND se.series_id = s.series_id)
ORDER BY 2
ON CONFLICT (origin, series_id) DO NOTHING
RETURNING series_id
"""

# A submission states the media's series in full: links not named any more are removed.
RELINK_SERIES = """
WITH batch AS (
    SELECT m.id AS media_row, s.media_id
    FROM registry_stage_media s JOIN media m ON m.origin = $1 AND m.media_id = s.media_id
), desired AS (
    SELECT b.media_row, se.id AS series_row
    FROM registry_stage_series ss
    JOIN batch b ON b.media_id = ss.media_id
    JOIN series se ON se.origin = $1 AND se.series_id = ss.series_id
), removed AS (
    DELETE FROM media_series ms USING batch b
    WHERE ms.media_row = b.media_row AND NOT EXISTS (
        SELECT 1 FROM desired d WHERE d.media_row = ms.media_row AND d.series_row = ms.series_row)
    RETURNING ms.media_row
), added AS (
    INSERT INTO media_series (media_row, series_row)
    SELECT media_row, series_row FROM desired ORDER BY 1, 2
    ON CONFLICT DO NOTHING
    RETURNING media_row
)
SELECT media_row FROM removed UNION SELECT media_row FROM added
"""

INSERT_SIGNALS = """
INSERT INTO signals (media_row, algorithm, value, quality)
SELECT m.id, s.algorithm, s.value, s.quality
FROM registry_stage_signals s JOIN media m ON m.origin = $1 AND m.media_id = s.media_id
ORDER BY s.algorithm, s.value, m.id
ON CONFLICT (algorithm, value, media_row) DO NOTHING
RETURNING media_row, algorithm, value, quality
"""

INSERT_CASES = """
INSERT INTO case_records (media_row, digest, sealed)
SELECT m.id, c.digest, c.sealed
FROM registry_stage_cases c JOIN media m ON m.origin = $1 AND m.media_id = c.media_id
WHERE NOT EXISTS (
    SELECT 1 FROM case_records r WHERE r.media_row = m.id AND r.digest = c.digest)
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
SELECT s.media_row, s.value
FROM signals s JOIN media m ON m.id = s.media_row AND m.retracted_at IS NULL
WHERE s.algorithm = 4 AND (s.quality IS NULL OR s.quality >= $1)
"""

EXACT_HITS = """
SELECT (q.ord - 1)::int AS query_index, hit.media_row
FROM unnest($1::smallint[], $2::bytea[]) WITH ORDINALITY AS q(algorithm, value, ord)
CROSS JOIN LATERAL (
    SELECT s.media_row
    FROM signals s JOIN media m ON m.id = s.media_row AND m.retracted_at IS NULL
    WHERE s.algorithm = q.algorithm AND s.value = q.value
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

RETRACT_MEDIA = """
UPDATE media SET retracted_at = now(), updated_at = now()
WHERE origin = $1 AND media_id = ANY($2::text[]) AND retracted_at IS NULL
RETURNING id
"""

# `xmax = 0` holds for a freshly inserted row, not for one updated on conflict.
UPSERT_SERIES = """
INSERT INTO series (origin, series_id, name) VALUES ($1, $2, $3)
ON CONFLICT (origin, series_id) DO UPDATE
SET name = EXCLUDED.name,
    updated_at = CASE WHEN series.name = EXCLUDED.name THEN series.updated_at ELSE now() END
RETURNING xmax = 0 AS created, updated_at = now() AS changed
"""

UPSERT_VICTIM = """
INSERT INTO victims (series_row, victim_id, status, responsible_desk)
SELECT se.id, $3, $4, $5 FROM series se WHERE se.origin = $1 AND se.series_id = $2
ON CONFLICT (series_row, victim_id) DO UPDATE
SET status = EXCLUDED.status,
    responsible_desk = coalesce(nullif(EXCLUDED.responsible_desk, ''), victims.responsible_desk),
    updated_at = CASE
        WHEN victims.status = EXCLUDED.status
             AND EXCLUDED.responsible_desk IN ('', victims.responsible_desk)
        THEN victims.updated_at ELSE now() END
RETURNING series_row, victim_id, status, responsible_desk, updated_at AS victim_updated_at,
          xmax = 0 AS created, updated_at = now() AS changed
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
