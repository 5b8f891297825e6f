-- The change log: every change this node originates, in the order peers replay it. `entry` holds
-- the exact bytes of a serialized hashex.v1.ChangeEntry carrying the full state after the change,
-- so that senders pass stored bytes through unchanged (and sign them) instead of re-serialising.
-- Sequence numbers are dense: they are assigned under a transaction-scoped advisory lock as
-- max + 1, so no reader ever sees seq N+1 committed before N.

CREATE TABLE change_log (
    seq          bigint      PRIMARY KEY CHECK (seq > 0),
    changed_at   timestamptz NOT NULL,
    -- 1 media state, 2 media retraction, 3 series state, 4 signing-key rotation.
    kind         smallint    NOT NULL CHECK (kind BETWEEN 1 AND 4),
    entry        bytea       NOT NULL,
    -- Retractions only: the media (a serialized hashex.v1.Media) as it stood when retracted, so
    -- the sender's policy filter withholds the retraction of a media a peer was never allowed to
    -- see (its media id may be a hash). Never sent to peers.
    media_before bytea
);

-- Key rotations decide which key signs which batch; senders read them at every pull.
CREATE INDEX change_log_key_rotations_idx ON change_log (seq) WHERE kind = 4;

-- Records replicated from peers (origin <> this node) remember the origin's sequence number of
-- the entry that last set them: an entry applies only when it is newer, so re-offered older
-- entries never overwrite newer state. NULL for this node's own records (and for series that
-- replicated media named before their own entry arrived).
ALTER TABLE media ADD COLUMN origin_seq bigint;
ALTER TABLE series ADD COLUMN origin_seq bigint;
