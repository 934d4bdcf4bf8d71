//! The scheduler: host-state snapshot -> candidates -> filters -> weighers -> claim (CAS)
//! -> alternates.
//!
//! Differences from Nova that this module exists for (DESIGN.md sections 1 and 6):
//! * **Claims at selection.** [`Scheduler::select_destinations`] claims the best host with
//!   the store's atomic per-tree claim before returning it; a failed claim re-reads that
//!   tree and moves to the next host. The caller always receives a host already claimed.
//! * **Caller-chosen alternates**, from the claimed host's cell, never a host whose claim
//!   just failed, never a host chosen for another instance of the request.
//! * **One source of truth.** The snapshot ([`host_state::Snapshot`]) is read from the store
//!   only: a full load at start, then only the trees the store's change feed names
//!   (`changes_since`), so a refresh costs in proportion to the changes, not to the cloud.
//!   The scheduler's own successful claims update it at once, and only those.
//! * **Anti-affinity in the claim.** When the request names a server group, the claim
//!   carries a [`GroupClaim`](crate::model::GroupClaim) with the group's per-host limit, so
//!   the store enforces it atomically with the amounts: two separate requests scheduled at
//!   the same moment by different schedulers cannot both put a member on one host.
//! * **A NoValidHost an operator can read** ([`NoValidHostReason`]).
//!
//! Many schedulers (tasks or processes) may run against one store; they share nothing but
//! the store. `Scheduler` itself is `Sync`: one instance may serve concurrent requests.
//!
//! # Limits of the store contract, and what this module does about them
//! * Host records, aggregates and cells are not in the store's change feed (only provider
//!   trees are): they are re-read every
//!   [`catalog_refresh_interval`](SchedulerConfig::catalog_refresh_interval) and whenever a
//!   tree with no known host appears. A feed entry for catalog writes would remove the delay.
//! * Recent build failures (BuildFailureWeigher) are reported by the conductor to its own
//!   scheduler ([`Scheduler::report_build`]); the store has no field for them, so another
//!   scheduler learns of a failing host only through its own conductor.
//! * Hard affinity is a filter, not part of the claim ([`GroupClaim`](crate::model::GroupClaim)
//!   carries only a per-host maximum): two *first* members of an affinity group placed at
//!   the same moment by different schedulers may land on different hosts, as in Nova.
//!   Anti-affinity has no such gap.
//! * Snapshot updates after a claim assume generations grow (the memory store adds one per
//!   write); with any other scheme the snapshot is merely conservative until the change feed
//!   brings the tree again.

pub mod candidates;
pub mod error;
pub mod filters;
pub mod host_state;
mod select;
pub mod weighers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::model::{
    Aggregate, Cell, CellId, ChangeCursor, Changes, Host, InstanceFilters, ListQuery, ProviderId, ProviderTree, VmState,
};
use crate::store::prelude::*;

pub use error::{ClaimFailure, ClaimFailureCause, NoValidHostReason, Rejection, ScheduleError, StageCount};
pub use host_state::{HostState, Snapshot};

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
    /// How often host records, aggregates, cells and building counts are re-read (they are
    /// not in the store's tree change feed). A new tree without a known host also triggers
    /// a re-read (once per such tree).
    pub catalog_refresh_interval: Duration,
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
    /// Incremental refreshes through the change feed.
    pub refreshes: u64,
    /// Trees re-read (by the change feed or after a failed claim).
    pub trees_reread: u64,
    /// Full reloads (start and `Resync`).
    pub full_reloads: u64,
    /// Catalog (hosts, aggregates, cells) reloads.
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
    refreshes: AtomicU64,
    trees_reread: AtomicU64,
    full_reloads: AtomicU64,
    catalog_reloads: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
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

struct RefreshState {
    cursor: ChangeCursor,
    last_catalog: Instant,
    last_refresh: Instant,
    /// Start of the last refresh that completed: the snapshot holds every change the store
    /// had committed before this instant.
    fresh_as_of: Option<Instant>,
}

/// A scheduler: owns a snapshot of host state read from the store and places instances by
/// claiming in the store. See the module documentation.
pub struct Scheduler {
    store: Arc<dyn Store>,
    config: SchedulerConfig,
    filters: Vec<Box<dyn filters::HostFilter>>,
    weighers: Vec<Box<dyn weighers::HostWeigher>>,
    snapshot: RwLock<Snapshot>,
    refresh_state: tokio::sync::Mutex<RefreshState>,
    rng: Mutex<SplitMix64>,
    counters: Counters,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("store", &self.store.describe())
            .field("hosts", &self.read_snapshot().hosts.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Scheduler {
    /// Creates a scheduler and loads its snapshot from the store (every tree, host,
    /// aggregate and cell of its scope). Fails on an unknown filter name or a store error.
    pub async fn new(store: Arc<dyn Store>, config: SchedulerConfig) -> Result<Scheduler> {
        let mut fs = Vec::new();
        for name in &config.enabled_filters {
            fs.push(filters::by_name(name).ok_or_else(|| {
                Error::invalid(
                    "scheduler.enabled_filters",
                    format!("unknown filter {name:?}; known: {}", filters::ALL_FILTERS.join(", ")),
                )
            })?);
        }
        if config.max_placement_results == Some(0) {
            return Err(Error::invalid("scheduler.max_placement_results", "must be at least 1 (None: no limit)"));
        }
        if config.host_subset_size == 0 {
            return Err(Error::invalid("scheduler.host_subset_size", "must be at least 1"));
        }
        let seed = config.seed.unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
        let scheduler = Scheduler {
            store,
            filters: fs,
            weighers: weighers::all(),
            snapshot: RwLock::new(Snapshot::default()),
            refresh_state: tokio::sync::Mutex::new(RefreshState {
                cursor: ChangeCursor(String::new()),
                last_catalog: Instant::now(),
                last_refresh: Instant::now(),
                fresh_as_of: None,
            }),
            rng: Mutex::new(SplitMix64::new(seed)),
            counters: Counters::default(),
            config,
        };
        {
            let mut st = scheduler.refresh_state.lock().await;
            scheduler.full_reload(&mut st).await?;
        }
        Ok(scheduler)
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The store this scheduler reads and claims in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Counters since creation.
    pub fn stats(&self) -> SchedulerStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SchedulerStats {
            requests: g(&c.requests),
            instances_placed: g(&c.instances_placed),
            no_valid_host: g(&c.no_valid_host),
            claims_tried: g(&c.claims_tried),
            claim_conflicts: g(&c.claim_conflicts),
            claims_released: g(&c.claims_released),
            alternates_returned: g(&c.alternates_returned),
            refreshes: g(&c.refreshes),
            trees_reread: g(&c.trees_reread),
            full_reloads: g(&c.full_reloads),
            catalog_reloads: g(&c.catalog_reloads),
        }
    }

    /// Number of schedulable hosts (a host record and a tree) in the snapshot.
    pub fn known_hosts(&self) -> usize {
        self.read_snapshot().hosts.len()
    }

    /// A copy of one host's state, by name (for inspection and tests).
    pub fn host_state(&self, name: &str) -> Option<HostState> {
        self.read_snapshot().hosts.values().find(|h| h.host.name == name).cloned()
    }

    /// Records the result of a build on `host` (the conductor calls this): consecutive
    /// failures feed the BuildFailureWeigher, a success resets them, as Nova's compute
    /// does. The count is this scheduler's own (see the crate notes: the store has no
    /// field for it).
    pub fn report_build(&self, host: &str, success: bool) {
        self.write_snapshot().record_build(host, success);
    }

    fn read_snapshot(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_snapshot(&self) -> std::sync::RwLockWriteGuard<'_, Snapshot> {
        self.snapshot.write().unwrap_or_else(|e| e.into_inner())
    }

    fn in_scope(&self, cell: Option<CellId>) -> bool {
        self.config.cells.is_empty() || cell.is_some_and(|c| self.config.cells.contains(&c))
    }

    fn scopes(&self) -> Vec<Option<CellId>> {
        if self.config.cells.is_empty() { vec![None] } else { self.config.cells.iter().copied().map(Some).collect() }
    }

    async fn load_catalog(&self) -> Result<(Vec<Host>, Vec<Aggregate>, Vec<Cell>, HashMap<String, u32>)> {
        let mut hosts = Vec::new();
        for scope in self.scopes() {
            hosts.extend(self.store.list_hosts(scope).await?);
        }
        let aggregates = self.store.list_aggregates().await?;
        let cells = self.store.list_cells().await?;
        let mut building: HashMap<String, u32> = HashMap::new();
        if self.config.count_building_from_store {
            for scope in self.scopes() {
                let mut marker = None;
                loop {
                    let page = self
                        .store
                        .list_instances(&ListQuery {
                            filters: InstanceFilters {
                                vm_states: vec![VmState::Building],
                                cell: scope,
                                ..Default::default()
                            },
                            limit: None,
                            marker,
                        })
                        .await?;
                    for i in &page.instances {
                        if let Some(h) = &i.host {
                            *building.entry(h.clone()).or_insert(0) += 1;
                        }
                    }
                    match page.next_marker {
                        Some(m) => marker = Some(m),
                        None => break,
                    }
                }
            }
        }
        bump(&self.counters.catalog_reloads, 1);
        Ok((hosts, aggregates, cells, building))
    }

    async fn full_reload(&self, st: &mut RefreshState) -> Result<()> {
        let cursor = self.store.change_cursor().await?;
        let mut trees = Vec::new();
        for scope in self.scopes() {
            trees.extend(self.store.list_provider_trees(scope).await?);
        }
        let (hosts, aggregates, cells, building) = self.load_catalog().await?;
        let mut snap = self.write_snapshot();
        let failures = std::mem::take(&mut snap.build_failures);
        let mut fresh = Snapshot { build_failures: failures, ..Snapshot::default() };
        for t in trees {
            fresh.unhosted.insert(t.root, t);
        }
        fresh.set_catalog(hosts, aggregates, cells, building);
        for h in fresh.hosts.values_mut() {
            h.failed_builds = fresh.build_failures.get(&h.host.name).copied().unwrap_or(0);
        }
        *snap = fresh;
        drop(snap);
        st.cursor = cursor;
        st.last_catalog = Instant::now();
        bump(&self.counters.full_reloads, 1);
        tracing::debug!(hosts = self.known_hosts(), "scheduler snapshot loaded");
        Ok(())
    }

    async fn reload_catalog(&self, st: &mut RefreshState) -> Result<()> {
        let (hosts, aggregates, cells, building) = self.load_catalog().await?;
        self.write_snapshot().set_catalog(hosts, aggregates, cells, building);
        st.last_catalog = Instant::now();
        Ok(())
    }

    async fn read_trees(&self, roots: Vec<ProviderId>) -> Result<Vec<(ProviderId, Option<ProviderTree>)>> {
        let store = &self.store;
        futures::stream::iter(roots)
            .map(|root| async move {
                match store.provider_tree(root).await {
                    Ok(t) => Ok((root, Some(t))),
                    Err(Error::NotFound { .. }) => Ok((root, None)),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(self.config.refresh_concurrency.max(1))
            .try_collect()
            .await
    }

    /// Applies freshly read trees to the snapshot; returns true when a tree not seen before
    /// has no known host record (a new compute: the catalog should be re-read).
    fn apply_trees(&self, trees: Vec<(ProviderId, Option<ProviderTree>)>) -> bool {
        bump(&self.counters.trees_reread, trees.len() as u64);
        let mut unknown = false;
        let mut snap = self.write_snapshot();
        for (root, tree) in trees {
            match tree {
                Some(t) if self.in_scope(t.cell) => {
                    let seen = snap.unhosted.contains_key(&root);
                    unknown |= !snap.put_tree(t) && !seen;
                }
                _ => snap.remove_tree(root),
            }
        }
        unknown
    }

    /// Brings the snapshot up to date: the trees the store's change feed names since the
    /// last refresh are re-read (a full reload when the feed answers `Resync`), and the
    /// catalog is re-read when its interval has passed or an unknown tree appeared.
    /// `select_destinations` calls this first; callers may call it to pre-warm.
    pub async fn refresh(&self) -> Result<()> {
        let mut st = self.refresh_state.lock().await;
        self.refresh_locked(&mut st).await
    }

    /// Refreshes unless the last refresh is younger than `min_refresh_interval`.
    ///
    /// Concurrent requests of one scheduler share refreshes: a request that waited for the
    /// refresh lock while another refresh ran skips its own when that refresh *started*
    /// after the request arrived, since the snapshot then already holds every change
    /// committed before the request arrived (what its own refresh would have read). Under
    /// load this turns N queued change-feed reads into one.
    pub(crate) async fn maybe_refresh(&self) -> Result<()> {
        let arrived = Instant::now();
        let mut st = self.refresh_state.lock().await;
        if st.fresh_as_of.is_some_and(|t| t >= arrived) {
            return Ok(());
        }
        if !self.config.min_refresh_interval.is_zero() && st.last_refresh.elapsed() < self.config.min_refresh_interval {
            return Ok(());
        }
        self.refresh_locked(&mut st).await
    }

    async fn refresh_locked(&self, st: &mut RefreshState) -> Result<()> {
        let started = Instant::now();
        st.last_refresh = started;
        self.refresh_feed(st).await?;
        st.fresh_as_of = Some(started);
        Ok(())
    }

    async fn refresh_feed(&self, st: &mut RefreshState) -> Result<()> {
        match self.store.changes_since(&st.cursor).await? {
            Changes::Resync => {
                tracing::info!("change feed answered Resync: full reload");
                return self.full_reload(st).await;
            }
            Changes::Trees { roots, next } => {
                bump(&self.counters.refreshes, 1);
                let unknown = if roots.is_empty() {
                    false
                } else {
                    let trees = self.read_trees(roots).await?;
                    self.apply_trees(trees)
                };
                st.cursor = next;
                if unknown || st.last_catalog.elapsed() >= self.config.catalog_refresh_interval {
                    self.reload_catalog(st).await?;
                }
            }
        }
        Ok(())
    }

    /// Forces a catalog reload (hosts, aggregates, cells, building counts), for example
    /// right after an operator disabled a host.
    pub async fn refresh_catalog(&self) -> Result<()> {
        let mut st = self.refresh_state.lock().await;
        self.reload_catalog(&mut st).await
    }

    /// Re-reads one tree (after a failed claim).
    async fn refresh_tree(&self, root: ProviderId) -> Result<()> {
        let trees = self.read_trees(vec![root]).await?;
        self.apply_trees(trees);
        Ok(())
    }
}
