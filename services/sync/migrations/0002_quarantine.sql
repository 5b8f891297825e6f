-- Entries of a peer's verified batches that could not be applied (invalid against the
-- contract, out of order, another origin's record): kept with the reason, never applied, never
-- retried, so that one entry never halts replication from that peer. The batch's other
-- entries applied and the cursor moved past it in the same transaction that stored these.

CREATE TABLE sync_quarantine (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    peer_id        text        NOT NULL,
    -- The seq the entry claims (0 when it cannot be decoded at all).
    seq            bigint      NOT NULL CHECK (seq >= 0),
    reason         text        NOT NULL,
    entry          bytea       NOT NULL,
    -- SHA-256 of the body of the signed batch that carried it.
    batch_digest   bytea       NOT NULL CHECK (octet_length(batch_digest) = 32),
    quarantined_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX sync_quarantine_by_peer ON sync_quarantine (peer_id, id);
