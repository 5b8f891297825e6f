-- Entries of kind 6 (FlagState: a unit of this node changed an overlap flag's state).
ALTER TABLE change_log DROP CONSTRAINT IF EXISTS change_log_kind_check;
ALTER TABLE change_log ADD CONSTRAINT change_log_kind_check CHECK (kind BETWEEN 1 AND 6);
