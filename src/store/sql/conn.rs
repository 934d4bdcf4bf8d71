//! A thin two-dialect layer over sqlx: one pool, transaction and row type for MariaDB/MySQL
//! and PostgreSQL, so that every query of the backend is written once.
//!
//! Statements are written with MySQL's `?` placeholders; for PostgreSQL they are rewritten
//! to `$1, $2, ...` once and cached, so both dialects keep using sqlx's per-connection
//! prepared-statement cache (the SQL text is the cache key). Where the dialects really
//! differ (upserts, casts) the call site picks one text per dialect with [`Dialect::pick`].

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::{AssertSqlSafe, Row as _, Transaction};

use super::config::Target;
use crate::error::{Error, Result};

/// The backend name used in errors.
pub const BACKEND: &str = "sql";

/// Which SQL dialect a pool speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// MariaDB or MySQL.
    MySql,
    /// PostgreSQL.
    Postgres,
}

impl Dialect {
    /// Picks the statement text for this dialect.
    pub fn pick(self, my: &'static str, pg: &'static str) -> &'static str {
        match self {
            Dialect::MySql => my,
            Dialect::Postgres => pg,
        }
    }
}

/// One bound argument.
#[derive(Clone, Debug)]
pub enum Arg {
    /// A 64-bit integer.
    I64(i64),
    /// A nullable 64-bit integer.
    OptI64(Option<i64>),
    /// Text.
    Str(String),
    /// Nullable text.
    OptStr(Option<String>),
    /// A boolean.
    Bool(bool),
    /// A double.
    F64(f64),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::I64(v)
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::OptI64(v)
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Str(v)
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Str(v.to_string())
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Str(v.clone())
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::OptStr(v)
    }
}
impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}
impl From<f64> for Arg {
    fn from(v: f64) -> Self {
        Arg::F64(v)
    }
}

/// Builds a `Vec<Arg>` from anything convertible.
#[macro_export]
#[doc(hidden)]
macro_rules! sql_args {
    ($($e:expr),* $(,)?) => { vec![$($crate::store::sql::conn::Arg::from($e)),*] };
}

/// Statement text: static (written at the call site) or generated (listing queries whose
/// shape depends on the filters).
#[derive(Clone, Debug)]
pub enum Sql {
    /// A constant statement with `?` placeholders.
    Static(&'static str),
    /// A generated statement, already in the pool's dialect.
    Dynamic(Arc<str>),
}

impl From<&'static str> for Sql {
    fn from(s: &'static str) -> Self {
        Sql::Static(s)
    }
}

fn pg_cache() -> &'static RwLock<HashMap<usize, Arc<str>>> {
    static CACHE: OnceLock<RwLock<HashMap<usize, Arc<str>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Rewrites `?` placeholders to `$n` (no statement of this backend has a `?` in a literal).
pub fn to_pg(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

fn pg_text(sql: &'static str) -> Arc<str> {
    let key = sql.as_ptr() as usize;
    if let Some(s) = pg_cache().read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return s.clone();
    }
    let s: Arc<str> = to_pg(sql).into();
    pg_cache().write().unwrap_or_else(|e| e.into_inner()).insert(key, s.clone());
    s
}

/// How many times a single statement (autocommit, outside any transaction of ours) is run
/// again after the server chose it as a deadlock victim or failed it for serialization: the
/// server rolled the statement back, so running it again is safe, and a concurrent writer
/// (InnoDB gap locks between inserts) is no reason to fail the caller.
const STATEMENT_RETRIES: u32 = 4;

/// How long a request waits in a pool's queue before it fails with `Timeout`. Ten seconds,
/// sqlx's own acquire timeout: a caller that holds a transaction and asks the same pool for a
/// second connection can wait on itself, and in `bench schedule` on MariaDB such waits
/// stalled every build for the whole queue wait when it was 120 s.
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// A connection pool of either dialect, with a queue in front of it.
///
/// Every statement and transaction first takes one of `max_connections` permits from a
/// FIFO semaphore, waiting as long as it takes, and only then asks sqlx for a connection.
/// So a request that finds every connection busy waits its turn instead of failing with
/// "timed out waiting for a pooled connection" after sqlx's acquire timeout: that timeout
/// is left to mean what it should, a server that does not give a connection (down,
/// refusing, over its `max_connections`). The wait in the queue is bounded all the same
/// ([`QUEUE_WAIT`]), because a caller that holds a transaction and asks the same pool for a
/// second connection could otherwise wait forever once every permit is held that way.
#[derive(Clone, Debug)]
pub struct Pool {
    kind: PoolKind,
    queue: Arc<tokio::sync::Semaphore>,
}

#[derive(Clone, Debug)]
enum PoolKind {
    My(MySqlPool),
    Pg(PgPool),
}

/// An open transaction of either dialect (it holds its pool permit until it ends).
pub struct Tx {
    kind: TxKind,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

enum TxKind {
    My(Transaction<'static, MySql>),
    Pg(Transaction<'static, Postgres>),
}

/// A result row of either dialect.
pub enum Row {
    /// MariaDB/MySQL.
    My(MySqlRow),
    /// PostgreSQL.
    Pg(PgRow),
}

macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::I64(v) => q.bind(v),
                Arg::OptI64(v) => q.bind(v),
                Arg::Str(v) => q.bind(v),
                Arg::OptStr(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
                Arg::F64(v) => q.bind(v),
            };
        }
        q
    }};
}

fn my_query(sql: &Sql) -> sqlx::query::Query<'static, MySql, sqlx::mysql::MySqlArguments> {
    match sql {
        Sql::Static(s) => sqlx::query(*s),
        Sql::Dynamic(s) => sqlx::query(AssertSqlSafe(s.clone())),
    }
}

fn pg_query(sql: &Sql) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
    match sql {
        Sql::Static(s) => sqlx::query(AssertSqlSafe(pg_text(s))),
        Sql::Dynamic(s) => sqlx::query(AssertSqlSafe(s.clone())),
    }
}

/// How [`map_err`] starts the message of a transaction the server rolled back (deadlock
/// victim, serialization failure, lock wait timeout).
const ROLLED_BACK: &str = "the database rolled the transaction back (deadlock or serialization failure)";

/// Whether `e` is a transaction the server rolled back ([`map_err`] of a retryable
/// transaction error): nothing was applied, the same transaction can run again.
pub(crate) fn rolled_back(e: &Error) -> bool {
    matches!(e, Error::Unavailable { message, .. } if message.starts_with(ROLLED_BACK))
}

/// What a transient database condition means for the caller.
pub fn is_retryable_tx_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            // 40001 serialization failure / InnoDB deadlock (1213), 40P01 PG deadlock.
            if code == "40001" || code == "40P01" {
                return true;
            }
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                return matches!(my.number(), 1213 | 1205);
            }
            false
        }
        _ => false,
    }
}

/// Whether the server said it is going away or cannot take the connection: PostgreSQL's
/// class 57P (`admin_shutdown`, `crash_shutdown`, `cannot_connect_now`: a pooled connection
/// to a server being stopped answers 57P01 rather than a socket error) and MariaDB's
/// `ER_SERVER_SHUTDOWN` (1053) and `ER_CON_COUNT_ERROR` (1040). The server is unreachable
/// for now, as with a refused connection: retryable, and a listing can skip that database
/// (contract line 17) instead of failing with a backend error.
fn is_server_going_away(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    if db.code().is_some_and(|c| c.starts_with("57P")) {
        return true;
    }
    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().is_some_and(|my| matches!(my.number(), 1053 | 1040))
}

/// Whether the error is a unique-key violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Maps a sqlx error into the contract's errors: unreachable servers are `Unavailable`,
/// pool and statement timeouts `Timeout`, anything else `Backend` (sqlx never puts the
/// password in its messages; URLs are redacted by the caller).
pub fn map_err(e: sqlx::Error) -> Error {
    if is_retryable_tx_error(&e) {
        // The server rolled the whole transaction back: nothing of it was applied, and
        // running it again is the server's own advice. Retryable, so that a caller does not
        // fail a build on a deadlock between two concurrent moves (InnoDB gap locks).
        return Error::Unavailable { backend: BACKEND, message: format!("{ROLLED_BACK}: {e}") };
    }
    if is_server_going_away(&e) {
        return Error::Unavailable { backend: BACKEND, message: e.to_string() };
    }
    match e {
        sqlx::Error::Io(io) => Error::Unavailable { backend: BACKEND, message: io.to_string() },
        sqlx::Error::PoolTimedOut => {
            Error::Timeout { backend: BACKEND, message: "timed out waiting for a pooled connection".into() }
        }
        sqlx::Error::PoolClosed => Error::Unavailable { backend: BACKEND, message: "connection pool closed".into() },
        sqlx::Error::Tls(t) => Error::Unavailable { backend: BACKEND, message: format!("tls: {t}") },
        other => Error::backend(BACKEND, other),
    }
}

impl Pool {
    fn new(kind: PoolKind, max: u32) -> Pool {
        Pool { kind, queue: Arc::new(tokio::sync::Semaphore::new(max.max(1) as usize)) }
    }

    /// Waits for this pool's turn (see [`Pool`]); sqlx's `PoolTimedOut` after [`QUEUE_WAIT`].
    async fn turn(&self) -> std::result::Result<tokio::sync::OwnedSemaphorePermit, sqlx::Error> {
        match tokio::time::timeout(QUEUE_WAIT, Arc::clone(&self.queue).acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(sqlx::Error::PoolClosed),
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    }

    /// Whether `other` is this very pool (single mode hands the API pool to its one cell):
    /// a caller holding a transaction of a pool must write through that transaction, not
    /// ask the same pool again.
    pub fn same_as(&self, other: &Pool) -> bool {
        Arc::ptr_eq(&self.queue, &other.queue)
    }

    /// The pool's dialect.
    pub fn dialect(&self) -> Dialect {
        match &self.kind {
            PoolKind::My(_) => Dialect::MySql,
            PoolKind::Pg(_) => Dialect::Postgres,
        }
    }

    /// Runs a statement and returns every row.
    pub async fn fetch_all(&self, sql: impl Into<Sql>, args: Vec<Arg>) -> Result<Vec<Row>> {
        self.fetch_all_raw(sql, args).await.map_err(map_err)
    }

    /// As [`fetch_all`](Self::fetch_all) with the raw sqlx error.
    pub async fn fetch_all_raw(
        &self,
        sql: impl Into<Sql>,
        args: Vec<Arg>,
    ) -> std::result::Result<Vec<Row>, sqlx::Error> {
        let sql = sql.into();
        let mut attempt = 0;
        loop {
            let _turn = self.turn().await?;
            let r = match &self.kind {
                PoolKind::My(p) => bind_all!(my_query(&sql), args.clone())
                    .fetch_all(p)
                    .await
                    .map(|v| v.into_iter().map(Row::My).collect()),
                PoolKind::Pg(p) => bind_all!(pg_query(&sql), args.clone())
                    .fetch_all(p)
                    .await
                    .map(|v| v.into_iter().map(Row::Pg).collect()),
            };
            match r {
                Err(e) if is_retryable_tx_error(&e) && attempt < STATEMENT_RETRIES => attempt += 1,
                other => return other,
            }
        }
    }

    /// Runs a statement and returns the first row, if any.
    pub async fn fetch_optional(&self, sql: impl Into<Sql>, args: Vec<Arg>) -> Result<Option<Row>> {
        let sql = sql.into();
        let mut attempt = 0;
        loop {
            let _turn = self.turn().await.map_err(map_err)?;
            let r = match &self.kind {
                PoolKind::My(p) => {
                    bind_all!(my_query(&sql), args.clone()).fetch_optional(p).await.map(|r| r.map(Row::My))
                }
                PoolKind::Pg(p) => {
                    bind_all!(pg_query(&sql), args.clone()).fetch_optional(p).await.map(|r| r.map(Row::Pg))
                }
            };
            match r {
                Err(e) if is_retryable_tx_error(&e) && attempt < STATEMENT_RETRIES => attempt += 1,
                other => return other.map_err(map_err),
            }
        }
    }

    /// Runs a statement and returns the number of rows it affected.
    pub async fn execute(&self, sql: impl Into<Sql>, args: Vec<Arg>) -> Result<u64> {
        self.execute_raw(sql, args).await.map_err(map_err)
    }

    /// As [`execute`](Self::execute) with the raw sqlx error (to recognise duplicates).
    pub async fn execute_raw(&self, sql: impl Into<Sql>, args: Vec<Arg>) -> std::result::Result<u64, sqlx::Error> {
        let sql = sql.into();
        let mut attempt = 0;
        loop {
            let _turn = self.turn().await?;
            let r = match &self.kind {
                PoolKind::My(p) => bind_all!(my_query(&sql), args.clone()).execute(p).await.map(|d| d.rows_affected()),
                PoolKind::Pg(p) => bind_all!(pg_query(&sql), args.clone()).execute(p).await.map(|d| d.rows_affected()),
            };
            match r {
                Err(e) if is_retryable_tx_error(&e) && attempt < STATEMENT_RETRIES => attempt += 1,
                other => return other,
            }
        }
    }

    /// Runs a statement without preparing it (DDL, `SET`).
    pub async fn execute_unprepared(&self, sql: &str) -> std::result::Result<(), sqlx::Error> {
        let sql = AssertSqlSafe(sql.to_string());
        let _turn = self.turn().await?;
        match &self.kind {
            PoolKind::My(p) => {
                sqlx::raw_sql(sql).execute(p).await?;
            }
            PoolKind::Pg(p) => {
                sqlx::raw_sql(sql).execute(p).await?;
            }
        }
        Ok(())
    }

    /// Whether the database gives a connection now: takes a turn and a connection (sqlx
    /// pings it) and gives both back at once. For a caller about to hold another pool's
    /// connection while it waits on this one (see `update_at` in `instances.rs`).
    pub async fn check(&self) -> std::result::Result<(), sqlx::Error> {
        let _permit = self.turn().await?;
        match &self.kind {
            PoolKind::My(p) => drop(p.acquire().await?),
            PoolKind::Pg(p) => drop(p.acquire().await?),
        }
        Ok(())
    }

    /// Begins a transaction at the database's default isolation (REPEATABLE READ on InnoDB,
    /// READ COMMITTED on PostgreSQL).
    pub async fn begin(&self) -> std::result::Result<Tx, sqlx::Error> {
        let permit = self.turn().await?;
        let kind = match &self.kind {
            PoolKind::My(p) => TxKind::My(p.begin().await?),
            PoolKind::Pg(p) => TxKind::Pg(p.begin().await?),
        };
        Ok(Tx { kind, _permit: permit })
    }

    /// Begins a read-only transaction with one snapshot for all its statements (for reading
    /// whole provider trees consistently).
    pub async fn begin_snapshot(&self) -> std::result::Result<Tx, sqlx::Error> {
        let permit = self.turn().await?;
        let kind = match &self.kind {
            PoolKind::My(p) => TxKind::My(p.begin_with("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").await?),
            PoolKind::Pg(p) => TxKind::Pg(p.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?),
        };
        Ok(Tx { kind, _permit: permit })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.queue.close();
        match &self.kind {
            PoolKind::My(p) => p.close().await,
            PoolKind::Pg(p) => p.close().await,
        }
    }
}

impl Tx {
    /// Runs a statement inside the transaction and returns every row.
    pub async fn fetch_all(
        &mut self,
        sql: impl Into<Sql>,
        args: Vec<Arg>,
    ) -> std::result::Result<Vec<Row>, sqlx::Error> {
        let sql = sql.into();
        Ok(match &mut self.kind {
            TxKind::My(t) => {
                bind_all!(my_query(&sql), args).fetch_all(&mut **t).await?.into_iter().map(Row::My).collect()
            }
            TxKind::Pg(t) => {
                bind_all!(pg_query(&sql), args).fetch_all(&mut **t).await?.into_iter().map(Row::Pg).collect()
            }
        })
    }

    /// Runs a statement inside the transaction and returns the first row, if any.
    pub async fn fetch_optional(
        &mut self,
        sql: impl Into<Sql>,
        args: Vec<Arg>,
    ) -> std::result::Result<Option<Row>, sqlx::Error> {
        let sql = sql.into();
        Ok(match &mut self.kind {
            TxKind::My(t) => bind_all!(my_query(&sql), args).fetch_optional(&mut **t).await?.map(Row::My),
            TxKind::Pg(t) => bind_all!(pg_query(&sql), args).fetch_optional(&mut **t).await?.map(Row::Pg),
        })
    }

    /// Runs a statement inside the transaction; returns the rows affected.
    pub async fn execute(&mut self, sql: impl Into<Sql>, args: Vec<Arg>) -> std::result::Result<u64, sqlx::Error> {
        let sql = sql.into();
        Ok(match &mut self.kind {
            TxKind::My(t) => bind_all!(my_query(&sql), args).execute(&mut **t).await?.rows_affected(),
            TxKind::Pg(t) => bind_all!(pg_query(&sql), args).execute(&mut **t).await?.rows_affected(),
        })
    }

    /// Runs (possibly several) statements without preparing them (DDL).
    pub async fn execute_unprepared(&mut self, sql: &str) -> std::result::Result<(), sqlx::Error> {
        let sql = AssertSqlSafe(sql.to_string());
        match &mut self.kind {
            TxKind::My(t) => {
                sqlx::raw_sql(sql).execute(&mut **t).await?;
            }
            TxKind::Pg(t) => {
                sqlx::raw_sql(sql).execute(&mut **t).await?;
            }
        }
        Ok(())
    }

    /// Commits.
    pub async fn commit(self) -> std::result::Result<(), sqlx::Error> {
        match self.kind {
            TxKind::My(t) => t.commit().await,
            TxKind::Pg(t) => t.commit().await,
        }
    }

    /// Rolls back.
    pub async fn rollback(self) -> std::result::Result<(), sqlx::Error> {
        match self.kind {
            TxKind::My(t) => t.rollback().await,
            TxKind::Pg(t) => t.rollback().await,
        }
    }
}

fn decode_err(col: usize, e: sqlx::Error) -> Error {
    Error::backend(BACKEND, format!("cannot decode column {col} of a result row: {e}"))
}

impl Row {
    /// A BIGINT column.
    pub fn i64(&self, col: usize) -> Result<i64> {
        match self {
            Row::My(r) => r.try_get(col),
            Row::Pg(r) => r.try_get(col),
        }
        .map_err(|e| decode_err(col, e))
    }

    /// A nullable BIGINT column.
    pub fn opt_i64(&self, col: usize) -> Result<Option<i64>> {
        match self {
            Row::My(r) => r.try_get(col),
            Row::Pg(r) => r.try_get(col),
        }
        .map_err(|e| decode_err(col, e))
    }

    /// A text column.
    pub fn str(&self, col: usize) -> Result<String> {
        match self {
            Row::My(r) => r.try_get(col),
            Row::Pg(r) => r.try_get(col),
        }
        .map_err(|e| decode_err(col, e))
    }

    /// A nullable text column.
    pub fn opt_str(&self, col: usize) -> Result<Option<String>> {
        match self {
            Row::My(r) => r.try_get(col),
            Row::Pg(r) => r.try_get(col),
        }
        .map_err(|e| decode_err(col, e))
    }

    /// A boolean column.
    pub fn bool(&self, col: usize) -> Result<bool> {
        match self {
            Row::My(r) => r.try_get(col),
            Row::Pg(r) => r.try_get(col),
        }
        .map_err(|e| decode_err(col, e))
    }

    /// A double column.
    pub fn f64(&self, col: usize) -> Result<f64> {
        match self {
            Row::My(r) => r.try_get(col),
            Row::Pg(r) => r.try_get(col),
        }
        .map_err(|e| decode_err(col, e))
    }

    /// A uuid stored as `CHAR(36)` text.
    pub fn uuid(&self, col: usize) -> Result<uuid::Uuid> {
        let s = self.str(col)?;
        uuid::Uuid::parse_str(&s).map_err(|e| Error::backend(BACKEND, format!("column {col} holds {s:?}: {e}")))
    }

    /// A nullable uuid column.
    pub fn opt_uuid(&self, col: usize) -> Result<Option<uuid::Uuid>> {
        match self.opt_str(col)? {
            None => Ok(None),
            Some(s) => uuid::Uuid::parse_str(&s)
                .map(Some)
                .map_err(|e| Error::backend(BACKEND, format!("column {col} holds {s:?}: {e}"))),
        }
    }
}

/// One cell database.
#[derive(Clone, Debug)]
pub(crate) struct CellDb {
    pub(crate) pool: Pool,
    /// Redacted URL, for logs and errors.
    pub(crate) label: String,
}

impl Target {
    pub(super) fn my_options(&self, database: Option<&str>) -> MySqlConnectOptions {
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

    pub(super) fn pg_options(&self, database: &str) -> PgConnectOptions {
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
    pub(super) async fn ensure_database(&self) -> Result<()> {
        let label = self.label();
        let unavailable = |e: sqlx::Error| match map_err(e) {
            Error::Backend { source, .. } => {
                Error::Unavailable { backend: BACKEND, message: format!("{label}: {source}") }
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
    pub(super) async fn drop_database(&self) -> Result<()> {
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

    pub(super) fn pool(&self, max: u32) -> Pool {
        let acquire = Duration::from_secs(10);
        let kind = match self.dialect {
            Dialect::MySql => PoolKind::My(
                MySqlPoolOptions::new()
                    .max_connections(max)
                    .min_connections(0)
                    .acquire_timeout(acquire)
                    .idle_timeout(Duration::from_secs(60))
                    .test_before_acquire(false)
                    .connect_lazy_with(self.my_options(Some(&self.database))),
            ),
            Dialect::Postgres => PoolKind::Pg(
                PgPoolOptions::new()
                    .max_connections(max)
                    .min_connections(0)
                    .acquire_timeout(acquire)
                    .idle_timeout(Duration::from_secs(60))
                    .test_before_acquire(false)
                    .connect_lazy_with(self.pg_options(&self.database)),
            ),
        };
        Pool::new(kind, max)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_placeholders() {
        assert_eq!(
            to_pg("SELECT a FROM t WHERE x = ? AND y IN (?, ?)"),
            "SELECT a FROM t WHERE x = $1 AND y IN ($2, $3)"
        );
    }
}
