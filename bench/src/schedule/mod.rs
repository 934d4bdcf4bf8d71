//! `unicell bench schedule`: the scheduler against its stores, and against itself.
//!
//! Per candidate store (the same seeded cloud and request stream in each): H hosts (trees
//! with NUMA and SR-IOV children) over C cells; S schedulers of one process sharing one
//! snapshot (one change-feed tailer), each serving T requests at once.
//! * **claims**: claimed placements per second, scheduler and store only (what
//!   kube-scheduler's and Nomad's figures count), claim conflicts, NoValidHost, process CPU
//!   per placement; the claims are then released;
//! * **builds**: the same stream through S conductors and the simulated compute (injected
//!   failures, reschedules): instances ACTIVE per second; then a full audit.
//!
//! Then, on the memory store: **quality** (the same stream through the indexed ranking and
//! the exhaustive one, each decision measured against an exhaustive weighing of the same
//! state: q and rank percentile; end state: spread, pack, stranded capacity), **fill to
//! failure** (a saturating stream until the first NoValidHost, indexed over exhaustive),
//! and a **sweep** over cloud sizes (CPU per placement, snapshot bytes per host). Hard
//! zeros are counted everywhere: overcommit and usage != allocations (audit), group
//! violations, wrong zone, alternates from another cell.

pub mod drive;
pub mod redis_aof;

use crate::error::{Result, bail};
use serde::Serialize;
use unicell::model::GroupPolicy;
use unicell::scheduler::RankingMode;
use unicell::sim::{BuildReport, Cloud, CloudSpec, RequestMix, requests};
use unicell::store::audit::{AuditReport, AuditScope, audit};
use unicell::store::memory::MemoryStore;
use unicell::store::prelude::*;

use self::drive::{ClaimRun, Design, EndState, SchedulerSetup};
use crate::candidate::{self, Candidate, candidates, open_store, run_tag, run_url};
use crate::chart::{self, Panel, Series};
use crate::progress::Bars;
use crate::report::{self, print_outputs};
use crate::stats::{Latency, Summary, Table, fmt_ms, fmt_ratio, ratio};
use crate::{Common, knob, list_knob};

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
    /// Schedulers of the process, sharing one snapshot [default: 4; quick: 2].
    pub schedulers: Option<usize>,
    /// Alternates asked for per instance.
    pub alternates: u32,
    /// Probability that the simulated compute fails a build (reschedulable).
    pub failure_rate: f64,
    /// Builds each scheduler's conductor runs at once.
    pub builds_per_scheduler: usize,
    /// Requests each scheduler serves at once in the claims phase [default: 32].
    pub tasks_per_scheduler: Option<usize>,
    /// `indexed_candidates` (k) of the indexed ranking [default: 16].
    pub indexed_candidates: Option<usize>,
    /// Cloud sizes of the sweep (memory store) [default: 1000,5000,20000,100000; quick:
    /// 100,400]; empty: the defaults; `0`: no sweep.
    pub sweep: Vec<usize>,
    /// Skip the quality and fill-to-failure runs.
    pub no_quality: bool,
    /// Hosts of the fill-to-failure cloud [default: 500; quick: 40].
    pub fill_hosts: Option<usize>,
    /// Claims each scheduler coalesces into one store call (0: each claim alone).
    pub claim_batch: usize,
    /// Instance writes each conductor coalesces into one store call (0: each write alone).
    pub write_batch: usize,
    /// Add a throwaway redis-server with `appendonly yes`, `appendfsync everysec` (started
    /// by the bench on a free port) as a candidate.
    pub redis_aof: bool,
    /// Scheduling designs to run on each candidate, side by side on the same cloud:
    /// `unicell` (the snapshot scheduler) and `nova` (Placement's candidate query per
    /// request, Nova's filter scheduler over the candidates, `PUT /allocations`; claims
    /// phase only, on the SQL candidates: the others run `unicell` only) [default: unicell].
    pub designs: Vec<String>,
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
    claims: SchedulerSetup,
    /// The scheduling designs run on each candidate.
    designs: Vec<Design>,
    /// Flavors left out of the stream (every design) because the Nova-faithful query
    /// cannot serve them (`--design nova`).
    flavors_left_out: Vec<String>,
    builds_per_scheduler: usize,
    failure_rate: f64,
    quick: bool,
    candidates: Vec<String>,
    fill_hosts: usize,
    sweep: Vec<usize>,
}

#[derive(Debug, Serialize)]
struct Row {
    candidate: String,
    /// How it scheduled (`unicell` or `nova`).
    design: &'static str,
    /// The candidate's durability, as read from its server(s) at the start of the run.
    durability: String,
    load_seconds: f64,
    claims: ClaimRun,
    claims_audit: AuditReport,
    /// The builds phase (unicell's design only: the conductor drives unicell's scheduler).
    build: Option<BuildFigures>,
    /// The audit after the builds phase.
    audit: Option<AuditReport>,
    end_state: EndState,
    /// claimed placements/s over Nomad's 3,750/s.
    claims_vs_nomad_c1m: Option<f64>,
}

#[derive(Debug, Serialize)]
struct QualityRow {
    ranking: &'static str,
    run: ClaimRun,
    end_state: EndState,
    audit: AuditReport,
}

#[derive(Debug, Serialize)]
struct Fill {
    hosts: usize,
    indexed_placed: u64,
    exhaustive_placed: u64,
    /// indexed over exhaustive.
    ratio: Option<f64>,
    indexed_end_state: EndState,
    exhaustive_end_state: EndState,
}

#[derive(Debug, Serialize)]
struct SweepRow {
    hosts: usize,
    run: ClaimRun,
    audit_clean: bool,
}

#[derive(Debug, Serialize)]
struct Results<'a> {
    candidates: &'a [Row],
    quality: &'a [QualityRow],
    fill_to_failure: Option<&'a Fill>,
    sweep: &'a [SweepRow],
}

/// The smallest flavor of a cloud (VCPU, MEMORY_MB, DISK_GB), for stranded capacity.
fn smallest(cloud: &Cloud) -> (i64, i64, i64) {
    cloud
        .flavors
        .iter()
        .map(|(f, _)| (f.vcpus, f.memory_mb, f.root_gb + f.ephemeral_gb))
        .min_by_key(|(c, m, _)| (*m, *c))
        .unwrap_or((1, 512, 1))
}

/// Whether the Nova-faithful scheduler's query can serve `flavor` as Placement would: one
/// unnumbered request group of classes the generated cloud keeps on its roots.
fn root_only(flavor: &unicell::model::Flavor) -> bool {
    use unicell::model::ResourceClass::{DiskGb, MemoryMb, Vcpu};
    flavor.resource_request(false).is_ok_and(|r| match r.groups.as_slice() {
        [g] => g.suffix.is_none() && g.resources.keys().all(|c| matches!(c, Vcpu | MemoryMb | DiskGb)),
        _ => false,
    })
}

fn groups(cloud: &Cloud) -> Vec<(unicell::model::GroupId, GroupPolicy, Option<u32>)> {
    cloud.groups.iter().map(|g| (g.id, g.policy, g.max_per_host)).collect()
}

/// The candidate's durability as read from its server(s) when the run started (the same
/// line every other bench prints), naming the throwaway server of `--redis-aof`.
fn durability(cand: &Candidate, aof: Option<&redis_aof::AofRedis>) -> String {
    match aof {
        Some(a) if cand.url == a.url() => {
            format!("{} (throwaway redis-server started by the bench)", cand.durability.summary)
        }
        _ => cand.durability.summary.clone(),
    }
}

/// Runs the benchmark.
pub async fn run(global_store: &str, a: ScheduleOptions) -> Result<()> {
    let quick = a.common.quick;
    let hosts = knob(a.hosts, quick, 100, 5_000);
    let cells = knob(a.cells, quick, 2, 4);
    let nreq = knob(a.requests, quick, 400, 20_000);
    let schedulers = knob(a.schedulers, quick, 2, 4);
    let tasks = knob(a.tasks_per_scheduler, quick, 8, 32);
    let k = knob(a.indexed_candidates, quick, 16, 16);
    let fill_hosts = knob(a.fill_hosts, quick, 40, 500);
    let sweep: Vec<usize> = list_knob(&a.sweep, quick, &[100, 400], &[1_000, 5_000, 20_000, 100_000])
        .into_iter()
        .filter(|h| *h > 0)
        .collect();
    if hosts == 0 || cells == 0 || nreq == 0 || schedulers == 0 || tasks == 0 || k == 0 {
        bail!(
            Invalid,
            "--hosts, --cells, --requests, --schedulers, --tasks-per-scheduler and --indexed-candidates must each \
             be at least 1"
        );
    }
    if !(0.0..=1.0).contains(&a.failure_rate) {
        bail!(Invalid, "--failure-rate must be between 0 and 1, got {}", a.failure_rate);
    }
    let mut designs = Vec::new();
    for d in if a.designs.is_empty() { vec!["unicell".to_string()] } else { a.designs.clone() } {
        let d = Design::parse(&d)?;
        if !designs.contains(&d) {
            designs.push(d);
        }
    }
    let nova = designs.contains(&Design::Nova);
    let mut common = a.common.clone();
    let aof = if a.redis_aof { Some(redis_aof::AofRedis::start().await?) } else { None };
    if let Some(server) = &aof {
        common.stores.push(server.url());
    }
    let cands = candidates(global_store, &common)?;
    // Nova's design needs Placement's tables, which only the SQL baseline keeps: it runs on
    // the SQL candidates, the others run unicell's design only (one run can still put every
    // store beside both designs).
    if nova && !cands.iter().any(|c| c.is_sql()) {
        bail!(
            Invalid,
            "--design nova needs Placement's tables, which only the SQL baseline keeps (mysql://, mariadb://, \
             postgres://); no candidate is one: {}",
            cands.iter().map(|c| c.label.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let unicell_only: Vec<&str> =
        if nova { cands.iter().filter(|c| !c.is_sql()).map(|c| c.label.as_str()).collect() } else { Vec::new() };
    if nova && !designs.contains(&Design::Unicell) && !unicell_only.is_empty() {
        bail!(
            Invalid,
            "--design nova alone runs on the SQL baseline only; add unicell to --design or leave out {}",
            unicell_only.join(", ")
        );
    }
    let env = report::Environment::capture();
    let tag = run_tag();
    let spec = CloudSpec::new(cells, hosts, a.common.seed);
    let mix = RequestMix { requests: nreq, multi_share: 0.0, group_share: 0.05, az_share: 0.2, seed: a.common.seed };
    let setup = SchedulerSetup {
        schedulers,
        tasks_per_scheduler: tasks,
        alternates: a.alternates,
        host_subset_size: 4,
        ranking: RankingMode::Indexed,
        indexed_candidates: k,
        measure_quality: false,
        stop_at_first_failure: false,
        seed: a.common.seed,
        claim_batch: a.claim_batch,
        write_batch: a.write_batch,
    };
    println!(
        "bench schedule: {hosts} hosts in {cells} cells, {nreq} requests, {schedulers} schedulers sharing one \
         snapshot ({tasks} requests each at once, k = {k}), {} alternates, build failure rate {}, {} candidate(s), {} build, \
         design(s) {}",
        a.alternates,
        a.failure_rate,
        cands.len(),
        env.build,
        designs.iter().map(|d| d.name()).collect::<Vec<_>>().join(",")
    );
    if nova {
        println!(
            "  --design nova: flavors with numbered groups or classes on child providers are left out of the \
             stream for every design (the Nova-faithful query reads root providers only)"
        );
    }
    if !unicell_only.is_empty() {
        println!("  --design nova runs on the SQL baseline only; unicell's design only on {}", unicell_only.join(", "));
    }
    let mut rows = Vec::new();
    let mut left_out: Vec<String> = Vec::new();
    for (i, cand) in cands.iter().enumerate() {
        let url = run_url(cand, &format!("{tag}_s{i}"), Some(cells))?;
        let store = open_store(&url).await?;
        let durability = durability(cand, aof.as_ref());
        let t = std::time::Instant::now();
        let mut cloud = Cloud::generate(store.clone(), &spec, 16, &Bars).await?;
        let load_seconds = t.elapsed().as_secs_f64();
        if nova {
            left_out = cloud.flavors.iter().filter(|(f, _)| !root_only(f)).map(|(f, _)| f.name.clone()).collect();
            cloud.flavors.retain(|(f, _)| root_only(f));
        }
        let reqs = requests::generate(&cloud, &mix)?;
        // Every design's claims phase on the same cloud (released after each), then the
        // builds phase of unicell's design.
        let mut phases = Vec::new();
        for &design in designs.iter().filter(|d| **d != Design::Nova || cand.is_sql()) {
            let label = format!("{} {}", cand.scheme.name(), design.name());
            let claims = drive::claims_with(design, &store, &reqs, &setup, &label, &Bars).await?;
            let claims_audit = audit(&*store, &AuditScope::default()).await?;
            let claims_end = drive::end_state(&store, smallest(&cloud), &groups(&cloud)).await?;
            drive::release(&store, &claims.consumers).await?;
            println!(
                "  {:<44} {:<8} claims: {} placed in {:.2} s = {:.0}/s ({} conflicts, {} NoValidHost, {})",
                cand.label,
                design.name(),
                claims.placed,
                claims.seconds,
                claims.placements_per_second,
                claims.claim_conflicts,
                claims.no_valid_host,
                if claims_audit.is_clean() { "audit OK" } else { "AUDIT FAILED" },
            );
            phases.push((design, claims, claims_audit, claims_end));
        }
        let mut built = None;
        if designs.contains(&Design::Unicell) {
            let b =
                drive::builds(&store, reqs, &setup, a.builds_per_scheduler, a.failure_rate, cand.scheme.name(), &Bars)
                    .await?;
            let au = audit(&*store, &AuditScope::everything()).await?;
            let b = BuildFigures::from(b);
            println!(
                "  {:<44} unicell  builds: {} ACTIVE, {} ERROR in {:.2} s = {:.0}/s; {}",
                cand.label,
                b.report.active,
                b.report.failed,
                b.report.seconds,
                b.report.placements_per_second,
                if au.is_clean() { "audit OK" } else { "AUDIT FAILED" }
            );
            built = Some((b, au));
        }
        for (design, claims, claims_audit, claims_end) in phases {
            let (build, audit) = match (design, &mut built) {
                (Design::Unicell, b) => b.take().map_or((None, None), |(b, au)| (Some(b), Some(au))),
                _ => (None, None),
            };
            rows.push(Row {
                candidate: cand.label.clone(),
                design: design.name(),
                durability: durability.clone(),
                load_seconds,
                claims_vs_nomad_c1m: ratio(claims.placements_per_second, NOMAD_C1M_PER_SECOND),
                claims,
                claims_audit,
                build,
                audit,
                end_state: claims_end,
            });
        }
        drop(cloud);
        drop(store);
        candidate::cleanup(cand, &url).await;
    }

    // Quality, fill to failure and the sweep: the scheduler against itself, on memory.
    let mut quality = Vec::new();
    let mut fill = None;
    if !a.no_quality {
        for ranking in [RankingMode::Indexed, RankingMode::Exhaustive] {
            let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(MemoryStore::new());
            let cloud = Cloud::generate(store.clone(), &spec, 16, &Bars).await?;
            let reqs = requests::generate(&cloud, &mix)?;
            let s = SchedulerSetup { ranking, measure_quality: true, ..setup };
            let name = if ranking == RankingMode::Indexed { "indexed" } else { "exhaustive" };
            let run = drive::claims(&store, &reqs, &s, &format!("quality {name}"), &Bars).await?;
            let end_state = drive::end_state(&store, smallest(&cloud), &groups(&cloud)).await?;
            let audit = audit(&*store, &AuditScope::default()).await?;
            quality.push(QualityRow { ranking: name, run, end_state, audit });
        }
        let fspec = CloudSpec::new(cells.min(fill_hosts.max(1)), fill_hosts, a.common.seed);
        let mut placed = Vec::new();
        let mut ends = Vec::new();
        for ranking in [RankingMode::Indexed, RankingMode::Exhaustive] {
            let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(MemoryStore::new());
            let cloud = Cloud::generate(store.clone(), &fspec, 16, &Bars).await?;
            // Enough requests to overflow the cloud; one at a time, so both rankings see the
            // same sequence.
            let per_host = 200;
            let fmix = RequestMix { requests: fill_hosts * per_host, ..mix };
            let reqs = requests::generate(&cloud, &fmix)?;
            let s = SchedulerSetup {
                ranking,
                schedulers: 1,
                tasks_per_scheduler: 1,
                stop_at_first_failure: true,
                alternates: 0,
                ..setup
            };
            let run = drive::claims(&store, &reqs, &s, "fill to failure", &Bars).await?;
            placed.push(run.placed);
            ends.push(drive::end_state(&store, smallest(&cloud), &groups(&cloud)).await?);
        }
        let exhaustive_end_state = ends.pop().unwrap_or_default();
        let indexed_end_state = ends.pop().unwrap_or_default();
        fill = Some(Fill {
            hosts: fill_hosts,
            indexed_placed: placed[0],
            exhaustive_placed: placed[1],
            ratio: ratio(placed[0] as f64, placed[1] as f64),
            indexed_end_state,
            exhaustive_end_state,
        });
    }
    let mut sweep_rows = Vec::new();
    for &h in &sweep {
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(MemoryStore::new());
        let sspec = CloudSpec::new(cells, h, a.common.seed);
        let cloud = Cloud::generate(store.clone(), &sspec, 16, &Bars).await?;
        let reqs = requests::generate(&cloud, &mix)?;
        let run = drive::claims(&store, &reqs, &setup, &format!("sweep {h}"), &Bars).await?;
        let audit_clean = audit(&*store, &AuditScope::default()).await?.is_clean();
        println!(
            "  sweep {h:>7} hosts: {:.0} placements/s, {} µs CPU per placement, snapshot {:.0} B/host ({} classes)",
            run.placements_per_second,
            run.cpu_us_per_placement.map_or("?".into(), |c| format!("{c:.1}")),
            run.snapshot_bytes_per_host,
            run.classes
        );
        sweep_rows.push(SweepRow { hosts: h, run, audit_clean });
    }

    let mut t = Table::new([
        "candidate",
        "design",
        "claimed/s",
        "CPU µs/pl.",
        "conflicts",
        "NoValidHost",
        "ACTIVE/s",
        "ACTIVE",
        "ERROR",
        "resched.",
        "req p50 ms",
        "req p99 ms",
        "audits",
    ]);
    for r in &rows {
        let b = |f: &dyn Fn(&BuildFigures) -> String| r.build.as_ref().map_or("–".to_string(), f);
        t.row([
            r.candidate.clone(),
            r.design.to_string(),
            format!("{:.0}", r.claims.placements_per_second),
            r.claims.cpu_us_per_placement.map_or("?".into(), |c| format!("{c:.1}")),
            r.claims.claim_conflicts.to_string(),
            r.claims.no_valid_host.to_string(),
            b(&|b| format!("{:.0}", b.report.placements_per_second)),
            b(&|b| b.report.active.to_string()),
            b(&|b| b.report.failed.to_string()),
            b(&|b| b.report.reschedules.to_string()),
            b(&|b| fmt_ms(b.request_latency.p50_ms)),
            b(&|b| fmt_ms(b.request_latency.p99_ms)),
            if r.claims_audit.is_clean() && r.audit.as_ref().is_none_or(AuditReport::is_clean) {
                "OK"
            } else {
                "FAILED"
            }
            .to_string(),
        ]);
    }
    println!(
        "\nscheduling (claimed/s: schedulers + store; ACTIVE/s: + conductors and simulated compute)\n{}",
        t.render()
    );
    for r in &rows {
        println!("  {} ({}): {}", r.candidate, r.design, r.durability);
        if let Some(b) = r.build.as_ref().filter(|b| !b.report.failure_reasons.is_empty()) {
            println!("  {} failures by reason:", r.candidate);
            for (reason, n) in &b.report.failure_reasons {
                println!("    {n:>6}  {reason}");
            }
        }
        for au in std::iter::once(&r.claims_audit).chain(r.audit.as_ref()) {
            if !au.is_clean() {
                println!("\n{}: {au}", r.candidate);
            }
        }
    }
    let mut t = Table::new([
        "candidate",
        "wrong zone",
        "alt. other cell",
        "alt. = chosen",
        "group viol.",
        "RAM std/max",
        "non-empty",
    ]);
    for r in &rows {
        t.row([
            format!("{} ({})", r.candidate, r.design),
            r.claims.wrong_zone.to_string(),
            r.claims.alternates_from_other_cell.to_string(),
            r.claims.alternate_equals_chosen.to_string(),
            r.end_state.group_violations.to_string(),
            format!("{:.3}/{:.3}", r.end_state.ram_stddev, r.end_state.ram_max),
            r.end_state.non_empty_hosts.to_string(),
        ]);
    }
    println!("\nhard zeros and end state of the claims phase\n{}", t.render());

    if !quality.is_empty() {
        let mut t = Table::new([
            "ranking",
            "decisions",
            "mean q",
            "min q",
            "q < 0.9",
            "mean pct",
            "RAM std/max",
            "VCPU std/max",
            "non-empty",
            "stranded RAM",
            "NoValidHost",
            "audit",
        ]);
        for q in &quality {
            let qs = q.run.quality.clone().unwrap_or_default();
            t.row([
                q.ranking.to_string(),
                qs.decisions.to_string(),
                format!("{:.4}", qs.mean_q),
                format!("{:.3}", qs.min_q),
                qs.below_0_9.to_string(),
                format!("{:.4}", qs.mean_percentile),
                format!("{:.3}/{:.3}", q.end_state.ram_stddev, q.end_state.ram_max),
                format!("{:.3}/{:.3}", q.end_state.vcpu_stddev, q.end_state.vcpu_max),
                q.end_state.non_empty_hosts.to_string(),
                format!("{:.4}", q.end_state.stranded_ram),
                q.run.no_valid_host.to_string(),
                if q.audit.is_clean() { "OK" } else { "FAILED" }.to_string(),
            ]);
        }
        println!(
            "\nplacement quality on memory (same stream; q against an exhaustive weighing at each decision)\n{}",
            t.render()
        );
    }
    if let Some(f) = &fill {
        println!(
            "\nfill to failure ({} hosts, one request at a time until the first NoValidHost): indexed {} / exhaustive {} = {}",
            f.hosts,
            f.indexed_placed,
            f.exhaustive_placed,
            fmt_ratio(f.ratio)
        );
    }
    if !sweep_rows.is_empty() {
        let mut t = Table::new(["hosts", "claimed/s", "CPU µs/placement", "snapshot B/host", "classes", "audit"]);
        for s in &sweep_rows {
            t.row([
                s.hosts.to_string(),
                format!("{:.0}", s.run.placements_per_second),
                s.run.cpu_us_per_placement.map_or("?".into(), |c| format!("{c:.1}")),
                format!("{:.0}", s.run.snapshot_bytes_per_host),
                s.run.classes.to_string(),
                if s.audit_clean { "OK" } else { "FAILED" }.to_string(),
            ]);
        }
        let cpus: Vec<f64> = sweep_rows.iter().filter_map(|s| s.run.cpu_us_per_placement).collect();
        let spread = match (cpus.iter().copied().reduce(f64::min), cpus.iter().copied().reduce(f64::max)) {
            (Some(lo), Some(hi)) if lo > 0.0 => format!("{:.2}x", hi / lo),
            _ => "?".into(),
        };
        println!("\nsweep on memory (CPU per placement max/min over sizes: {spread})\n{}", t.render());
    }
    let mut t = Table::new(["candidate", "claimed/s / Nomad C1M 3750/s"]);
    for r in &rows {
        t.row([format!("{} ({})", r.candidate, r.design), fmt_ratio(r.claims_vs_nomad_c1m)]);
    }
    println!("\nratios\n{}", t.render());

    let mut cumulative = Vec::new();
    let mut rate = Vec::new();
    for (ci, (r, b)) in rows.iter().filter_map(|r| Some((r, r.build.as_ref()?))).enumerate() {
        cumulative.push(Series {
            name: r.candidate.clone(),
            points: b.report.timeline.iter().map(|(t, n)| (*t, *n as f64)).collect(),
            color: ci,
            dashed: false,
        });
        rate.push(Series { name: r.candidate.clone(), points: rates(&b.report.timeline), color: ci, dashed: false });
    }
    let mut panels = vec![
        Panel {
            title: "instances ACTIVE over time".into(),
            x_label: "seconds".into(),
            y_label: "instances".into(),
            log_y: false,
            series: cumulative,
        },
        Panel {
            title: "ACTIVE rate".into(),
            x_label: "seconds".into(),
            y_label: "instances per second".into(),
            log_y: false,
            series: rate,
        },
    ];
    if !sweep_rows.is_empty() {
        panels.push(Panel {
            title: "CPU per claimed placement vs hosts (memory)".into(),
            x_label: "hosts".into(),
            y_label: "µs".into(),
            log_y: false,
            series: vec![Series {
                name: "memory".into(),
                points: sweep_rows
                    .iter()
                    .filter_map(|s| s.run.cpu_us_per_placement.map(|c| (s.hosts as f64, c)))
                    .collect(),
                color: 0,
                dashed: false,
            }],
        });
    }
    let broken =
        rows.iter().any(|r| {
            !r.claims_audit.is_clean()
                || r.audit.as_ref().is_some_and(|a| !a.is_clean())
                || r.claims.wrong_zone > 0
                || r.claims.alternates_from_other_cell > 0
                || r.claims.alternate_equals_chosen > 0
                || r.end_state.group_violations > 0
        }) || quality.iter().any(|q| !q.audit.is_clean() || q.end_state.group_violations > 0 || q.run.wrong_zone > 0)
            || sweep_rows.iter().any(|s| !s.audit_clean);
    let rep = report::Report {
        bench: "schedule",
        parameters: Params {
            cloud: spec,
            mix,
            claims: setup,
            designs: designs.clone(),
            flavors_left_out: left_out.clone(),
            builds_per_scheduler: a.builds_per_scheduler,
            failure_rate: a.failure_rate,
            quick,
            candidates: cands.iter().map(|c| c.label.clone()).collect(),
            fill_hosts,
            sweep: sweep.clone(),
        },
        environment: env,
        durability: crate::candidate::durabilities(&cands),
        results: Results { candidates: &rows, quality: &quality, fill_to_failure: fill.as_ref(), sweep: &sweep_rows },
        notes: vec![
            "claimed placements/s: instances claimed in the store by the schedulers (no conductor, no \
             instance records) per second of wall time; ACTIVE/s: instances built to ACTIVE through \
             conductors and the simulated compute. CPU per placement is the process's (a Redis or SQL \
             server's own CPU is not in it)."
                .into(),
            "design nova (--design): per request, Placement's allocation candidates as SQL on the API \
             database (root providers only), Nova's filters and weighers over those hosts, claims as \
             PUT /allocations (the store's Placement transaction, retried on generation conflicts); claims \
             phase only (the conductor drives unicell's scheduler). With it, flavors the root-only query \
             cannot serve are left out of the stream of every design (parameters.flavors_left_out)."
                .into(),
            "quality: every decision of each run is compared with an exhaustive weighing (every host that \
             passes every stage, weights normalized over all of them) of the same state: q = (w - worst) / \
             (best - worst). The exhaustive run uses host_subset_size 4 like the indexed one."
                .into(),
        ],
    };
    let json = report::write_json(&a.common.out, "schedule", &rep)?;
    let svg = chart::lines(
        &a.common.out,
        "schedule",
        &format!("bench schedule: {hosts} hosts, {nreq} requests, {schedulers} schedulers"),
        &panels,
    )?;
    chart::footer(&svg, &crate::candidate::durability_lines(&cands))?;
    print_outputs(&json, &svg);
    drop(aof);
    if broken {
        bail!(Failed, "an audit or a hard-zero check failed (see above)");
    }
    Ok(())
}
