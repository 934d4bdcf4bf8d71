-- Nova's compute_nodes has a unique index on its uuid: the scheduler's HostManager reads
-- the compute nodes of Placement's allocation candidates by uuid. Here the root provider
-- uuid names the node (the Nova-faithful scheduler, src/store/sql/candidates.rs).
CREATE INDEX IF NOT EXISTS compute_nodes_root_provider_uuid_idx ON compute_nodes (root_provider_uuid);
