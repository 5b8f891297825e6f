-- Clusters of linked series (issue 10): series whose media other origins' media match past the
-- node's evidence threshold form one cluster, named by its smallest series row. Owned by the
-- registry and filled by its series linkage (docs/linkage.md); a series without a row here is
-- linked to none (a cluster of its own).
-- Dedup reports read it to say to which clusters a seizure's matches belong.
CREATE TABLE series_clusters (
    series_row bigint NOT NULL PRIMARY KEY REFERENCES series (id),
    cluster_id bigint NOT NULL REFERENCES series (id),
    CONSTRAINT series_clusters_smallest CHECK (cluster_id <= series_row)
);

CREATE INDEX series_clusters_cluster_idx ON series_clusters (cluster_id, series_row);
