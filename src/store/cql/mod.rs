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
//! through a protocol-translating test proxy, see `unicell::testkit::cql_proxy`). The session
//! does not fetch schema metadata (`fetch_schema_metadata(false)`): the backend never needs
//! it, and Cassandra 2.x has no `system_schema` keyspace. This turns the driver's token-aware
//! routing off (it needs the keyspace's replication), so on a multi-node cluster a statement
//! may be coordinated by a node that is not a replica of its partition: one more hop, not a
//! correctness issue. Fetching the metadata where the server has it is not done yet. Bound values are always explicit
//! (a value or null, never unset) and tree partitions are read in one page, which keeps the
//! backend correct on native protocol v3 servers.
//!
//! # Files
//!
//! One file per concern, as every backend: `config.rs` (URL options), `conn.rs` (the driver
//! session, value encodings, error mapping), `trees.rs` (providers and claims), `feed.rs`
//! (the change feed), `catalog.rs`, `instances.rs`; and CQL's own `schema.rs` (keyspace and
//! table setup).

mod catalog;
pub mod config;
mod conn;
mod feed;
mod instances;
mod leases;
mod schema;
mod trees;

use async_trait::async_trait;

pub use self::config::{CqlConfig, CqlServer, Replication};
use self::conn::{BACKEND, Db};
use crate::error::Result;
use crate::model::*;
use crate::store::StoreUrl;
use crate::store::prelude::*;

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
    pub async fn open(url: &StoreUrl) -> Result<CqlStore> {
        let cfg = CqlConfig::parse(url)?;
        let session = conn::connect(&cfg).await?;
        schema::prepare(&session, &cfg).await?;
        let db = Db::new(session, cfg);
        let (bucket_us, shards) = schema::settings(&db).await?;
        Ok(CqlStore { db, bucket_us, shards, root_cache: Default::default() })
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
            .map_err(conn::map_exec)?;
        Ok(())
    }
}

#[async_trait]
impl Store for CqlStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn describe(&self) -> String {
        self.db.cfg.redacted()
    }

    fn leases(&self) -> Option<&dyn crate::store::leases::Leases> {
        Some(self)
    }
}
