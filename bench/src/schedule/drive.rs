//! The drivers of `bench schedule`: claimed placements (schedulers and store only) and
//! builds to ACTIVE (conductors and the simulated compute too), both with every scheduler of
//! the process on one [`SharedSnapshot`], as a unicell process runs them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use serde::Serialize;
use unicell::compute::ComputeDriver;
use unicell::conductor::{Conductor, ConductorConfig};
use unicell::model::{ConsumerId, GroupPolicy, InstanceId};
use unicell::model::{RequestSpec, Selection};
use unicell::scheduler::nova::NovaScheduler;
use unicell::scheduler::{
    QualityStats, RankingMode, ScheduleError, Scheduler, SchedulerConfig, SharedSnapshot, SnapshotConfig,
};
use unicell::sim::{BuildReport, BuildRequest, Progress, SimulatedCompute};
use unicell::store::prelude::*;

/// Period of the shared snapshot's change-feed tailer.
pub const TAIL_INTERVAL: Duration = Duration::from_millis(2);

/// How the schedulers of one run are set up.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SchedulerSetup {
    /// Schedulers of the process (one shared snapshot).
    pub schedulers: usize,
    /// Requests each scheduler serves at once.
    pub tasks_per_scheduler: usize,
    /// Alternates asked for per instance.
    pub alternates: u32,
    /// `host_subset_size` of every scheduler.
    pub host_subset_size: usize,
    /// Indexed or exhaustive ranking.
    #[serde(serialize_with = "ranking_name")]
    pub ranking: RankingMode,
    /// `indexed_candidates` (k).
    pub indexed_candidates: usize,
    /// Measure q of every decision (an exhaustive weighing each time: slow).
    pub measure_quality: bool,
    /// Stop issuing requests at the first NoValidHost (fill to failure).
    pub stop_at_first_failure: bool,
    /// Seed of the schedulers.
    pub seed: u64,
    /// Claims coalesced per store call by each scheduler (0: each claim alone).
    pub claim_batch: usize,
    /// Instance writes coalesced per store call by each conductor (0: each write alone).
    pub write_batch: usize,
}

fn ranking_name<S: serde::Serializer>(r: &RankingMode, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(match r {
        RankingMode::Indexed => "indexed",
        RankingMode::Exhaustive => "exhaustive",
    })
}

impl SchedulerSetup {
    /// The configuration of scheduler `i`.
    pub fn config(&self, i: usize) -> SchedulerConfig {
        SchedulerConfig {
            // The simulated computes send no heartbeats during a run.
            service_down_time: Duration::from_secs(24 * 3600),
            host_subset_size: self.host_subset_size.max(1),
            seed: Some(self.seed.wrapping_add(i as u64 * 7919)),
            // The tailer keeps the snapshot fresh: requests never wait for a feed read.
            min_refresh_interval: Duration::from_secs(1),
            ranking: self.ranking,
            indexed_candidates: self.indexed_candidates.max(1),
            measure_quality: self.measure_quality,
            claim_batch: self.claim_batch,
            max_placement_results: if self.ranking == RankingMode::Exhaustive { None } else { Some(1000) },
            ..SchedulerConfig::default()
        }
    }
}

/// Process CPU time (user + system) so far, from `/proc/self/stat` (`None` elsewhere).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Opens the shared snapshot of a run and its schedulers.
pub async fn schedulers(
    store: &Arc<dyn Store>,
    setup: &SchedulerSetup,
) -> Result<(Arc<SharedSnapshot>, Vec<Arc<Scheduler>>)> {
    let base = setup.config(0);
    let snap = SharedSnapshot::open(store.clone(), SnapshotConfig::from_scheduler(&base, Some(TAIL_INTERVAL)))
        .await
        .context("loading the shared snapshot")?;
    let mut out = Vec::new();
    for i in 0..setup.schedulers.max(1) {
        out.push(Arc::new(Scheduler::with_snapshot(snap.clone(), setup.config(i)).context("starting a scheduler")?));
    }
    Ok((snap, out))
}

/// What a claims run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClaimRun {
    /// Requests issued (fewer than given when stopped at the first failure).
    pub requests: usize,
    /// Instances placed (claimed in the store).
    pub placed: u64,
    /// Requests that ended in NoValidHost.
    pub no_valid_host: u64,
    /// Claims sent, and refused by the store.
    pub claims_tried: u64,
    /// See `claims_tried`.
    pub claim_conflicts: u64,
    /// Snapshot load time.
    pub load_seconds: f64,
    /// Wall time of the placements.
    pub seconds: f64,
    /// Claimed placements per second.
    pub placements_per_second: f64,
    /// Process CPU per placement, microseconds (scheduler, store client, tailer; a Redis or
    /// SQL server's own CPU is not in it).
    pub cpu_us_per_placement: Option<f64>,
    /// Hard zeros: chosen hosts outside the requested zone.
    pub wrong_zone: u64,
    /// Hard zeros: alternates from another cell than the chosen host.
    pub alternates_from_other_cell: u64,
    /// Hard zeros: a chosen host among its own alternates.
    pub alternate_equals_chosen: u64,
    /// Placement quality (when measured).
    pub quality: Option<QualityStats>,
    /// Trees the shared snapshot read again during the run (change feed, failed claims).
    pub trees_reread: u64,
    /// Trees the change feed named that the snapshot did not read: it already held the
    /// generation the feed gave (its own confirmed claims).
    pub trees_skipped: u64,
    /// Snapshot memory estimate per host, bytes.
    pub snapshot_bytes_per_host: f64,
    /// Hosts in the snapshot.
    pub hosts: usize,
    /// Host classes in the snapshot.
    pub classes: usize,
    /// Every consumer placed (not serialized).
    #[serde(skip)]
    pub consumers: Vec<ConsumerId>,
}

/// How a run schedules: unicell's snapshot scheduler, or Nova's way (Placement's candidate
/// query per request, filters and weighers over the candidates, `PUT /allocations`;
/// [`unicell::scheduler::nova`], SQL baseline only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Design {
    /// `unicell::scheduler::Scheduler`.
    Unicell,
    /// `unicell::scheduler::nova::NovaScheduler`.
    Nova,
}

impl Design {
    /// The name in options and reports.
    pub fn name(self) -> &'static str {
        match self {
            Design::Unicell => "unicell",
            Design::Nova => "nova",
        }
    }

    /// Parses `unicell` or `nova`.
    pub fn parse(s: &str) -> Result<Design> {
        match s.trim() {
            "unicell" => Ok(Design::Unicell),
            "nova" => Ok(Design::Nova),
            other => crate::error::bail!(Invalid, "--design: unknown design {other:?}; known: unicell, nova"),
        }
    }
}

/// One scheduler of a claims run, of either design.
enum Placer {
    Unicell(Arc<Scheduler>),
    Nova(Arc<NovaScheduler>),
}

impl Placer {
    async fn select(
        &self,
        spec: &RequestSpec,
        ids: &[InstanceId],
        alternates: usize,
    ) -> std::result::Result<Vec<Vec<Selection>>, ScheduleError> {
        match self {
            Placer::Unicell(s) => s.select_destinations(spec, ids, alternates).await,
            Placer::Nova(s) => s.select_destinations(spec, ids, alternates).await,
        }
    }

    /// (claims tried, claims refused).
    fn claim_counts(&self) -> (u64, u64) {
        match self {
            Placer::Unicell(s) => (s.stats().claims_tried, s.stats().claim_conflicts),
            Placer::Nova(s) => (s.stats().claims_tried, s.stats().claim_conflicts),
        }
    }
}

/// Places `reqs` with `setup.schedulers` schedulers sharing one snapshot, each serving
/// `setup.tasks_per_scheduler` requests at once; nothing but schedulers and the store.
pub async fn claims(
    store: &Arc<dyn Store>,
    reqs: &[BuildRequest],
    setup: &SchedulerSetup,
    label: &str,
    progress: &dyn Progress,
) -> Result<ClaimRun> {
    claims_with(Design::Unicell, store, reqs, setup, label, progress).await
}

/// [`claims`] with the schedulers of `design`: Nova's schedulers share nothing (each asks
/// the store per request), with the same configuration (weighers, `host_subset_size`,
/// `max_placement_results`) as unicell's.
pub async fn claims_with(
    design: Design,
    store: &Arc<dyn Store>,
    reqs: &[BuildRequest],
    setup: &SchedulerSetup,
    label: &str,
    progress: &dyn Progress,
) -> Result<ClaimRun> {
    let t = Instant::now();
    let (snap, schedulers): (Option<Arc<SharedSnapshot>>, Vec<Placer>) = match design {
        Design::Unicell => {
            let (snap, s) = schedulers(store, setup).await?;
            (Some(snap), s.into_iter().map(Placer::Unicell).collect())
        }
        Design::Nova => {
            let mut out = Vec::new();
            for i in 0..setup.schedulers.max(1) {
                let s = NovaScheduler::new(store.clone(), setup.config(i)).context("starting a Nova scheduler")?;
                out.push(Placer::Nova(Arc::new(s)));
            }
            (None, out)
        }
    };
    let schedulers: Vec<Arc<Placer>> = schedulers.into_iter().map(Arc::new).collect();
    let load_seconds = t.elapsed().as_secs_f64();
    let queue: Arc<Vec<BuildRequest>> = Arc::new(reqs.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let instances: usize = reqs.iter().map(|r| r.instances.len()).sum();
    let phase = progress.phase(&format!("claims {label}"), instances as u64);
    let stats0 = snap.as_ref().map(|s| s.stats());
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for s in &schedulers {
        for _ in 0..setup.tasks_per_scheduler.max(1) {
            let (s, queue, next, stop, phase) = (s.clone(), queue.clone(), next.clone(), stop.clone(), phase.clone());
            let alternates = setup.alternates as usize;
            let stop_at_first = setup.stop_at_first_failure;
            tasks.push(tokio::spawn(async move {
                let mut w = ClaimRun::default();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = queue.get(k) else { break };
                    w.requests += 1;
                    let ids: Vec<InstanceId> = req.instances.iter().map(|i| i.uuid).collect();
                    let mut spec = req.spec.clone();
                    spec.instance_uuid = ids[0];
                    spec.num_instances = ids.len() as u32;
                    match s.select(&spec, &ids, alternates).await {
                        Ok(lists) => {
                            for (list, id) in lists.iter().zip(&ids) {
                                w.placed += 1;
                                w.consumers.push(ConsumerId::from(*id));
                                let chosen = &list[0];
                                if let Some(az) = &spec.availability_zone
                                    && chosen.availability_zone.as_ref() != Some(az)
                                {
                                    w.wrong_zone += 1;
                                }
                                for alt in &list[1..] {
                                    w.alternates_from_other_cell += u64::from(alt.cell != chosen.cell);
                                    w.alternate_equals_chosen += u64::from(alt.provider == chosen.provider);
                                }
                            }
                        }
                        Err(ScheduleError::NoValidHost { .. }) => {
                            w.no_valid_host += 1;
                            if stop_at_first {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            return Err(Error::Step { context: "select_destinations".into(), source: Box::new(e) });
                        }
                    }
                    phase.advance(ids.len() as u64);
                }
                Ok(w)
            }));
        }
    }
    let mut run = ClaimRun::default();
    for t in tasks {
        let w = t.await.context("a scheduling task panicked")??;
        run.requests += w.requests;
        run.placed += w.placed;
        run.no_valid_host += w.no_valid_host;
        run.wrong_zone += w.wrong_zone;
        run.alternates_from_other_cell += w.alternates_from_other_cell;
        run.alternate_equals_chosen += w.alternate_equals_chosen;
        run.consumers.extend(w.consumers);
    }
    run.seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    if let (Some(snap), Some(stats0)) = (&snap, stats0) {
        let stats1 = snap.stats();
        run.trees_reread = stats1.trees_reread - stats0.trees_reread;
        run.trees_skipped = stats1.trees_skipped - stats0.trees_skipped;
    }
    drop(phase);
    run.load_seconds = load_seconds;
    run.placements_per_second = run.placed as f64 / run.seconds.max(1e-9);
    run.cpu_us_per_placement = cpu.filter(|_| run.placed > 0).map(|c| c * 1e6 / run.placed as f64);
    let mut quality: Option<(u64, f64, f64, f64, u64)> = None;
    for s in &schedulers {
        let (tried, refused) = s.claim_counts();
        run.claims_tried += tried;
        run.claim_conflicts += refused;
        if let (true, Placer::Unicell(s)) = (setup.measure_quality, &**s) {
            let q = s.quality();
            let acc = quality.get_or_insert((0, 0.0, f64::INFINITY, 0.0, 0));
            acc.0 += q.decisions;
            acc.1 += q.mean_q * q.decisions as f64;
            if q.decisions > 0 {
                acc.2 = acc.2.min(q.min_q);
            }
            acc.3 += q.mean_percentile * q.decisions as f64;
            acc.4 += q.below_0_9;
        }
    }
    run.quality = quality.map(|(n, q, min, pct, below)| {
        let d = n.max(1) as f64;
        QualityStats {
            decisions: n,
            mean_q: q / d,
            min_q: if n == 0 { 1.0 } else { min },
            mean_percentile: pct / d,
            below_0_9: below,
        }
    });
    if let Some(snap) = &snap {
        run.hosts = snap.known_hosts();
        run.classes = snap.classes();
        run.snapshot_bytes_per_host = snap.memory_bytes() as f64 / run.hosts.max(1) as f64;
    }
    Ok(run)
}

/// Releases every consumer of a claims run (so the next phase starts from an empty cloud).
pub async fn release(store: &Arc<dyn Store>, consumers: &[ConsumerId]) -> Result<()> {
    use futures::StreamExt;
    let mut s = futures::stream::iter(consumers.iter().map(|c| store.release(*c))).buffer_unordered(64);
    while let Some(r) = s.next().await {
        r.context("releasing the claims of the claims phase")?;
    }
    Ok(())
}

/// Builds `reqs` to ACTIVE: `setup.schedulers` schedulers on one shared snapshot, each with
/// its own conductor running `builds_per_scheduler` builds at once on the simulated compute
/// (`failure_rate` of builds fail, 90% of them reschedulable).
pub async fn builds(
    store: &Arc<dyn Store>,
    reqs: Vec<BuildRequest>,
    setup: &SchedulerSetup,
    builds_per_scheduler: usize,
    failure_rate: f64,
    label: &str,
    progress: &dyn Progress,
) -> Result<BuildReport> {
    let compute = Arc::new(SimulatedCompute::new(setup.seed).with_failure_rate(failure_rate, 0.9));
    let started = Instant::now();
    let (_snap, schedulers) = schedulers(store, setup).await?;
    let conductors: Vec<Arc<Conductor>> = schedulers
        .iter()
        .map(|s| {
            let driver: Arc<dyn ComputeDriver> = compute.clone();
            Arc::new(Conductor::new(
                store.clone(),
                s.clone(),
                driver,
                ConductorConfig {
                    instance_write_batch: setup.write_batch,
                    ..ConductorConfig::with_alternates(setup.alternates as usize)
                },
            ))
        })
        .collect();
    let scheduler_start_seconds = started.elapsed().as_secs_f64();
    Ok(unicell::sim::driver::drive(
        &conductors,
        &compute,
        reqs,
        builds_per_scheduler,
        scheduler_start_seconds,
        label,
        progress,
    )
    .await?)
}

/// The end state of a cloud: spread and packing of its hosts (roots).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EndState {
    /// Hosts.
    pub hosts: usize,
    /// Hosts holding anything.
    pub non_empty_hosts: usize,
    /// Mean, standard deviation and maximum of per-host RAM utilization (0..1).
    pub ram_mean: f64,
    /// See `ram_mean`.
    pub ram_stddev: f64,
    /// See `ram_mean`.
    pub ram_max: f64,
    /// Mean, standard deviation and maximum of per-host VCPU utilization (0..1).
    pub vcpu_mean: f64,
    /// See `vcpu_mean`.
    pub vcpu_stddev: f64,
    /// See `vcpu_mean`.
    pub vcpu_max: f64,
    /// Free RAM on hosts that can no longer hold the smallest flavor, over all RAM.
    pub stranded_ram: f64,
    /// Free VCPU on hosts that can no longer hold the smallest flavor, over all VCPU.
    pub stranded_vcpu: f64,
    /// Hard zero: server-group members over a group's per-host limit.
    pub group_violations: u64,
}

/// Reads the end state from the store. `smallest` is the smallest flavor's (VCPU,
/// MEMORY_MB, DISK_GB); `limits` the anti-affinity limit of each group.
pub async fn end_state(
    store: &Arc<dyn Store>,
    smallest: (i64, i64, i64),
    groups: &[(unicell::model::GroupId, GroupPolicy, Option<u32>)],
) -> Result<EndState> {
    use unicell::model::ResourceClass as Rc;
    let trees = store.list_provider_trees(None).await?;
    let mut ram = Vec::new();
    let mut cpu = Vec::new();
    let mut e = EndState { hosts: trees.len(), ..Default::default() };
    let (mut ram_total, mut cpu_total, mut ram_stranded, mut cpu_stranded) = (0.0, 0.0, 0.0, 0.0);
    for t in &trees {
        let Some(root) = t.providers.first() else { continue };
        let cap = |c: &Rc| root.inventories.get(c).map(|i| i.capacity()).unwrap_or(0) as f64;
        let used = |c: &Rc| root.used(c) as f64;
        let (rc, ru) = (cap(&Rc::MemoryMb), used(&Rc::MemoryMb));
        let (cc, cu) = (cap(&Rc::Vcpu), used(&Rc::Vcpu));
        let (dc, du) = (cap(&Rc::DiskGb), used(&Rc::DiskGb));
        if rc > 0.0 {
            ram.push(ru / rc);
        }
        if cc > 0.0 {
            cpu.push(cu / cc);
        }
        ram_total += rc;
        cpu_total += cc;
        if t.providers.iter().any(|p| !p.usages.is_empty()) {
            e.non_empty_hosts += 1;
        }
        let fits = cc - cu >= smallest.0 as f64 && rc - ru >= smallest.1 as f64 && dc - du >= smallest.2 as f64;
        if !fits {
            ram_stranded += rc - ru;
            cpu_stranded += cc - cu;
        }
        for (g, policy, limit) in groups {
            if *policy == GroupPolicy::AntiAffinity {
                let n = t.groups.get(g).copied().unwrap_or(0);
                if n > limit.unwrap_or(1) {
                    e.group_violations += u64::from(n - limit.unwrap_or(1));
                }
            }
        }
    }
    let stats = |v: &[f64]| {
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        (mean, var.sqrt(), v.iter().copied().fold(0.0, f64::max))
    };
    (e.ram_mean, e.ram_stddev, e.ram_max) = stats(&ram);
    (e.vcpu_mean, e.vcpu_stddev, e.vcpu_max) = stats(&cpu);
    e.stranded_ram = if ram_total > 0.0 { ram_stranded / ram_total } else { 0.0 };
    e.stranded_vcpu = if cpu_total > 0.0 { cpu_stranded / cpu_total } else { 0.0 };
    Ok(e)
}
