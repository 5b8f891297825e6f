-- `hashex audit show` filters by caller, method and time, newest first, over a log that grows
-- by every call of every unit and peer: without these, each filtered page read the whole log.
-- (caller, seq) and (method, seq) answer "newest N of this caller/method" by a backward index
-- scan; `at` grows with seq, so a BRIN index bounds a time range at almost no cost per insert.
CREATE INDEX IF NOT EXISTS audit_log_caller_seq_idx ON audit_log (caller, seq);
CREATE INDEX IF NOT EXISTS audit_log_method_seq_idx ON audit_log (method, seq);
CREATE INDEX IF NOT EXISTS audit_log_at_brin_idx ON audit_log USING brin (at);
