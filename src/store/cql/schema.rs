//! Schema setup of the CQL store: the keyspace and tables of `schema/cql/` (created when
//! the URL's `create_schema` is on, idempotently), and the settings fixed when the keyspace
//! was created.
//!
//! ScyllaDB keyspaces are created with tablets disabled, since ScyllaDB 2025.x does not
//! support lightweight transactions on tablet keyspaces; Cassandra rejects the `tablets`
//! option, so its keyspaces are created without it.

use std::collections::BTreeMap;

use scylla::client::session::Session;

use super::config::{CqlConfig, CqlServer};
use super::conn::{BACKEND, Db, get_text, map_exec, text};
use crate::error::{Error, Result};

const KEYSPACE_CQL: &str = include_str!("../../../schema/cql/keyspace.cql");
const TABLES_CQL: &str = include_str!("../../../schema/cql/tables.cql");

/// Creates the keyspace and tables when `create_schema` is on, then makes the keyspace the
/// session's current one.
pub(super) async fn prepare(session: &Session, cfg: &CqlConfig) -> Result<()> {
    if cfg.create_schema {
        let options = match cfg.server {
            CqlServer::Scylla => " AND tablets = {'enabled': false}",
            CqlServer::Cassandra => "",
        };
        let ks = KEYSPACE_CQL
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("{keyspace}", &cfg.keyspace)
            .replace("{replication}", &cfg.replication.cql())
            .replace("{options}", options);
        session.query_unpaged(ks.trim().trim_end_matches(';'), &[]).await.map_err(map_exec)?;
    }
    session.use_keyspace(&cfg.keyspace, false).await.map_err(|e| Error::backend(BACKEND, e))?;
    if cfg.create_schema {
        for stmt in schema_statements(TABLES_CQL) {
            session.query_unpaged(stmt, &[]).await.map_err(map_exec)?;
        }
        // Keyspaces created before the instance tables had `system_metadata`: add it (CQL
        // has no `ADD ... IF NOT EXISTS`; "already exists" is the expected answer).
        for table in ["instances", "instances_by_time", "instances_by_project"] {
            if let Err(e) = session.query_unpaged(format!("ALTER TABLE {table} ADD system_metadata text"), &[]).await {
                let msg = e.to_string();
                if !(msg.contains("exist") || msg.contains("conflicts")) {
                    return Err(map_exec(e));
                }
            }
        }
    }
    Ok(())
}

/// The settings fixed at keyspace creation: the instance-listing bucket width in
/// microseconds and the shards per bucket. Recorded by the first store that creates the
/// keyspace; later stores read them, whatever their URL says.
pub(super) async fn settings(db: &Db) -> Result<(i64, u32)> {
    let wanted = [
        ("instance_bucket_us", (i64::from(db.cfg.instance_bucket_hours) * 3_600_000_000).to_string()),
        ("instance_shards", db.cfg.instance_shards.to_string()),
    ];
    let mut got = BTreeMap::new();
    for (name, value) in wanted {
        if db.cfg.create_schema {
            db.cas(
                "INSERT INTO settings (name, value) VALUES (?, ?) IF NOT EXISTS",
                vec![text(name), text(value.clone())],
            )
            .await?;
        }
        let rows = db.query_serial("SELECT value FROM settings WHERE name = ?", vec![text(name)]).await?;
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
