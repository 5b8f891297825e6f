-- The gateway's audit log: one row per call, hash-chained (services/gateway/audit.py).
-- seq is assigned by the appender under an advisory lock (max + 1), never by a sequence, so the
-- chain has no gaps. Rows are never changed: the trigger refuses UPDATE, DELETE and TRUNCATE, and
-- `hashex audit verify` detects a change made by anyone able to switch the trigger off.

CREATE TABLE audit_log (
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

CREATE FUNCTION audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;

CREATE TRIGGER audit_log_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
