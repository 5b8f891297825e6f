-- Revocations of peers' signing keys learned from KeyRevocation entries of their logs (those on a
-- peer's pinned card are read from the card itself). One row per key: the widest revocation
-- (the smallest seq from which the key signs nothing).
CREATE TABLE sync_peer_key_revocations (
    peer_id          text        NOT NULL,
    key_id           text        NOT NULL,
    revoked_from_seq bigint      NOT NULL CHECK (revoked_from_seq >= 1),
    learned_at_seq   bigint      NOT NULL,
    learned_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (peer_id, key_id)
);
