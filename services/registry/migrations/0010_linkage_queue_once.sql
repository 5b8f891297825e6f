-- Each media and series is queued for linkage at most once (issue 10): a submission's signals
-- and its series membership each queued the same media, so a chunk of N queue rows held about
-- N/2 media. A change to a row already queued leaves its place in the queue (the earliest
-- change waits `linkage_settle_s` from when it was queued), except that a change to a row a
-- rebuild queued (at '-infinity') marks it changed, queued now. The linker's take reads one row
-- per media or series. Rows are queued in row order (each row's clock_timestamp() follows the
-- one before), so a chunk takes media that were submitted together, and their series are
-- recomputed in one chunk rather than in every chunk a hashed DISTINCT scattered them over.

DELETE FROM linkage_pending_media p USING linkage_pending_media q
WHERE p.media_row = q.media_row AND (p.queued_at, p.ctid) < (q.queued_at, q.ctid);
DELETE FROM linkage_pending_series p USING linkage_pending_series q
WHERE p.series_row = q.series_row AND (p.queued_at, p.ctid) < (q.queued_at, q.ctid);

CREATE UNIQUE INDEX linkage_pending_media_row_idx ON linkage_pending_media (media_row);
CREATE UNIQUE INDEX linkage_pending_series_row_idx ON linkage_pending_series (series_row);

-- Taken in (queued_at, row) order: the rows a rebuild queued all at '-infinity' come in row order
-- too, and the linker's look at the chunk after the next (services/registry/linkage/near.py)
-- sees the rows that chunk will take.
DROP INDEX linkage_pending_media_queued_idx;
DROP INDEX linkage_pending_series_queued_idx;
CREATE INDEX linkage_pending_media_queued_idx ON linkage_pending_media (queued_at, media_row);
CREATE INDEX linkage_pending_series_queued_idx ON linkage_pending_series (queued_at, series_row);

CREATE OR REPLACE FUNCTION linkage_queue() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed text := CASE TG_OP WHEN 'DELETE' THEN 'gone' ELSE 'came' END;
BEGIN
    EXECUTE format(
        'INSERT INTO %1$I AS q (%2$I) SELECT DISTINCT %3$I FROM %4$I ORDER BY 1 '
        'ON CONFLICT (%2$I) '
        'DO UPDATE SET queued_at = EXCLUDED.queued_at WHERE q.queued_at = ''-infinity''',
        'linkage_pending_' || TG_ARGV[0], TG_ARGV[0] || '_row', TG_ARGV[1], changed);
    PERFORM pg_notify('hashex_linkage', '');
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION linkage_queue_retractions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE $q$
        INSERT INTO linkage_pending_media AS q (media_row)
        SELECT a.id FROM media_after a JOIN media_before b ON b.id = a.id
        WHERE (a.retracted_at IS NULL) <> (b.retracted_at IS NULL)
        ORDER BY 1
        ON CONFLICT (media_row) DO UPDATE SET queued_at = EXCLUDED.queued_at
        WHERE q.queued_at = '-infinity'
    $q$;
    PERFORM pg_notify('hashex_linkage', '');
    RETURN NULL;
END;
$$;
