//! What each candidate keeps when the machine loses power: read from the server itself at
//! the start of a run, so that a report never compares a store that fsyncs every commit
//! with one that keeps nothing on disk without saying so.
//!
//! * `memory://`: nothing (in-process).
//! * Redis: `CONFIG GET appendonly appendfsync save` (on the first host of a cluster).
//! * MariaDB/MySQL: `innodb_flush_log_at_trx_commit`, `sync_binlog`, `log_bin`, on the API
//!   database's server and on every other server holding a cell database.
//! * PostgreSQL: `fsync`, `synchronous_commit`, `wal_sync_method`, likewise per server.
//! * CQL: `commitlog_sync` (and its period) from the configuration of a Cassandra the bench
//!   started; Cassandra 2.1 and ScyllaDB do not expose it over CQL, so for a server given
//!   by URL it is reported as not read.

use std::collections::BTreeMap;

use serde::Serialize;
use unicell::store::{Scheme, StoreUrl};

/// One candidate's durability as reported.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Durability {
    /// One line for tables and charts, e.g. `AOF, appendfsync everysec`.
    pub summary: String,
    /// The settings as the server reported them, per server (`host:port setting`).
    pub settings: BTreeMap<String, String>,
    /// How they were obtained (`CONFIG GET`, `SELECT @@...`, `SHOW ...`, ...).
    pub source: String,
}

impl Durability {
    fn unknown(why: String) -> Durability {
        Durability { summary: format!("unknown ({why})"), settings: BTreeMap::new(), source: "not read".into() }
    }
}

/// Reads the durability of the store at `url` (the candidate's own URL); `extra_servers`
/// are further servers of the same SQL dialect holding cell databases (server URLs
/// without a database). `cassandra_config` is `(commitlog_sync, period)` of a Cassandra
/// the bench started. Never fails: what cannot be read is reported as unknown, with why.
pub async fn read(url: &str, extra_servers: &[String], cassandra_config: Option<(String, String)>) -> Durability {
    let parsed = match StoreUrl::parse(url) {
        Ok(p) => p,
        Err(e) => return Durability::unknown(e.to_string()),
    };
    match parsed.scheme() {
        Scheme::Memory => Durability {
            summary: "none (in-process memory, lost with the process)".into(),
            settings: BTreeMap::new(),
            source: "memory:// keeps nothing on disk".into(),
        },
        Scheme::Redis | Scheme::RedisCluster => redis(&parsed).await,
        Scheme::MySql | Scheme::Postgres => sql(&parsed, extra_servers).await,
        Scheme::Scylla | Scheme::Cassandra => match cassandra_config {
            Some((sync, period)) => Durability {
                summary: if sync == "periodic" {
                    format!("commitlog_sync periodic, every {period} ms (writes acknowledged before fsync)")
                } else {
                    format!("commitlog_sync {sync} ({period} ms)")
                },
                settings: BTreeMap::from([
                    ("commitlog_sync".to_string(), sync),
                    ("commitlog_sync_period_in_ms".to_string(), period),
                ]),
                source: "cassandra.yaml of the Cassandra the bench started".into(),
            },
            None => Durability::unknown(
                "commitlog_sync is not readable over CQL on Cassandra 2.1 or ScyllaDB; see the server's \
                 configuration"
                    .into(),
            ),
        },
        other => Durability::unknown(format!("no durability probe for {other}://")),
    }
}

#[cfg(feature = "redis")]
async fn redis(parsed: &StoreUrl) -> Durability {
    let u = parsed.expose();
    let (host, port) = parsed.hosts().first().cloned().unwrap_or_else(|| ("127.0.0.1".into(), Some(6379)));
    let port = port.unwrap_or(6379);
    let mut conn_url = match url::Url::parse(&format!("redis://{host}:{port}/")) {
        Ok(c) => c,
        Err(e) => return Durability::unknown(e.to_string()),
    };
    if let Some(pw) = u.password() {
        let _ = conn_url.set_password(Some(pw));
        let _ = conn_url.set_username(u.username());
    }
    let r = async {
        let client = redis::Client::open(conn_url.as_str())?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let mut out = BTreeMap::new();
        for key in ["appendonly", "appendfsync", "save"] {
            let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(key).query_async(&mut c).await?;
            out.insert(key.to_string(), v.get(1).cloned().unwrap_or_default());
        }
        Ok::<_, redis::RedisError>(out)
    }
    .await;
    match r {
        Ok(s) => {
            let aof = s.get("appendonly").map(String::as_str) == Some("yes");
            let save = s.get("save").cloned().unwrap_or_default();
            let summary = match (aof, s.get("appendfsync").map(String::as_str)) {
                (true, Some("always")) => "AOF, appendfsync always (fsync before every reply)".to_string(),
                (true, Some("everysec")) => "AOF, appendfsync everysec (up to ~1 s of writes lost)".to_string(),
                (true, Some(other)) => format!("AOF, appendfsync {other} (flushing left to the OS)"),
                (true, None) => "AOF".to_string(),
                (false, _) if save.trim().is_empty() => "none (appendonly no, no RDB snapshots)".to_string(),
                (false, _) => format!("RDB snapshots only (save \"{save}\"), no AOF"),
            };
            let settings = s.into_iter().map(|(k, v)| (format!("{host}:{port} {k}"), v)).collect();
            Durability { summary, settings, source: "CONFIG GET appendonly appendfsync save".into() }
        }
        Err(e) => Durability::unknown(format!("CONFIG GET failed: {e}")),
    }
}

#[cfg(not(feature = "redis"))]
async fn redis(_parsed: &StoreUrl) -> Durability {
    Durability::unknown("this build has no `redis` feature".into())
}

/// The servers a SQL candidate uses: the API database's and the extra ones, as URLs without
/// a database or options.
#[cfg(feature = "sql")]
fn sql_servers(parsed: &StoreUrl, extra: &[String]) -> Vec<url::Url> {
    let mut out: Vec<url::Url> = Vec::new();
    let mut push = |mut u: url::Url| {
        u.set_query(None);
        u.set_path("");
        if !out.iter().any(|o| o.host_str() == u.host_str() && o.port() == u.port()) {
            out.push(u);
        }
    };
    push(parsed.expose().clone());
    for c in parsed.params("cell_url") {
        if let Ok(u) = StoreUrl::parse(&c) {
            push(u.expose().clone());
        }
    }
    for e in extra {
        if let Ok(u) = url::Url::parse(e) {
            push(u);
        }
    }
    out
}

#[cfg(feature = "sql")]
async fn sql(parsed: &StoreUrl, extra: &[String]) -> Durability {
    let mysql = parsed.scheme() == Scheme::MySql;
    let mut settings = BTreeMap::new();
    let mut summaries: Vec<String> = Vec::new();
    for server in sql_servers(parsed, extra) {
        let at = format!(
            "{}:{}",
            server.host_str().unwrap_or("?"),
            server.port().unwrap_or(if mysql { 3306 } else { 5432 })
        );
        let read = if mysql { mysql_settings(&server).await } else { pg_settings(&server).await };
        match read {
            Ok(s) => {
                let summary = if mysql { mysql_summary(&s) } else { pg_summary(&s) };
                if !summaries.contains(&summary) {
                    summaries.push(summary);
                }
                settings.extend(s.into_iter().map(|(k, v)| (format!("{at} {k}"), v)));
            }
            Err(e) => {
                let s = format!("{at}: not read ({e})");
                summaries.push(s);
            }
        }
    }
    let servers = settings.keys().filter_map(|k| k.split(' ').next()).collect::<std::collections::BTreeSet<_>>().len();
    Durability {
        summary: format!(
            "{}{}",
            summaries.join("; "),
            if servers > 1 { format!(" (on each of {servers} servers)") } else { String::new() }
        ),
        settings,
        source: if mysql {
            "SELECT @@innodb_flush_log_at_trx_commit, @@sync_binlog, @@log_bin on every server".into()
        } else {
            "SHOW fsync, synchronous_commit, wal_sync_method on every server".into()
        },
    }
}

#[cfg(not(feature = "sql"))]
async fn sql(_parsed: &StoreUrl, _extra: &[String]) -> Durability {
    Durability::unknown("this build has no `sql` feature".into())
}

#[cfg(feature = "sql")]
async fn mysql_settings(server: &url::Url) -> Result<BTreeMap<String, String>, sqlx::Error> {
    use sqlx::Row as _;
    let mut u = url::Url::parse(&server.as_str().replacen("mariadb://", "mysql://", 1))
        .map_err(|e| sqlx::Error::Configuration(Box::new(e)))?;
    u.set_path("/");
    let pool = sqlx::mysql::MySqlPoolOptions::new().max_connections(1).connect(u.as_str()).await?;
    let row = sqlx::query(
        "SELECT CAST(@@innodb_flush_log_at_trx_commit AS CHAR), CAST(@@sync_binlog AS CHAR), \
         CAST(@@log_bin AS CHAR)",
    )
    .fetch_one(&pool)
    .await;
    pool.close().await;
    let row = row?;
    let get = |i: usize| row.try_get::<String, _>(i).unwrap_or_default();
    Ok(BTreeMap::from([
        ("innodb_flush_log_at_trx_commit".to_string(), get(0)),
        ("sync_binlog".to_string(), get(1)),
        ("log_bin".to_string(), get(2)),
    ]))
}

#[cfg(feature = "sql")]
fn mysql_summary(s: &BTreeMap<String, String>) -> String {
    match s.get("innodb_flush_log_at_trx_commit").map(String::as_str) {
        Some("1") => "InnoDB redo log fsynced at every commit (innodb_flush_log_at_trx_commit=1)".into(),
        Some("2") => {
            "InnoDB redo log written at commit, fsynced once a second (innodb_flush_log_at_trx_commit=2)".into()
        }
        Some("0") => "InnoDB redo log written and fsynced once a second (innodb_flush_log_at_trx_commit=0)".into(),
        other => format!("innodb_flush_log_at_trx_commit={}", other.unwrap_or("?")),
    }
}

#[cfg(feature = "sql")]
async fn pg_settings(server: &url::Url) -> Result<BTreeMap<String, String>, sqlx::Error> {
    use sqlx::Row as _;
    let mut u = server.clone();
    u.set_path("/postgres");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(u.as_str()).await?;
    let mut out = BTreeMap::new();
    for key in ["fsync", "synchronous_commit", "wal_sync_method"] {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!("SHOW {key}"))).fetch_one(&pool).await;
        match r {
            Ok(row) => {
                out.insert(key.to_string(), row.try_get::<String, _>(0).unwrap_or_default());
            }
            Err(e) => {
                pool.close().await;
                return Err(e);
            }
        }
    }
    pool.close().await;
    Ok(out)
}

#[cfg(feature = "sql")]
fn pg_summary(s: &BTreeMap<String, String>) -> String {
    let get = |k: &str| s.get(k).map(String::as_str).unwrap_or("?");
    match (get("fsync"), get("synchronous_commit")) {
        ("on", "on") => {
            format!("WAL fsynced at every commit (fsync=on, synchronous_commit=on, {})", get("wal_sync_method"))
        }
        (f, c) => format!("fsync={f}, synchronous_commit={c}"),
    }
}
