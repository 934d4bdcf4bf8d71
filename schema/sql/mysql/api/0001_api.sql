-- unicell SQL baseline: the API database (Nova API DB + Placement), MariaDB/MySQL dialect.
-- Applied by src/store/sql/migrate.rs; every statement is idempotent.

-- Nova API DB ----------------------------------------------------------------------------

-- Nova's cell_mappings. database_slot says which configured cell database holds the cell
-- (Nova stores the connection URL; unicell keeps URLs in the store URL, never in tables).
-- A row with registered = 0 is a mapping created implicitly the first time a cell id was
-- used before put_cell (providers or instances of a cell nobody registered).
CREATE TABLE IF NOT EXISTS cell_mappings (
    uuid CHAR(36) NOT NULL PRIMARY KEY,
    name VARCHAR(255) NULL,
    disabled BOOLEAN NOT NULL DEFAULT 0,
    registered BOOLEAN NOT NULL DEFAULT 0,
    database_slot BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Nova's host_mappings: which cell a compute host lives in.
CREATE TABLE IF NOT EXISTS host_mappings (
    host VARCHAR(255) NOT NULL PRIMARY KEY,
    cell_uuid CHAR(36) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Nova's instance_mappings: which cell an instance lives in (NULL: still a build request).
CREATE TABLE IF NOT EXISTS instance_mappings (
    instance_uuid CHAR(36) NOT NULL PRIMARY KEY,
    cell_uuid CHAR(36) NULL,
    project_id VARCHAR(255) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Nova's build_requests: instances not yet in a cell. Nova keeps the serialized instance in
-- one column and filters/sorts them in Python; unicell keeps the listing columns as real
-- columns (same layout as a cell's instances table) so the same SQL filters apply.
CREATE TABLE IF NOT EXISTS build_requests (
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
    UNIQUE KEY build_requests_uuid_idx (uuid),
    KEY build_requests_created_at_uuid_idx (created_at, uuid),
    KEY build_requests_project_created_at_uuid_idx (project_id, created_at, uuid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Nova's request_specs: the spec as one JSON document, keyed by instance.
CREATE TABLE IF NOT EXISTS request_specs (
    instance_uuid CHAR(36) NOT NULL PRIMARY KEY,
    spec MEDIUMTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Nova's flavors (extra specs as JSON instead of the flavor_extra_specs table).
CREATE TABLE IF NOT EXISTS flavors (
    flavorid VARCHAR(255) NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mb BIGINT NOT NULL,
    root_gb BIGINT NOT NULL,
    ephemeral_gb BIGINT NOT NULL,
    swap BIGINT NOT NULL,
    extra_specs TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Nova's instance_groups (+ policy and rules).
CREATE TABLE IF NOT EXISTS instance_groups (
    uuid CHAR(36) NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    project_id VARCHAR(255) NOT NULL,
    user_id VARCHAR(255) NOT NULL,
    policy VARCHAR(32) NOT NULL,
    max_per_host BIGINT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Nova's aggregates (+ metadata as JSON).
CREATE TABLE IF NOT EXISTS aggregates (
    uuid CHAR(36) NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    availability_zone VARCHAR(255) NULL,
    metadata TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Placement ------------------------------------------------------------------------------

-- Placement's resource_providers. generation is Placement's per-provider generation;
-- tree_generation (read on the root row) is unicell's one-generation-per-tree contract.
CREATE TABLE IF NOT EXISTS resource_providers (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    uuid CHAR(36) NOT NULL,
    name VARCHAR(200) NOT NULL,
    generation BIGINT NOT NULL DEFAULT 0,
    tree_generation BIGINT NOT NULL DEFAULT 0,
    root_provider_id BIGINT NULL,
    parent_provider_id BIGINT NULL,
    cell_uuid CHAR(36) NULL,
    UNIQUE KEY uniq_resource_providers0uuid (uuid),
    UNIQUE KEY uniq_resource_providers0name (name),
    KEY resource_providers_root_provider_id_idx (root_provider_id),
    KEY resource_providers_parent_provider_id_idx (parent_provider_id),
    KEY resource_providers_cell_idx (cell_uuid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS inventories (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    resource_provider_id BIGINT NOT NULL,
    resource_class VARCHAR(255) NOT NULL,
    total BIGINT NOT NULL,
    reserved BIGINT NOT NULL,
    min_unit BIGINT NOT NULL,
    max_unit BIGINT NOT NULL,
    step_size BIGINT NOT NULL,
    allocation_ratio DOUBLE NOT NULL,
    UNIQUE KEY uniq_inventories0resource_provider_resource_class (resource_provider_id, resource_class)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Placement's allocations: consumer_id is the consumer's uuid, as in Placement.
CREATE TABLE IF NOT EXISTS allocations (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    resource_provider_id BIGINT NOT NULL,
    consumer_id CHAR(36) NOT NULL,
    resource_class VARCHAR(255) NOT NULL,
    used BIGINT NOT NULL,
    KEY allocations_resource_provider_class_used_idx (resource_provider_id, resource_class, used),
    KEY allocations_consumer_id_idx (consumer_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Placement's consumers (project/user inline instead of the projects/users tables).
CREATE TABLE IF NOT EXISTS consumers (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    uuid CHAR(36) NOT NULL,
    project_id VARCHAR(255) NOT NULL,
    user_id VARCHAR(255) NOT NULL,
    generation BIGINT NOT NULL DEFAULT 0,
    UNIQUE KEY uniq_consumers0uuid (uuid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Which trees a consumer holds allocations on, with the server group its claim named there:
-- the per-tree group membership count (max_per_host) is a COUNT over this table, read and
-- written in the claim's transaction.
CREATE TABLE IF NOT EXISTS tree_consumers (
    root_provider_id BIGINT NOT NULL,
    consumer_id CHAR(36) NOT NULL,
    group_uuid CHAR(36) NULL,
    PRIMARY KEY (root_provider_id, consumer_id),
    KEY tree_consumers_consumer_idx (consumer_id),
    KEY tree_consumers_group_idx (root_provider_id, group_uuid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Placement's traits / resource_provider_traits (trait name inline).
CREATE TABLE IF NOT EXISTS resource_provider_traits (
    resource_provider_id BIGINT NOT NULL,
    trait VARCHAR(255) NOT NULL,
    PRIMARY KEY (resource_provider_id, trait)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Placement's placement_aggregates / resource_provider_aggregates (aggregate uuid inline).
CREATE TABLE IF NOT EXISTS resource_provider_aggregates (
    resource_provider_id BIGINT NOT NULL,
    aggregate_uuid CHAR(36) NOT NULL,
    PRIMARY KEY (resource_provider_id, aggregate_uuid),
    KEY resource_provider_aggregates_aggregate_idx (aggregate_uuid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The change feed (unicell's, Placement has none): tree writes are spread over 16 shards;
-- a write bumps its shard's counter (row lock held to commit, so a shard's sequence numbers
-- commit in order) and logs (shard, seq, root uuid).
CREATE TABLE IF NOT EXISTS change_shards (
    shard BIGINT NOT NULL PRIMARY KEY,
    seq BIGINT NOT NULL,
    pruned_upto BIGINT NOT NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS tree_changes (
    shard BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    root_uuid CHAR(36) NOT NULL,
    PRIMARY KEY (shard, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

INSERT IGNORE INTO change_shards (shard, seq, pruned_upto) VALUES
    (0,0,0),(1,0,0),(2,0,0),(3,0,0),(4,0,0),(5,0,0),(6,0,0),(7,0,0),
    (8,0,0),(9,0,0),(10,0,0),(11,0,0),(12,0,0),(13,0,0),(14,0,0),(15,0,0);
