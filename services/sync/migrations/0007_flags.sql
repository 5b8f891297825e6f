-- Overlap flags (docs/linkage.md "Flags (sync)"): derived by services/sync/flags/engine.py from
-- the registry's linkage, kept only when this node's agency is one of the two involved.
-- A flag id exists once: it is never raised again (re-sync, rebuild); its evidence is updated.
CREATE TABLE flags (
    -- Lowercase hex SHA-256 of the situation (services/sync/flags/ids.py).
    id                text        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{64}$'),
    -- 1 ALREADY_IDENTIFIED, 2 CONCURRENT_WORK, 3 NEW_MATERIAL (the FlagKind numbers).
    kind              smallint    NOT NULL CHECK (kind BETWEEN 1 AND 3),
    series_origin     text        NOT NULL,
    series_id         text        NOT NULL,
    -- NULL for NEW_MATERIAL, set for the other kinds.
    other_origin      text,
    other_series_id   text,
    other_agency      text        NOT NULL,
    linked_media      integer     NOT NULL CHECK (linked_media >= 0),
    exact_media       integer     NOT NULL CHECK (exact_media >= 0),
    near_media        integer     NOT NULL CHECK (near_media >= 0),
    closest_distance  integer     CHECK (closest_distance BETWEEN 0 AND 256),
    identified_agency text,
    identified_desk   text,
    identified_since  timestamptz,
    raised_at         timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    CHECK ((kind = 3) = (other_origin IS NULL)),
    CHECK ((other_origin IS NULL) = (other_series_id IS NULL))
);

CREATE INDEX flags_kind_raised_idx ON flags (kind, raised_at DESC, id);
CREATE INDEX flags_raised_idx ON flags (raised_at DESC, id);

-- The newest state per flag, set here (SetFlagState) or by the other agency's FlagState entry.
-- Kept for a flag not raised here (yet), without a foreign key: when it is raised, it has this
-- state. A flag without a row is OPEN.
CREATE TABLE flag_states (
    flag_id    text        PRIMARY KEY CHECK (flag_id ~ '^[0-9a-f]{64}$'),
    -- 1 OPEN, 2 ACKNOWLEDGED, 3 RESOLVED (the FlagStateValue numbers).
    state      smallint    NOT NULL CHECK (state BETWEEN 1 AND 3),
    changed_at timestamptz NOT NULL,
    -- The node id of the agency whose unit changed it.
    changed_by text        NOT NULL,
    -- The caller (`unit:NAME`, `operator:NAME`) and its note when changed here; NULL when
    -- replicated (a note is never replicated).
    caller     text,
    note       text CHECK (char_length(note) <= 1000)
);

-- What WatchFlags streams. Appended only under a transaction-scoped advisory lock, so ids commit
-- in increasing order and a watcher resuming after id N misses none.
CREATE TABLE flag_events (
    id      bigserial   PRIMARY KEY,
    flag_id text        NOT NULL REFERENCES flags (id),
    -- 1 RAISED, 2 EVIDENCE_CHANGED, 3 STATE_CHANGED (the FlagEventKind numbers).
    kind    smallint    NOT NULL CHECK (kind BETWEEN 1 AND 3),
    at      timestamptz NOT NULL
);

-- The last linkage event the engine consumed (one row).
CREATE TABLE flag_linkage_cursor (
    only_row      boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_event_id bigint  NOT NULL CHECK (last_event_id >= 0)
);
INSERT INTO flag_linkage_cursor (last_event_id) VALUES (0);
