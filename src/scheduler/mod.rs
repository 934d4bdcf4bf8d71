//! The scheduler: host-state snapshot -> candidates -> filters -> weighers -> claim (CAS)
//! -> alternates.
//!
//! Differences from Nova that this module exists for (see ARCHITECTURE.md, "the path of a
//! build request"):
//! * **Claims at selection.** [`Scheduler::select_destinations`] claims the best host with
//!   the store's atomic per-tree claim before returning it; a failed claim re-reads that
//!   tree and moves to the next host. The caller always receives a host already claimed.
//! * **Caller-chosen alternates**, from the claimed host's cell, never a host whose claim
//!   just failed, never a host chosen for another instance of the request.
//! * **One source of truth, one copy per process.** The snapshot ([`SharedSnapshot`]) is
//!   read from the store only: a full load at start, then only the trees the store's change
//!   feed names (`changes_since`), so a refresh costs in proportion to the changes, not to
//!   the cloud. All the schedulers of a process may share one
//!   ([`Scheduler::with_snapshot`]), kept fresh by one background task; the claims of the
//!   process count in it as soon as they are sent.
//! * **A request costs in proportion to its candidates.** Hosts alike (cell, zone,
//!   capabilities, tree shape) form a class that gets one verdict per request; per host
//!   only integer compares remain, and hosts are read best-first from an index
//!   ([`RankingMode::Indexed`]). The exhaustive pipeline ([`RankingMode::Exhaustive`])
//!   stays as the yardstick and explains every NoValidHost.
//! * **Anti-affinity in the claim.** When the request names a server group, the claim
//!   carries a [`GroupClaim`](crate::model::GroupClaim) with the group's per-host limit, so
//!   the store enforces it atomically with the amounts: two separate requests scheduled at
//!   the same moment by different schedulers cannot both put a member on one host.
//! * **A NoValidHost an operator can read** ([`NoValidHostReason`]).
//!
//! [`nova::NovaScheduler`] is the other design, kept for comparison: Nova's filter
//! scheduler on the SQL baseline (Placement's candidate query per request, the same filters
//! and weighers over the candidates, claims as Placement's `PUT /allocations`).
//!
//! Many schedulers (tasks or processes) may run against one store; across processes they
//! share nothing but the store. `Scheduler` itself is `Sync`: one instance may serve
//! concurrent requests.
//!
//! # Limits of the store contract, and what this module does about them
//! * Catalog writes (host records, aggregates, cells) are announced by the store's change
//!   feed and read again at once; heartbeats are not (a report is not a catalog change), so
//!   liveness is re-read every
//!   [`catalog_refresh_interval`](SchedulerConfig::catalog_refresh_interval). A writer that
//!   stops between its write and its announcement is covered by a whole catalog read every
//!   [`catalog_resync_interval`](SchedulerConfig::catalog_resync_interval).
//! * Recent build failures (BuildFailureWeigher) are reported by the conductor to its own
//!   scheduler ([`Scheduler::report_build`]); the store has no field for them, so another
//!   scheduler learns of a failing host only through its own conductor.
//! * Hard affinity is a filter, not part of the claim ([`GroupClaim`](crate::model::GroupClaim)
//!   carries only a per-host maximum): two *first* members of an affinity group placed at
//!   the same moment by different schedulers may land on different hosts, as in Nova.
//!   Anti-affinity has no such gap.
//! * Snapshot updates after a claim assume generations grow by one per write (the memory
//!   store's rule); with any other scheme the claim stays counted as in flight until the
//!   change feed brings the tree again.

pub(crate) mod batch;
pub mod candidates;
pub mod error;
pub mod filters;
pub mod host_state;
pub mod nova;
mod select;
pub(crate) use self::select::candidate_request;
pub mod snapshot;
mod template;
pub mod weighers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::CellId;
use crate::store::prelude::*;

pub use error::{ClaimFailure, ClaimFailureCause, NoValidHostReason, Rejection, ScheduleError, StageCount};
pub use host_state::{HostState, HostView};
pub use snapshot::{IndexWeights, SharedSnapshot, SnapshotConfig, SnapshotStats};

/// How hosts are ranked (see the module documentation of `select`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RankingMode {
    /// Read the best hosts first from the snapshot's index, class verdicts and integer
    /// compares; weigh only [`SchedulerConfig::indexed_candidates`] hosts that pass every
    /// stage. Falls back to [`Exhaustive`](RankingMode::Exhaustive) before any NoValidHost.
    #[default]
    Indexed,
    /// Nova's filter scheduler: every host of the scope through every stage (with
    /// `max_placement_results`). The yardstick of placement quality.
    Exhaustive,
}

/// Scheduler configuration, with Nova's defaults where Nova has the option.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// Cells this scheduler serves (empty: every cell). A per-cell scheduler loads and
    /// refreshes only its cells' trees and hosts.
    pub cells: Vec<CellId>,
    /// Pick randomly among the best N hosts (`[filter_scheduler]host_subset_size`, 1):
    /// larger values lower collisions between concurrent schedulers.
    pub host_subset_size: usize,
    /// Shuffle the hosts tied at the best weight (`shuffle_best_same_weighed_hosts`).
    pub shuffle_best_same_weighed_hosts: bool,
    /// A compute whose last heartbeat is older than this is down (`service_down_time`, 60 s).
    pub service_down_time: Duration,
    /// How often what changes without a catalog write is re-read: host heartbeats and
    /// building counts (host records, aggregates and cells are read again when the change
    /// feed announces a write). The Nova design, which does not follow the feed, keeps its
    /// aggregates and cells this long.
    pub catalog_refresh_interval: Duration,
    /// How often the whole catalog is re-read although the change feed announced no
    /// catalog write (5 min): the safety net for a writer that stopped between its write
    /// and its announcement. A new tree without a known host also triggers a re-read.
    pub catalog_resync_interval: Duration,
    /// Count BUILDING instances per host from the store at each catalog refresh (input of
    /// the IoOps weigher and filter, Nova's `num_io_ops`). Off by default: it costs a
    /// listing of building instances per refresh, which is a scan on backends that do not
    /// index `vm_state`. Without it, `io_ops` counts this scheduler's own claims since the
    /// last catalog refresh (Nova's `consume_from_request` increment), which spreads
    /// bursts the same way.
    pub count_building_from_store: bool,
    /// Filters to run, in order (see [`filters::ALL_FILTERS`]).
    pub enabled_filters: Vec<String>,
    /// `ram_weight_multiplier` (1.0: spread; negative: pack).
    pub ram_weight_multiplier: f64,
    /// `cpu_weight_multiplier` (1.0).
    pub cpu_weight_multiplier: f64,
    /// `disk_weight_multiplier` (1.0).
    pub disk_weight_multiplier: f64,
    /// `io_ops_weight_multiplier` (-1.0: prefer idle hosts).
    pub io_ops_weight_multiplier: f64,
    /// `build_failure_weight_multiplier` (1,000,000; applied negated).
    pub build_failure_weight_multiplier: f64,
    /// `soft_affinity_weight_multiplier` (1.0).
    pub soft_affinity_weight_multiplier: f64,
    /// `soft_anti_affinity_weight_multiplier` (1.0).
    pub soft_anti_affinity_weight_multiplier: f64,
    /// `max_io_ops_per_host` (8), read by the IoOpsFilter.
    pub max_io_ops_per_host: u32,
    /// Zone of hosts that name none (`default_availability_zone`, `nova`).
    pub default_availability_zone: String,
    /// Stop after this many claim attempts for one instance (`None`: walk every host).
    pub max_claim_attempts: Option<usize>,
    /// Search steps per tree when looking for an allocation (bounds wide nested trees).
    pub candidate_search_budget: usize,
    /// Seed of the host_subset_size / shuffle randomness (`None`: random).
    pub seed: Option<u64>,
    /// Concurrent tree reads during a refresh.
    pub refresh_concurrency: usize,
    /// `select_destinations` refreshes the snapshot through the change feed first unless
    /// the last refresh is younger than this (zero, the default: every request). A larger
    /// value trades fresher state for fewer store reads; claims stay correct either way,
    /// only more of them are refused.
    pub min_refresh_interval: Duration,
    /// How hosts are ranked ([`RankingMode::Indexed`] by default).
    pub ranking: RankingMode,
    /// Indexed ranking: how many hosts that pass every stage are weighed per instance (the
    /// `k` best by the snapshot's index; `max_placement_results`, when it applies, caps
    /// it). Larger values cost more per request and come closer to the exhaustive
    /// ranking; alternates are topped up from the chosen host's cell when these run out.
    pub indexed_candidates: usize,
    /// Measure placement quality: before each first claim, weigh every host that passes
    /// every stage (an exhaustive ranking, so a cost proportional to the cloud) and record
    /// how the chosen host compares ([`Scheduler::quality`]). For benchmarks; off by
    /// default.
    pub measure_quality: bool,
    /// Coalesce the claims of this scheduler's concurrent requests into batches of at most
    /// this many ([`Claims::claim_batch`](crate::store::Claims::claim_batch), one round trip
    /// on backends that pipeline them); 0 or 1 (the default): every claim is sent alone.
    /// Worth it over a network; in-process stores only pay the hand-off.
    pub claim_batch: usize,
    /// Batches of claims outstanding at once when `claim_batch` is on (4).
    pub claim_batches_in_flight: usize,
    /// How many hosts that fit the request's resources, traits and aggregates go on to the
    /// filters and weighers (`[scheduler]max_placement_results`, 1000; `None`: all). The
    /// hosts kept are a random sample (seeded by [`seed`](Self::seed)), as Placement's
    /// `randomize_allocation_candidates=True` does, so no host is systematically left out.
    /// As in Nova, the limit is lifted when the request names a server group, `same_host`
    /// or `different_host` hints, forced hosts or a requested host or node (bugs 1777591
    /// and 1827628: a truncated list made those fail with NoValidHost). Why it exists:
    /// ranking cost grows with the hosts ranked, and a thousand random fitting hosts is
    /// plenty to choose from.
    pub max_placement_results: Option<usize>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            cells: Vec::new(),
            host_subset_size: 1,
            shuffle_best_same_weighed_hosts: false,
            service_down_time: Duration::from_secs(60),
            catalog_refresh_interval: Duration::from_secs(10),
            catalog_resync_interval: Duration::from_secs(300),
            count_building_from_store: false,
            enabled_filters: filters::DEFAULT_FILTERS.iter().map(|s| s.to_string()).collect(),
            ram_weight_multiplier: 1.0,
            cpu_weight_multiplier: 1.0,
            disk_weight_multiplier: 1.0,
            io_ops_weight_multiplier: -1.0,
            build_failure_weight_multiplier: 1_000_000.0,
            soft_affinity_weight_multiplier: 1.0,
            soft_anti_affinity_weight_multiplier: 1.0,
            max_io_ops_per_host: 8,
            default_availability_zone: "nova".into(),
            max_claim_attempts: None,
            candidate_search_budget: 10_000,
            seed: None,
            refresh_concurrency: 16,
            min_refresh_interval: Duration::ZERO,
            max_placement_results: Some(1000),
            ranking: RankingMode::Indexed,
            indexed_candidates: 16,
            measure_quality: false,
            claim_batch: 0,
            claim_batches_in_flight: 4,
        }
    }
}

/// Counters of one scheduler since it was created (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// `select_destinations` calls.
    pub requests: u64,
    /// Instances placed (claimed).
    pub instances_placed: u64,
    /// Requests that ended in NoValidHost.
    pub no_valid_host: u64,
    /// Claims sent to the store.
    pub claims_tried: u64,
    /// Claims the store refused (another scheduler got there first, group limit, ...).
    pub claim_conflicts: u64,
    /// Claims released because a multi-instance request could not be completed.
    pub claims_released: u64,
    /// Alternates returned.
    pub alternates_returned: u64,
    /// Claims that failed with a retryable store error (a shard or node down, a timeout),
    /// after which the request moved on to a host elsewhere.
    pub claim_store_errors: u64,
    /// Requests scheduled on a stale view because refreshing the snapshot failed with a
    /// retryable store error (the hosts as last seen).
    pub stale_schedules: u64,
    /// Incremental refreshes through the change feed (of the snapshot: shared by every
    /// scheduler of a shared snapshot).
    pub refreshes: u64,
    /// Trees of the snapshot's scope re-read (by the change feed or after a failed claim;
    /// of the snapshot).
    pub trees_reread: u64,
    /// Trees the change feed named that were not read, the snapshot holding their
    /// generation already (of the snapshot).
    pub trees_skipped: u64,
    /// Trees brought up to date from the usage the change feed carried, without reading
    /// them (of the snapshot).
    pub trees_from_feed: u64,
    /// Full reloads (start and `Resync`; of the snapshot).
    pub full_reloads: u64,
    /// Catalog (hosts, aggregates, cells) reloads (of the snapshot).
    pub catalog_reloads: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    instances_placed: AtomicU64,
    no_valid_host: AtomicU64,
    claims_tried: AtomicU64,
    claim_conflicts: AtomicU64,
    claims_released: AtomicU64,
    alternates_returned: AtomicU64,
    claim_store_errors: AtomicU64,
    stale_schedules: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Placement quality of one scheduler's decisions (see
/// [`SchedulerConfig::measure_quality`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct QualityStats {
    /// Decisions measured.
    pub decisions: u64,
    /// Mean of q: the chosen host's weight against the best and worst passing host,
    /// `(w - worst) / (best - worst)`, weights normalized over every passing host.
    pub mean_q: f64,
    /// Smallest q seen.
    pub min_q: f64,
    /// Mean rank percentile (share of passing hosts weighing no more than the chosen).
    pub mean_percentile: f64,
    /// Decisions with q below 0.9.
    pub below_0_9: u64,
}

#[derive(Default)]
struct Quality {
    inner: Mutex<(u64, f64, f64, f64, u64)>,
}

impl Quality {
    fn record(&self, q: f64, pct: f64) {
        let mut g = lock(&self.inner);
        if g.0 == 0 {
            g.2 = q;
        }
        g.0 += 1;
        g.1 += q;
        g.2 = g.2.min(q);
        g.3 += pct;
        g.4 += u64::from(q < 0.9);
    }

    fn stats(&self) -> QualityStats {
        let g = lock(&self.inner);
        let n = g.0.max(1) as f64;
        QualityStats { decisions: g.0, mean_q: g.1 / n, min_q: g.2, mean_percentile: g.3 / n, below_0_9: g.4 }
    }
}

/// A small, seedable pseudo-random generator (SplitMix64): enough for tie-breaking and
/// subset picks, deterministic for a given seed, and no dependency.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// A scheduler: places instances by claiming in the store, ranking hosts from a snapshot
/// of host state (its own, or one shared by the schedulers of a process). See the module
/// documentation.
pub struct Scheduler {
    snapshot: Arc<SharedSnapshot>,
    config: SchedulerConfig,
    filters: Vec<Box<dyn filters::HostFilter>>,
    weighers: Vec<Box<dyn weighers::HostWeigher>>,
    rng: Mutex<SplitMix64>,
    counters: Counters,
    quality: Quality,
    /// The claim coalescer when `claim_batch` is on.
    batcher: Option<batch::ClaimBatcher>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("store", &self.snapshot.store().describe())
            .field("hosts", &self.snapshot.known_hosts())
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Scheduler {
    /// Creates a scheduler with a snapshot of its own, loaded from the store (every tree,
    /// host, aggregate and cell of its scope) and refreshed by its requests (see
    /// [`SchedulerConfig::min_refresh_interval`]). Fails on a bad configuration or a store
    /// error. Schedulers of one process should rather share a snapshot
    /// ([`Scheduler::with_snapshot`]).
    pub async fn new(store: Arc<dyn Store>, config: SchedulerConfig) -> Result<Scheduler> {
        Self::check(&config)?;
        let snapshot = SharedSnapshot::load(store, SnapshotConfig::from_scheduler(&config, None)).await?;
        Self::build(Arc::new(snapshot), config)
    }

    /// Creates a scheduler over a snapshot shared with other schedulers of the process
    /// ([`SharedSnapshot::open`]). Its cells must be among the snapshot's. Its
    /// `catalog_refresh_interval`, `catalog_resync_interval`, `count_building_from_store` and `refresh_concurrency`
    /// are the snapshot's; `min_refresh_interval` still decides whether a request waits
    /// for a change-feed read (with a tailing snapshot, a non-zero value never waits).
    pub fn with_snapshot(snapshot: Arc<SharedSnapshot>, config: SchedulerConfig) -> Result<Scheduler> {
        Self::check(&config)?;
        let scope = &snapshot.config().cells;
        if !scope.is_empty() && (config.cells.is_empty() || config.cells.iter().any(|c| !scope.contains(c))) {
            return Err(Error::invalid(
                "scheduler.cells",
                "a scheduler may only serve cells its shared snapshot loads",
            ));
        }
        Self::build(snapshot, config)
    }

    pub(crate) fn check(config: &SchedulerConfig) -> Result<()> {
        for name in &config.enabled_filters {
            if filters::by_name(name).is_none() {
                return Err(Error::invalid(
                    "scheduler.enabled_filters",
                    format!("unknown filter {name:?}; known: {}", filters::ALL_FILTERS.join(", ")),
                ));
            }
        }
        if config.max_placement_results == Some(0) {
            return Err(Error::invalid("scheduler.max_placement_results", "must be at least 1 (None: no limit)"));
        }
        if config.host_subset_size == 0 {
            return Err(Error::invalid("scheduler.host_subset_size", "must be at least 1"));
        }
        if config.indexed_candidates == 0 {
            return Err(Error::invalid("scheduler.indexed_candidates", "must be at least 1"));
        }
        Ok(())
    }

    fn build(snapshot: Arc<SharedSnapshot>, config: SchedulerConfig) -> Result<Scheduler> {
        let fs = config.enabled_filters.iter().filter_map(|n| filters::by_name(n)).collect();
        let seed = config.seed.unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
        let batcher = (config.claim_batch > 1).then(|| {
            batch::ClaimBatcher::claims(snapshot.store().clone(), config.claim_batch, config.claim_batches_in_flight)
        });
        Ok(Scheduler {
            batcher,
            snapshot,
            filters: fs,
            weighers: weighers::all(),
            rng: Mutex::new(SplitMix64::new(seed)),
            counters: Counters::default(),
            quality: Quality::default(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The store this scheduler reads and claims in.
    pub fn store(&self) -> &Arc<dyn Store> {
        self.snapshot.store()
    }

    /// The snapshot this scheduler ranks from.
    pub fn snapshot(&self) -> &Arc<SharedSnapshot> {
        &self.snapshot
    }

    /// Counters since creation (the refresh counters are the snapshot's).
    pub fn stats(&self) -> SchedulerStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = self.snapshot.stats();
        SchedulerStats {
            requests: g(&c.requests),
            instances_placed: g(&c.instances_placed),
            no_valid_host: g(&c.no_valid_host),
            claims_tried: g(&c.claims_tried),
            claim_conflicts: g(&c.claim_conflicts),
            claims_released: g(&c.claims_released),
            alternates_returned: g(&c.alternates_returned),
            claim_store_errors: g(&c.claim_store_errors),
            stale_schedules: g(&c.stale_schedules),
            refreshes: s.refreshes,
            trees_reread: s.trees_reread,
            trees_skipped: s.trees_skipped,
            trees_from_feed: s.trees_from_feed,
            full_reloads: s.full_reloads,
            catalog_reloads: s.catalog_reloads,
        }
    }

    /// Placement quality measured so far (empty unless
    /// [`SchedulerConfig::measure_quality`]).
    pub fn quality(&self) -> QualityStats {
        self.quality.stats()
    }

    /// Number of schedulable hosts (a host record and a tree) in the snapshot.
    pub fn known_hosts(&self) -> usize {
        self.snapshot.known_hosts()
    }

    /// A copy of one host's state, by name (for inspection and tests).
    pub fn host_state(&self, name: &str) -> Option<HostState> {
        self.snapshot.host_state(name)
    }

    /// Records the result of a build on `host` (the conductor calls this): consecutive
    /// failures feed the BuildFailureWeigher, a success resets them, as Nova's compute
    /// does. The count is the snapshot's (see the module notes: the store has no field
    /// for it).
    pub fn report_build(&self, host: &str, success: bool) {
        self.snapshot.record_build(host, success);
    }

    /// Brings the snapshot up to date through the change feed (see
    /// [`SharedSnapshot::refresh`]). `select_destinations` does it first unless
    /// [`SchedulerConfig::min_refresh_interval`] says otherwise; callers may call it to
    /// pre-warm.
    pub async fn refresh(&self) -> Result<()> {
        self.snapshot.refresh().await
    }

    /// Forces a catalog reload (hosts, aggregates, cells, building counts), for example
    /// right after an operator disabled a host.
    pub async fn refresh_catalog(&self) -> Result<()> {
        self.snapshot.refresh_catalog().await
    }
}
