//! `unicell bench claims`: raw claim throughput per backend beside the backend's own
//! ceiling, measured in the same run with the same concurrency.
//!
//! Workload: T provider trees (a root with VCPU and MEMORY_MB, sized so that no claim ever
//! fails for capacity), W concurrent tasks, K claims in total, each by a fresh consumer for
//! 1 VCPU + 64 MEMORY_MB on the tree chosen by a seeded hash of the claim's number. T = 1
//! puts every claim on one tiny tree (pure contention); large T spreads them.
//!
//! Ceiling, one definition for every backend: the cheapest conditional update of one key
//! or row through the backend's native client, by the same W tasks over T keys with the
//! same operation -> key mapping: "if used + 1 <= total then used += 1".
//! * memory: a per-key mutex around `(used, total)`;
//! * Redis: EVALSHA of a minimal check-and-increment script (redis-rs), see
//!   [`redis_ceiling`];
//! * SQL (mysql://, postgres://): `UPDATE ... SET used = used + 1 WHERE id = ? AND used + 1
//!   <= total`, autocommit (sqlx), on the API database's server;
//! * CQL: `UPDATE ... SET used = ? WHERE id = ? IF used = ?` (the scylla driver).
//!
//! Each ceiling checks afterwards that its keys hold exactly its successful updates. The
//! reported ratio is claims/s through unicell's full claim path divided by ceiling ops/s.
//! SQL candidates get an API pool of W connections (`pool_size`, unless the URL sets it),
//! as many as the ceiling uses.

#[cfg(feature = "cql")]
mod cql_ceiling;
#[cfg(feature = "redis")]
mod redis_ceiling;
#[cfg(feature = "sql")]
mod sql_ceiling;
pub mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Context, Result, bail};
use serde::Serialize;
use unicell::Error;
use unicell::model::*;
use unicell::store::prelude::*;

use self::workload::measure;
pub use self::workload::{Outcome, Workload};
use crate::candidate::{self, Candidate, candidates, open_store, run_tag, run_url};
use crate::chart::{self, Bar};
use crate::report::{self, print_outputs};
use crate::stats::{Table, fmt_ms, fmt_ratio, ratio};
use crate::{Common, knob, progress};

/// Options of `unicell bench claims` (`None`: the quick or the full default).
#[derive(Debug, Clone)]
pub struct ClaimsOptions {
    /// Common options.
    pub common: Common,
    /// Claims to make per candidate (and ceiling operations) [default: 100000; quick: 3000].
    pub claims: Option<usize>,
    /// Concurrent claiming tasks [default: 50; quick: 16].
    pub tasks: Option<usize>,
    /// Provider trees claims are spread over (1 = everyone on one tiny tree)
    /// [default: 1000; quick: 50].
    pub trees: Option<usize>,
}

#[derive(Debug, Serialize)]
struct Row {
    candidate: String,
    claims: Outcome,
    ceiling: Option<Outcome>,
    ceiling_unavailable: Option<String>,
    /// Backend claims/s divided by ceiling ops/s.
    ratio_to_ceiling: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Params {
    workload: Workload,
    quick: bool,
    candidates: Vec<String>,
}

/// Runs the benchmark.
pub async fn run(global_store: &str, a: ClaimsOptions) -> Result<()> {
    let quick = a.common.quick;
    let w = Workload {
        claims: knob(a.claims, quick, 3_000, 100_000),
        tasks: knob(a.tasks, quick, 16, 50),
        trees: knob(a.trees, quick, 50, 1_000),
        seed: a.common.seed,
    };
    if w.claims == 0 || w.tasks == 0 || w.trees == 0 {
        bail!(Invalid, "--claims, --tasks and --trees must each be at least 1");
    }
    let cands = candidates(global_store, &a.common)?;
    let env = report::Environment::capture();
    let tag = run_tag();
    println!(
        "bench claims: {} claims, {} tasks, {} trees, {} candidate(s), {} build",
        w.claims,
        w.tasks,
        w.trees,
        cands.len(),
        env.build
    );
    let mut rows = Vec::new();
    for (i, cand) in cands.iter().enumerate() {
        let mut url = run_url(cand, &format!("{tag}_c{i}"), Some(1))?;
        if cand.is_sql() {
            url = candidate::with_param(&url, "pool_size", &w.tasks.clamp(1, 64).to_string())?;
        }
        let store = open_store(&url).await?;
        let claims = store_claims(&store, cand, &w, &format!("{tag}-{i}"))
            .await
            .with_context(|| format!("claims on {}", cand.label))?;
        drop(store);
        candidate::cleanup(cand, &url).await;
        let (ceiling, unavailable) = match ceiling(cand, &w, &tag).await {
            Ok(c) => (Some(c), None),
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::warn!(candidate = %cand.label, "no ceiling: {msg}");
                (None, Some(msg))
            }
        };
        let r = ceiling.as_ref().and_then(|c| ratio(claims.per_second, c.per_second));
        println!(
            "  {:<40} {:>10.0} claims/s (p50 {} ms){}",
            cand.label,
            claims.per_second,
            fmt_ms(claims.latency.p50_ms),
            match &ceiling {
                Some(c) => format!("; ceiling {:.0} ops/s: {}", c.per_second, c.what),
                None => "; no ceiling".to_string(),
            }
        );
        rows.push(Row {
            candidate: cand.label.clone(),
            claims,
            ceiling,
            ceiling_unavailable: unavailable,
            ratio_to_ceiling: r,
        });
    }

    let mut t = Table::new([
        "candidate",
        "claims/s",
        "p50 ms",
        "p99 ms",
        "ok",
        "failed",
        "ceiling ops/s",
        "ceiling",
        "durability",
    ]);
    for (r, cand) in rows.iter().zip(&cands) {
        t.row([
            r.candidate.clone(),
            format!("{:.0}", r.claims.per_second),
            fmt_ms(r.claims.latency.p50_ms),
            fmt_ms(r.claims.latency.p99_ms),
            r.claims.ok.to_string(),
            (r.claims.ops - r.claims.ok).to_string(),
            r.ceiling.as_ref().map_or("-".into(), |c| format!("{:.0}", c.per_second)),
            r.ceiling.as_ref().map_or_else(
                || {
                    let why = r.ceiling_unavailable.clone().unwrap_or_default();
                    let short: String = why.chars().take(60).collect();
                    if short.len() < why.len() { format!("none: {short}...") } else { format!("none: {short}") }
                },
                |c| c.what.clone(),
            ),
            cand.durability.summary.clone(),
        ]);
    }
    println!("\nclaim throughput\n{}", t.render());
    let mut t = Table::new(["candidate", "claims/s / ceiling ops/s"]);
    for r in &rows {
        t.row([r.candidate.clone(), fmt_ratio(r.ratio_to_ceiling)]);
    }
    println!("\nratios (backend through unicell / the backend's own ceiling)\n{}", t.render());

    let mut bars = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        bars.push(Bar {
            label: format!("{} claims", short(&r.candidate)),
            value: r.claims.per_second,
            color: i,
            light: false,
        });
        if let Some(c) = &r.ceiling {
            bars.push(Bar {
                label: format!("{} ceiling", short(&r.candidate)),
                value: c.per_second,
                color: i,
                light: true,
            });
        }
    }
    let notes = vec![
        "Ceiling (one definition for every backend): the cheapest conditional update of one key \
         or row, 'if used + 1 <= total then used += 1', through the backend's native client, by \
         the same tasks over the same number of keys: memory = a per-key mutex; Redis = EVALSHA \
         of a minimal check-and-increment Lua script (redis-rs, one multiplexed connection); SQL = \
         UPDATE ... WHERE id = ? AND used + 1 <= total, autocommit (sqlx, one connection per \
         task); CQL = UPDATE ... IF used = ? (lightweight transaction, scylla driver). Ratio = \
         claims/s through unicell's full claim path / ceiling ops/s."
            .to_string(),
        "Each claim is a fresh consumer taking 1 VCPU + 64 MEMORY_MB on one root provider; \
         trees are sized so that no claim fails for capacity. The ceiling runs the same \
         number of operations with the same concurrency over the same number of keys."
            .to_string(),
    ];
    let rep = report::Report {
        bench: "claims",
        parameters: Params { workload: w, quick, candidates: cands.iter().map(|c| c.label.clone()).collect() },
        environment: env,
        durability: candidate::durabilities(&cands),
        results: rows,
        notes,
    };
    let json = report::write_json(&a.common.out, "claims", &rep)?;
    let svg = chart::bars(
        &a.common.out,
        "claims",
        &format!("bench claims: {} claims, {} tasks, {} trees", w.claims, w.tasks, w.trees),
        "operations per second (log)",
        &bars,
        true,
    )?;
    chart::footer(&svg, &candidate::durability_lines(&cands))?;
    print_outputs(&json, &svg);
    Ok(())
}

fn short(label: &str) -> String {
    label.split("://").next().unwrap_or(label).to_string()
}

/// Creates the workload's trees in `store` and makes the claims; returns the outcome.
async fn store_claims(store: &Arc<dyn Store>, cand: &Candidate, w: &Workload, tag: &str) -> Result<Outcome> {
    let per_tree = (w.claims / w.trees + 1) as i64 * 2;
    let cell = CellId::new_v4();
    store.put_cell(&Cell { id: cell, name: format!("claims-{tag}"), disabled: false }).await.context("put_cell")?;
    let bar = progress::bar(&format!("trees {}", short(&cand.label)), w.trees as u64);
    let mut roots = Vec::with_capacity(w.trees);
    for t in 0..w.trees {
        let id = ProviderId::new_v4();
        store
            .create_provider(&NewProvider {
                id,
                name: format!("claims-{tag}-{t}"),
                parent: None,
                cell: Some(cell),
                inventories: BTreeMap::from([
                    (ResourceClass::Vcpu, Inventory::with_total(per_tree.max(1))),
                    (ResourceClass::MemoryMb, Inventory::with_total((per_tree * 64).max(1))),
                ]),
                traits: Default::default(),
                aggregates: Default::default(),
            })
            .await
            .context("create_provider")?;
        roots.push(id);
        progress::inc(&bar, 1);
    }
    drop(bar);
    let roots = Arc::new(roots);
    let bar = progress::bar(&format!("claims {}", short(&cand.label)), w.claims as u64);
    let store = Arc::clone(store);
    measure(format!("{} claim", cand.scheme), w, bar, move |tree| {
        let store = Arc::clone(&store);
        let root = roots[tree];
        async move {
            let req = ClaimRequest {
                consumer: ConsumerId::new_v4(),
                project_id: "bench".into(),
                user_id: "bench".into(),
                allocations: BTreeMap::from([(
                    root,
                    BTreeMap::from([(ResourceClass::Vcpu, 1), (ResourceClass::MemoryMb, 64)]),
                )]),
                group: None,
            };
            store.claim(&req).await.map(|_| ())
        }
    })
    .await
}

/// The backend's own ceiling for `cand`, with the same workload.
async fn ceiling(cand: &Candidate, w: &Workload, tag: &str) -> Result<Outcome> {
    match cand.scheme.backend() {
        "memory" => memory_ceiling(w).await,
        "redis" => redis_ceiling(cand, w, tag).await,
        "sql" => sql_ceiling(cand, w, tag).await,
        "cql" => cql_ceiling(cand, w, tag).await,
        _ => bail!(Measurement, "no ceiling is defined for {}:// stores", cand.scheme),
    }
}

/// CQL's ceiling: a lightweight-transaction update loop (see [`cql_ceiling`]).
#[cfg(feature = "cql")]
async fn cql_ceiling(cand: &Candidate, w: &Workload, tag: &str) -> Result<Outcome> {
    cql_ceiling::run(cand, w, tag).await
}

#[cfg(not(feature = "cql"))]
async fn cql_ceiling(_cand: &Candidate, _w: &Workload, _tag: &str) -> Result<Outcome> {
    bail!(Measurement, "this build has no `cql` feature")
}

/// Memory's ceiling: a per-key mutex around `(used, total)`.
async fn memory_ceiling(w: &Workload) -> Result<Outcome> {
    let total = (w.claims / w.trees + 1) as i64 * 2;
    let keys: Arc<Vec<std::sync::Mutex<i64>>> = Arc::new((0..w.trees).map(|_| std::sync::Mutex::new(0)).collect());
    let bar = progress::bar("ceiling memory", w.claims as u64);
    let k = Arc::clone(&keys);
    let out = measure("per-key mutex: if used + 1 <= total then used += 1".into(), w, bar, move |tree| {
        let keys = Arc::clone(&k);
        async move {
            let mut used = keys[tree].lock().unwrap_or_else(|e| e.into_inner());
            if *used + 1 > total {
                return Err(Error::backend("ceiling", "the ceiling's key is full"));
            }
            *used += 1;
            Ok(())
        }
    })
    .await?;
    let sum: i64 = keys.iter().map(|m| *m.lock().unwrap_or_else(|e| e.into_inner())).sum();
    if sum != out.ok as i64 {
        bail!(Measurement, "the memory ceiling reported {} updates but its keys sum to {sum}", out.ok);
    }
    Ok(out)
}

/// Redis's ceiling: EVALSHA of a check-and-increment script (see [`redis_ceiling`]).
#[cfg(feature = "redis")]
async fn redis_ceiling(cand: &Candidate, w: &Workload, tag: &str) -> Result<Outcome> {
    redis_ceiling::run(cand, w, tag).await
}

#[cfg(not(feature = "redis"))]
async fn redis_ceiling(_cand: &Candidate, _w: &Workload, _tag: &str) -> Result<Outcome> {
    bail!(Measurement, "this build has no `redis` feature")
}

/// SQL's ceiling: a conditional single-row UPDATE loop (see [`sql_ceiling`]).
#[cfg(feature = "sql")]
async fn sql_ceiling(cand: &Candidate, w: &Workload, tag: &str) -> Result<Outcome> {
    sql_ceiling::run(cand, w, tag).await
}

#[cfg(not(feature = "sql"))]
async fn sql_ceiling(_cand: &Candidate, _w: &Workload, _tag: &str) -> Result<Outcome> {
    bail!(Measurement, "this build has no `sql` feature")
}
