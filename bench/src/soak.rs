//! `unicell bench soak`: a long run of claims and releases, then a full audit.
//!
//! For each candidate store, in a fresh namespace: `--trees` provider trees (a root with
//! VCPU and MEMORY_MB), then `--schedulers` concurrent tasks (8 by default, as 8 schedulers
//! would) make `--ops` claims and releases in total: each task claims for fresh consumers
//! on trees of its own seeded choice and releases its oldest claim once it holds
//! `--hold`, so the trees stay partly full and claims keep meeting existing allocations.
//! A progress bar counts the operations. At the end every remaining claim is released and
//! the whole namespace is audited ([`unicell::store::audit`], scope: everything): nothing
//! over capacity, usage equal to the allocations, and, all claims released, no allocation
//! left. A retryable error is counted and the call repeated (claims and releases are
//! idempotent); any other error fails the run.
//!
//! Figures: operations per second over the run, claim and release latency (p50, p99, max),
//! retryable errors, claims refused for capacity, the audit.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use unicell::Error;
use unicell::model::*;
use unicell::store::audit::{AuditScope, audit};
use unicell::store::prelude::*;

use crate::candidate::{self, candidates, open_store, run_tag, run_url};
use crate::error::{Context, Result, bail};
use crate::report::{self, Report};
use crate::stats::{Latency, Summary, Table, fmt_ms};
use crate::{Common, knob, progress};

/// Options of `unicell bench soak`.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Common options.
    pub common: Common,
    /// Claims plus releases per candidate [default: 10000000; quick: 20000].
    pub ops: Option<u64>,
    /// Concurrent schedulers (tasks) [default: 8].
    pub schedulers: usize,
    /// Provider trees [default: 1000; quick: 50].
    pub trees: Option<usize>,
    /// Claims each scheduler holds before it releases its oldest [default: 64].
    pub hold: usize,
}

#[derive(Debug, Serialize)]
struct Params {
    ops: u64,
    schedulers: usize,
    trees: usize,
    hold: usize,
    seed: u64,
    quick: bool,
    candidates: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Row {
    candidate: String,
    ops: u64,
    claims: u64,
    releases: u64,
    seconds: f64,
    ops_per_second: f64,
    claim_latency: Summary,
    release_latency: Summary,
    retryable_errors: u64,
    refused_for_capacity: u64,
    audit: String,
    audit_clean: bool,
    allocations_left: usize,
    load_average_end: String,
}

#[derive(Default)]
struct TaskOutcome {
    claims: u64,
    releases: u64,
    retryable: u64,
    refused: u64,
    claim_latency: Latency,
    release_latency: Latency,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the benchmark.
pub async fn run(global_store: &str, a: SoakOptions) -> Result<()> {
    let quick = a.common.quick;
    let ops = knob(a.ops, quick, 20_000, 10_000_000);
    let trees = knob(a.trees, quick, 50, 1_000);
    if ops == 0 || trees == 0 || a.schedulers == 0 || a.hold == 0 {
        bail!(Invalid, "--ops, --trees, --schedulers and --hold must each be at least 1");
    }
    let cands = candidates(global_store, &a.common)?;
    let env = report::Environment::capture();
    let tag = run_tag();
    println!(
        "bench soak: {ops} claims and releases, {} schedulers, {trees} trees, hold {}, {} candidate(s), {} build",
        a.schedulers,
        a.hold,
        cands.len(),
        env.build
    );
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for (i, cand) in cands.iter().enumerate() {
        let url = run_url(cand, &format!("{tag}_s{i}"), Some(1))?;
        let store = open_store(&url).await?;
        let row = soak(&store, &cand.label, &a, ops, trees, i as u64).await;
        drop(store);
        candidate::cleanup(cand, &url).await;
        let row = row.with_context(|| format!("soak on {}", cand.label))?;
        println!(
            "  {:<40} {:>10.0} ops/s over {:.0} s; claim p50 {} p99 {}; {} retryable errors; {}",
            row.candidate,
            row.ops_per_second,
            row.seconds,
            fmt_ms(row.claim_latency.p50_ms),
            fmt_ms(row.claim_latency.p99_ms),
            row.retryable_errors,
            row.audit
        );
        if !row.audit_clean || row.allocations_left > 0 {
            failed.push(format!("{}: {} ({} allocations left)", row.candidate, row.audit, row.allocations_left));
        }
        rows.push(row);
    }
    let mut t = Table::new([
        "candidate",
        "ops",
        "seconds",
        "ops/s",
        "claim p50",
        "claim p99",
        "release p50",
        "retryable",
        "audit",
        "load (end)",
    ]);
    for r in &rows {
        t.row([
            r.candidate.clone(),
            r.ops.to_string(),
            format!("{:.0}", r.seconds),
            format!("{:.0}", r.ops_per_second),
            fmt_ms(r.claim_latency.p50_ms),
            fmt_ms(r.claim_latency.p99_ms),
            fmt_ms(r.release_latency.p50_ms),
            r.retryable_errors.to_string(),
            if r.audit_clean && r.allocations_left == 0 { "clean".into() } else { "FAILED".to_string() },
            r.load_average_end.clone(),
        ]);
    }
    println!("\n{}", t.render());
    let report = Report {
        bench: "soak",
        parameters: Params {
            ops,
            schedulers: a.schedulers,
            trees,
            hold: a.hold,
            seed: a.common.seed,
            quick,
            candidates: cands.iter().map(|c| c.label.clone()).collect(),
        },
        environment: env,
        durability: candidate::durabilities(&cands),
        results: rows,
        notes: vec![format!("load average at the end: {}", loadavg())],
    };
    let json = report::write_json(&a.common.out, "soak", &report)?;
    println!("\nwrote {}", json.display());
    if !failed.is_empty() {
        bail!(Failed, "soak: {}", failed.join("; "));
    }
    Ok(())
}

async fn soak(store: &Arc<dyn Store>, label: &str, a: &SoakOptions, ops: u64, trees: usize, salt: u64) -> Result<Row> {
    let mut roots = Vec::with_capacity(trees);
    let name = uuid::Uuid::new_v4().simple().to_string();
    for t in 0..trees {
        let id = ProviderId::new_v4();
        store
            .create_provider(&NewProvider {
                id,
                name: format!("soak-{}-{t}", &name[..8]),
                parent: None,
                cell: None,
                inventories: BTreeMap::from([
                    (ResourceClass::Vcpu, Inventory::with_total(64)),
                    (ResourceClass::MemoryMb, Inventory::with_total(128 * 1024)),
                ]),
                traits: BTreeSet::new(),
                aggregates: BTreeSet::new(),
            })
            .await?;
        roots.push(id);
    }
    let roots = Arc::new(roots);
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress::bar(&format!("soak {label}"), ops);
    let start = Instant::now();
    let tasks: Vec<_> = (0..a.schedulers)
        .map(|s| {
            let (store, roots, done, bar) = (store.clone(), roots.clone(), done.clone(), bar.clone());
            let hold = a.hold;
            let seed = a.common.seed ^ (salt << 32) ^ s as u64;
            tokio::spawn(async move { scheduler(store, roots, done, bar, ops, hold, seed).await })
        })
        .collect();
    let mut total = TaskOutcome::default();
    for t in tasks {
        let o = t.await.context("soak task")??;
        total.claims += o.claims;
        total.releases += o.releases;
        total.retryable += o.retryable;
        total.refused += o.refused;
        total.claim_latency.merge(&o.claim_latency);
        total.release_latency.merge(&o.release_latency);
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(bar);
    let report = audit(&**store, &AuditScope::everything()).await?;
    let done_ops = total.claims + total.releases;
    Ok(Row {
        candidate: label.to_string(),
        ops: done_ops,
        claims: total.claims,
        releases: total.releases,
        seconds,
        ops_per_second: if seconds > 0.0 { done_ops as f64 / seconds } else { 0.0 },
        claim_latency: total.claim_latency.summary(),
        release_latency: total.release_latency.summary(),
        retryable_errors: total.retryable,
        refused_for_capacity: total.refused,
        audit_clean: report.is_clean(),
        allocations_left: report.allocations,
        audit: report.to_string(),
        load_average_end: loadavg(),
    })
}

/// Repeats `f` while it fails retryably (up to a minute), counting the failures.
async fn retrying<T, F, Fut>(retryable: &mut u64, f: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                *retryable += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            r => return Ok(r?),
        }
    }
}

async fn scheduler(
    store: Arc<dyn Store>,
    roots: Arc<Vec<ProviderId>>,
    done: Arc<AtomicU64>,
    bar: tracing::Span,
    ops: u64,
    hold: usize,
    seed: u64,
) -> Result<TaskOutcome> {
    let mut out = TaskOutcome::default();
    let mut held: VecDeque<ConsumerId> = VecDeque::new();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    const STEP: u64 = 256;
    let mut pending = 0u64;
    loop {
        // Take a ticket; past the total, stop (and release what is held below).
        if done.fetch_add(1, Ordering::Relaxed) >= ops {
            break;
        }
        pending += 1;
        if pending == STEP {
            progress::inc(&bar, pending);
            pending = 0;
        }
        if held.len() >= hold {
            let Some(c) = held.pop_front() else { continue };
            let t = Instant::now();
            retrying(&mut out.retryable, || store.release(c)).await?;
            out.release_latency.record(t.elapsed());
            out.releases += 1;
            continue;
        }
        let c = ConsumerId::new_v4();
        let root = roots[(next() % roots.len() as u64) as usize];
        let mut r = Resources::new();
        r.insert(ResourceClass::Vcpu, 1 + (next() % 2) as i64);
        r.insert(ResourceClass::MemoryMb, 512 * (1 + (next() % 4) as i64));
        let req = ClaimRequest {
            consumer: c,
            project_id: "p-soak".into(),
            user_id: "u-soak".into(),
            allocations: AllocationMap::from([(root, r)]),
            group: None,
        };
        let t = Instant::now();
        match retrying(&mut out.retryable, || store.claim(&req)).await {
            Ok(_) => {
                out.claim_latency.record(t.elapsed());
                out.claims += 1;
                held.push_back(c);
            }
            Err(crate::Error::Store(Error::Capacity { .. })) => out.refused += 1,
            Err(e) => return Err(e),
        }
    }
    progress::inc(&bar, pending);
    while let Some(c) = held.pop_front() {
        retrying(&mut out.retryable, || store.release(c)).await?;
    }
    Ok(out)
}
