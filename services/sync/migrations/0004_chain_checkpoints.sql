-- The origin's log chain at the ends of batches applied from it: where a restored or forked
-- origin's history parts from the one applied here is found by asking it about these
-- (services.sync.divergence). Kept thin: the newest 256, then one per 4,096 seqs.

CREATE TABLE sync_chain_checkpoints (
    peer_id text   NOT NULL,
    seq     bigint NOT NULL CHECK (seq > 0),
    chain   bytea  NOT NULL CHECK (octet_length(chain) = 32),
    PRIMARY KEY (peer_id, seq)
);
