-- The change log: every change this node originates, in the order peers replay it
-- (services/core/changelog/store.py). `entry` holds the exact bytes of a serialized
-- hashex.v1.ChangeEntry carrying the full state after the change, so that senders pass stored
-- bytes through unchanged (and sign them) instead of re-serialising. Sequence numbers are dense:
-- they are assigned under a transaction-scoped advisory lock as max + 1, so no reader ever sees
-- seq N+1 committed before N.
--
-- Releases before the change log became a core facility created this table in registry
-- migrations 0002 and 0004, which stay in the registry's history and run first on every
-- database (the node applies the registry's migrations before this component's). Every
-- statement here is conditional: this migration takes the table over, and from here on the
-- change log's schema changes are this component's.

CREATE TABLE IF NOT EXISTS change_log (
    seq          bigint      PRIMARY KEY CHECK (seq > 0),
    changed_at   timestamptz NOT NULL,
    -- 1 media state, 2 media retraction, 3 series state, 4 signing-key rotation.
    kind         smallint    NOT NULL CHECK (kind BETWEEN 1 AND 4),
    entry        bytea       NOT NULL,
    media_before bytea
);

-- Key rotations decide which key signs which batch; senders read them at every pull.
CREATE INDEX IF NOT EXISTS change_log_key_rotations_idx ON change_log (seq) WHERE kind = 4;

COMMENT ON COLUMN change_log.media_before IS
    'Retractions: the media as it stood when retracted. Media states: the media before the change (NULL when created). Never sent to peers.';
