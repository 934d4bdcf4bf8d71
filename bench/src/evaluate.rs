//! `unicell evaluate`: the one command to evaluate datastore choices. It runs the store
//! conformance suite against every candidate, then every benchmark at the chosen size with
//! all the candidates side by side, then renders the HTML report ([`crate::page`]) from what
//! they wrote, printing where it is as it goes.
//!
//! Candidates are the URLs given, plus (with `--testcontainers`) servers started as
//! containers through testcontainers where a Docker daemon answers; where none does, each
//! requested container is reported as skipped with the reason, and the run goes on with the
//! rest. A candidate that fails conformance still runs the benchmarks (the report shows
//! both); one that cannot be reached at all is left out of the benchmarks with the reason.
//! A benchmark that fails is recorded and the next one runs: the report shows what ran.
//! `evaluate.json` records every step with its outcome and time.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result, bail};
use crate::report;
use crate::{ClaimsOptions, Common, ListOptions, ScheduleOptions, SitesOptions};

/// How big the benchmarks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// Each bench's `--quick` size: seconds per bench (CI smoke runs).
    Quick,
    /// Minutes in all on a small machine: enough to rank candidates.
    Small,
    /// Each bench's default size (the figures bench/README.md reports).
    Full,
}

impl std::str::FromStr for Size {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quick" => Ok(Size::Quick),
            "small" => Ok(Size::Small),
            "full" => Ok(Size::Full),
            other => Err(Error::Invalid(format!("--size {other:?}: expected quick, small or full"))),
        }
    }
}

/// The benchmarks `evaluate` runs, in order.
pub const BENCHES: [&str; 4] = ["claims", "list", "schedule", "sites"];

/// The servers `--testcontainers` can start.
pub const CONTAINERS: [&str; 4] = ["redis", "postgres", "mariadb", "scylla"];

/// Options of `unicell evaluate`.
#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    /// Candidate store URLs (none: the global store).
    pub stores: Vec<String>,
    /// Servers to start as containers (names from [`CONTAINERS`]).
    pub testcontainers: Vec<String>,
    /// How big the benchmarks run.
    pub size: Size,
    /// Only these benchmarks (names from [`BENCHES`]); empty: all.
    pub benches: Vec<String>,
    /// Skip the conformance suite.
    pub no_conformance: bool,
    /// Directory for every report, the chart files and `report.html`.
    pub out: PathBuf,
    /// Seed of the data generator.
    pub seed: u64,
}

/// One step of the evaluation and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What ran (`conformance <store>`, `bench list`, `container redis`, `report`).
    pub step: String,
    /// `ok`, `failed` (ran and found something wrong), `error` (could not run) or `skipped`.
    pub status: &'static str,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Why, for anything but `ok` (passwords masked).
    pub detail: Option<String>,
}

#[derive(Debug, Serialize)]
struct Params {
    candidates: Vec<String>,
    testcontainers: Vec<String>,
    size: Size,
    benches: Vec<String>,
    seed: u64,
}

#[derive(Debug, Serialize)]
struct Results<'a> {
    steps: &'a [Step],
}

/// Containers kept alive until the evaluation ends (dropping one stops it).
type Keep = Vec<Box<dyn std::any::Any + Send>>;

/// Runs the evaluation (see the module documentation). `Ok(true)` when every step that ran
/// passed (skipped containers are reported, not failures); `Ok(false)` when a conformance
/// case or a bench failed or could not run, after the report was written.
pub async fn run(global_store: &str, o: EvaluateOptions) -> Result<bool> {
    for b in &o.benches {
        if !BENCHES.contains(&b.as_str()) {
            bail!(Invalid, "--benches: unknown bench {b:?} (expected one of {})", BENCHES.join(", "));
        }
    }
    for c in &o.testcontainers {
        if !CONTAINERS.contains(&c.as_str()) {
            bail!(Invalid, "--testcontainers: unknown server {c:?} (expected one of {})", CONTAINERS.join(", "));
        }
    }
    let env = report::Environment::capture();
    std::fs::create_dir_all(&o.out).map_err(|e| Error::Step {
        context: format!("cannot create output directory {}", o.out.display()),
        source: Box::new(e),
    })?;
    let mut steps: Vec<Step> = Vec::new();
    let mut stores: Vec<String> = if o.stores.is_empty() {
        vec![global_store.to_string()]
    } else {
        o.stores.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    };
    for s in &stores {
        crate::candidate::check_candidate(s)?;
    }
    let benches: Vec<&str> =
        BENCHES.iter().copied().filter(|b| o.benches.is_empty() || o.benches.iter().any(|x| x == b)).collect();
    let total = o.testcontainers.len() + usize::from(!o.no_conformance) + benches.len() + 1;
    let mut n = 0;
    let mut announce = |what: &str| {
        n += 1;
        println!("\n=== evaluate [{n}/{total}] {what}");
    };

    // 1. Containers.
    let mut keep: Keep = Vec::new();
    for c in &o.testcontainers {
        announce(&format!("start {c} through testcontainers"));
        let t = Instant::now();
        match containers::start(c).await {
            Ok((url, container)) => {
                println!("{c}: {}", report::redact_text(&url));
                steps.push(step(format!("container {c}"), "ok", t, None));
                stores.push(url);
                keep.push(container);
            }
            Err(why) => {
                println!("{c}: skipped: {why}");
                steps.push(step(format!("container {c}"), "skipped", t, Some(why)));
            }
        }
    }
    let labels: Vec<String> = stores.iter().map(|s| report::redact_text(s)).collect();
    println!("candidates: {}", labels.join(", "));

    // 2. Conformance, store by store; a store that cannot be reached leaves the benches.
    if !o.no_conformance {
        announce("conformance suite on every candidate");
        let env = report::Environment::capture();
        let mut outcomes = Vec::new();
        let mut reachable = Vec::new();
        for url in &stores {
            let t = Instant::now();
            let label = report::redact_text(url);
            match conformance_of(global_store, url, o.seed).await {
                Ok(outcome) => {
                    let status = if outcome.all_passed() { "ok" } else { "failed" };
                    let detail = (!outcome.all_passed())
                        .then(|| format!("{} of {} cases failed", outcome.failed, outcome.total));
                    steps.push(step(format!("conformance {label}"), status, t, detail));
                    outcomes.push(outcome);
                    reachable.push(url.clone());
                }
                Err(e) => {
                    let why = report::redact_text(&e.to_string());
                    println!("conformance {label}: {why}; left out of the benches");
                    steps.push(step(format!("conformance {label}"), "error", t, Some(why)));
                }
            }
        }
        if !outcomes.is_empty() {
            crate::conformance::write(&o.out, None, env, &outcomes)?;
        }
        stores = reachable;
    }

    // 3. The benches, all candidates side by side.
    let common = Common { stores: stores.clone(), out: o.out.clone(), quick: o.size == Size::Quick, seed: o.seed };
    for b in &benches {
        announce(&format!("bench {b} ({:?} size)", o.size));
        let t = Instant::now();
        if stores.is_empty() {
            steps.push(step(format!("bench {b}"), "skipped", t, Some("no reachable candidate".into())));
            continue;
        }
        let outcome = match *b {
            "claims" => crate::claims::run(global_store, claims_options(&common, o.size)).await,
            "list" => crate::list::run(global_store, list_options(&common, o.size)).await,
            "schedule" => crate::schedule::run(global_store, schedule_options(&common, o.size)).await,
            "sites" => crate::sites::run(global_store, sites_options(&common, o.size)).await,
            other => Err(Error::Invalid(format!("unknown bench {other}"))),
        };
        match outcome {
            Ok(()) => steps.push(step(format!("bench {b}"), "ok", t, None)),
            Err(e @ Error::Failed(_)) => {
                let why = report::redact_text(&e.to_string());
                println!("bench {b} found something wrong: {why}");
                steps.push(step(format!("bench {b}"), "failed", t, Some(why)));
            }
            Err(e) => {
                let why = report::redact_text(&format!("{e}{}", source_chain(&e)));
                println!("bench {b} could not run: {why}");
                steps.push(step(format!("bench {b}"), "error", t, Some(why)));
            }
        }
    }

    // 4. The record of this evaluation, then the page (which includes it).
    announce("report");
    let t = Instant::now();
    let notes =
        vec![format!("Sizes: quick = each bench's --quick; small = {}; full = each bench's defaults.", SMALL_SIZES)];
    let write_record = |steps: &[Step]| {
        report::write_json(
            &o.out,
            "evaluate",
            &report::Report {
                bench: "evaluate",
                parameters: Params {
                    candidates: labels.clone(),
                    testcontainers: o.testcontainers.clone(),
                    size: o.size,
                    benches: benches.iter().map(|b| b.to_string()).collect(),
                    seed: o.seed,
                },
                environment: env.clone(),
                durability: Vec::new(),
                results: Results { steps },
                notes: notes.clone(),
            },
        )
    };
    write_record(&steps)?;
    let written = crate::page::write(&o.out, None)?;
    steps.push(step("report".into(), "ok", t, None));
    write_record(&steps)?;
    // Render once more so that the page's evaluate section shows the report step too.
    let written = crate::page::write(&o.out, Some(&written.path))?;
    drop(keep);
    let not_ok: Vec<&Step> = steps.iter().filter(|s| s.status != "ok").collect();
    println!("\n=== evaluate done: {} steps, {} not ok", steps.len(), not_ok.len());
    for s in &not_ok {
        println!("  {} {}: {}", s.status, s.step, s.detail.as_deref().unwrap_or(""));
    }
    println!("report: {}", written.path.display());
    Ok(not_ok.iter().all(|s| s.status == "skipped"))
}

fn step(name: String, status: &'static str, t: Instant, detail: Option<String>) -> Step {
    Step { step: name, status, seconds: t.elapsed().as_secs_f64(), detail }
}

fn source_chain(e: &Error) -> String {
    let mut out = String::new();
    let mut s = std::error::Error::source(e);
    while let Some(x) = s {
        out.push_str(&format!(": {x}"));
        s = x.source();
    }
    out
}

/// The conformance suite on one candidate, as the benches will see it: a `testkit:` server
/// or `cell_servers=` layout is started for the suite and stopped after it (each bench then
/// starts its own), and the suite runs in a namespace of its own (Redis key prefix, CQL
/// keyspace, SQL databases), removed afterwards, so that it neither sees nor leaves data
/// on a shared server. The outcome is labelled with the candidate as given.
async fn conformance_of(global_store: &str, text: &str, seed: u64) -> Result<crate::conformance::StoreOutcome> {
    let common = Common { stores: vec![text.to_string()], out: PathBuf::new(), quick: true, seed };
    let cands = crate::candidate::candidates(global_store, &common)?;
    let Some(cand) = cands.first() else {
        bail!(Invalid, "no candidate in {text:?}");
    };
    let url = crate::candidate::run_url(cand, &format!("conf{}", crate::candidate::run_tag()), None)?;
    let outcome = crate::conformance::run_suite(&url, None).await;
    crate::candidate::cleanup(cand, &url).await;
    let mut outcome = outcome?;
    outcome.candidate = cand.label.clone();
    Ok(outcome)
}

/// What `small` means, for the report's notes.
const SMALL_SIZES: &str = "claims 20000 claims by 50 tasks over 1000 trees; list 20000 instances over 1, 4 and 16 cells; \
     schedule 1000 hosts, 4000 requests, sweep 1000 and 5000 hosts, fill 200 hosts; \
     sites 5000 instances, 1 and 2 sites, 0, 2 and 10 ms";

fn claims_options(common: &Common, size: Size) -> ClaimsOptions {
    let small = size == Size::Small;
    ClaimsOptions {
        common: common.clone(),
        claims: small.then_some(20_000),
        tasks: small.then_some(50),
        trees: small.then_some(1000),
    }
}

fn list_options(common: &Common, size: Size) -> ListOptions {
    let small = size == Size::Small;
    ListOptions {
        workloads: Vec::new(),
        common: common.clone(),
        instances: small.then_some(20_000),
        cells: if small { vec![1, 4, 16] } else { Vec::new() },
        limit: None,
        load_concurrency: 32,
        depth_buckets: 10,
    }
}

fn schedule_options(common: &Common, size: Size) -> ScheduleOptions {
    let small = size == Size::Small;
    ScheduleOptions {
        common: common.clone(),
        hosts: small.then_some(1000),
        cells: None,
        requests: small.then_some(4000),
        schedulers: None,
        alternates: 2,
        failure_rate: 0.02,
        builds_per_scheduler: 8,
        tasks_per_scheduler: None,
        indexed_candidates: None,
        sweep: if small { vec![1000, 5000] } else { Vec::new() },
        no_quality: false,
        fill_hosts: small.then_some(200),
        redis_aof: false,
        claim_batch: 0,
        write_batch: 0,
        // evaluate runs every store (memory, Redis, CQL, SQL); the Nova design is SQL only.
        designs: Vec::new(),
    }
}

fn sites_options(common: &Common, size: Size) -> SitesOptions {
    let small = size == Size::Small;
    SitesOptions {
        common: common.clone(),
        sites: if small { vec![1, 2] } else { Vec::new() },
        delays_ms: if small { vec![0.0, 2.0, 10.0] } else { Vec::new() },
        cells: None,
        instances: small.then_some(5000),
        limit: None,
        pages: None,
        claims: None,
    }
}

/// Whether a Docker daemon answers on `DOCKER_HOST` (a `unix://` socket) or
/// `/var/run/docker.sock`: testcontainers would otherwise fail slowly, or hang.
pub fn docker_answers() -> std::result::Result<(), String> {
    use std::io::{Read, Write};
    let sock = match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => h.trim_start_matches("unix://").to_string(),
        Ok(h) if !h.is_empty() => return Ok(()), // tcp:// and friends: let testcontainers try
        _ => "/var/run/docker.sock".to_string(),
    };
    let mut s = std::os::unix::net::UnixStream::connect(&sock)
        .map_err(|e| format!("no Docker daemon answers at {sock} (DOCKER_HOST unset or unix): {e}"))?;
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(3)));
    s.write_all(b"GET /_ping HTTP/1.0\r\n\r\n").map_err(|e| format!("Docker daemon at {sock}: {e}"))?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    if buf.contains("OK") { Ok(()) } else { Err(format!("Docker daemon at {sock} did not answer /_ping")) }
}

#[cfg(feature = "testcontainers")]
mod containers {
    use testcontainers_modules::testcontainers::ImageExt;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;

    use super::docker_answers;

    /// Starts `kind` as a container; returns its store URL and the container (stopped when
    /// dropped), or why it could not.
    pub async fn start(kind: &str) -> Result<(String, Box<dyn std::any::Any + Send>), String> {
        docker_answers()?;
        let fail = |e: &dyn std::fmt::Display| format!("testcontainers could not start {kind}: {e}");
        match kind {
            "redis" => {
                // Durable as the issue asks of Redis candidates: append-only file, fsync every second.
                let c = testcontainers_modules::redis::Redis::default()
                    .with_cmd(["redis-server", "--appendonly", "yes", "--appendfsync", "everysec"])
                    .start()
                    .await
                    .map_err(|e| fail(&e))?;
                let port = c.get_host_port_ipv4(6379).await.map_err(|e| fail(&e))?;
                Ok((format!("redis://127.0.0.1:{port}"), Box::new(c)))
            }
            "postgres" => {
                let c = testcontainers_modules::postgres::Postgres::default()
                    .with_host_auth()
                    .start()
                    .await
                    .map_err(|e| fail(&e))?;
                let port = c.get_host_port_ipv4(5432).await.map_err(|e| fail(&e))?;
                Ok((format!("postgres://postgres@127.0.0.1:{port}/unicell"), Box::new(c)))
            }
            "mariadb" => {
                let c = testcontainers_modules::mariadb::Mariadb::default().start().await.map_err(|e| fail(&e))?;
                let port = c.get_host_port_ipv4(3306).await.map_err(|e| fail(&e))?;
                Ok((format!("mysql://root@127.0.0.1:{port}/unicell"), Box::new(c)))
            }
            "scylla" => {
                let c = testcontainers_modules::scylladb::ScyllaDB::default()
                    .with_cmd(["--smp", "1", "--memory", "1G", "--overprovisioned", "1", "--developer-mode", "1"])
                    .start()
                    .await
                    .map_err(|e| fail(&e))?;
                let port = c.get_host_port_ipv4(9042).await.map_err(|e| fail(&e))?;
                Ok((format!("scylla://127.0.0.1:{port}/unicell_eval"), Box::new(c)))
            }
            other => Err(format!("unknown server {other}")),
        }
    }
}

#[cfg(not(feature = "testcontainers"))]
mod containers {
    /// Without the `testcontainers` feature nothing can be started; says so (after saying
    /// whether a Docker daemon would have answered, the likelier reason on most machines).
    pub async fn start(kind: &str) -> Result<(String, Box<dyn std::any::Any + Send>), String> {
        super::docker_answers()?;
        Err(format!("this build has no `testcontainers` feature, so {kind} cannot be started"))
    }
}
