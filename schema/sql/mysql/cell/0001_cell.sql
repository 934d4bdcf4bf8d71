-- unicell SQL baseline: one cell database (Nova's cell DB), MariaDB/MySQL dialect.

-- Nova's instances (the columns unicell's model has; metadata, tags and fault are kept
-- in-row as JSON for reading, tags also in the tags table for filtering).
CREATE TABLE IF NOT EXISTS instances (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    uuid CHAR(36) NOT NULL,
    display_name VARCHAR(255) NOT NULL,
    project_id VARCHAR(255) NOT NULL,
    user_id VARCHAR(255) NOT NULL,
    cell_uuid CHAR(36) NULL,
    host VARCHAR(255) NULL,
    node VARCHAR(255) NULL,
    instance_type_id VARCHAR(255) NOT NULL,
    vm_state VARCHAR(32) NOT NULL,
    task_state VARCHAR(32) NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    launched_at BIGINT NULL,
    deleted BOOLEAN NOT NULL DEFAULT 0,
    availability_zone VARCHAR(255) NULL,
    metadata TEXT NOT NULL,
    tags TEXT NOT NULL,
    fault TEXT NULL,
    UNIQUE KEY uniq_instances0uuid (uuid),
    KEY instances_created_at_uuid_idx (created_at, uuid),
    KEY instances_project_created_at_uuid_idx (project_id, created_at, uuid),
    KEY instances_host_idx (host),
    KEY instances_updated_at_idx (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Nova's tags table.
CREATE TABLE IF NOT EXISTS tags (
    resource_id CHAR(36) NOT NULL,
    tag VARCHAR(80) NOT NULL,
    PRIMARY KEY (resource_id, tag),
    KEY tags_tag_idx (tag)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Nova's services + compute_nodes, merged: one row per compute host of this cell.
CREATE TABLE IF NOT EXISTS compute_nodes (
    host VARCHAR(255) NOT NULL PRIMARY KEY,
    cell_uuid CHAR(36) NOT NULL,
    hypervisor_hostname VARCHAR(255) NOT NULL,
    root_provider_uuid CHAR(36) NOT NULL,
    enabled BOOLEAN NOT NULL,
    disabled_reason VARCHAR(255) NULL,
    last_heartbeat BIGINT NOT NULL,
    availability_zone VARCHAR(255) NULL,
    capabilities TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
