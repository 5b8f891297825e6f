-- When the sync service runs in its own process, the registry process learns of replicated
-- records by polling for media of other origins changed since its last look. updated_at is set
-- by every write; this index keeps that poll from scanning the table.
CREATE INDEX media_updated_at_idx ON media (updated_at);
