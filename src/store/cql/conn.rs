//! A thin layer over the `scylla` session: prepared-statement cache, consistency levels,
//! untyped rows, lightweight-transaction outcomes and error mapping.
//!
//! Every value is bound explicitly (a value or a null), never `Unset`: native protocol v3
//! servers (Cassandra 2.1) have no unset and would store a null.

use std::collections::HashMap;
use std::sync::Mutex;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, PrepareError, RequestAttemptError};
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use uuid::Uuid;

use super::config::CqlConfig;
use crate::error::{Error, Result};

/// Bound values of one statement.
pub(crate) type Vals = Vec<Option<CqlValue>>;

pub(crate) const BACKEND: &str = "cql";

/// The session plus what every statement needs.
pub(crate) struct Db {
    pub(crate) session: Session,
    pub(crate) cfg: CqlConfig,
    cache: Mutex<HashMap<String, PreparedStatement>>,
}

/// The outcome of a lightweight transaction, read from untyped rows: ScyllaDB returns
/// `[applied]` with the old row whether or not it applied; Cassandra returns only
/// `[applied]` when it applied, and the current values of the conditioned columns when not.
#[derive(Debug)]
pub(crate) struct Cas {
    pub(crate) applied: bool,
    columns: Vec<String>,
    rows: Vec<Row>,
}

impl Cas {
    /// A column of the first returned row, if present and not null.
    pub(crate) fn get(&self, column: &str) -> Option<&CqlValue> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.rows.first()?.columns.get(i)?.as_ref()
    }
}

/// Opens a driver session to the URL's contact points. Schema metadata is not fetched: the
/// backend never needs it, and Cassandra 2.x has no `system_schema` keyspace to fetch it from.
/// The price: without the keyspace's replication the driver cannot route a statement to a
/// replica of its partition (token awareness), so on a multi-node cluster a statement may
/// take one more hop through a coordinator that does not own the partition. (The full-
/// metadata flag is switched off too only because the driver warns when the two disagree.)
pub(crate) async fn connect(cfg: &CqlConfig) -> Result<Session> {
    let mut builder = SessionBuilder::new()
        .known_nodes(&cfg.hosts)
        .connection_timeout(cfg.connect_timeout)
        .fetch_schema_metadata(false)
        .fetch_full_schema_metadata(false);
    if let Some((user, password)) = &cfg.credentials {
        builder = builder.user(user.clone(), password.clone());
    }
    builder
        .build()
        .await
        .map_err(|e| Error::Unavailable { backend: BACKEND, message: format!("connecting to {cfg}: {e}") })
}

impl Db {
    pub(crate) fn new(session: Session, cfg: CqlConfig) -> Self {
        Db { session, cfg, cache: Mutex::new(HashMap::new()) }
    }

    /// The serial consistency as a read consistency (for reads that must see every
    /// committed or in-progress lightweight transaction).
    fn serial_read(&self) -> Consistency {
        match self.cfg.serial_consistency {
            SerialConsistency::LocalSerial => Consistency::LocalSerial,
            _ => Consistency::Serial,
        }
    }

    /// The prepared statement for `cql`, prepared once per store.
    pub(crate) async fn stmt(&self, cql: &str) -> Result<PreparedStatement> {
        if let Some(p) = lock(&self.cache).get(cql) {
            return Ok(p.clone());
        }
        let mut p = self.session.prepare(cql).await.map_err(map_prepare)?;
        p.set_consistency(self.cfg.consistency);
        p.set_serial_consistency(Some(self.cfg.serial_consistency));
        p.set_request_timeout(Some(self.cfg.request_timeout));
        lock(&self.cache).insert(cql.to_string(), p.clone());
        Ok(p)
    }

    /// Runs a statement in one page (no paging: provider trees must be read in one page,
    /// because Cassandra 2.1.0 returns static columns as null on later pages) and returns
    /// its rows (empty for writes).
    pub(crate) async fn query(&self, cql: &str, values: Vals) -> Result<Vec<Row>> {
        let p = self.stmt(cql).await?;
        let r = self.session.execute_unpaged(&p, values).await.map_err(map_exec)?;
        rows_of(r)
    }

    /// Like [`query`](Self::query) but reading at SERIAL / LOCAL_SERIAL.
    pub(crate) async fn query_serial(&self, cql: &str, values: Vals) -> Result<Vec<Row>> {
        let mut p = self.stmt(cql).await?;
        p.set_consistency(self.serial_read());
        let r = self.session.execute_unpaged(&p, values).await.map_err(map_exec)?;
        rows_of(r)
    }

    /// A write with no result.
    pub(crate) async fn exec(&self, cql: &str, values: Vals) -> Result<()> {
        self.query(cql, values).await.map(|_| ())
    }

    /// A conditional statement (`IF ...`).
    pub(crate) async fn cas(&self, cql: &str, values: Vals) -> Result<Cas> {
        let p = self.stmt(cql).await?;
        let r = self.session.execute_unpaged(&p, values).await.map_err(map_exec)?;
        cas_of(r)
    }

    /// A conditional statement whose errors are returned raw, so that the caller can tell
    /// an unknown outcome (timeout) from a definite failure.
    pub(crate) async fn cas_batch_raw(
        &self,
        stmts: &[(String, Vals)],
    ) -> std::result::Result<Result<Cas>, ExecutionError> {
        let batch = match self.build_batch(stmts, BatchType::Unlogged).await {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        let values: Vec<Vals> = stmts.iter().map(|(_, v)| v.clone()).collect();
        match self.session.batch(&batch, values).await {
            Ok(r) => Ok(cas_of(r)),
            Err(e) => Err(e),
        }
    }

    /// A conditional batch on one partition.
    pub(crate) async fn cas_batch(&self, stmts: &[(String, Vals)]) -> Result<Cas> {
        match self.cas_batch_raw(stmts).await {
            Ok(r) => r,
            Err(e) => Err(map_exec(e)),
        }
    }

    /// A logged batch (atomic across partitions, eventually): denormalized copies.
    pub(crate) async fn logged_batch(&self, stmts: &[(String, Vals)]) -> Result<()> {
        if stmts.is_empty() {
            return Ok(());
        }
        let batch = self.build_batch(stmts, BatchType::Logged).await?;
        let values: Vec<Vals> = stmts.iter().map(|(_, v)| v.clone()).collect();
        self.session.batch(&batch, values).await.map_err(map_exec)?;
        Ok(())
    }

    async fn build_batch(&self, stmts: &[(String, Vals)], kind: BatchType) -> Result<Batch> {
        let mut batch = Batch::new(kind);
        for (cql, _) in stmts {
            batch.append_statement(self.stmt(cql).await?);
        }
        batch.set_consistency(self.cfg.consistency);
        batch.set_serial_consistency(Some(self.cfg.serial_consistency));
        batch.set_request_timeout(Some(self.cfg.request_timeout));
        Ok(batch)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn rows_of(r: QueryResult) -> Result<Vec<Row>> {
    if !r.is_rows() {
        return Ok(Vec::new());
    }
    let rows = r.into_rows_result().map_err(|e| Error::backend(BACKEND, e))?;
    rows.rows::<Row>()
        .map_err(|e| Error::backend(BACKEND, e))?
        .map(|r| r.map_err(|e| Error::backend(BACKEND, e)))
        .collect()
}

fn cas_of(r: QueryResult) -> Result<Cas> {
    let rows = r.into_rows_result().map_err(|e| Error::backend(BACKEND, e))?;
    let columns: Vec<String> = rows.column_specs().iter().map(|c| c.name().to_string()).collect();
    let data: Vec<Row> = rows
        .rows::<Row>()
        .map_err(|e| Error::backend(BACKEND, e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::backend(BACKEND, e))?;
    let i = columns
        .iter()
        .position(|c| c == "[applied]")
        .ok_or_else(|| Error::backend(BACKEND, "conditional statement returned no [applied]"))?;
    let applied =
        matches!(data.first().and_then(|r| r.columns.get(i)).and_then(|c| c.as_ref()), Some(CqlValue::Boolean(true)));
    Ok(Cas { applied, columns, rows: data })
}

/// Whether a failed write may nevertheless have been applied (timeouts, lost
/// connections): the caller must find out by reading at serial consistency.
pub(crate) fn outcome_unknown(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::RequestTimeout(_) => true,
        ExecutionError::LastAttemptError(a) => matches!(
            a,
            RequestAttemptError::DbError(DbError::WriteTimeout { .. }, _)
                | RequestAttemptError::BrokenConnectionError(_)
                | RequestAttemptError::UnableToAllocStreamId
        ),
        _ => false,
    }
}

/// Maps a driver error onto the contract's semantic variants.
pub(crate) fn map_exec(e: ExecutionError) -> Error {
    let msg = e.to_string();
    match &e {
        ExecutionError::RequestTimeout(_) => Error::Timeout { backend: BACKEND, message: msg },
        ExecutionError::EmptyPlan | ExecutionError::ConnectionPoolError(_) => {
            Error::Unavailable { backend: BACKEND, message: msg }
        }
        ExecutionError::LastAttemptError(a) => match a {
            RequestAttemptError::DbError(db, _) => match db {
                DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => {
                    Error::Timeout { backend: BACKEND, message: msg }
                }
                DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::RateLimitReached { .. } => Error::Unavailable { backend: BACKEND, message: msg },
                _ => Error::backend(BACKEND, e),
            },
            RequestAttemptError::BrokenConnectionError(_) | RequestAttemptError::UnableToAllocStreamId => {
                Error::Unavailable { backend: BACKEND, message: msg }
            }
            _ => Error::backend(BACKEND, e),
        },
        _ => Error::backend(BACKEND, e),
    }
}

fn map_prepare(e: PrepareError) -> Error {
    match e {
        PrepareError::ConnectionPoolError(_) => Error::Unavailable { backend: BACKEND, message: e.to_string() },
        _ => Error::backend(BACKEND, e),
    }
}

// ---- values --------------------------------------------------------------------------

pub(crate) fn uuid(u: Uuid) -> Option<CqlValue> {
    Some(CqlValue::Uuid(u))
}
pub(crate) fn text(s: impl Into<String>) -> Option<CqlValue> {
    Some(CqlValue::Text(s.into()))
}
pub(crate) fn opt_text(s: Option<&str>) -> Option<CqlValue> {
    s.map(|s| CqlValue::Text(s.to_string()))
}
pub(crate) fn big(i: i64) -> Option<CqlValue> {
    Some(CqlValue::BigInt(i))
}
pub(crate) fn int(i: i32) -> Option<CqlValue> {
    Some(CqlValue::Int(i))
}
pub(crate) fn boolean(b: bool) -> Option<CqlValue> {
    Some(CqlValue::Boolean(b))
}
pub(crate) fn blob(b: &[u8]) -> Option<CqlValue> {
    Some(CqlValue::Blob(b.to_vec()))
}
pub(crate) fn text_set<'a>(items: impl IntoIterator<Item = &'a str>) -> Option<CqlValue> {
    Some(CqlValue::Set(items.into_iter().map(|s| CqlValue::Text(s.to_string())).collect()))
}
pub(crate) fn uuid_set(items: impl IntoIterator<Item = Uuid>) -> Option<CqlValue> {
    Some(CqlValue::Set(items.into_iter().map(CqlValue::Uuid).collect()))
}
pub(crate) fn text_map<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<CqlValue> {
    Some(CqlValue::Map(
        items.into_iter().map(|(k, v)| (CqlValue::Text(k.to_string()), CqlValue::Text(v.to_string()))).collect(),
    ))
}
pub(crate) fn bigint_map<'a>(items: impl IntoIterator<Item = (&'a str, i64)>) -> Option<CqlValue> {
    Some(CqlValue::Map(items.into_iter().map(|(k, v)| (CqlValue::Text(k.to_string()), CqlValue::BigInt(v))).collect()))
}
pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<Option<CqlValue>> {
    serde_json::to_string(v).map(|s| Some(CqlValue::Text(s))).map_err(|e| Error::backend(BACKEND, e))
}

// ---- reading untyped rows ------------------------------------------------------------

pub(crate) fn col(row: &Row, i: usize) -> Option<&CqlValue> {
    row.columns.get(i).and_then(|c| c.as_ref())
}
pub(crate) fn get_uuid(row: &Row, i: usize) -> Option<Uuid> {
    match col(row, i)? {
        CqlValue::Uuid(u) => Some(*u),
        CqlValue::Timeuuid(u) => Some(Uuid::from(*u)),
        CqlValue::Blob(b) => Uuid::from_slice(b).ok(),
        _ => None,
    }
}
pub(crate) fn get_text(row: &Row, i: usize) -> Option<String> {
    match col(row, i)? {
        CqlValue::Text(s) | CqlValue::Ascii(s) => Some(s.clone()),
        _ => None,
    }
}
pub(crate) fn get_i64(row: &Row, i: usize) -> Option<i64> {
    match col(row, i)? {
        CqlValue::BigInt(v) => Some(*v),
        CqlValue::Int(v) => Some(i64::from(*v)),
        _ => None,
    }
}
pub(crate) fn get_i32(row: &Row, i: usize) -> Option<i32> {
    match col(row, i)? {
        CqlValue::Int(v) => Some(*v),
        _ => None,
    }
}
pub(crate) fn get_bool(row: &Row, i: usize) -> Option<bool> {
    match col(row, i)? {
        CqlValue::Boolean(b) => Some(*b),
        _ => None,
    }
}
pub(crate) fn get_text_set(row: &Row, i: usize) -> Vec<String> {
    match col(row, i) {
        Some(CqlValue::Set(v)) | Some(CqlValue::List(v)) => v
            .iter()
            .filter_map(|x| match x {
                CqlValue::Text(s) | CqlValue::Ascii(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
pub(crate) fn get_uuid_set(row: &Row, i: usize) -> Vec<Uuid> {
    match col(row, i) {
        Some(CqlValue::Set(v)) | Some(CqlValue::List(v)) => v
            .iter()
            .filter_map(|x| match x {
                CqlValue::Uuid(u) => Some(*u),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
pub(crate) fn get_map(row: &Row, i: usize) -> Vec<(String, CqlValue)> {
    match col(row, i) {
        Some(CqlValue::Map(v)) => v
            .iter()
            .filter_map(|(k, v)| match k {
                CqlValue::Text(s) | CqlValue::Ascii(s) => Some((s.clone(), v.clone())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::backend(BACKEND, e))
}
