//! `unicell bench schedule`: H hosts (each a tree with NUMA and SR-IOV children) over C
//! cells, R build requests from S concurrent schedulers (each with its own conductor and
//! snapshot; nothing shared but the store), through the conductor and the simulated compute
//! with injected build failures. Figures: placements per second (instances ACTIVE per
//! second of the build phase, every one durably claimed in the store), claim conflicts,
//! reschedules, NoValidHost, request latency; then a full audit (no provider over capacity,
//! usage equal to the sum of allocations, every ACTIVE instance holds its claim and no
//! ERROR instance holds one).

use anyhow::{Result, bail};
use serde::Serialize;

use super::{candidates, knob, print_outputs, run_tag, run_url};
use crate::cli::args::ScheduleArgs;
use crate::cli::audit::{Audit, audit};
use crate::cli::build::{self, BuildReport, BuildSetup, RequestMix};
use crate::cli::chart::{self, Panel, Series};
use crate::cli::cloud::{Cloud, CloudSpec};
use crate::cli::stats::{Table, fmt_ms, fmt_ratio, ratio};
use crate::cli::{open_store, report};

/// Nomad's C1M run placed 3,750 containers per second durably (DESIGN.md section 7).
pub const NOMAD_C1M_PER_SECOND: f64 = 3_750.0;

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
    build: BuildReport,
    audit: Audit,
    /// placements/s over the best candidate's.
    placements_vs_best: Option<f64>,
    /// placements/s over Nomad's 3,750/s.
    placements_vs_nomad_c1m: Option<f64>,
}

/// Runs the benchmark.
pub async fn run(global_store: &str, a: ScheduleArgs) -> Result<()> {
    let quick = a.common.quick;
    let hosts = knob(a.hosts, quick, 100, 5_000);
    let cells = knob(a.cells, quick, 2, 4);
    let requests = knob(a.requests, quick, 400, 20_000);
    let schedulers = knob(a.schedulers, quick, 2, 4);
    if hosts == 0 || cells == 0 || requests == 0 || schedulers == 0 {
        bail!("--hosts, --cells, --requests and --schedulers must each be at least 1");
    }
    if !(0.0..=1.0).contains(&a.failure_rate) {
        bail!("--failure-rate must be between 0 and 1, got {}", a.failure_rate);
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
    let cloud = Cloud::generate(spec.clone())?;
    let mut rows = Vec::new();
    for (i, cand) in cands.iter().enumerate() {
        let url = run_url(cand, &format!("{tag}_s{i}"), Some(cells))?;
        let store = open_store(&url).await?;
        let t = std::time::Instant::now();
        cloud.load(&store, 16).await?;
        let load_seconds = t.elapsed().as_secs_f64();
        let reqs = build::requests(&cloud, &mix)?;
        let b = build::run(&store, reqs, &setup, cand.scheme.name()).await?;
        let au = audit(&store, &b.active_ids, &b.failed_ids).await?;
        println!(
            "  {:<40} {} ACTIVE, {} ERROR in {:.2} s: {:.0} placements/s; {} claim conflicts, \
             {} reschedules; {}",
            cand.label,
            b.active,
            b.failed,
            b.seconds,
            b.placements_per_second,
            b.claim_conflicts,
            b.reschedules,
            if au.ok() { "audit OK" } else { "AUDIT FAILED" }
        );
        rows.push(Row {
            candidate: cand.label.clone(),
            load_seconds,
            build: b,
            audit: au,
            placements_vs_best: None,
            placements_vs_nomad_c1m: None,
        });
        drop(store);
        super::cleanup(cand, &url).await;
    }
    let best = rows.iter().map(|r| r.build.placements_per_second).fold(0.0, f64::max);
    for r in &mut rows {
        r.placements_vs_best = ratio(r.build.placements_per_second, best);
        r.placements_vs_nomad_c1m = ratio(r.build.placements_per_second, NOMAD_C1M_PER_SECOND);
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
            r.build.active.to_string(),
            r.build.failed.to_string(),
            format!("{:.0}", r.build.placements_per_second),
            r.build.claim_conflicts.to_string(),
            r.build.reschedules.to_string(),
            r.build.no_valid_host.to_string(),
            fmt_ms(r.build.request_latency.p50_ms),
            fmt_ms(r.build.request_latency.p99_ms),
            if r.audit.ok() { "OK" } else { "FAILED" }.to_string(),
        ]);
    }
    println!("\nscheduling\n{}", t.render());
    for r in &rows {
        if !r.build.failure_reasons.is_empty() {
            println!("\n{} failures by reason:", r.candidate);
            for (reason, n) in &r.build.failure_reasons {
                println!("  {n:>6}  {reason}");
            }
        }
        if !r.audit.ok() {
            println!("\n{}: {}", r.candidate, r.audit.line());
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
            points: r.build.timeline.iter().map(|(t, n)| (*t, *n as f64)).collect(),
            color: ci,
            dashed: false,
        });
        rate.push(Series {
            name: r.candidate.clone(),
            points: build::rates(&r.build.timeline),
            color: ci,
            dashed: false,
        });
    }
    let any_failed = rows.iter().any(|r| !r.audit.ok());
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
        bail!("the audit found broken invariants (see above)");
    }
    Ok(())
}
