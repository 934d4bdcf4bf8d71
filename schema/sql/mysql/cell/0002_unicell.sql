-- The boot attributes the compute API shows (unicell's Instance.system_metadata), as JSON.
ALTER TABLE instances ADD COLUMN IF NOT EXISTS system_metadata TEXT NULL;
