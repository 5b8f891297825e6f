-- Entries of kind 5 (KeyRevocation: one of this node's signing keys revoked after a compromise).
ALTER TABLE change_log DROP CONSTRAINT IF EXISTS change_log_kind_check;
ALTER TABLE change_log ADD CONSTRAINT change_log_kind_check CHECK (kind BETWEEN 1 AND 5);
