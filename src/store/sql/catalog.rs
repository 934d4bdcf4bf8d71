//! Nova's catalog on SQL: cell and host mappings, flavors, aggregates, server groups and
//! request specs in the API database; compute nodes in their cell's database (so listing
//! every host queries every cell, as Nova's scheduler does). Cell, host and aggregate writes
//! are announced in the change feed after they commit.

use async_trait::async_trait;

use crate::error::{Error, Kind, Result};
use crate::model::*;
use crate::sql_args;
use crate::store::prelude::*;
use crate::store::sql::conn::{Row, Sql, is_unique_violation, map_err};
use crate::store::sql::{DownCell, SqlStore, from_json, to_json};

fn cell_from(r: &Row) -> Result<Cell> {
    Ok(Cell { id: CellId(r.uuid(0)?), name: r.opt_str(1)?.unwrap_or_default(), disabled: r.bool(2)? })
}

pub(super) fn host_from(r: &Row) -> Result<Host> {
    Ok(Host {
        name: r.str(0)?,
        cell: CellId(r.uuid(1)?),
        node: r.str(2)?,
        root_provider: ProviderId(r.uuid(3)?),
        enabled: r.bool(4)?,
        disabled_reason: r.opt_str(5)?,
        last_heartbeat: Timestamp::from_micros(r.i64(6)?),
        availability_zone: r.opt_str(7)?,
        capabilities: from_json(&r.str(8)?)?,
    })
}

pub(super) const HOST_COLS: &str = "host, cell_uuid, hypervisor_hostname, root_provider_uuid, enabled, \
                         disabled_reason, last_heartbeat, availability_zone, capabilities";

fn flavor_from(r: &Row) -> Result<Flavor> {
    Ok(Flavor {
        id: FlavorId::new(r.str(0)?)?,
        name: r.str(1)?,
        vcpus: r.i64(2)?,
        memory_mb: r.i64(3)?,
        root_gb: r.i64(4)?,
        ephemeral_gb: r.i64(5)?,
        swap_mb: r.i64(6)?,
        extra_specs: from_json(&r.str(7)?)?,
    })
}

fn aggregate_from(r: &Row) -> Result<Aggregate> {
    Ok(Aggregate {
        id: AggregateId(r.uuid(0)?),
        name: r.str(1)?,
        availability_zone: r.opt_str(2)?,
        metadata: from_json(&r.str(3)?)?,
    })
}

fn policy_str(p: GroupPolicy) -> &'static str {
    match p {
        GroupPolicy::Affinity => "affinity",
        GroupPolicy::AntiAffinity => "anti-affinity",
        GroupPolicy::SoftAffinity => "soft-affinity",
        GroupPolicy::SoftAntiAffinity => "soft-anti-affinity",
    }
}

fn policy_from(s: &str) -> Result<GroupPolicy> {
    Ok(match s {
        "affinity" => GroupPolicy::Affinity,
        "anti-affinity" => GroupPolicy::AntiAffinity,
        "soft-affinity" => GroupPolicy::SoftAffinity,
        "soft-anti-affinity" => GroupPolicy::SoftAntiAffinity,
        other => {
            return Err(Error::backend("sql", format!("unknown server group policy {other:?} in the database")));
        }
    })
}

impl SqlStore {
    /// The cell database of a host, from its mapping in the API database (`NotFound` for
    /// an unknown host).
    async fn host_slot(&self, name: &str) -> Result<usize> {
        let m = self
            .api
            .fetch_optional("SELECT cell_uuid FROM host_mappings WHERE host = ?", sql_args![name])
            .await?
            .ok_or_else(|| Error::not_found(Kind::Host, name))?;
        self.slot_of(CellId(m.uuid(0)?)).await
    }

    /// `cols` of the compute nodes of `cell`, or of every cell: then every cell database is
    /// asked concurrently (Nova's HostManager scatters over all cells too). A cell database
    /// that is down or slower than `cell_timeout` must not stop scheduling in the others:
    /// with `down_cell=skip` (the default, as Nova's HostManager skips cells that fail or
    /// time out in its scatter-gather) its hosts are left out with a warning naming the
    /// cell; with `down_cell=fail`, or when no cell answers, the first error is returned.
    async fn compute_node_rows(&self, cols: &str, cell: Option<CellId>) -> Result<Vec<Row>> {
        if let Some(c) = cell {
            let slot = self.slot_of(c).await?;
            let sql = self.stmts.adapt(&format!("SELECT {cols} FROM compute_nodes WHERE cell_uuid = ?"));
            return self.cells[slot].pool.fetch_all(Sql::Dynamic(sql.into()), sql_args![c.to_string()]).await;
        }
        let sql: std::sync::Arc<str> = self.stmts.adapt(&format!("SELECT {cols} FROM compute_nodes")).into();
        let timeout = self.opts.cell_timeout;
        let futs = self.cells.iter().map(|c| {
            let sql = sql.clone();
            async move {
                match tokio::time::timeout(timeout, c.pool.fetch_all(Sql::Dynamic(sql), vec![])).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout {
                        backend: "sql",
                        message: format!("cell database {} did not answer within {timeout:?}", c.label),
                    }),
                }
            }
        });
        let mut out = Vec::new();
        let mut first_down = None;
        let mut answered = 0usize;
        for (c, rows) in self.cells.iter().zip(futures::future::join_all(futs).await) {
            match rows {
                Ok(rows) => {
                    answered += 1;
                    out.extend(rows);
                }
                Err(e) if e.is_retryable() && self.opts.down_cell == DownCell::Skip => {
                    tracing::warn!(cell_database = %c.label, error = %e,
                        "cell database did not respond; its compute hosts are left out of this listing");
                    first_down.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match first_down.filter(|_| answered == 0) {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

#[async_trait]
impl Catalog for SqlStore {
    async fn put_cell(&self, cell: &Cell) -> Result<()> {
        if cell.name.is_empty() {
            return Err(Error::invalid("cell.name", "must not be empty"));
        }
        let n = self.cells.len() as i64;
        self.api
            .execute(
                self.dialect.pick(
                    "INSERT INTO cell_mappings (uuid, name, disabled, registered, database_slot) \
                     SELECT ?, ?, ?, TRUE, COUNT(*) % ? FROM cell_mappings \
                     ON DUPLICATE KEY UPDATE name = VALUES(name), disabled = VALUES(disabled), registered = TRUE",
                    "INSERT INTO cell_mappings (uuid, name, disabled, registered, database_slot) \
                     SELECT ?, ?, ?, TRUE, COUNT(*) % ? FROM cell_mappings \
                     ON CONFLICT (uuid) DO UPDATE SET name = EXCLUDED.name, disabled = EXCLUDED.disabled, registered = TRUE",
                ),
                sql_args![cell.id.to_string(), &cell.name, cell.disabled, n],
            )
            .await?;
        self.announce_catalog().await
    }

    async fn get_cell(&self, id: CellId) -> Result<Cell> {
        let r = self
            .api
            .fetch_optional(
                "SELECT uuid, name, disabled FROM cell_mappings WHERE uuid = ? AND registered = TRUE",
                sql_args![id.to_string()],
            )
            .await?
            .ok_or_else(|| Error::not_found(Kind::Cell, id))?;
        cell_from(&r)
    }

    async fn list_cells(&self) -> Result<Vec<Cell>> {
        self.api
            .fetch_all("SELECT uuid, name, disabled FROM cell_mappings WHERE registered = TRUE ORDER BY uuid", vec![])
            .await?
            .iter()
            .map(cell_from)
            .collect()
    }

    async fn put_host(&self, host: &Host) -> Result<()> {
        if host.name.is_empty() || host.name.len() > 255 {
            return Err(Error::invalid("host.name", "must be 1 to 255 characters"));
        }
        let slot = self.slot_of(host.cell).await?;
        let old = self
            .api
            .fetch_optional("SELECT cell_uuid FROM host_mappings WHERE host = ?", sql_args![&host.name])
            .await?;
        let args = sql_args![
            &host.name,
            host.cell.to_string(),
            &host.node,
            host.root_provider.to_string(),
            host.enabled,
            host.disabled_reason.clone(),
            host.last_heartbeat.as_micros(),
            host.availability_zone.clone(),
            to_json(&host.capabilities)?
        ];
        self.cells[slot]
            .pool
            .execute(
                self.dialect.pick(
                    "INSERT INTO compute_nodes (host, cell_uuid, hypervisor_hostname, root_provider_uuid, \
                     enabled, disabled_reason, last_heartbeat, availability_zone, capabilities) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE cell_uuid = VALUES(cell_uuid), \
                     hypervisor_hostname = VALUES(hypervisor_hostname), root_provider_uuid = VALUES(root_provider_uuid), \
                     enabled = VALUES(enabled), disabled_reason = VALUES(disabled_reason), \
                     last_heartbeat = GREATEST(last_heartbeat, VALUES(last_heartbeat)), availability_zone = VALUES(availability_zone), \
                     capabilities = VALUES(capabilities)",
                    "INSERT INTO compute_nodes (host, cell_uuid, hypervisor_hostname, root_provider_uuid, \
                     enabled, disabled_reason, last_heartbeat, availability_zone, capabilities) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (host) DO UPDATE SET cell_uuid = EXCLUDED.cell_uuid, \
                     hypervisor_hostname = EXCLUDED.hypervisor_hostname, root_provider_uuid = EXCLUDED.root_provider_uuid, \
                     enabled = EXCLUDED.enabled, disabled_reason = EXCLUDED.disabled_reason, \
                     last_heartbeat = GREATEST(compute_nodes.last_heartbeat, EXCLUDED.last_heartbeat), availability_zone = EXCLUDED.availability_zone, \
                     capabilities = EXCLUDED.capabilities",
                ),
                args,
            )
            .await?;
        self.api
            .execute(
                self.dialect.pick(
                    "INSERT INTO host_mappings (host, cell_uuid) VALUES (?, ?) \
                     ON DUPLICATE KEY UPDATE cell_uuid = VALUES(cell_uuid)",
                    "INSERT INTO host_mappings (host, cell_uuid) VALUES (?, ?) \
                     ON CONFLICT (host) DO UPDATE SET cell_uuid = EXCLUDED.cell_uuid",
                ),
                sql_args![&host.name, host.cell.to_string()],
            )
            .await?;
        if let Some(old) = old {
            let old_cell = CellId(old.uuid(0)?);
            if old_cell != host.cell {
                let old_slot = self.slot_of(old_cell).await?;
                if old_slot != slot {
                    self.cells[old_slot]
                        .pool
                        .execute("DELETE FROM compute_nodes WHERE host = ?", sql_args![&host.name])
                        .await?;
                }
            }
        }
        self.announce_catalog().await
    }

    async fn get_host(&self, name: &str) -> Result<Host> {
        let slot = self.host_slot(name).await?;
        let r = self.cells[slot]
            .pool
            .fetch_optional(
                crate::store::sql::conn::Sql::Dynamic(
                    self.stmts.adapt(&format!("SELECT {HOST_COLS} FROM compute_nodes WHERE host = ?")).into(),
                ),
                sql_args![name],
            )
            .await?
            .ok_or_else(|| Error::not_found(Kind::Host, name))?;
        host_from(&r)
    }

    async fn list_hosts(&self, cell: Option<CellId>) -> Result<Vec<Host>> {
        let rows = self.compute_node_rows(HOST_COLS, cell).await?;
        let mut hosts = rows.iter().map(host_from).collect::<Result<Vec<_>>>()?;
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(hosts)
    }

    async fn report_host(&self, name: &str, at: Timestamp) -> Result<()> {
        let slot = self.host_slot(name).await?;
        // Nova's service report is the same one-row UPDATE of the cell database.
        self.cells[slot]
            .pool
            .execute(
                "UPDATE compute_nodes SET last_heartbeat = GREATEST(last_heartbeat, ?) WHERE host = ?",
                sql_args![at.as_micros(), name],
            )
            .await?;
        Ok(())
    }

    async fn host_heartbeats(&self, cell: Option<CellId>) -> Result<Vec<(String, Timestamp)>> {
        self.compute_node_rows("host, last_heartbeat", cell)
            .await?
            .iter()
            .map(|r| Ok((r.str(0)?, Timestamp::from_micros(r.i64(1)?))))
            .collect()
    }

    async fn put_flavor(&self, f: &Flavor) -> Result<()> {
        f.validate()?;
        self.api
            .execute(
                self.dialect.pick(
                    "INSERT INTO flavors (flavorid, name, vcpus, memory_mb, root_gb, ephemeral_gb, swap, extra_specs) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE name = VALUES(name), vcpus = VALUES(vcpus), \
                     memory_mb = VALUES(memory_mb), root_gb = VALUES(root_gb), ephemeral_gb = VALUES(ephemeral_gb), \
                     swap = VALUES(swap), extra_specs = VALUES(extra_specs)",
                    "INSERT INTO flavors (flavorid, name, vcpus, memory_mb, root_gb, ephemeral_gb, swap, extra_specs) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (flavorid) DO UPDATE SET name = EXCLUDED.name, \
                     vcpus = EXCLUDED.vcpus, memory_mb = EXCLUDED.memory_mb, root_gb = EXCLUDED.root_gb, \
                     ephemeral_gb = EXCLUDED.ephemeral_gb, swap = EXCLUDED.swap, extra_specs = EXCLUDED.extra_specs",
                ),
                sql_args![
                    f.id.as_str(),
                    &f.name,
                    f.vcpus,
                    f.memory_mb,
                    f.root_gb,
                    f.ephemeral_gb,
                    f.swap_mb,
                    to_json(&f.extra_specs)?
                ],
            )
            .await?;
        Ok(())
    }

    async fn get_flavor(&self, id: &FlavorId) -> Result<Flavor> {
        let r = self
            .api
            .fetch_optional(
                "SELECT flavorid, name, vcpus, memory_mb, root_gb, ephemeral_gb, swap, extra_specs \
                 FROM flavors WHERE flavorid = ?",
                sql_args![id.as_str()],
            )
            .await?
            .ok_or_else(|| Error::not_found(Kind::Flavor, id))?;
        flavor_from(&r)
    }

    async fn list_flavors(&self) -> Result<Vec<Flavor>> {
        self.api
            .fetch_all(
                "SELECT flavorid, name, vcpus, memory_mb, root_gb, ephemeral_gb, swap, extra_specs \
                 FROM flavors ORDER BY flavorid",
                vec![],
            )
            .await?
            .iter()
            .map(flavor_from)
            .collect()
    }

    async fn put_aggregate(&self, a: &Aggregate) -> Result<()> {
        self.api
            .execute(
                self.dialect.pick(
                    "INSERT INTO aggregates (uuid, name, availability_zone, metadata) VALUES (?, ?, ?, ?) \
                     ON DUPLICATE KEY UPDATE name = VALUES(name), availability_zone = VALUES(availability_zone), \
                     metadata = VALUES(metadata)",
                    "INSERT INTO aggregates (uuid, name, availability_zone, metadata) VALUES (?, ?, ?, ?) \
                     ON CONFLICT (uuid) DO UPDATE SET name = EXCLUDED.name, \
                     availability_zone = EXCLUDED.availability_zone, metadata = EXCLUDED.metadata",
                ),
                sql_args![a.id.to_string(), &a.name, a.availability_zone.clone(), to_json(&a.metadata)?],
            )
            .await?;
        self.announce_catalog().await
    }

    async fn get_aggregate(&self, id: AggregateId) -> Result<Aggregate> {
        let r = self
            .api
            .fetch_optional(
                "SELECT uuid, name, availability_zone, metadata FROM aggregates WHERE uuid = ?",
                sql_args![id.to_string()],
            )
            .await?
            .ok_or_else(|| Error::not_found(Kind::Aggregate, id))?;
        aggregate_from(&r)
    }

    async fn list_aggregates(&self) -> Result<Vec<Aggregate>> {
        self.api
            .fetch_all("SELECT uuid, name, availability_zone, metadata FROM aggregates ORDER BY uuid", vec![])
            .await?
            .iter()
            .map(aggregate_from)
            .collect()
    }

    async fn create_server_group(&self, g: &ServerGroup) -> Result<()> {
        g.validate()?;
        let r = self
            .api
            .execute_raw(
                "INSERT INTO instance_groups (uuid, name, project_id, user_id, policy, max_per_host) \
                 VALUES (?, ?, ?, ?, ?, ?)",
                sql_args![
                    g.id.to_string(),
                    &g.name,
                    &g.project_id,
                    &g.user_id,
                    policy_str(g.policy),
                    g.max_per_host.map(i64::from)
                ],
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(Error::already_exists(Kind::ServerGroup, g.id)),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn get_server_group(&self, id: GroupId) -> Result<ServerGroup> {
        let r = self
            .api
            .fetch_optional(
                "SELECT uuid, name, project_id, user_id, policy, max_per_host FROM instance_groups WHERE uuid = ?",
                sql_args![id.to_string()],
            )
            .await?
            .ok_or_else(|| Error::not_found(Kind::ServerGroup, id))?;
        group_from_row(&r)
    }

    async fn list_server_groups(&self) -> Result<Vec<ServerGroup>> {
        let rows = self
            .api
            .fetch_all(
                "SELECT uuid, name, project_id, user_id, policy, max_per_host FROM instance_groups ORDER BY uuid",
                sql_args![],
            )
            .await?;
        let mut v = rows.iter().map(group_from_row).collect::<Result<Vec<_>>>()?;
        // Text order of uuids is their order, but keep the contract independent of collation.
        v.sort_by_key(|g| g.id);
        Ok(v)
    }

    async fn delete_server_group(&self, id: GroupId) -> Result<()> {
        let n = self.api.execute("DELETE FROM instance_groups WHERE uuid = ?", sql_args![id.to_string()]).await?;
        if n == 0 {
            return Err(Error::not_found(Kind::ServerGroup, id));
        }
        Ok(())
    }

    async fn put_request_spec(&self, spec: &RequestSpec) -> Result<()> {
        self.api
            .execute(
                self.dialect.pick(
                    "INSERT INTO request_specs (instance_uuid, spec) VALUES (?, ?) \
                     ON DUPLICATE KEY UPDATE spec = VALUES(spec)",
                    "INSERT INTO request_specs (instance_uuid, spec) VALUES (?, ?) \
                     ON CONFLICT (instance_uuid) DO UPDATE SET spec = EXCLUDED.spec",
                ),
                sql_args![spec.instance_uuid.to_string(), to_json(spec)?],
            )
            .await?;
        Ok(())
    }

    async fn get_request_spec(&self, instance: InstanceId) -> Result<RequestSpec> {
        let r = self
            .api
            .fetch_optional("SELECT spec FROM request_specs WHERE instance_uuid = ?", sql_args![instance.to_string()])
            .await?
            .ok_or_else(|| Error::not_found(Kind::RequestSpec, instance))?;
        from_json(&r.str(0)?)
    }

    async fn delete_request_spec(&self, instance: InstanceId) -> Result<()> {
        self.api.execute("DELETE FROM request_specs WHERE instance_uuid = ?", sql_args![instance.to_string()]).await?;
        Ok(())
    }
}

/// A server group from `SELECT uuid, name, project_id, user_id, policy, max_per_host`.
fn group_from_row(r: &Row) -> Result<ServerGroup> {
    Ok(ServerGroup {
        id: GroupId(r.uuid(0)?),
        name: r.str(1)?,
        project_id: r.str(2)?,
        user_id: r.str(3)?,
        policy: policy_from(&r.str(4)?)?,
        max_per_host: r.opt_i64(5)?.and_then(|v| u32::try_from(v).ok()),
    })
}
