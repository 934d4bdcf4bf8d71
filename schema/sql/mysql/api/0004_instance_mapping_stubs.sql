-- What the API database keeps of an instance apart from its cell database's record, so that a
-- listing can still name the instances of a cell database that is down (Nova 2.69's UNKNOWN
-- servers, built from instance_mappings): its creation time (Nova's mappings have
-- created_at) and whether it is deleted (Nova's queued_for_delete). created_at is NULL for
-- mappings written before this migration (microseconds since the epoch otherwise).
ALTER TABLE instance_mappings ADD COLUMN IF NOT EXISTS created_at BIGINT NULL;
ALTER TABLE instance_mappings ADD COLUMN IF NOT EXISTS queued_for_delete BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX IF NOT EXISTS instance_mappings_cell_project_idx ON instance_mappings (cell_uuid, project_id);
