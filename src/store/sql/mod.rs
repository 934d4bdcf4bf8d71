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
//! ```text
//! mysql://root@127.0.0.1:3306/unicell?cells=4          API db `unicell`, cells `unicell_cell0..3`
//! mysql://root@db0/unicell?cell_url=mysql%3A%2F%2Froot%40db1%2Fc1&cell_url=...   one URL per cell
//! postgres://postgres@127.0.0.1:5432/unicell?cells=8   the same on PostgreSQL
//! mysql://root@127.0.0.1/unicell?mode=single           everything in one database
//! ```
//!
//! `mariadb://` is an alias of `mysql://`, `postgresql://` of `postgres://`. Options (query
//! parameters): `cells=N` (default 2) or repeated `cell_url=`; `mode=cells|single`;
//! `pool_size` (API pool, default 8) and `cell_pool_size` (each cell pool, default 4):
//! sized for a 2-core machine, where more connections only add context switches;
//! `list_strategy=concurrent|sequential` (default concurrent, see below);
//! `down_cell=skip|fail` (default skip, Nova's `list_records_by_skipping_down_cells=True`);
//! `cell_timeout` (default `60s`, Nova's hard-coded `CELL_TIMEOUT`); `claim_retries`
//! (default 10, Placement's `allocation_conflict_retry_count`); `create=false` to refuse to
//! create missing databases. Passwords are redacted wherever the URL is shown.
//!
//! # Listing
//!
//! As Nova's `multi_cell_list`: the marker is resolved through `instance_mappings`, every
//! cell is queried with the marker's sort values (keyset) and a per-cell batch of
//! `int(limit / cells * 1.1)` clamped to `100..=limit` (Nova's `distributed` strategy), the
//! sorted cell streams are merged with a heap, a cell whose batch runs dry is refilled, and
//! the merge stops at `limit + 1` rows (the extra row says whether a next marker exists).
//! Build requests (instances not yet in a cell) are one more stream, read from the API
//! database *before* the cells. `list_strategy=concurrent` fetches the cells' first batches
//! in parallel; `sequential` fetches them one after another, as Nova's lazily pulled
//! generators do.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::error::{Error, Result};
use crate::model::*;
use crate::store::StoreUrl;
use crate::store::prelude::*;

mod catalog;
pub mod db;
mod instances;
pub mod migrate;
mod placement;

use db::{Dialect, Pool, map_err};

/// How listings query the cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    /// First batches of all cells in parallel (unicell's default).
    Concurrent,
    /// One cell after another, as Nova's generators are pulled.
    Sequential,
}

/// What a listing does when a cell database fails or times out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownCell {
    /// Log a warning and return what the other cells have (Nova's default).
    Skip,
    /// Fail the request (`Unavailable` / `Timeout`).
    Fail,
}

/// Whether cells have their own databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// API database plus one database per cell (Nova's cells v2).
    Cells,
    /// Everything in one database.
    Single,
}

/// The parsed options of a SQL store URL.
#[derive(Clone, Debug)]
pub struct SqlOptions {
    /// Cells or single mode.
    pub mode: Mode,
    /// Listing strategy.
    pub list_strategy: ListStrategy,
    /// Down-cell policy.
    pub down_cell: DownCell,
    /// Per-cell timeout of a listing query.
    pub cell_timeout: Duration,
    /// Generation-conflict retries of a claim.
    pub claim_retries: u32,
    /// API pool size.
    pub pool_size: u32,
    /// Cell pool size.
    pub cell_pool_size: u32,
    /// Create missing databases.
    pub create: bool,
}

/// One cell database.
#[derive(Clone, Debug)]
pub(crate) struct CellDb {
    pub(crate) pool: Pool,
    /// Redacted URL, for logs and errors.
    pub(crate) label: String,
}

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
            .field("url", &redact(&self.url))
            .field("mode", &self.opts.mode)
            .field("cells", &self.cells.len())
            .finish_non_exhaustive()
    }
}

fn param_bool(url: &StoreUrl, key: &str, default: bool) -> Result<bool> {
    match url.param(key).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(other) => Err(Error::invalid(format!("store url {key}"), format!("{other:?} is not a boolean"))),
    }
}

fn param_u32(url: &StoreUrl, key: &str, default: u32, min: u32) -> Result<u32> {
    match url.param(key) {
        None => Ok(default),
        Some(s) => match s.parse::<u32>() {
            Ok(v) if v >= min => Ok(v),
            _ => Err(Error::invalid(format!("store url {key}"), format!("{s:?} must be an integer >= {min}"))),
        },
    }
}

const OUR_PARAMS: &[&str] = &[
    "cells",
    "cell_url",
    "mode",
    "pool_size",
    "cell_pool_size",
    "list_strategy",
    "down_cell",
    "cell_timeout",
    "claim_retries",
    "create",
];

/// Where one database is: the server and the database name.
#[derive(Clone)]
struct Target {
    dialect: Dialect,
    url: url::Url,
    database: String,
}

impl Target {
    fn parse(url: &url::Url) -> Result<Target> {
        let dialect = match url.scheme() {
            "mysql" | "mariadb" => Dialect::MySql,
            "postgres" | "postgresql" => Dialect::Postgres,
            other => {
                return Err(Error::invalid("store url", format!("scheme {other:?} is not a SQL scheme")));
            }
        };
        let database = url.path().trim_start_matches('/').to_string();
        if database.is_empty()
            || !database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || database.len() > 48
        {
            return Err(Error::invalid(
                "store url",
                format!(
                    "database name {database:?} must be 1 to 48 characters of [A-Za-z0-9_] \
                     (it is also the prefix of the cell databases)"
                ),
            ));
        }
        let mut clean = url.clone();
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !OUR_PARAMS.contains(&k.as_ref()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        clean.set_query(None);
        if !kept.is_empty() {
            clean.query_pairs_mut().extend_pairs(kept);
        }
        Ok(Target { dialect, url: clean, database })
    }

    fn with_database(&self, database: String) -> Target {
        let mut t = self.clone();
        t.url.set_path(&format!("/{database}"));
        t.database = database;
        t
    }

    fn label(&self) -> String {
        StoreUrl::parse(self.url.as_str()).map(|u| u.redacted()).unwrap_or_else(|_| "<unparsable url>".into())
    }

    fn my_options(&self, database: Option<&str>) -> MySqlConnectOptions {
        let u = &self.url;
        let user = percent_decode(u.username());
        let mut o = MySqlConnectOptions::new()
            .host(u.host_str().unwrap_or("127.0.0.1"))
            .port(u.port().unwrap_or(3306))
            .username(if user.is_empty() { "root" } else { &user })
            .charset("utf8mb4")
            .statement_cache_capacity(256);
        if let Some(p) = u.password() {
            o = o.password(&percent_decode(p));
        }
        if let Some(d) = database {
            o = o.database(d);
        }
        o
    }

    fn pg_options(&self, database: &str) -> PgConnectOptions {
        let u = &self.url;
        let user = percent_decode(u.username());
        let mut o = PgConnectOptions::new()
            .host(u.host_str().unwrap_or("127.0.0.1"))
            .port(u.port().unwrap_or(5432))
            .username(if user.is_empty() { "postgres" } else { &user })
            .database(database)
            .statement_cache_capacity(256);
        if let Some(p) = u.password() {
            o = o.password(&percent_decode(p));
        }
        o
    }

    /// Creates the database if it is missing.
    async fn ensure_database(&self) -> Result<()> {
        let label = self.label();
        let unavailable = |e: sqlx::Error| match map_err(e) {
            Error::Backend { source, .. } => {
                Error::Unavailable { backend: db::BACKEND, message: format!("{label}: {source}") }
            }
            other => other,
        };
        match self.dialect {
            Dialect::MySql => {
                let pool = MySqlPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(self.my_options(None))
                    .await
                    .map_err(unavailable)?;
                let r = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE IF NOT EXISTS `{}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
                    self.database
                )))
                .execute(&pool)
                .await;
                pool.close().await;
                r.map_err(map_err)?;
            }
            Dialect::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(self.pg_options("postgres"))
                    .await
                    .map_err(unavailable)?;
                let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
                    .bind(&self.database)
                    .fetch_optional(&pool)
                    .await
                    .map_err(map_err)?;
                if exists.is_none() {
                    let r = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{}\"", self.database)))
                        .execute(&pool)
                        .await;
                    // Created concurrently by someone else: 42P04 (duplicate_database) when the
                    // other creation had committed, 23505 (unique_violation on
                    // pg_database_datname_index) when both were in flight at once.
                    if let Err(e) = r
                        && !matches!(&e, sqlx::Error::Database(d)
                            if matches!(d.code().as_deref(), Some("42P04") | Some("23505")))
                    {
                        pool.close().await;
                        return Err(map_err(e));
                    }
                }
                pool.close().await;
            }
        }
        Ok(())
    }

    /// Drops the database (tests and benchmarks clean up with it).
    async fn drop_database(&self) -> Result<()> {
        match self.dialect {
            Dialect::MySql => {
                let pool = MySqlPoolOptions::new()
                    .max_connections(1)
                    .connect_with(self.my_options(None))
                    .await
                    .map_err(map_err)?;
                let r = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{}`", self.database)))
                    .execute(&pool)
                    .await;
                pool.close().await;
                r.map_err(map_err)?;
            }
            Dialect::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(self.pg_options("postgres"))
                    .await
                    .map_err(map_err)?;
                let r = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.database
                )))
                .execute(&pool)
                .await;
                pool.close().await;
                r.map_err(map_err)?;
            }
        }
        Ok(())
    }

    fn pool(&self, max: u32) -> Pool {
        let acquire = Duration::from_secs(10);
        match self.dialect {
            Dialect::MySql => Pool::My(
                MySqlPoolOptions::new()
                    .max_connections(max)
                    .min_connections(0)
                    .acquire_timeout(acquire)
                    .idle_timeout(Duration::from_secs(60))
                    .test_before_acquire(false)
                    .connect_lazy_with(self.my_options(Some(&self.database))),
            ),
            Dialect::Postgres => Pool::Pg(
                PgPoolOptions::new()
                    .max_connections(max)
                    .min_connections(0)
                    .acquire_timeout(acquire)
                    .idle_timeout(Duration::from_secs(60))
                    .test_before_acquire(false)
                    .connect_lazy_with(self.pg_options(&self.database)),
            ),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(h) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The databases a URL names: the API database and the cell databases (the same one in
/// single mode).
fn targets(url: &StoreUrl) -> Result<(Target, Vec<Target>, Mode)> {
    let api = Target::parse(url.expose())?;
    let mode = match url.param("mode").as_deref() {
        None | Some("cells") => Mode::Cells,
        Some("single") => Mode::Single,
        Some(other) => {
            return Err(Error::invalid("store url mode", format!("{other:?} must be cells or single")));
        }
    };
    if mode == Mode::Single {
        return Ok((api.clone(), vec![api], mode));
    }
    let explicit: Vec<String> =
        url.expose().query_pairs().filter(|(k, _)| k == "cell_url").map(|(_, v)| v.into_owned()).collect();
    let cells = if explicit.is_empty() {
        let n = param_u32(url, "cells", 2, 1)?;
        if n > 256 {
            return Err(Error::invalid("store url cells", "at most 256 cells"));
        }
        (0..n).map(|i| api.with_database(format!("{}_cell{i}", api.database))).collect()
    } else {
        let mut v = Vec::new();
        for s in &explicit {
            let u = StoreUrl::parse(s)?;
            let t = Target::parse(u.expose())?;
            if t.dialect != api.dialect {
                return Err(Error::invalid("store url cell_url", format!("{u} is not the API database's dialect")));
            }
            v.push(t);
        }
        v
    };
    Ok((api, cells, mode))
}

impl SqlStore {
    /// Opens (creating databases and applying migrations as needed) the store a URL names.
    pub async fn open(url: &StoreUrl) -> Result<SqlStore> {
        let (api_t, cell_ts, mode) = targets(url)?;
        let opts = SqlOptions {
            mode,
            list_strategy: match url.param("list_strategy").as_deref() {
                None | Some("concurrent") => ListStrategy::Concurrent,
                Some("sequential") => ListStrategy::Sequential,
                Some(o) => {
                    return Err(Error::invalid(
                        "store url list_strategy",
                        format!("{o:?} must be concurrent or sequential"),
                    ));
                }
            },
            down_cell: match url.param("down_cell").as_deref() {
                None | Some("skip") => DownCell::Skip,
                Some("fail") => DownCell::Fail,
                Some(o) => {
                    return Err(Error::invalid("store url down_cell", format!("{o:?} must be skip or fail")));
                }
            },
            cell_timeout: match url.param("cell_timeout") {
                None => Duration::from_secs(60),
                Some(s) => humantime::parse_duration(&s)
                    .map_err(|e| Error::invalid("store url cell_timeout", format!("{s:?}: {e}")))?,
            },
            claim_retries: param_u32(url, "claim_retries", 10, 0)?,
            pool_size: param_u32(url, "pool_size", 8, 1)?,
            cell_pool_size: param_u32(url, "cell_pool_size", 4, 1)?,
            create: param_bool(url, "create", true)?,
        };
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
                read().await?.ok_or_else(|| Error::backend(db::BACKEND, format!("cell mapping of {cell} vanished")))?
            }
        };
        let slot = usize::try_from(row.i64(0)?).ok().filter(|s| *s < self.cells.len()).ok_or_else(|| {
            Error::backend(
                db::BACKEND,
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

/// The URL for display: the password masked, and the passwords of `cell_url` values too
/// (a plain [`StoreUrl`] only masks keys that look secret).
pub fn redact(url: &StoreUrl) -> String {
    let mut u = url.expose().clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = url
        .expose()
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "cell_url" {
                StoreUrl::parse(&v).map(|c| c.redacted()).unwrap_or_else(|_| crate::store::url::redact_str(&v))
            } else if k.to_ascii_lowercase().contains("password") {
                "***".to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    u.set_query(None);
    if !pairs.is_empty() {
        u.query_pairs_mut().extend_pairs(pairs);
    }
    u.to_string()
}

fn annotate(e: Error, label: &str) -> Error {
    match e {
        Error::Unavailable { backend, message } => {
            Error::Unavailable { backend, message: format!("{label}: {message}") }
        }
        other => other,
    }
}

/// Parses `s` and opens a SQL store (used by [`crate::store::open`]).
pub async fn open(url: &str) -> Result<SqlStore> {
    SqlStore::open(&StoreUrl::parse(url)?).await
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        "sql"
    }

    fn describe(&self) -> String {
        format!("sql {} ({:?} mode, {} cell database(s))", redact(&self.url), self.opts.mode, self.cells.len())
    }
}

#[async_trait]
impl Providers for SqlStore {
    async fn create_provider(&self, provider: &NewProvider) -> Result<u64> {
        self.create_provider_impl(provider).await
    }

    async fn delete_provider(&self, provider: ProviderId) -> Result<()> {
        self.delete_provider_impl(provider).await
    }

    async fn provider_tree(&self, provider: ProviderId) -> Result<ProviderTree> {
        self.provider_tree_impl(provider).await
    }

    async fn list_provider_trees(&self, cell: Option<CellId>) -> Result<Vec<ProviderTree>> {
        self.list_provider_trees_impl(cell).await
    }

    async fn set_inventories(
        &self,
        provider: ProviderId,
        generation: u64,
        inventories: &std::collections::BTreeMap<ResourceClass, Inventory>,
    ) -> Result<InventoryWrite> {
        self.set_inventories_impl(provider, generation, inventories).await
    }

    async fn set_traits(
        &self,
        provider: ProviderId,
        generation: u64,
        traits: &std::collections::BTreeSet<Trait>,
    ) -> Result<u64> {
        self.set_traits_impl(provider, generation, traits).await
    }

    async fn set_aggregates(
        &self,
        provider: ProviderId,
        generation: u64,
        aggregates: &std::collections::BTreeSet<AggregateId>,
    ) -> Result<u64> {
        self.set_aggregates_impl(provider, generation, aggregates).await
    }
}

#[async_trait]
impl Claims for SqlStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim> {
        self.claim_impl(request).await
    }

    async fn release(&self, consumer: ConsumerId) -> Result<Released> {
        self.release_impl(consumer).await
    }

    async fn allocations(&self, consumer: ConsumerId) -> Result<Vec<TreeAllocation>> {
        self.allocations_impl(consumer).await
    }

    async fn tree_allocations(&self, provider: ProviderId) -> Result<Vec<TreeAllocation>> {
        self.tree_allocations_impl(provider).await
    }
}

#[async_trait]
impl ChangeFeed for SqlStore {
    async fn change_cursor(&self) -> Result<ChangeCursor> {
        self.change_cursor_impl().await
    }

    async fn changes_since(&self, cursor: &ChangeCursor) -> Result<Changes> {
        self.changes_since_impl(cursor).await
    }
}

#[async_trait]
impl Catalog for SqlStore {
    async fn put_cell(&self, cell: &Cell) -> Result<()> {
        self.put_cell_impl(cell).await
    }

    async fn get_cell(&self, id: CellId) -> Result<Cell> {
        self.get_cell_impl(id).await
    }

    async fn list_cells(&self) -> Result<Vec<Cell>> {
        self.list_cells_impl().await
    }

    async fn put_host(&self, host: &Host) -> Result<()> {
        self.put_host_impl(host).await
    }

    async fn get_host(&self, name: &str) -> Result<Host> {
        self.get_host_impl(name).await
    }

    async fn list_hosts(&self, cell: Option<CellId>) -> Result<Vec<Host>> {
        self.list_hosts_impl(cell).await
    }

    async fn put_flavor(&self, flavor: &Flavor) -> Result<()> {
        self.put_flavor_impl(flavor).await
    }

    async fn get_flavor(&self, id: &FlavorId) -> Result<Flavor> {
        self.get_flavor_impl(id).await
    }

    async fn list_flavors(&self) -> Result<Vec<Flavor>> {
        self.list_flavors_impl().await
    }

    async fn put_aggregate(&self, aggregate: &Aggregate) -> Result<()> {
        self.put_aggregate_impl(aggregate).await
    }

    async fn get_aggregate(&self, id: AggregateId) -> Result<Aggregate> {
        self.get_aggregate_impl(id).await
    }

    async fn list_aggregates(&self) -> Result<Vec<Aggregate>> {
        self.list_aggregates_impl().await
    }

    async fn create_server_group(&self, group: &ServerGroup) -> Result<()> {
        self.create_server_group_impl(group).await
    }

    async fn get_server_group(&self, id: GroupId) -> Result<ServerGroup> {
        self.get_server_group_impl(id).await
    }

    async fn delete_server_group(&self, id: GroupId) -> Result<()> {
        self.delete_server_group_impl(id).await
    }

    async fn put_request_spec(&self, spec: &RequestSpec) -> Result<()> {
        self.put_request_spec_impl(spec).await
    }

    async fn get_request_spec(&self, instance: InstanceId) -> Result<RequestSpec> {
        self.get_request_spec_impl(instance).await
    }

    async fn delete_request_spec(&self, instance: InstanceId) -> Result<()> {
        self.delete_request_spec_impl(instance).await
    }
}

#[async_trait]
impl Instances for SqlStore {
    async fn create_instance(&self, instance: &Instance) -> Result<()> {
        self.create_instance_impl(instance).await
    }

    async fn get_instance(&self, id: InstanceId) -> Result<Instance> {
        self.get_instance_impl(id).await
    }

    async fn update_instance(&self, id: InstanceId, patch: &InstancePatch) -> Result<Instance> {
        self.update_instance_impl(id, patch).await
    }

    async fn delete_instance(&self, id: InstanceId) -> Result<()> {
        self.delete_instance_impl(id).await
    }

    async fn list_instances(&self, query: &ListQuery) -> Result<InstancePage> {
        self.list_instances_impl(query).await
    }
}

/// Serializes to JSON text for a TEXT column.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::backend(db::BACKEND, e))
}

/// Parses a JSON TEXT column.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::backend(db::BACKEND, e))
}

/// Bounded, jittered pause between claim retries (Placement retries immediately; a little
/// jitter keeps retrying workers from colliding again in lock step).
pub(crate) async fn backoff(attempt: u32) {
    let nanos = uuid::Uuid::new_v4().as_u128() as u64 % 1_000_000;
    let us = (attempt.min(6) as u64 + 1) * 200 + nanos / 1000;
    tokio::time::sleep(Duration::from_micros(us)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_redact() {
        let u = StoreUrl::parse("mysql://root:hunter2@127.0.0.1:3306/nova?cells=3&pool_size=2").unwrap();
        let (api, cells, mode) = targets(&u).unwrap();
        assert_eq!(mode, Mode::Cells);
        assert_eq!(api.database, "nova");
        assert_eq!(cells.len(), 3);
        assert_eq!(cells[2].database, "nova_cell2");
        assert!(!cells[2].label().contains("hunter2"));
        assert!(cells[2].label().contains("nova_cell2"));
        assert!(!api.url.as_str().contains("pool_size"));
        let u = StoreUrl::parse(
            "postgres://p:s3cret@h/api?cell_url=postgres%3A%2F%2Fp%3As3cret%40h2%2Fc1&cell_url=postgres%3A%2F%2Fh3%2Fc2",
        )
        .unwrap();
        let (_, cells, _) = targets(&u).unwrap();
        assert_eq!(cells.len(), 2);
        assert_eq!(cells[0].database, "c1");
        assert_eq!(cells[0].url.host_str(), Some("h2"));
        assert!(!cells[0].label().contains("s3cret"));
        assert!(!redact(&u).contains("s3cret"), "{}", redact(&u));
        assert!(redact(&u).contains("h2"));
        let (_, cells, mode) = targets(&StoreUrl::parse("mariadb://root@h/x?mode=single").unwrap()).unwrap();
        assert_eq!((cells.len(), mode), (1, Mode::Single));
        assert!(targets(&StoreUrl::parse("mysql://root@h/bad-name").unwrap()).is_err());
        assert!(targets(&StoreUrl::parse("mysql://root@h/x?mode=weird").unwrap()).is_err());
    }

    #[test]
    fn pg_placeholders() {
        assert_eq!(
            db::to_pg("SELECT a FROM t WHERE x = ? AND y IN (?, ?)"),
            "SELECT a FROM t WHERE x = $1 AND y IN ($2, $3)"
        );
    }
}
