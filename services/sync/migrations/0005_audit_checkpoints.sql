-- Signed checkpoints of peers' audit logs (services/sync/audit_checkpoints.py): the latest one
-- verified of each origin, and every contradiction found between two of them, kept with both
-- signed checkpoints as proof that the origin's audit log was truncated or rewritten.

CREATE TABLE sync_audit_checkpoints (
    origin       text        PRIMARY KEY,
    record_count bigint      NOT NULL CHECK (record_count >= 0),
    head_digest  bytea       NOT NULL CHECK (octet_length(head_digest) = 32),
    body         bytea       NOT NULL CHECK (octet_length(body) <= 512),
    key_id       text        NOT NULL CHECK (char_length(key_id) <= 32),
    signature    bytea       NOT NULL CHECK (octet_length(signature) = 64),
    received_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sync_audit_contradictions (
    id                 bigserial   PRIMARY KEY,
    origin             text        NOT NULL,
    kind               text        NOT NULL CHECK (kind IN ('truncated', 'rewritten')),
    description        text        NOT NULL,
    kept_body          bytea       NOT NULL,
    kept_key_id        text        NOT NULL,
    kept_signature     bytea       NOT NULL,
    received_body      bytea       NOT NULL,
    received_key_id    text        NOT NULL,
    received_signature bytea       NOT NULL,
    detected_at        timestamptz NOT NULL DEFAULT now(),
    -- One per checkpoint kept: later contradictions of the same one add no proof (and would
    -- otherwise cost a row with every keep-alive).
    UNIQUE (origin, kept_body)
);
