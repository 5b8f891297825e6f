-- Which node a database belongs to. One row, written by the first node that starts on the
-- database (an upgraded database is claimed by the node that upgrades it); every start checks it,
-- so a node never serves, or offers as its own change log, another node's records.

CREATE TABLE node_claim (
    only_row               boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    node_id                text        NOT NULL CHECK (char_length(node_id) BETWEEN 1 AND 128),
    -- A fingerprint of the node's case-data key (never the key): a node restored with another
    -- key could not open the case data sealed here.
    case_key_fingerprint   text        NOT NULL DEFAULT '',
    claimed_at             timestamptz NOT NULL DEFAULT now()
);
