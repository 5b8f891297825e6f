-- Each entry commits to the one before it: chain(n) = SHA-256("hashex.v1.LogChain\0" ||
-- chain(n-1) || seq(n) as 8 bytes big-endian || SHA-256(entry(n))), chain(0) empty. Batches carry
-- the chain at their ends (signed), so a peer detects an origin whose log was restored, rewound
-- or forked at the first pull that reaches it (services/core/changelog/store.py).

ALTER TABLE change_log ADD COLUMN IF NOT EXISTS chain bytea;

WITH RECURSIVE linked (seq, chain) AS (
    SELECT l.seq,
           sha256(convert_to('hashex.v1.LogChain', 'UTF8') || '\x00'::bytea || int8send(l.seq)
                  || sha256(l.entry))
    FROM change_log l WHERE l.seq = 1
    UNION ALL
    SELECT l.seq,
           sha256(convert_to('hashex.v1.LogChain', 'UTF8') || '\x00'::bytea || c.chain
                  || int8send(l.seq) || sha256(l.entry))
    FROM linked c JOIN change_log l ON l.seq = c.seq + 1
)
UPDATE change_log l SET chain = linked.chain FROM linked
WHERE l.seq = linked.seq AND l.chain IS NULL;

ALTER TABLE change_log ALTER COLUMN chain SET NOT NULL;
ALTER TABLE change_log ADD CONSTRAINT change_log_chain_is_sha256 CHECK (octet_length(chain) = 32);
