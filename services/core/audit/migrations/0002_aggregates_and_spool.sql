-- Refusals of one caller within a window are aggregated into one record (`calls` of them;
-- services/core/audit/refusals.py), and records of calls made while the database was down are
-- spooled to a file and written into the chain when it returns (services/core/audit/spool.py).
-- `audit_spool_drained` says how much of each spool file is already in the chain, updated in the
-- same transaction as the records it drained, so that a crash between that commit and the
-- removal of the file never writes a spooled record twice.

ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS calls bigint NOT NULL DEFAULT 1 CHECK (calls >= 1);

CREATE TABLE audit_spool_drained (
    spool_id      text   PRIMARY KEY CHECK (char_length(spool_id) <= 64),
    drained_bytes bigint NOT NULL CHECK (drained_bytes >= 0)
);
