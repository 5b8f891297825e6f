-- The series media-count triggers of 0005 ran their statements through PL/pgSQL's plan cache:
-- each connection planned them once, against the table sizes of that moment, and kept the plan
-- until the tables were next analysed. A connection that started on an empty node kept joining
-- every new batch of links against a sequential scan of all media (3 ms per batch at 1,000
-- media, 19 ms at 100,000, growing with the table). EXECUTE plans each statement when it runs,
-- on the sizes the tables have then: an index lookup per changed link or media row.

-- Links added and links removed differ only in the transition table and the sign: one function.
CREATE FUNCTION series_count_links() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($q$
        UPDATE series se SET media_count = se.media_count %s d.n
        FROM (
            SELECT l.series_row, count(*) AS n
            FROM %I l JOIN media m ON m.id = l.media_row AND m.retracted_at IS NULL
            GROUP BY l.series_row
        ) d
        WHERE se.id = d.series_row
    $q$,
        CASE TG_OP WHEN 'INSERT' THEN '+' ELSE '-' END,
        CASE TG_OP WHEN 'INSERT' THEN 'added_links' ELSE 'removed_links' END);
    RETURN NULL;
END;
$$;

DROP TRIGGER media_series_count_added ON media_series;
DROP TRIGGER media_series_count_removed ON media_series;
DROP FUNCTION series_count_links_added();
DROP FUNCTION series_count_links_removed();

CREATE TRIGGER media_series_count_added
    AFTER INSERT ON media_series REFERENCING NEW TABLE AS added_links
    FOR EACH STATEMENT EXECUTE FUNCTION series_count_links();

CREATE TRIGGER media_series_count_removed
    AFTER DELETE ON media_series REFERENCING OLD TABLE AS removed_links
    FOR EACH STATEMENT EXECUTE FUNCTION series_count_links();

CREATE OR REPLACE FUNCTION series_count_retractions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE $q$
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
        WHERE se.id = d.series_row AND d.delta <> 0
    $q$;
    RETURN NULL;
END;
$$;
