//! `unicell bench failover`: losing a Redis Cluster master under load.
//!
//! Each run starts a fresh replicated Redis Cluster from the installed binaries (three
//! masters, one replica each, `cluster-node-timeout` `--node-timeout-ms`), then runs the
//! library's failover experiment ([`unicell::testkit::failover`]): `--workers` tasks claim
//! and release on `--trees` trees spread over every master; one master is killed with
//! SIGKILL; its replica is promoted; the old master is restarted and rejoins as a replica;
//! the load goes on; every acknowledged claim and release is checked against the store and
//! the trees are audited. Each run is repeated for every `--wait-replicas` value (the store
//! URL option: 0 acknowledges on the master's word, 1 waits for a replica with Redis `WAIT`).
//!
//! Figures per run: SIGKILL -> promotion, promotion -> the first claim acknowledged on the
//! failed shard, promotion -> the old master resynced, acknowledged claims lost, claims/s
//! before the kill and after the cluster is whole again, the audit. The benchmark fails
//! (after writing its report) if an audit is not clean or if a run with `wait_replicas` > 0
//! lost an acknowledged claim.
//!
//! `--stores` is not used: the cluster is the benchmark's own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use unicell::testkit::failover::{FailoverConfig, FailoverReport};
use unicell::testkit::redis_server::RedisCluster;

use crate::error::{Context, Result, bail};
use crate::report::{self, Report};
use crate::stats::Table;
use crate::{Common, knob};

/// Options of `unicell bench failover`.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// Common options (`stores` is ignored).
    pub common: Common,
    /// Runs per `wait_replicas` value [default: 3; quick: 1].
    pub runs: Option<usize>,
    /// Provider trees [default: 48; quick: 12].
    pub trees: Option<usize>,
    /// Concurrent claiming tasks [default: 32; quick: 8].
    pub workers: Option<usize>,
    /// Load before the kill, ms [default: 4000; quick: 1500].
    pub before_ms: Option<u64>,
    /// Load after the cluster is whole again, ms [default: 4000; quick: 1500].
    pub after_ms: Option<u64>,
    /// `cluster-node-timeout` of the nodes, ms.
    pub node_timeout_ms: u64,
    /// `wait_replicas` values to compare [default: 0,1].
    pub wait_replicas: Vec<u32>,
}

#[derive(Debug, Serialize)]
struct Params {
    runs: usize,
    trees: usize,
    workers: usize,
    before_ms: u64,
    after_ms: u64,
    node_timeout_ms: u64,
    wait_replicas: Vec<u32>,
    masters: usize,
    replicas_per_master: usize,
    seed: u64,
    quick: bool,
}

#[derive(Debug, Serialize)]
struct Run {
    run: usize,
    load_average: String,
    #[serde(flatten)]
    report: FailoverReport,
}

#[derive(Debug, Serialize)]
struct Summary {
    wait_replicas: u32,
    runs: usize,
    promotion_ms_median: f64,
    resume_ms_median: Option<f64>,
    resynced_ms_median: f64,
    claims_acknowledged: u64,
    lost_claims: u64,
    unindexed_claims: u64,
    resurrected_releases: u64,
    claims_per_s_before_median: f64,
    claims_per_s_after_median: f64,
    audits_clean: bool,
}

#[derive(Debug, Serialize)]
struct Results {
    runs: Vec<Run>,
    summary: Vec<Summary>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the benchmark.
pub async fn run(a: FailoverOptions) -> Result<()> {
    let quick = a.common.quick;
    let runs = knob(a.runs, quick, 1, 3);
    let trees = knob(a.trees, quick, 12, 48);
    let workers = knob(a.workers, quick, 8, 32);
    let before_ms = knob(a.before_ms, quick, 1500, 4000);
    let after_ms = knob(a.after_ms, quick, 1500, 4000);
    let waits = if a.wait_replicas.is_empty() { vec![0, 1] } else { a.wait_replicas.clone() };
    if runs == 0 || trees == 0 || workers == 0 || a.node_timeout_ms == 0 {
        bail!(Invalid, "--runs, --trees, --workers and --node-timeout-ms must be at least 1");
    }
    if waits.iter().any(|&w| w > 1) {
        bail!(Invalid, "--wait-replicas values must be 0 or 1: the cluster has one replica per master");
    }
    let env = report::Environment::capture();
    let mut notes = vec![format!("load average at start: {}", loadavg())];
    if !a.common.stores.is_empty() {
        notes.push("--stores ignored: the benchmark starts its own replicated Redis Cluster".into());
    }
    println!(
        "bench failover: 3 masters + 3 replicas, cluster-node-timeout {} ms, {trees} trees, {workers} workers, \
         {before_ms} ms before the kill, {after_ms} ms after the resync, wait_replicas {waits:?}, {runs} run(s) each",
        a.node_timeout_ms
    );
    let mut all = Vec::new();
    // Every cluster is started alike, so the first one's settings are the report's.
    let mut durability: Vec<crate::candidate::CandidateDurability> = Vec::new();
    for run in 1..=runs {
        for &wait in &waits {
            let cluster = tokio::task::spawn_blocking({
                let timeout = Duration::from_millis(a.node_timeout_ms);
                move || RedisCluster::start_replicated(3, 1, timeout)
            })
            .await
            .context("cluster start task")?
            .context("starting a replicated Redis Cluster")?;
            let cfg = FailoverConfig {
                trees,
                workers,
                before: Duration::from_millis(before_ms),
                after: Duration::from_millis(after_ms),
                wait_replicas: wait,
                kill: run - 1,
                seed: a.common.seed.wrapping_add(run as u64),
                ..FailoverConfig::default()
            };
            if durability.is_empty() {
                let d = crate::durability::read(&cluster.url(), &[], None).await;
                println!("  durability: redis-cluster 3+3: {}", d.summary);
                durability.push(crate::candidate::CandidateDurability {
                    candidate: "redis-cluster 3+3".into(),
                    durability: d,
                    servers_started: 6,
                    cell_servers: 0,
                });
            }
            let load_average = loadavg();
            let cluster = Arc::new(Mutex::new(cluster));
            let report = unicell::testkit::failover::run(cluster.clone(), &cfg)
                .await
                .with_context(|| format!("run {run} with wait_replicas={wait}"))?;
            // Stop the servers off the runtime's threads (dropping kills and waits).
            let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
            println!(
                "  run {run} wait_replicas={wait}: promotion {:.0} ms, resume {} after it, resync {:.0} ms; \
                 {} acked, {} lost, {} calls hung; {:.0} -> {:.0} claims/s; {} (load {load_average})",
                report.promotion_ms,
                report.resume_ms.map(|m| format!("{m:.0} ms")).unwrap_or_else(|| "never".into()),
                report.resynced_ms,
                report.claims_acknowledged,
                report.lost_claims,
                report.hung_calls,
                report.claims_per_s_before,
                report.claims_per_s_after,
                if report.audit_clean { "audit clean" } else { "AUDIT FAILED" },
            );
            all.push(Run { run, load_average, report });
        }
    }
    let summary: Vec<Summary> = waits
        .iter()
        .map(|&w| {
            let rs: Vec<&FailoverReport> = all.iter().map(|r| &r.report).filter(|r| r.wait_replicas == w).collect();
            let resumes: Vec<f64> = rs.iter().filter_map(|r| r.resume_ms).collect();
            Summary {
                wait_replicas: w,
                runs: rs.len(),
                promotion_ms_median: median(rs.iter().map(|r| r.promotion_ms).collect()),
                resume_ms_median: (resumes.len() == rs.len() && !resumes.is_empty()).then(|| median(resumes)),
                resynced_ms_median: median(rs.iter().map(|r| r.resynced_ms).collect()),
                claims_acknowledged: rs.iter().map(|r| r.claims_acknowledged).sum(),
                lost_claims: rs.iter().map(|r| r.lost_claims).sum(),
                unindexed_claims: rs.iter().map(|r| r.unindexed_claims).sum(),
                resurrected_releases: rs.iter().map(|r| r.resurrected_releases).sum(),
                claims_per_s_before_median: median(rs.iter().map(|r| r.claims_per_s_before).collect()),
                claims_per_s_after_median: median(rs.iter().map(|r| r.claims_per_s_after).collect()),
                audits_clean: rs.iter().all(|r| r.audit_clean),
            }
        })
        .collect();
    let mut table = Table::new([
        "wait_replicas",
        "runs",
        "kill->promotion",
        "promotion->resume",
        "promotion->resync",
        "acked claims",
        "lost",
        "unindexed",
        "releases undone",
        "claims/s before",
        "claims/s after",
        "audit",
    ]);
    for s in &summary {
        table.row([
            s.wait_replicas.to_string(),
            s.runs.to_string(),
            format!("{:.0} ms", s.promotion_ms_median),
            s.resume_ms_median.map(|m| format!("{m:.0} ms")).unwrap_or_else(|| "never (some run)".into()),
            format!("{:.0} ms", s.resynced_ms_median),
            s.claims_acknowledged.to_string(),
            s.lost_claims.to_string(),
            s.unindexed_claims.to_string(),
            s.resurrected_releases.to_string(),
            format!("{:.0}", s.claims_per_s_before_median),
            format!("{:.0}", s.claims_per_s_after_median),
            if s.audits_clean { "clean".into() } else { "FAILED".to_string() },
        ]);
    }
    println!("\nmedians over the runs (counts are sums):\n{}", table.render());
    notes.push(format!("load average at the end: {}", loadavg()));
    let failed: Vec<String> = summary
        .iter()
        .filter(|s| {
            !s.audits_clean
                || (s.wait_replicas > 0 && (s.lost_claims + s.unindexed_claims + s.resurrected_releases) > 0)
        })
        .map(|s| format!("wait_replicas={}: audit clean {}, {} lost", s.wait_replicas, s.audits_clean, s.lost_claims))
        .collect();
    let report = Report {
        bench: "failover",
        parameters: Params {
            runs,
            trees,
            workers,
            before_ms,
            after_ms,
            node_timeout_ms: a.node_timeout_ms,
            wait_replicas: waits,
            masters: 3,
            replicas_per_master: 1,
            seed: a.common.seed,
            quick,
        },
        environment: env,
        durability,
        results: Results { runs: all, summary },
        notes,
    };
    let json = report::write_json(&a.common.out, "failover", &report)?;
    println!("\nwrote {}", json.display());
    if !failed.is_empty() {
        bail!(Failed, "failover: {}", failed.join("; "));
    }
    Ok(())
}
