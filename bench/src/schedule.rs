//! `unicell bench schedule`: H hosts (each a tree with NUMA and SR-IOV children) over C
//! cells, R build requests from S concurrent schedulers (each with its own conductor and
//! snapshot; nothing shared but the store), through the conductor and the simulated compute
//! with injected build failures. Figures: placements per second (instances ACTIVE per
//! second of the build phase, every one durably claimed in the store), claim conflicts,
//! reschedules, NoValidHost, request latency; then a full audit (no provider over capacity,
//! usage equal to the sum of allocations, every ACTIVE instance holds its claim and no
//! ERROR instance holds one).

use crate::error::{Result, bail};
use serde::Serialize;
use unicell::sim::{BuildReport, BuildSetup, Cloud, CloudSpec, RequestMix, driver, requests};
use unicell::store::audit::{AuditReport, AuditScope, audit};

use crate::candidate::{self, candidates, open_store, run_tag, run_url};
use crate::chart::{self, Panel, Series};
use crate::progress::Bars;
use crate::report::{self, print_outputs};
use crate::stats::{Latency, Summary, Table, fmt_ms, fmt_ratio, ratio};
use crate::{Common, knob};

/// HashiCorp Nomad's "C1M" challenge scheduled one million containers at about 3,750
/// placements per second, each durably recorded: the reference rate of a production
/// scheduler this benchmark compares against.
pub const NOMAD_C1M_PER_SECOND: f64 = 3_750.0;

/// Options of `unicell bench schedule` (`None`: the quick or the full default).
#[derive(Debug, Clone)]
pub struct ScheduleOptions {
    /// Common options.
    pub common: Common,
    /// Compute hosts (each a tree with NUMA and SR-IOV children) [default: 5000; quick: 100].
    pub hosts: Option<usize>,
    /// Cells the hosts are spread over [default: 4; quick: 2].
    pub cells: Option<usize>,
    /// Build requests (one instance each) [default: 20000; quick: 400].
    pub requests: Option<usize>,
    /// Concurrent schedulers (each with its own conductor and snapshot) [default: 4; quick: 2].
    pub schedulers: Option<usize>,
    /// Alternates asked for per instance.
    pub alternates: u32,
    /// Probability that the simulated compute fails a build (reschedulable).
    pub failure_rate: f64,
    /// Builds each scheduler's conductor runs at once.
    pub builds_per_scheduler: usize,
}

/// A build run's figures as reports show them: the driver's counts and timeline with the
/// request latency summarized.
#[derive(Debug, Serialize)]
pub struct BuildFigures {
    /// What the driver counted.
    #[serde(flatten)]
    pub report: BuildReport,
    /// Per-request latency (schedule + claim + build + state writes).
    pub request_latency: Summary,
}

impl From<BuildReport> for BuildFigures {
    fn from(report: BuildReport) -> Self {
        let request_latency = Latency::of(&report.request_latencies).summary();
        BuildFigures { report, request_latency }
    }
}

/// Placements per second in windows of a build timeline (for charts): (window end, rate).
pub fn rates(timeline: &[(f64, u64)]) -> Vec<(f64, f64)> {
    let total = timeline.last().map_or(0.0, |t| t.0);
    let window = (total / 20.0).max(0.05);
    let mut out = Vec::new();
    let mut start = timeline.first().copied().unwrap_or((0.0, 0));
    for &(t, n) in timeline {
        if t - start.0 >= window {
            out.push((t, (n - start.1) as f64 / (t - start.0)));
            start = (t, n);
        }
    }
    out
}

#[derive(Debug, Serialize)]
struct Params {
    cloud: CloudSpec,
    mix: RequestMix,
    setup: BuildSetup,
    quick: bool,
    candidates: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Row {
    candidate: String,
    load_seconds: f64,
    build: BuildFigures,
    audit: AuditReport,
    /// placements/s over the best candidate's.
    placements_vs_best: Option<f64>,
    /// placements/s over Nomad's 3,750/s.
    placements_vs_nomad_c1m: Option<f64>,
}

/// Runs the benchmark.
pub async fn run(global_store: &str, a: ScheduleOptions) -> Result<()> {
    let quick = a.common.quick;
    let hosts = knob(a.hosts, quick, 100, 5_000);
    let cells = knob(a.cells, quick, 2, 4);
    let requests = knob(a.requests, quick, 400, 20_000);
    let schedulers = knob(a.schedulers, quick, 2, 4);
    if hosts == 0 || cells == 0 || requests == 0 || schedulers == 0 {
        bail!(Invalid, "--hosts, --cells, --requests and --schedulers must each be at least 1");
    }
    if !(0.0..=1.0).contains(&a.failure_rate) {
        bail!(Invalid, "--failure-rate must be between 0 and 1, got {}", a.failure_rate);
    }
    let cands = candidates(global_store, &a.common)?;
    let env = report::Environment::capture();
    let tag = run_tag();
    let spec = CloudSpec::new(cells, hosts, a.common.seed);
    let mix = RequestMix { requests, multi_share: 0.0, group_share: 0.05, az_share: 0.2, seed: a.common.seed };
    let setup = BuildSetup {
        schedulers,
        builds_per_scheduler: a.builds_per_scheduler,
        alternates: a.alternates,
        failure_rate: a.failure_rate,
        reschedulable_share: 0.9,
        host_subset_size: 4,
        seed: a.common.seed,
    };
    println!(
        "bench schedule: {hosts} hosts in {cells} cells, {requests} requests, {schedulers} \
         schedulers, {} alternates, build failure rate {}, {} candidate(s), {} build",
        a.alternates,
        a.failure_rate,
        cands.len(),
        env.build
    );
    let mut rows = Vec::new();
    for (i, cand) in cands.iter().enumerate() {
        let url = run_url(cand, &format!("{tag}_s{i}"), Some(cells))?;
        let store = open_store(&url).await?;
        let t = std::time::Instant::now();
        // The same seed writes the same cloud into every candidate.
        let cloud = Cloud::generate(store.clone(), &spec, 16, &Bars).await?;
        let load_seconds = t.elapsed().as_secs_f64();
        let reqs = requests::generate(&cloud, &mix)?;
        let b = driver::run(&store, reqs, &setup, cand.scheme.name(), &Bars).await?;
        let au = audit(&*store, &AuditScope::everything()).await?;
        let b = BuildFigures::from(b);
        println!(
            "  {:<40} {} ACTIVE, {} ERROR in {:.2} s: {:.0} placements/s; {} claim conflicts, \
             {} reschedules; {}",
            cand.label,
            b.report.active,
            b.report.failed,
            b.report.seconds,
            b.report.placements_per_second,
            b.report.claim_conflicts,
            b.report.reschedules,
            if au.is_clean() { "audit OK" } else { "AUDIT FAILED" }
        );
        rows.push(Row {
            candidate: cand.label.clone(),
            load_seconds,
            build: b,
            audit: au,
            placements_vs_best: None,
            placements_vs_nomad_c1m: None,
        });
        drop(cloud);
        drop(store);
        candidate::cleanup(cand, &url).await;
    }
    let best = rows.iter().map(|r| r.build.report.placements_per_second).fold(0.0, f64::max);
    for r in &mut rows {
        r.placements_vs_best = ratio(r.build.report.placements_per_second, best);
        r.placements_vs_nomad_c1m = ratio(r.build.report.placements_per_second, NOMAD_C1M_PER_SECOND);
    }

    let mut t = Table::new([
        "candidate",
        "ACTIVE",
        "ERROR",
        "placements/s",
        "conflicts",
        "reschedules",
        "NoValidHost",
        "req p50 ms",
        "req p99 ms",
        "audit",
    ]);
    for r in &rows {
        t.row([
            r.candidate.clone(),
            r.build.report.active.to_string(),
            r.build.report.failed.to_string(),
            format!("{:.0}", r.build.report.placements_per_second),
            r.build.report.claim_conflicts.to_string(),
            r.build.report.reschedules.to_string(),
            r.build.report.no_valid_host.to_string(),
            fmt_ms(r.build.request_latency.p50_ms),
            fmt_ms(r.build.request_latency.p99_ms),
            if r.audit.is_clean() { "OK" } else { "FAILED" }.to_string(),
        ]);
    }
    println!("\nscheduling\n{}", t.render());
    for r in &rows {
        if !r.build.report.failure_reasons.is_empty() {
            println!("\n{} failures by reason:", r.candidate);
            for (reason, n) in &r.build.report.failure_reasons {
                println!("  {n:>6}  {reason}");
            }
        }
        if !r.audit.is_clean() {
            println!("\n{}: {}", r.candidate, r.audit);
        }
    }
    let mut t = Table::new(["candidate", "placements/s / best", "placements/s / Nomad C1M 3750/s"]);
    for r in &rows {
        t.row([r.candidate.clone(), fmt_ratio(r.placements_vs_best), fmt_ratio(r.placements_vs_nomad_c1m)]);
    }
    println!("\nratios\n{}", t.render());

    let mut cumulative = Vec::new();
    let mut rate = Vec::new();
    for (ci, r) in rows.iter().enumerate() {
        cumulative.push(Series {
            name: r.candidate.clone(),
            points: r.build.report.timeline.iter().map(|(t, n)| (*t, *n as f64)).collect(),
            color: ci,
            dashed: false,
        });
        rate.push(Series {
            name: r.candidate.clone(),
            points: rates(&r.build.report.timeline),
            color: ci,
            dashed: false,
        });
    }
    let any_failed = rows.iter().any(|r| !r.audit.is_clean());
    let rep = report::Report {
        bench: "schedule",
        parameters: Params {
            cloud: spec,
            mix,
            setup,
            quick,
            candidates: cands.iter().map(|c| c.label.clone()).collect(),
        },
        environment: env,
        results: &rows,
        notes: vec![
            "placements/s counts instances that ended ACTIVE (claimed in the store, built on the \
             simulated compute, state written) per second of the build phase; scheduler start \
             (snapshot load) is reported separately."
                .into(),
        ],
    };
    let json = report::write_json(&a.common.out, "schedule", &rep)?;
    let svg = chart::lines(
        &a.common.out,
        "schedule",
        &format!("bench schedule: {hosts} hosts, {requests} requests, {schedulers} schedulers"),
        &[
            Panel {
                title: "instances ACTIVE over time".into(),
                x_label: "seconds".into(),
                y_label: "instances".into(),
                log_y: false,
                series: cumulative,
            },
            Panel {
                title: "placement rate".into(),
                x_label: "seconds".into(),
                y_label: "placements per second".into(),
                log_y: false,
                series: rate,
            },
        ],
    )?;
    print_outputs(&json, &svg);
    if any_failed {
        bail!(Failed, "the audit found broken invariants (see above)");
    }
    Ok(())
}
