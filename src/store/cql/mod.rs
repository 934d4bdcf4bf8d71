//! The CQL backend (`scylla://` and `cassandra://`): ScyllaDB and Apache Cassandra through
//! the `scylla` crate, with every claim a lightweight transaction.
//!
//! # Data model (details in `schema/cql/README.md`)
//!
//! * **One provider tree = one partition** of `trees`: provider rows (inventories, usages,
//!   traits, aggregates), the tree's allocation rows, its server-group member counts, and
//!   the tree generation as a STATIC column. A lightweight transaction covers exactly one
//!   partition, so every tree write (claim, release, inventory, new child) is ONE
//!   conditional batch `IF generation = g` that also sets `generation = g + 1`.
//! * **Claims** read the tree, decide with [`ClaimRequest::evaluate`] (so decisions and
//!   errors are exactly the reference's), and write; a lost race re-reads at serial
//!   consistency and re-evaluates (a bounded loop, `claim_attempts`). A timed-out
//!   transaction has an unknown outcome: the claim reads at serial consistency and answers
//!   from what landed. The consumer index that makes crashes safe is described in `trees.rs`
//!   and `schema/cql/README.md`.
//! * **Instances** live in `instances` (by uuid) and in two listing tables partitioned by
//!   time bucket (and project) and shard, clustered `(created_at DESC, uuid DESC)`: a page
//!   is a merge of slices, never a scan.
//! * **Change feed**: time-bucketed `tree_changes`, read with a safety window.
//!
//! Results of lightweight transactions are read as untyped rows: ScyllaDB returns
//! `[applied]` and the old row, Cassandra only `[applied]` when it applied.
//!
//! # Servers
//!
//! ScyllaDB (keyspaces created with tablets disabled, since ScyllaDB 2025.x does not support
//! LWT on tablet keyspaces) and Apache Cassandra (no `tablets` option; tested against 2.1.0
//! through a protocol-translating test proxy, see `tests/support/cql_proxy.rs`). The session
//! does not fetch schema metadata (`fetch_schema_metadata(false)`): the backend never needs
//! it, and Cassandra 2.x has no `system_schema` keyspace. Bound values are always explicit
//! (a value or null, never unset) and tree partitions are read in one page, which keeps the
//! backend correct on native protocol v3 servers.

mod catalog;
pub mod config;
mod db;
mod feed;
mod instances;
mod trees;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use scylla::client::session_builder::SessionBuilder;

pub use self::config::{CqlConfig, Flavor as ServerFlavor, Replication};
use self::db::{BACKEND, Db, get_text, text};
use crate::error::{Error, Result};
use crate::model::*;
use crate::store::prelude::*;

const KEYSPACE_CQL: &str = include_str!("../../../schema/cql/keyspace.cql");
const TABLES_CQL: &str = include_str!("../../../schema/cql/tables.cql");

/// The CQL store. Cheap to share (`Arc<dyn Store>`); one driver session inside.
pub struct CqlStore {
    db: Db,
    /// Width of an instance-listing time bucket, in microseconds (from `settings`).
    bucket_us: i64,
    /// Shards per instance-listing bucket (from `settings`).
    shards: u32,
    /// provider -> root, for the claim path (a provider never changes trees; an entry made
    /// stale by a delete and re-create elsewhere is detected by the claim's tree read).
    root_cache: std::sync::Mutex<std::collections::HashMap<ProviderId, ProviderId>>,
}

impl std::fmt::Debug for CqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlStore").field("url", &self.db.cfg.redacted()).finish_non_exhaustive()
    }
}

impl CqlStore {
    /// Connects, creates the keyspace and tables when `create_schema` is on (idempotent),
    /// and reads the keyspace's fixed settings.
    pub async fn open(url: &str) -> Result<Arc<CqlStore>> {
        let cfg = CqlConfig::parse(url)?;
        let mut builder = SessionBuilder::new()
            .known_nodes(&cfg.hosts)
            .connection_timeout(cfg.connect_timeout)
            .fetch_schema_metadata(false);
        if let Some((user, password)) = &cfg.credentials {
            builder = builder.user(user.clone(), password.clone());
        }
        let session = builder
            .build()
            .await
            .map_err(|e| Error::Unavailable { backend: BACKEND, message: format!("connecting to {cfg}: {e}") })?;
        if cfg.create_schema {
            let options = match cfg.flavor {
                ServerFlavor::Scylla => " AND tablets = {'enabled': false}",
                ServerFlavor::Cassandra => "",
            };
            let ks = KEYSPACE_CQL
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
                .replace("{keyspace}", &cfg.keyspace)
                .replace("{replication}", &cfg.replication.cql())
                .replace("{options}", options);
            session.query_unpaged(ks.trim().trim_end_matches(';'), &[]).await.map_err(db::map_exec)?;
        }
        session.use_keyspace(&cfg.keyspace, false).await.map_err(|e| Error::backend(BACKEND, e))?;
        if cfg.create_schema {
            for stmt in schema_statements(TABLES_CQL) {
                session.query_unpaged(stmt, &[]).await.map_err(db::map_exec)?;
            }
        }
        let store = CqlStore { db: Db::new(session, cfg), bucket_us: 0, shards: 0, root_cache: Default::default() };
        let (bucket_us, shards) = store.settings().await?;
        Ok(Arc::new(CqlStore { bucket_us, shards, ..store }))
    }

    /// Reads (and on first use records) the settings fixed at keyspace creation.
    async fn settings(&self) -> Result<(i64, u32)> {
        let wanted = [
            ("instance_bucket_us", (i64::from(self.db.cfg.instance_bucket_hours) * 3_600_000_000).to_string()),
            ("instance_shards", self.db.cfg.instance_shards.to_string()),
        ];
        let mut got = BTreeMap::new();
        for (name, value) in wanted {
            if self.db.cfg.create_schema {
                self.db
                    .cas(
                        "INSERT INTO settings (name, value) VALUES (?, ?) IF NOT EXISTS",
                        vec![text(name), text(value.clone())],
                    )
                    .await?;
            }
            let rows = self.db.query_serial("SELECT value FROM settings WHERE name = ?", vec![text(name)]).await?;
            let v = rows.first().and_then(|r| get_text(r, 0)).unwrap_or(value);
            got.insert(name, v);
        }
        let bucket_us = got
            .get("instance_bucket_us")
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| *v > 0)
            .ok_or_else(|| Error::backend(BACKEND, "bad instance_bucket_us setting"))?;
        let shards = got
            .get("instance_shards")
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|v| *v > 0)
            .ok_or_else(|| Error::backend(BACKEND, "bad instance_shards setting"))?;
        Ok((bucket_us, shards))
    }

    /// The parsed URL (password masked when displayed).
    pub fn config(&self) -> &CqlConfig {
        &self.db.cfg
    }

    /// Drops the store's keyspace with everything in it. For tests and benchmarks that
    /// create a keyspace per run.
    pub async fn drop_keyspace(&self) -> Result<()> {
        self.db
            .session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.db.cfg.keyspace), &[])
            .await
            .map_err(db::map_exec)?;
        Ok(())
    }
}

/// Splits `tables.cql` into statements: comment lines dropped, `;` at a line end ends one.
fn schema_statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("--") || t.is_empty() {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if t.ends_with(';') {
            out.push(cur.trim().trim_end_matches(';').to_string());
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

#[async_trait]
impl Store for CqlStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn describe(&self) -> String {
        self.db.cfg.redacted()
    }
}

#[async_trait]
impl Providers for CqlStore {
    async fn create_provider(&self, provider: &NewProvider) -> Result<u64> {
        self.do_create_provider(provider).await
    }

    async fn delete_provider(&self, provider: ProviderId) -> Result<()> {
        self.do_delete_provider(provider).await
    }

    async fn provider_tree(&self, provider: ProviderId) -> Result<ProviderTree> {
        self.do_provider_tree(provider).await
    }

    async fn list_provider_trees(&self, cell: Option<CellId>) -> Result<Vec<ProviderTree>> {
        self.do_list_provider_trees(cell).await
    }

    async fn set_inventories(
        &self,
        provider: ProviderId,
        generation: u64,
        inventories: &BTreeMap<ResourceClass, Inventory>,
    ) -> Result<InventoryWrite> {
        self.do_set_inventories(provider, generation, inventories).await
    }

    async fn set_traits(&self, provider: ProviderId, generation: u64, traits: &BTreeSet<Trait>) -> Result<u64> {
        self.do_set_traits(provider, generation, traits).await
    }

    async fn set_aggregates(
        &self,
        provider: ProviderId,
        generation: u64,
        aggregates: &BTreeSet<AggregateId>,
    ) -> Result<u64> {
        self.do_set_aggregates(provider, generation, aggregates).await
    }
}

#[async_trait]
impl Claims for CqlStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim> {
        self.do_claim(request).await
    }

    async fn release(&self, consumer: ConsumerId) -> Result<Released> {
        self.do_release(consumer).await
    }

    async fn allocations(&self, consumer: ConsumerId) -> Result<Vec<TreeAllocation>> {
        self.do_allocations(consumer).await
    }

    async fn tree_allocations(&self, provider: ProviderId) -> Result<Vec<TreeAllocation>> {
        self.do_tree_allocations(provider).await
    }
}

#[async_trait]
impl ChangeFeed for CqlStore {
    async fn change_cursor(&self) -> Result<ChangeCursor> {
        self.do_change_cursor().await
    }

    async fn changes_since(&self, cursor: &ChangeCursor) -> Result<Changes> {
        self.do_changes_since(cursor).await
    }
}

#[async_trait]
impl Catalog for CqlStore {
    async fn put_cell(&self, cell: &Cell) -> Result<()> {
        self.do_put_cell(cell).await
    }

    async fn get_cell(&self, id: CellId) -> Result<Cell> {
        self.do_get_cell(id).await
    }

    async fn list_cells(&self) -> Result<Vec<Cell>> {
        self.do_list_cells().await
    }

    async fn put_host(&self, host: &Host) -> Result<()> {
        self.do_put_host(host).await
    }

    async fn get_host(&self, name: &str) -> Result<Host> {
        self.do_get_host(name).await
    }

    async fn list_hosts(&self, cell: Option<CellId>) -> Result<Vec<Host>> {
        self.do_list_hosts(cell).await
    }

    async fn put_flavor(&self, flavor: &Flavor) -> Result<()> {
        self.do_put_flavor(flavor).await
    }

    async fn get_flavor(&self, id: &FlavorId) -> Result<Flavor> {
        self.do_get_flavor(id).await
    }

    async fn list_flavors(&self) -> Result<Vec<Flavor>> {
        self.do_list_flavors().await
    }

    async fn put_aggregate(&self, aggregate: &Aggregate) -> Result<()> {
        self.do_put_aggregate(aggregate).await
    }

    async fn get_aggregate(&self, id: AggregateId) -> Result<Aggregate> {
        self.do_get_aggregate(id).await
    }

    async fn list_aggregates(&self) -> Result<Vec<Aggregate>> {
        self.do_list_aggregates().await
    }

    async fn create_server_group(&self, group: &ServerGroup) -> Result<()> {
        self.do_create_server_group(group).await
    }

    async fn get_server_group(&self, id: GroupId) -> Result<ServerGroup> {
        self.do_get_server_group(id).await
    }

    async fn delete_server_group(&self, id: GroupId) -> Result<()> {
        self.do_delete_server_group(id).await
    }

    async fn put_request_spec(&self, spec: &RequestSpec) -> Result<()> {
        self.do_put_request_spec(spec).await
    }

    async fn get_request_spec(&self, instance: InstanceId) -> Result<RequestSpec> {
        self.do_get_request_spec(instance).await
    }

    async fn delete_request_spec(&self, instance: InstanceId) -> Result<()> {
        self.do_delete_request_spec(instance).await
    }
}

#[async_trait]
impl Instances for CqlStore {
    async fn create_instance(&self, instance: &Instance) -> Result<()> {
        self.do_create_instance(instance).await
    }

    async fn get_instance(&self, id: InstanceId) -> Result<Instance> {
        self.do_get_instance(id).await
    }

    async fn update_instance(&self, id: InstanceId, patch: &InstancePatch) -> Result<Instance> {
        self.do_update_instance(id, patch).await
    }

    async fn delete_instance(&self, id: InstanceId) -> Result<()> {
        self.do_delete_instance(id).await
    }

    async fn list_instances(&self, query: &ListQuery) -> Result<InstancePage> {
        self.do_list_instances(query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_splits_into_create_statements() {
        let stmts = schema_statements(TABLES_CQL);
        assert!(stmts.len() >= 15, "{}", stmts.len());
        for s in &stmts {
            assert!(s.starts_with("CREATE TABLE IF NOT EXISTS"), "{s}");
            assert!(!s.contains(';'), "{s}");
        }
    }
}
