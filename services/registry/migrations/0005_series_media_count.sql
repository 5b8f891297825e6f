-- A series' media count is maintained, never recounted: lookups return it with every match, and
-- recounting a series of 200,000 media per match made a lookup's cost grow with series size.
-- The count is of media linked to the series that are not retracted, kept by statement-level
-- triggers on the two things that change it: links (media_series inserts and deletes) and
-- retraction (media.retracted_at set or cleared). Transition tables make each trigger one
-- grouped UPDATE per statement, whatever the batch size.

ALTER TABLE series ADD COLUMN media_count bigint NOT NULL DEFAULT 0 CHECK (media_count >= 0);

UPDATE series se SET media_count = c.n
FROM (
    SELECT ms.series_row, count(*) AS n
    FROM media_series ms JOIN media m ON m.id = ms.media_row AND m.retracted_at IS NULL
    GROUP BY ms.series_row
) c
WHERE se.id = c.series_row;

CREATE FUNCTION series_count_links_added() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE series se SET media_count = se.media_count + d.n
    FROM (
        SELECT l.series_row, count(*) AS n
        FROM added_links l JOIN media m ON m.id = l.media_row AND m.retracted_at IS NULL
        GROUP BY l.series_row
    ) d
    WHERE se.id = d.series_row;
    RETURN NULL;
END;
$$;

CREATE FUNCTION series_count_links_removed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE series se SET media_count = se.media_count - d.n
    FROM (
        SELECT l.series_row, count(*) AS n
        FROM removed_links l JOIN media m ON m.id = l.media_row AND m.retracted_at IS NULL
        GROUP BY l.series_row
    ) d
    WHERE se.id = d.series_row;
    RETURN NULL;
END;
$$;

CREATE FUNCTION series_count_retractions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE series se SET media_count = se.media_count + d.delta
    FROM (
        SELECT ms.series_row,
               sum(CASE WHEN a.retracted_at IS NULL THEN 1 ELSE -1 END) AS delta
        FROM media_before b
        JOIN media_after a ON a.id = b.id
        JOIN media_series ms ON ms.media_row = a.id
        WHERE (b.retracted_at IS NULL) <> (a.retracted_at IS NULL)
        GROUP BY ms.series_row
    ) d
    WHERE se.id = d.series_row AND d.delta <> 0;
    RETURN NULL;
END;
$$;

CREATE TRIGGER media_series_count_added
    AFTER INSERT ON media_series REFERENCING NEW TABLE AS added_links
    FOR EACH STATEMENT EXECUTE FUNCTION series_count_links_added();

CREATE TRIGGER media_series_count_removed
    AFTER DELETE ON media_series REFERENCING OLD TABLE AS removed_links
    FOR EACH STATEMENT EXECUTE FUNCTION series_count_links_removed();

CREATE TRIGGER media_count_retractions
    AFTER UPDATE ON media REFERENCING OLD TABLE AS media_before NEW TABLE AS media_after
    FOR EACH STATEMENT EXECUTE FUNCTION series_count_retractions();
