-- Replication state of this node toward each peer it pulls from. The replicated records
-- themselves live in the registry's tables (origin = the peer's id).

CREATE TABLE sync_cursors (
    peer_id           text        PRIMARY KEY CHECK (char_length(peer_id) BETWEEN 1 AND 128),
    -- The last seq of the peer's log applied here, the SHA-256 of the body of the last batch
    -- applied (empty before the first) and the policy generation it was filtered under.
    cursor_seq        bigint      NOT NULL DEFAULT 0 CHECK (cursor_seq >= 0),
    cursor_digest     bytea       NOT NULL DEFAULT '',
    policy_generation bigint      NOT NULL DEFAULT 0 CHECK (policy_generation >= 0),
    -- The peer's newest seq as last seen (for lag).
    peer_last_seq     bigint      NOT NULL DEFAULT 0,
    applied_entries   bigint      NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Signing keys of peers learned from KeyRotation entries (each verified by the key before it);
-- the keys on a peer's pinned card are read from the card itself.
CREATE TABLE sync_peer_keys (
    peer_id        text        NOT NULL,
    key_id         text        NOT NULL,
    public_key     bytea       NOT NULL CHECK (octet_length(public_key) = 32),
    learned_at_seq bigint      NOT NULL,
    learned_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (peer_id, key_id)
);
