//! The SQL baseline (`mysql://`, `mariadb://`, `postgres://`): Nova's cells v2 layout on
//! MariaDB/MySQL or PostgreSQL, kept as faithful to Nova and Placement as the contract
//! allows, so that benchmarks compare unicell against the real design and not a straw man.
//!
//! # Layout
//!
//! * The **API database** holds Nova's API tables (cell, host and instance mappings, build
//!   requests, request specs, flavors, server groups, aggregates) and Placement's tables
//!   (resource providers with generations, inventories, allocations, consumers with
//!   generations, traits, aggregates).
//! * Each **cell database** holds that cell's `instances` (with Nova's `tags` table) and its
//!   compute nodes. Every cell database has its own connection pool and may live on its own
//!   server.
//! * **Single mode** puts every table in one database (one pool, one "cell"): the control
//!   that separates the cost of the split from the cost of SQL.
//!
//! Schemas live in `schema/sql/<dialect>/{api,cell}/` and are applied by the store when it
//! opens ([`migrate`]).
//!
//! # URLs
//!
//! `mysql://root@127.0.0.1:3306/unicell?cells=4` names an API database `unicell` and cell
//! databases `unicell_cell0..3`; the forms and options are in [`config`].
//!
//! # Files
//!
//! One file per concern, as every backend: `config.rs` (URL options), `conn.rs` (the
//! two-dialect layer over sqlx: pools, transactions, rows, database creation), `trees.rs`
//! (Placement: providers and claims), `feed.rs` (the change feed), `catalog.rs`,
//! `instances.rs` (with Nova's multi-cell listing); and SQL's own `migrate.rs` (schemas).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::model::*;
use crate::store::StoreUrl;
use crate::store::prelude::*;

mod candidates;
mod catalog;
pub mod config;
pub mod conn;
mod feed;
mod instances;
mod leases;
pub mod migrate;
mod placement;
mod trees;

use self::config::targets;
pub use self::config::{DownCell, ListStrategy, Mode, SqlOptions};
use self::conn::{CellDb, Dialect, Pool};

/// The SQL baseline store. See the module docs.
pub struct SqlStore {
    url: StoreUrl,
    dialect: Dialect,
    opts: SqlOptions,
    api: Pool,
    cells: Vec<CellDb>,
    slots: RwLock<HashMap<CellId, usize>>,
    stmts: instances::Statements,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("url", &self.url)
            .field("mode", &self.opts.mode)
            .field("cells", &self.cells.len())
            .finish_non_exhaustive()
    }
}

impl SqlStore {
    /// Opens (creating databases and applying migrations as needed) the store a URL names.
    pub async fn open(url: &StoreUrl) -> Result<SqlStore> {
        let (api_t, cell_ts, mode) = targets(url)?;
        let opts = SqlOptions::parse(url, mode)?;
        if opts.create {
            api_t.ensure_database().await?;
            if mode == Mode::Cells {
                for t in &cell_ts {
                    t.ensure_database().await?;
                }
            }
        }
        let api = api_t.pool(opts.pool_size);
        migrate::migrate(&api, migrate::Part::Api).await.map_err(|e| annotate(e, &api_t.label()))?;
        let cells = match mode {
            Mode::Single => {
                migrate::migrate(&api, migrate::Part::Cell).await.map_err(|e| annotate(e, &api_t.label()))?;
                vec![CellDb { pool: api.clone(), label: api_t.label() }]
            }
            Mode::Cells => {
                let mut v = Vec::new();
                for t in &cell_ts {
                    let pool = t.pool(opts.cell_pool_size);
                    migrate::migrate(&pool, migrate::Part::Cell).await.map_err(|e| annotate(e, &t.label()))?;
                    v.push(CellDb { pool, label: t.label() });
                }
                v
            }
        };
        let dialect = api_t.dialect;
        Ok(SqlStore {
            url: url.clone(),
            dialect,
            opts,
            api,
            cells,
            slots: RwLock::new(HashMap::new()),
            stmts: instances::Statements::new(dialect),
        })
    }

    /// Drops every database the URL names (API and cells). For tests and benchmarks that
    /// created their own databases.
    pub async fn drop_databases(url: &StoreUrl) -> Result<()> {
        let (api, cells, mode) = targets(url)?;
        if mode == Mode::Cells {
            for t in cells {
                t.drop_database().await?;
            }
        }
        api.drop_database().await
    }

    /// The parsed options.
    pub fn options(&self) -> &SqlOptions {
        &self.opts
    }

    /// Number of cell databases.
    pub fn cell_databases(&self) -> usize {
        self.cells.len()
    }

    /// Closes every pool.
    pub async fn close(&self) {
        self.api.close().await;
        if self.opts.mode == Mode::Cells {
            for c in &self.cells {
                c.pool.close().await;
            }
        }
    }

    /// The cell database slot holding `cell`: recorded in `cell_mappings` the first time the
    /// cell is seen (registered by `put_cell` or not), round-robin over the slots, and cached.
    pub(crate) async fn slot_of(&self, cell: CellId) -> Result<usize> {
        if self.cells.len() == 1 {
            return Ok(0);
        }
        if let Some(s) = self.slots.read().unwrap_or_else(|e| e.into_inner()).get(&cell) {
            return Ok(*s);
        }
        let n = self.cells.len() as i64;
        let read = || async {
            self.api
                .fetch_optional(
                    "SELECT database_slot FROM cell_mappings WHERE uuid = ?",
                    crate::sql_args![cell.to_string()],
                )
                .await
        };
        let row = match read().await? {
            Some(r) => r,
            None => {
                self.api
                    .execute(
                        self.dialect.pick(
                            "INSERT IGNORE INTO cell_mappings (uuid, name, disabled, registered, database_slot) \
                             SELECT ?, NULL, FALSE, FALSE, COUNT(*) % ? FROM cell_mappings",
                            "INSERT INTO cell_mappings (uuid, name, disabled, registered, database_slot) \
                             SELECT ?, NULL, FALSE, FALSE, COUNT(*) % ? FROM cell_mappings \
                             ON CONFLICT (uuid) DO NOTHING",
                        ),
                        crate::sql_args![cell.to_string(), n],
                    )
                    .await?;
                read()
                    .await?
                    .ok_or_else(|| Error::backend(conn::BACKEND, format!("cell mapping of {cell} vanished")))?
            }
        };
        let slot = usize::try_from(row.i64(0)?).ok().filter(|s| *s < self.cells.len()).ok_or_else(|| {
            Error::backend(
                conn::BACKEND,
                format!(
                    "cell {cell} is mapped to a database slot this URL does not configure \
                         ({} cell databases)",
                    self.cells.len()
                ),
            )
        })?;
        self.slots.write().unwrap_or_else(|e| e.into_inner()).insert(cell, slot);
        Ok(slot)
    }
}

fn annotate(e: Error, label: &str) -> Error {
    match e {
        Error::Unavailable { backend, message } => {
            Error::Unavailable { backend, message: format!("{label}: {message}") }
        }
        other => other,
    }
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        "sql"
    }

    fn describe(&self) -> String {
        format!("sql {} ({:?} mode, {} cell database(s))", self.url, self.opts.mode, self.cells.len())
    }

    fn leases(&self) -> Option<&dyn crate::store::leases::Leases> {
        Some(self)
    }

    fn placement(&self) -> Option<&dyn crate::store::placement::PlacementStore> {
        Some(self)
    }

    fn candidate_queries(&self) -> Option<&dyn crate::store::candidates::CandidateQueries> {
        Some(self)
    }
}

/// Serializes to JSON text for a TEXT column.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::backend(conn::BACKEND, e))
}

/// Parses a JSON TEXT column.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::backend(conn::BACKEND, e))
}

/// Bounded, jittered pause between claim retries (Placement retries immediately; a little
/// jitter keeps retrying workers from colliding again in lock step).
pub(crate) async fn backoff(attempt: u32) {
    let nanos = uuid::Uuid::new_v4().as_u128() as u64 % 1_000_000;
    let us = (attempt.min(6) as u64 + 1) * 200 + nanos / 1000;
    tokio::time::sleep(Duration::from_micros(us)).await;
}
