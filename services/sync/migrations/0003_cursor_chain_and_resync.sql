-- The origin's log chain at the cursor as its last applied batch stated it (empty from origins
-- of older releases), checked against the next batch and sent with every pull, so an origin
-- restored from a backup or forked is noticed. `resyncing`: `hashex sync resync` restarted this
-- peer from seq 1; its records not re-sent by the time the pull catches up are deleted then.

ALTER TABLE sync_cursors ADD COLUMN cursor_chain bytea NOT NULL DEFAULT '';
ALTER TABLE sync_cursors ADD COLUMN resyncing boolean NOT NULL DEFAULT false;
