//! The CQL ceiling of `bench claims`: the cheapest conditional update of one row in CQL, a
//! lightweight transaction `UPDATE t SET used = ? WHERE id = ? IF used = ?` (Paxos, at the
//! store URL's serial consistency), through the scylla driver (the client the CQL backend
//! uses), one session shared by the W tasks, over T rows `{used, total}` of a scratch
//! keyspace. CQL has no conditional increment, so each task remembers the last `used` it
//! saw per row; a transaction that is not applied returns the current value, and the task
//! retries with it (each retry is part of the same operation, as the backend's claim
//! retries are part of its claim). Afterwards the rows' `used` must sum to the successful
//! operations. The scratch keyspace is dropped afterwards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Context, Result, bail};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::{CqlValue, Row};
use unicell::store::StoreUrl;
use unicell::store::cql::CqlConfig;

use super::workload::{Outcome, Workload, measure};
use crate::candidate::{Candidate, run_url};
use crate::progress;

fn backend_err(e: impl std::error::Error + Send + Sync + 'static) -> unicell::Error {
    unicell::Error::backend("cql-ceiling", e)
}

/// Measures the ceiling (see the module docs).
pub async fn run(cand: &Candidate, w: &Workload, tag: &str) -> Result<Outcome> {
    let url = run_url(cand, &format!("{tag}_x"), None)?;
    let parsed = StoreUrl::parse(&url)?;
    let cfg = CqlConfig::parse(&parsed)?;
    let mut builder = SessionBuilder::new()
        .known_nodes(&cfg.hosts)
        .connection_timeout(cfg.connect_timeout)
        .fetch_schema_metadata(false);
    if let Some((user, password)) = &cfg.credentials {
        builder = builder.user(user.clone(), password.clone());
    }
    let session = Arc::new(builder.build().await.with_context(|| format!("cannot connect to {parsed}"))?);
    let ks = cfg.keyspace.clone();
    session
        .query_unpaged(format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}", cfg.replication.cql()), &[])
        .await
        .context("create the ceiling's keyspace")?;
    let result = measure_in(&session, &ks, &cfg, w).await;
    if let Err(e) = session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[]).await {
        tracing::warn!("could not drop the ceiling's keyspace: {e}");
    }
    result
}

async fn measure_in(session: &Arc<Session>, ks: &str, cfg: &CqlConfig, w: &Workload) -> Result<Outcome> {
    session
        .query_unpaged(
            format!("CREATE TABLE IF NOT EXISTS {ks}.ceiling (id int PRIMARY KEY, used bigint, total bigint)"),
            &[],
        )
        .await
        .context("create the ceiling's table")?;
    let total = (w.claims / w.trees + 1) as i64 * 2;
    let mut insert = session
        .prepare(format!("INSERT INTO {ks}.ceiling (id, used, total) VALUES (?, 0, ?)"))
        .await
        .context("prepare the ceiling's insert")?;
    insert.set_consistency(cfg.consistency);
    for id in 0..w.trees as i32 {
        session.execute_unpaged(&insert, (id, total)).await.context("fill the ceiling's table")?;
    }
    let mut update = session
        .prepare(format!("UPDATE {ks}.ceiling SET used = ? WHERE id = ? IF used = ?"))
        .await
        .context("prepare the ceiling's update")?;
    update.set_consistency(cfg.consistency);
    update.set_serial_consistency(Some(cfg.serial_consistency));
    let update = Arc::new(update);
    // What each row's `used` was last seen to be (shared: a stale guess only costs a retry).
    let seen: Arc<Mutex<HashMap<i32, i64>>> = Arc::new(Mutex::new(HashMap::new()));
    let bar = progress::bar("ceiling cql", w.claims as u64);
    let (s, u, seen2) = (Arc::clone(session), Arc::clone(&update), Arc::clone(&seen));
    let out = measure(
        "UPDATE ... SET used = ? IF used = ? (lightweight transaction, scylla driver)".into(),
        w,
        bar,
        move |tree| {
            let (s, u, seen) = (Arc::clone(&s), Arc::clone(&u), Arc::clone(&seen2));
            async move {
                let id = tree as i32;
                let mut guess = seen.lock().unwrap_or_else(|e| e.into_inner()).get(&id).copied().unwrap_or(0);
                for _ in 0..1000 {
                    if guess + 1 > total {
                        return Err(unicell::Error::backend("ceiling", "the ceiling's row is full"));
                    }
                    let r = s.execute_unpaged(&u, (guess + 1, id, guess)).await.map_err(backend_err)?;
                    let rows = r.into_rows_result().map_err(backend_err)?;
                    let columns: Vec<String> = rows.column_specs().iter().map(|c| c.name().to_string()).collect();
                    let row: Option<Row> =
                        rows.rows::<Row>().map_err(backend_err)?.next().transpose().map_err(backend_err)?;
                    let col = |name: &str| {
                        let i = columns.iter().position(|c| c == name)?;
                        row.as_ref()?.columns.get(i)?.clone()
                    };
                    if matches!(col("[applied]"), Some(CqlValue::Boolean(true))) {
                        seen.lock().unwrap_or_else(|e| e.into_inner()).insert(id, guess + 1);
                        return Ok(());
                    }
                    guess = match col("used") {
                        Some(CqlValue::BigInt(v)) => v,
                        _ => return Err(unicell::Error::backend("cql-ceiling", "a refused update returned no used")),
                    };
                    seen.lock().unwrap_or_else(|e| e.into_inner()).insert(id, guess);
                }
                Err(unicell::Error::backend("ceiling", "1000 lightweight transactions lost in a row"))
            }
        },
    )
    .await?;
    let mut select = session
        .prepare(format!("SELECT used FROM {ks}.ceiling WHERE id = ?"))
        .await
        .context("prepare the ceiling's read")?;
    select.set_consistency(scylla::statement::Consistency::Serial);
    let mut sum = 0i64;
    for id in 0..w.trees as i32 {
        let r = session.execute_unpaged(&select, (id,)).await.context("read the ceiling's rows back")?;
        let rows = r.into_rows_result().context("read the ceiling's rows back")?;
        let (used,): (Option<i64>,) = rows.single_row().context("read the ceiling's rows back")?;
        sum += used.unwrap_or(0);
    }
    if sum != out.ok as i64 {
        bail!(Measurement, "the CQL ceiling reported {} applied transactions but its rows sum to {sum}", out.ok);
    }
    Ok(out)
}
