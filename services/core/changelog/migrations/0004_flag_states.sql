-- Entries of kind 6 (FlagState: a unit of this node changed an overlap flag's state).
ALTER TABLE change_log DROP CONSTRAINT IF EXISTS change_log_kind_check;
ALTER TABLE change_log ADD CONSTRAINT change_log_kind_check CHECK (kind BETWEEN 1 AND 6);

COMMENT ON COLUMN change_log.media_before IS
    'Retractions: the media as it stood when retracted. Media states: the media before the change (NULL when created). Flag states: the node id (UTF-8) of the one peer the entry is told to, the flag''s other agency. Never sent to peers.';
