-- Media and series linkage (issue 10, docs/linkage.md). The registry's linker owns every table
-- here; sync reads them only through RegistryStore.
--
-- What changes linkage is queued by statement-level triggers (one INSERT ... SELECT per
-- statement, whatever the batch size; EXECUTE plans each on the sizes the tables have then, see
-- 0006): signals added or dropped and media retracted, revived or deleted queue the media;
-- series membership queues the media and the series; victims queue the series. The linker
-- drains the queues (services/registry/linkage/linker.py), woken by NOTIFY at commit.
-- No foreign keys to media or series: a resync's sweep deletes rows of both, and linkage must
-- never stand in its way (the linker drops what refers to rows that are gone).

CREATE TABLE linkage_pending_media (
    media_row bigint      NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX linkage_pending_media_queued_idx ON linkage_pending_media (queued_at);

CREATE TABLE linkage_pending_series (
    series_row bigint      NOT NULL,
    queued_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX linkage_pending_series_queued_idx ON linkage_pending_series (queued_at);

-- Two media of different origins that share an exact signal and/or hold PDQ values at most
-- the node's threshold apart (closest distance; NULL when only exact).
CREATE TABLE media_links (
    low_row  bigint   NOT NULL,
    high_row bigint   NOT NULL,
    exact    boolean  NOT NULL,
    distance smallint CHECK (distance BETWEEN 0 AND 31),
    CONSTRAINT media_links_pkey PRIMARY KEY (low_row, high_row),
    CONSTRAINT media_links_ordered CHECK (low_row < high_row),
    CONSTRAINT media_links_evidence CHECK (exact OR distance IS NOT NULL)
);
CREATE INDEX media_links_high_idx ON media_links (high_row, low_row);

-- Media whose candidates passed MAX_LINKS_PER_MEDIA: their series evidence is a lower bound.
CREATE TABLE media_link_truncated (
    media_row bigint NOT NULL PRIMARY KEY
);

-- The evidence between two series of different origins (rows low < high) and whether it passes
-- the node's threshold (`linked`).
CREATE TABLE series_links (
    low_series       bigint   NOT NULL,
    high_series      bigint   NOT NULL,
    linked           boolean  NOT NULL,
    linked_low       integer  NOT NULL CHECK (linked_low >= 0),
    linked_high      integer  NOT NULL CHECK (linked_high >= 0),
    exact_low        integer  NOT NULL CHECK (exact_low >= 0),
    exact_high       integer  NOT NULL CHECK (exact_high >= 0),
    closest_distance smallint CHECK (closest_distance BETWEEN 0 AND 31),
    CONSTRAINT series_links_pkey PRIMARY KEY (low_series, high_series),
    CONSTRAINT series_links_ordered CHECK (low_series < high_series)
);
CREATE INDEX series_links_high_idx ON series_links (high_series, low_series);

-- One row per series whose linkage (links of its media, its pairs, its cluster, its victims)
-- changed; written only by the linker under its advisory lock, so ids commit in order and a
-- reader following ids misses nothing.
CREATE TABLE linkage_events (
    id         bigserial   PRIMARY KEY,
    series_row bigint      NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);

-- series_clusters (0008) referenced series: a resync's sweep deletes series rows.
ALTER TABLE series_clusters DROP CONSTRAINT series_clusters_series_row_fkey;
ALTER TABLE series_clusters DROP CONSTRAINT series_clusters_cluster_id_fkey;

-- TG_ARGV[0]: which queue; TG_ARGV[1]: the column of the transition table to queue.
CREATE FUNCTION linkage_queue() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed text := CASE TG_OP WHEN 'DELETE' THEN 'gone' ELSE 'came' END;
BEGIN
    EXECUTE format(
        'INSERT INTO %I (%I) SELECT DISTINCT %I FROM %I',
        'linkage_pending_' || TG_ARGV[0], TG_ARGV[0] || '_row', TG_ARGV[1], changed);
    PERFORM pg_notify('hashex_linkage', '');
    RETURN NULL;
END;
$$;

CREATE FUNCTION linkage_queue_retractions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE $q$
        INSERT INTO linkage_pending_media (media_row)
        SELECT a.id FROM media_after a JOIN media_before b ON b.id = a.id
        WHERE (a.retracted_at IS NULL) <> (b.retracted_at IS NULL)
    $q$;
    PERFORM pg_notify('hashex_linkage', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER signals_linkage_added AFTER INSERT ON signals REFERENCING NEW TABLE AS came
    FOR EACH STATEMENT EXECUTE FUNCTION linkage_queue('media', 'media_row');
CREATE TRIGGER signals_linkage_removed AFTER DELETE ON signals REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION linkage_queue('media', 'media_row');
CREATE TRIGGER media_series_linkage_added
    AFTER INSERT ON media_series REFERENCING NEW TABLE AS came
    FOR EACH STATEMENT EXECUTE FUNCTION linkage_queue('series', 'series_row');
CREATE TRIGGER media_series_linkage_removed
    AFTER DELETE ON media_series REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION linkage_queue('series', 'series_row');
CREATE TRIGGER media_series_linkage_media_added
    AFTER INSERT ON media_series REFERENCING NEW TABLE AS came
    FOR EACH STATEMENT EXECUTE FUNCTION linkage_queue('media', 'media_row');
CREATE TRIGGER media_series_linkage_media_removed
    AFTER DELETE ON media_series REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION linkage_queue('media', 'media_row');
CREATE TRIGGER media_linkage_retractions
    AFTER UPDATE ON media REFERENCING OLD TABLE AS media_before NEW TABLE AS media_after
    FOR EACH STATEMENT EXECUTE FUNCTION linkage_queue_retractions();
CREATE TRIGGER media_linkage_removed AFTER DELETE ON media REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION linkage_queue('media', 'id');
CREATE TRIGGER victims_linkage_added AFTER INSERT ON victims REFERENCING NEW TABLE AS came
    FOR EACH STATEMENT EXECUTE FUNCTION linkage_queue('series', 'series_row');
CREATE TRIGGER victims_linkage_changed AFTER UPDATE ON victims REFERENCING NEW TABLE AS came
    FOR EACH STATEMENT EXECUTE FUNCTION linkage_queue('series', 'series_row');
CREATE TRIGGER victims_linkage_removed AFTER DELETE ON victims REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION linkage_queue('series', 'series_row');
CREATE TRIGGER series_linkage_removed AFTER DELETE ON series REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION linkage_queue('series', 'id');

-- What a node held before this migration is linked when its linker first runs.
INSERT INTO linkage_pending_media (media_row) SELECT id FROM media;
INSERT INTO linkage_pending_series (series_row) SELECT id FROM series;
