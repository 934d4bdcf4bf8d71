//! The build driver: S schedulers, each with its own conductor and snapshot (nothing shared
//! but the store), pull build requests from one queue, place them (claims at selection
//! time) and build them on the [`SimulatedCompute`] with injected failures. The demo and
//! `unicell bench schedule` run it; it reports counts, a timeline and every request's
//! latency, and leaves the statistics to the caller.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{BuildRequest, Progress, SimulatedCompute};
use crate::compute::ComputeDriver;
use crate::conductor::{BuildStatus, Conductor, ConductorConfig};
use crate::error::{Error, Result};
use crate::model::*;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::store::Store;

/// Timeline sampling period (microseconds).
const SAMPLE_EVERY_US: u64 = 20_000;

/// How the builds are run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BuildSetup {
    /// Concurrent schedulers (each with its own conductor).
    pub schedulers: usize,
    /// Builds each conductor runs at once (a conductor serves many requests concurrently;
    /// with one at a time the harness, not the scheduler, would set the rate).
    pub builds_per_scheduler: usize,
    /// Alternates per instance.
    pub alternates: u32,
    /// Probability that a build fails on the simulated compute.
    pub failure_rate: f64,
    /// Share of failures that are reschedulable (the rest abort the instance at once).
    pub reschedulable_share: f64,
    /// `host_subset_size` of every scheduler (randomness among the best hosts lowers
    /// collisions between concurrent schedulers).
    pub host_subset_size: usize,
    /// Seed of the schedulers' and the compute's randomness.
    pub seed: u64,
}

/// Everything a build run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// Requests sent.
    pub requests: usize,
    /// Instances in them.
    pub instances: usize,
    /// Instances ACTIVE at the end.
    pub active: usize,
    /// Instances in ERROR at the end.
    pub failed: usize,
    /// Failure messages (normalized) and how many instances ended with each.
    pub failure_reasons: BTreeMap<String, usize>,
    /// Builds retried on an alternate after a reschedulable failure.
    pub reschedules: u64,
    /// Alternates skipped because their claim failed.
    pub alternates_skipped: u64,
    /// Claims tried by the schedulers.
    pub claims_tried: u64,
    /// Claims refused by the store because another scheduler got there first.
    pub claim_conflicts: u64,
    /// Requests that ended in NoValidHost.
    pub no_valid_host: u64,
    /// Requests the conductor could not finish because the store failed.
    pub store_errors: usize,
    /// Builds attempted on the simulated compute, and how many failed.
    pub compute_builds: u64,
    /// Reschedulable build failures injected.
    pub injected_reschedulable_failures: u64,
    /// Fatal build failures injected.
    pub injected_fatal_failures: u64,
    /// Time to start the schedulers (each loads its snapshot of the provider trees).
    pub scheduler_start_seconds: f64,
    /// Wall time of the build phase.
    pub seconds: f64,
    /// ACTIVE instances per second of the build phase.
    pub placements_per_second: f64,
    /// (seconds since start, instances ACTIVE so far), sampled.
    pub timeline: Vec<(f64, u64)>,
    /// ACTIVE instances in each scheduler's share.
    pub per_scheduler_active: Vec<u64>,
    /// ACTIVE and failed consumers, for the audit (not serialized).
    #[serde(skip)]
    pub active_ids: Vec<ConsumerId>,
    /// See `active_ids`.
    #[serde(skip)]
    pub failed_ids: Vec<ConsumerId>,
    /// The latency of every request (schedule + claim + build + state writes), in no
    /// particular order, for the caller's statistics (not serialized).
    #[serde(skip)]
    pub request_latencies: Vec<Duration>,
}

/// Normalizes a fault message into a reason bucket: its first sentence, without ids.
fn reason_of(code: u16, message: &str) -> String {
    let first = message.split(['.', ':', ';']).next().unwrap_or(message).trim();
    let words: Vec<String> = first
        .split_whitespace()
        .map(|w| {
            if w.len() >= 32 && w.chars().filter(|c| *c == '-').count() == 4 {
                "<uuid>".to_string()
            } else if w.chars().any(|c| c.is_ascii_digit()) && w.contains("host") {
                "<host>".to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    format!("{code} {}", words.join(" "))
}

/// Runs `reqs` through `setup.schedulers` scheduler+conductor pairs against `store`, each
/// conductor running `setup.builds_per_scheduler` builds at once; `progress` gets a phase
/// `build <label>` counting instances.
///
/// A request the store fails is counted in `store_errors` (and logged), not returned: the
/// other requests go on. The error is for what stops the whole run (a scheduler that
/// cannot start).
pub async fn run(
    store: &Arc<dyn Store>,
    reqs: Vec<BuildRequest>,
    setup: &BuildSetup,
    label: &str,
    progress: &dyn Progress,
) -> Result<BuildReport> {
    let compute =
        Arc::new(SimulatedCompute::new(setup.seed).with_failure_rate(setup.failure_rate, setup.reschedulable_share));
    let started = Instant::now();
    let mut conductors = Vec::new();
    for s in 0..setup.schedulers.max(1) {
        let cfg = SchedulerConfig {
            // The simulated computes send no heartbeats: without this a run longer than
            // Nova's 60 s service_down_time would see every host as down.
            service_down_time: std::time::Duration::from_secs(24 * 3600),
            host_subset_size: setup.host_subset_size.max(1),
            seed: Some(setup.seed.wrapping_add(s as u64 * 7919)),
            ..SchedulerConfig::default()
        };
        let scheduler = Arc::new(Scheduler::new(Arc::clone(store), cfg).await?);
        let driver: Arc<dyn ComputeDriver> = compute.clone();
        conductors.push(Arc::new(Conductor::new(
            Arc::clone(store),
            scheduler,
            driver,
            ConductorConfig::with_alternates(setup.alternates as usize),
        )));
    }
    let scheduler_start_seconds = started.elapsed().as_secs_f64();
    drive(&conductors, &compute, reqs, setup.builds_per_scheduler, scheduler_start_seconds, label, progress).await
}

/// Runs `reqs` through `conductors` (already built on their schedulers), each running
/// `builds_per_conductor` builds at once, pulling from one queue; `progress` gets a phase
/// `build <label>` counting instances. `compute` is the conductors' simulated compute (its
/// counters go into the report); `scheduler_start_seconds` is what building the schedulers
/// took, reported as is. Shared by [`run`] and the `bench schedule` builds phase, which
/// sets its conductors up differently (a shared snapshot, batched writes).
pub async fn drive(
    conductors: &[Arc<Conductor>],
    compute: &SimulatedCompute,
    reqs: Vec<BuildRequest>,
    builds_per_conductor: usize,
    scheduler_start_seconds: f64,
    label: &str,
    progress: &dyn Progress,
) -> Result<BuildReport> {
    let requests = reqs.len();
    let instances: usize = reqs.iter().map(|r| r.instances.len()).sum();
    let queue = Arc::new(reqs);
    let next = Arc::new(AtomicUsize::new(0));
    let placed = Arc::new(AtomicU64::new(0));
    let phase = progress.phase(&format!("build {label}"), instances as u64);

    // The timeline is sampled by the workers themselves (at most one sample per
    // `SAMPLE_EVERY`), not by a timer task that busy workers could starve.
    let t0 = Instant::now();
    let timeline = Arc::new(Mutex::new(vec![(0.0, 0u64)]));
    let last_sample_us = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for conductor in conductors.iter().flat_map(|c| std::iter::repeat_n(c, builds_per_conductor.max(1))) {
        let (conductor, queue, next, placed, phase, timeline, last_sample_us) = (
            conductor.clone(),
            queue.clone(),
            next.clone(),
            placed.clone(),
            phase.clone(),
            timeline.clone(),
            last_sample_us.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut w = Worker::default();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(req) = queue.get(k) else { break };
                let t = Instant::now();
                let outcome = conductor.build_instances(req.spec.clone(), req.instances.clone()).await;
                w.latency.push(t.elapsed());
                phase.advance(req.instances.len() as u64);
                match outcome {
                    Ok(outcomes) => {
                        for o in outcomes {
                            w.reschedules += u64::from(o.reschedules);
                            w.alternates_skipped += u64::from(o.alternates_skipped);
                            match &o.status {
                                BuildStatus::Active { .. } => {
                                    w.active.push(ConsumerId::from(o.instance));
                                    placed.fetch_add(1, Ordering::Relaxed);
                                }
                                BuildStatus::Failed { code, message } => {
                                    w.failed.push(ConsumerId::from(o.instance));
                                    *w.reasons.entry(reason_of(*code, message)).or_insert(0) += 1;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        w.store_errors += 1;
                        tracing::warn!("build request failed in the store: {e}");
                        *w.reasons.entry(format!("store error: {}", reason_of(0, &e.to_string()))).or_insert(0) +=
                            req.instances.len();
                    }
                }
                let now_us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                let last = last_sample_us.load(Ordering::Relaxed);
                if now_us.saturating_sub(last) >= SAMPLE_EVERY_US
                    && last_sample_us.compare_exchange(last, now_us, Ordering::Relaxed, Ordering::Relaxed).is_ok()
                {
                    let n = placed.load(Ordering::Relaxed);
                    timeline.lock().unwrap_or_else(|e| e.into_inner()).push((now_us as f64 / 1e6, n));
                }
            }
            w
        }));
    }
    let mut all = Worker::default();
    let mut per_scheduler_active = Vec::new();
    for h in workers {
        let w = match h.await {
            Ok(w) => w,
            // A panic in a worker is a bug: carry it on rather than report figures without it.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => return Err(Error::backend("build driver", e)),
        };
        per_scheduler_active.push(w.active.len() as u64);
        all.merge(w);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let mut timeline = std::mem::take(&mut *timeline.lock().unwrap_or_else(|e| e.into_inner()));
    timeline.push((seconds, placed.load(Ordering::Relaxed)));
    // Keep the report small: at most ~300 points, evenly strided, last one kept.
    if timeline.len() > 300 {
        let stride = timeline.len().div_ceil(300);
        let last = timeline.last().copied();
        timeline = timeline.into_iter().step_by(stride).collect();
        if let Some(l) = last
            && timeline.last() != Some(&l)
        {
            timeline.push(l);
        }
    }
    drop(phase);

    let (mut claims_tried, mut claim_conflicts, mut no_valid_host) = (0, 0, 0);
    for c in conductors {
        let s = c.scheduler().stats();
        claims_tried += s.claims_tried;
        claim_conflicts += s.claim_conflicts;
        no_valid_host += s.no_valid_host;
    }
    let cs = compute.stats();
    Ok(BuildReport {
        requests,
        instances,
        active: all.active.len(),
        failed: all.failed.len(),
        failure_reasons: all.reasons,
        reschedules: all.reschedules,
        alternates_skipped: all.alternates_skipped,
        claims_tried,
        claim_conflicts,
        no_valid_host,
        store_errors: all.store_errors,
        compute_builds: cs.builds,
        injected_reschedulable_failures: cs.reschedulable_failures,
        injected_fatal_failures: cs.fatal_failures,
        scheduler_start_seconds,
        seconds,
        placements_per_second: all.active.len() as f64 / seconds.max(1e-9),
        timeline,
        per_scheduler_active,
        active_ids: all.active,
        failed_ids: all.failed,
        request_latencies: all.latency,
    })
}

#[derive(Default)]
struct Worker {
    active: Vec<ConsumerId>,
    failed: Vec<ConsumerId>,
    reasons: BTreeMap<String, usize>,
    reschedules: u64,
    alternates_skipped: u64,
    store_errors: usize,
    latency: Vec<Duration>,
}

impl Worker {
    fn merge(&mut self, o: Worker) {
        self.active.extend(o.active);
        self.failed.extend(o.failed);
        for (k, v) in o.reasons {
            *self.reasons.entry(k).or_insert(0) += v;
        }
        self.reschedules += o.reschedules;
        self.alternates_skipped += o.alternates_skipped;
        self.store_errors += o.store_errors;
        self.latency.extend(o.latency);
    }
}
