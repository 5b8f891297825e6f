-- The node's audit log: one row per call through the gateway (and per batch a puller rejected),
-- hash-chained (services/core/audit/chain.py). seq is assigned by the appender under an advisory
-- lock (max + 1), never by a sequence, so the chain has no gaps. Rows are never changed: the
-- triggers refuse UPDATE, DELETE and TRUNCATE, and `hashex audit verify` detects a change made by
-- anyone able to switch them off.
--
-- Releases before the audit log became a core facility created this table as migration 1 of the
-- `gateway` component; every statement here is conditional, so on such a database this migration
-- only takes the table over (that older record stays in schema_version as history).

CREATE TABLE IF NOT EXISTS audit_log (
    seq               bigint      PRIMARY KEY CHECK (seq > 0),
    at                timestamptz NOT NULL,
    duration_ms       integer     NOT NULL CHECK (duration_ms >= 0),
    caller            text        NOT NULL CHECK (char_length(caller) <= 256),
    fingerprint       text        NOT NULL CHECK (char_length(fingerprint) <= 64),
    role              text        NOT NULL CHECK (char_length(role) <= 16),
    method            text        NOT NULL CHECK (char_length(method) <= 256),
    request_messages  bigint      NOT NULL CHECK (request_messages >= 0),
    response_messages bigint      NOT NULL CHECK (response_messages >= 0),
    request_digest    bytea       NOT NULL CHECK (octet_length(request_digest) = 32),
    status            text        NOT NULL CHECK (char_length(status) <= 32),
    previous_digest   bytea       NOT NULL CHECK (octet_length(previous_digest) = 32),
    digest            bytea       NOT NULL CHECK (octet_length(digest) = 32)
);

CREATE OR REPLACE FUNCTION audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_log_no_update_or_delete'
                   AND tgrelid = 'audit_log'::regclass) THEN
        CREATE TRIGGER audit_log_no_update_or_delete
            BEFORE UPDATE OR DELETE ON audit_log
            FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_log_no_truncate'
                   AND tgrelid = 'audit_log'::regclass) THEN
        CREATE TRIGGER audit_log_no_truncate
            BEFORE TRUNCATE ON audit_log
            FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
    END IF;
END;
$$;
