-- unicell additions. Build leases: which API replica runs the build of an instance, until when (see
-- unicell::store::leases). Few rows: one per build in flight.
CREATE TABLE IF NOT EXISTS build_leases (
    instance_uuid CHAR(36) NOT NULL PRIMARY KEY,
    owner VARCHAR(255) NOT NULL,
    expires_at BIGINT NOT NULL,
    version BIGINT NOT NULL,
    attempts BIGINT NOT NULL
);

-- The boot attributes the compute API shows (unicell's Instance.system_metadata), as JSON.
ALTER TABLE build_requests ADD COLUMN IF NOT EXISTS system_metadata TEXT NULL;
