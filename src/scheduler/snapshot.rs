//! The scheduler's host state: one compact snapshot per process, shared by all its
//! schedulers ([`SharedSnapshot`]), fed only by the store.
//!
//! # Layout
//! * A **host** is a `HostRec`: its root provider, provider ids, names (one small arena
//!   per host), its class and, per inventory of its tree, the capacity; and a `HostDyn`
//!   with what changes: usage per inventory (atomics), enabled and heartbeat, io_ops,
//!   build failures, and under a short per-host mutex the tree generation, the claims this
//!   process has in flight there and the server-group member counts.
//! * A **class** (`ClassInfo`) is what hosts share and Nomad would call a computed node
//!   class: cell, the service record's zone and capabilities, and the tree `Shape`
//!   (providers with their parents, traits and aggregates; inventories with unit rules).
//!   A request is compiled once per class into a `Template`; per host only integer
//!   compares on free capacity remain.
//! * The **view** (`View`) is immutable and swapped whole ([`ArcSwap`]) when the set of
//!   hosts or their structure changes: readers take it without a lock and keep it for a
//!   whole request; usage changes do not swap it (atomics).
//! * **Indexes**: name -> host and root -> host maps in the view; a score index (hosts
//!   ordered by an approximation of their weight, `BTreeSet`s per io_ops level, once over
//!   the cloud and once per class) so that a request reads its best candidates first
//!   instead of every host, and a request few classes can serve reads only theirs; and
//!   server group -> hosts (member counts).
//!
//! # Freshness
//! The change feed is read by [`SharedSnapshot::refresh`]: one refresh at a time
//! (concurrent callers share one that started after they arrived). A shared snapshot made
//! with [`SharedSnapshot::open`] also runs **one background task** that tails the feed;
//! a private snapshot (the one [`Scheduler::new`](crate::scheduler::Scheduler::new) makes)
//! refreshes only when its scheduler asks. Changed trees are re-read; a claim of this
//! process is applied at once, before the store answers (as *in flight*: a failed claim
//! takes it back), so that concurrent requests of the process see it and spread. Tree
//! generations decide what a re-read replaces: usage read at generation `r` replaces the
//! snapshot's only when `r` is not older, and claims of this process the read may not
//! include stay on top until a read at or after their generation.
//!
//! The feed also announces catalog writes (cells, host records, aggregates): the snapshot
//! then reads the catalog again in the same refresh, so an operator disabling a host or
//! moving it to another zone is seen within one tail period, not after a timer. What changes
//! without a catalog write is read on a timer
//! ([`catalog_refresh_interval`](SnapshotConfig::catalog_refresh_interval), 10 s): heartbeats
//! (liveness is a matter of time, and reports are not announced: a cloud reports every 10 s
//! per host) and building counts; the whole catalog only every
//! [`catalog_resync_interval`](SnapshotConfig::catalog_resync_interval) (5 min), the safety
//! net for a writer that stopped between its write and its announcement.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::model::{
    Aggregate, AggregateId, Cell, CellId, ChangeCursor, Changes, GroupId, Host, InstanceFilters, Inventory, ListQuery,
    ProviderId, ProviderNode, ProviderTree, ResourceClass, Timestamp, TreeUsage, VmState,
};
use crate::scheduler::candidates::CandidateRequest;
use crate::scheduler::host_state::{HostState, HostView, min_metadata};
use crate::scheduler::template::{Shape, Template, Usage};
use crate::scheduler::{SchedulerConfig, lock};
use crate::store::prelude::*;

/// What a snapshot needs to know, taken from a [`SchedulerConfig`] (see
/// [`SnapshotConfig::from_scheduler`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotConfig {
    /// Cells loaded (empty: every cell). Schedulers using the snapshot may serve fewer.
    pub cells: Vec<CellId>,
    /// How often what changes without a catalog write is re-read: host heartbeats and
    /// building counts (catalog writes are announced by the change feed).
    pub catalog_refresh_interval: Duration,
    /// How often the whole catalog is re-read although the change feed announced no
    /// catalog write: the safety net for a writer that stopped between its write and its
    /// feed entry.
    pub catalog_resync_interval: Duration,
    /// Count BUILDING instances per host from the store at each catalog refresh.
    pub count_building_from_store: bool,
    /// Concurrent tree reads during a refresh.
    pub refresh_concurrency: usize,
    /// The multipliers the score index orders hosts by (RAM, CPU, disk, io_ops, build
    /// failures, as in [`SchedulerConfig`]): schedulers whose multipliers point the same
    /// way read the best hosts first; others still get correct, if less good, candidates.
    pub index_weights: IndexWeights,
    /// Period of the background tailer of the change feed (`None`: no tailer; the
    /// snapshot refreshes only when asked).
    pub tail_interval: Option<Duration>,
    /// Seed of the per-host tie-break of the score index (`None`: random).
    pub seed: Option<u64>,
}

/// Multipliers of the weighers that depend only on a host (see
/// [`SnapshotConfig::index_weights`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IndexWeights {
    /// `ram_weight_multiplier`.
    pub ram: f64,
    /// `cpu_weight_multiplier`.
    pub cpu: f64,
    /// `disk_weight_multiplier`.
    pub disk: f64,
    /// `io_ops_weight_multiplier`.
    pub io_ops: f64,
    /// `build_failure_weight_multiplier` (applied negated).
    pub build_failure: f64,
}

impl IndexWeights {
    /// The weights of a scheduler configuration.
    pub fn of(config: &SchedulerConfig) -> Self {
        IndexWeights {
            ram: config.ram_weight_multiplier,
            cpu: config.cpu_weight_multiplier,
            disk: config.disk_weight_multiplier,
            io_ops: config.io_ops_weight_multiplier,
            build_failure: config.build_failure_weight_multiplier,
        }
    }
}

impl SnapshotConfig {
    /// The snapshot part of a scheduler configuration, with a background tailer every
    /// `tail_interval` (`None`: none).
    pub fn from_scheduler(config: &SchedulerConfig, tail_interval: Option<Duration>) -> Self {
        SnapshotConfig {
            cells: config.cells.clone(),
            catalog_refresh_interval: config.catalog_refresh_interval,
            catalog_resync_interval: config.catalog_resync_interval,
            count_building_from_store: config.count_building_from_store,
            refresh_concurrency: config.refresh_concurrency,
            index_weights: IndexWeights::of(config),
            tail_interval,
            seed: config.seed,
        }
    }
}

/// Counters of a snapshot since it was created (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Change-feed reads.
    pub refreshes: u64,
    /// Trees of the snapshot's scope re-read (by the change feed, after a failed claim or
    /// a release). A tree of another cell named by the feed is read once, not counted, and
    /// then ignored.
    pub trees_reread: u64,
    /// Trees the change feed named that were not read because the snapshot already held
    /// the generation the feed gave for them (mostly this process's own claims).
    pub trees_skipped: u64,
    /// Trees brought up to date from the usage the change feed carried (another process's
    /// claims and releases), without reading them.
    pub trees_from_feed: u64,
    /// Full reloads (start and `Resync`).
    pub full_reloads: u64,
    /// Catalog (hosts, aggregates, cells) reloads.
    pub catalog_reloads: u64,
    /// Change-feed answers that announced a catalog write.
    pub catalog_announcements: u64,
    /// Reads of heartbeats and building counts alone (between catalog reloads).
    pub heartbeat_reads: u64,
    /// New views published (host set or structure changed).
    pub views_published: u64,
}

#[derive(Default)]
struct Counters {
    refreshes: AtomicU64,
    trees_reread: AtomicU64,
    trees_skipped: AtomicU64,
    trees_from_feed: AtomicU64,
    full_reloads: AtomicU64,
    catalog_reloads: AtomicU64,
    catalog_announcements: AtomicU64,
    heartbeat_reads: AtomicU64,
    views_published: AtomicU64,
}

/// The least time between two catalog reads the feed's announcements cause: computes
/// registering by the thousand announce a write each, and a catalog read costs in
/// proportion to the cloud; announcements that arrive sooner wait (`catalog_due`).
const CATALOG_MIN_GAP: Duration = Duration::from_millis(250);

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------
// Classes and hosts

/// What defines a class besides the shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClassKey {
    cell: CellId,
    host_az: Option<String>,
    capabilities: BTreeMap<String, String>,
    shape: Shape,
}

/// Hosts that share cell, service zone and capabilities, and tree shape.
#[derive(Debug)]
pub(crate) struct ClassInfo {
    pub cell: CellId,
    pub host_az: Option<String>,
    pub capabilities: BTreeMap<String, String>,
    pub shape: Shape,
    /// Entries of the weighed classes (MEMORY_MB, VCPU, DISK_GB).
    pub ram: Vec<u16>,
    pub cpu: Vec<u16>,
    pub disk: Vec<u16>,
}

impl ClassInfo {
    fn new(key: ClassKey) -> Self {
        let of = |rc: ResourceClass| -> Vec<u16> {
            key.shape.entries.iter().enumerate().filter(|(_, e)| e.rc == rc).map(|(i, _)| i as u16).collect()
        };
        ClassInfo {
            ram: of(ResourceClass::MemoryMb),
            cpu: of(ResourceClass::Vcpu),
            disk: of(ResourceClass::DiskGb),
            cell: key.cell,
            host_az: key.host_az,
            capabilities: key.capabilities,
            shape: key.shape,
        }
    }

    /// Aggregates of the root (they span the tree).
    pub fn root_aggregates(&self) -> impl Iterator<Item = &AggregateId> {
        self.shape.providers.first().into_iter().flat_map(|p| p.aggregates.iter())
    }
}

/// What a class gets from the catalog (aggregates, cells): recomputed with every view.
#[derive(Clone, Debug)]
pub(crate) struct ClassCatalog {
    /// The resolved zone (`None`: the scheduler's default zone).
    pub zone: Option<String>,
    /// The cell is disabled.
    pub cell_disabled: bool,
    /// Index multipliers after aggregate overrides: ram, cpu, disk, io_ops, build failure.
    pub mult: [f64; 5],
    /// The weighers' aggregate overrides for this class: per metadata key of
    /// [`weighers::METADATA_KEYS`](crate::scheduler::weighers::METADATA_KEYS) that one of
    /// its aggregates sets to a finite number, the smallest. Read once per view, where each
    /// weighing would otherwise look the key up in every aggregate of every host it weighs.
    pub numbers: Box<[(&'static str, f64)]>,
}

/// A claim of this process not yet reflected in the snapshot's confirmed state.
#[derive(Clone, Debug)]
struct Pending {
    id: u64,
    parts: Vec<(u16, i64)>,
    group: Option<GroupId>,
    /// The generation the store answered with (`None`: no answer yet).
    done: Option<u64>,
}

#[derive(Debug, Default)]
struct HostMut {
    /// Generation of the confirmed state.
    generation: u64,
    /// Replaced by a host record with another layout: writes go nowhere.
    retired: bool,
    pending: Vec<Pending>,
    /// Group member counts, confirmed plus pending.
    groups: BTreeMap<GroupId, u32>,
}

/// The changing part of a host: shared by the host records of successive views while the
/// tree's inventories keep their layout.
#[derive(Debug)]
pub(crate) struct HostDyn {
    used: Box<[AtomicI64]>,
    key: AtomicU64,
    level: AtomicU32,
    /// The class the host is indexed under (its record's class once indexed; the record
    /// of a later view may name another until the index follows).
    class: AtomicU32,
    enabled: AtomicBool,
    heartbeat_us: AtomicI64,
    io_ops: AtomicU32,
    failed_builds: AtomicU32,
    m: Mutex<HostMut>,
}

/// One host of a view.
#[derive(Debug)]
pub(crate) struct HostRec {
    pub slot: u32,
    pub root: ProviderId,
    pub class: u32,
    pub providers: Box<[ProviderId]>,
    /// Host name, node name, then provider names, joined.
    names: Box<str>,
    /// End offsets of each name in `names`.
    ends: Box<[u32]>,
    pub cap: Box<[i64]>,
    inv: Box<[u32]>,
    disabled_reason: Option<Box<str>>,
    salt: u32,
    pub d: Arc<HostDyn>,
}

impl HostRec {
    fn name_at(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.names.get(start..self.ends[i] as usize).unwrap_or("")
    }
    /// The service host name.
    pub fn name(&self) -> &str {
        self.name_at(0)
    }
    /// The node name.
    pub fn node(&self) -> &str {
        self.name_at(1)
    }
    fn free_of(&self, entries: &[u16]) -> i64 {
        entries.iter().map(|e| self.cap[*e as usize] - self.d.used[*e as usize].load(Ordering::Relaxed)).sum()
    }
    /// The current place in the index.
    pub fn place(&self) -> Place {
        Place {
            class: self.d.class.load(Ordering::Relaxed),
            level: self.d.level.load(Ordering::Relaxed),
            key: self.d.key.load(Ordering::Relaxed),
        }
    }
    fn approx_bytes(&self) -> usize {
        std::mem::size_of::<HostRec>()
            + self.providers.len() * 16
            + self.names.len()
            + self.ends.len() * 4
            + self.cap.len() * 8
            + self.inv.len() * 4
            + self.disabled_reason.as_ref().map_or(0, |r| r.len())
    }
}

impl Usage for HostRec {
    fn cap(&self, e: usize) -> i64 {
        self.cap[e]
    }
    fn used(&self, e: usize) -> i64 {
        self.d.used[e].load(Ordering::Relaxed)
    }
}

/// Group members of one request's group, by slot (a copy taken once per request).
pub(crate) type Members = HashMap<u32, u32>;

/// One compact host seen through [`HostView`].
pub(crate) struct Compact<'a> {
    pub rec: &'a HostRec,
    pub class: &'a ClassInfo,
    pub catalog: &'a ClassCatalog,
    /// The request's group and its members, if any.
    pub members: Option<(GroupId, &'a Members)>,
}

impl HostView for Compact<'_> {
    fn name(&self) -> &str {
        self.rec.name()
    }
    fn enabled(&self) -> bool {
        self.rec.d.enabled.load(Ordering::Relaxed)
    }
    fn is_up(&self, now: Timestamp, down_after: Duration) -> bool {
        Timestamp::from_micros(self.rec.d.heartbeat_us.load(Ordering::Relaxed)).plus(down_after) >= now
    }
    fn zone<'a>(&'a self, _: &'a HashMap<AggregateId, Aggregate>, default: &'a str) -> &'a str {
        self.catalog.zone.as_deref().unwrap_or(default)
    }
    fn capabilities(&self) -> &BTreeMap<String, String> {
        &self.class.capabilities
    }
    fn group_members(&self, group: GroupId) -> u32 {
        match self.members {
            Some((g, m)) if g == group => m.get(&self.rec.slot).copied().unwrap_or(0),
            _ => lock(&self.rec.d.m).groups.get(&group).copied().unwrap_or(0),
        }
    }
    fn io_ops(&self) -> u32 {
        self.rec.d.io_ops.load(Ordering::Relaxed)
    }
    fn failed_builds(&self) -> u32 {
        self.rec.d.failed_builds.load(Ordering::Relaxed)
    }
    fn free(&self, class: &ResourceClass) -> i64 {
        match class {
            ResourceClass::MemoryMb => self.rec.free_of(&self.class.ram),
            ResourceClass::Vcpu => self.rec.free_of(&self.class.cpu),
            ResourceClass::DiskGb => self.rec.free_of(&self.class.disk),
            other => {
                let es: Vec<u16> = self
                    .class
                    .shape
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| &e.rc == other)
                    .map(|(i, _)| i as u16)
                    .collect();
                self.rec.free_of(&es)
            }
        }
    }
    fn aggregate_number(&self, aggregates: &HashMap<AggregateId, Aggregate>, key: &str) -> Option<f64> {
        if aggregates.is_empty() {
            return None;
        }
        if let Some((_, v)) = self.catalog.numbers.iter().find(|(k, _)| *k == key) {
            return Some(*v);
        }
        if crate::scheduler::weighers::METADATA_KEYS.contains(&key) {
            return None;
        }
        min_metadata(self.class.root_aggregates(), aggregates, key)
    }
}

// ---------------------------------------------------------------------------------------
// Views

/// Verdicts of one request signature, per class id of one view (each compiled on first
/// use, then read without a lock: a ranking borrows them instead of counting references,
/// which on a shared cache line cost more than the compare they serve).
pub(crate) type Verdicts = Vec<OnceLock<Template>>;

/// Compiled requests by signature hash (equality of the request decides).
type VerdictCache = HashMap<u64, Vec<(CandidateRequest, Arc<Verdicts>)>>;

/// An immutable view of the hosts; swapped whole when hosts or their structure change.
pub(crate) struct View {
    /// Host records by slot (`None`: removed).
    pub hosts: Vec<Option<Arc<HostRec>>>,
    pub by_root: HashMap<ProviderId, u32>,
    pub by_name: HashMap<Box<str>, u32>,
    /// Every class ever seen (ids are stable).
    pub classes: Vec<Arc<ClassInfo>>,
    /// Per class: its catalog facts and its hosts.
    pub class_catalog: Vec<ClassCatalog>,
    pub class_hosts: Vec<Vec<u32>>,
    pub aggregates: HashMap<AggregateId, Aggregate>,
    pub cells: HashMap<CellId, Cell>,
    /// Interned inventories (for materializing trees).
    inventories: Arc<Vec<Inventory>>,
    /// Trees whose host record is not known (yet): not schedulable.
    unhosted: HashMap<ProviderId, ProviderTree>,
    /// Service records whose tree is not known (yet).
    treeless: HashMap<ProviderId, Host>,
    /// Compiled requests of this view, by signature.
    verdicts: Mutex<VerdictCache>,
    /// Schedulable hosts.
    pub live: usize,
}

impl View {
    fn empty() -> Self {
        View {
            hosts: Vec::new(),
            by_root: HashMap::new(),
            by_name: HashMap::new(),
            classes: Vec::new(),
            class_catalog: Vec::new(),
            class_hosts: Vec::new(),
            aggregates: HashMap::new(),
            cells: HashMap::new(),
            inventories: Arc::new(Vec::new()),
            unhosted: HashMap::new(),
            treeless: HashMap::new(),
            verdicts: Mutex::new(HashMap::new()),
            live: 0,
        }
    }

    /// The record in `slot`.
    pub fn rec(&self, slot: u32) -> Option<&Arc<HostRec>> {
        self.hosts.get(slot as usize).and_then(Option::as_ref)
    }

    /// The host named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<HostRec>> {
        self.by_name.get(name).and_then(|s| self.rec(*s))
    }

    /// The compact view of `rec`.
    pub fn compact<'a>(&'a self, rec: &'a HostRec, members: Option<(GroupId, &'a Members)>) -> Compact<'a> {
        Compact {
            rec,
            class: &self.classes[rec.class as usize],
            catalog: &self.class_catalog[rec.class as usize],
            members,
        }
    }

    /// The template of `req` for class `class` (compiled once per view and signature).
    pub fn verdicts(&self, req: &CandidateRequest) -> Arc<Verdicts> {
        let sig = signature(req);
        let mut cache = lock(&self.verdicts);
        if cache.len() > 4096 {
            cache.clear();
        }
        let bucket = cache.entry(sig).or_default();
        if let Some((_, v)) = bucket.iter().find(|(r, _)| r == req) {
            return v.clone();
        }
        let v: Arc<Verdicts> = Arc::new(self.classes.iter().map(|_| OnceLock::new()).collect());
        bucket.push((req.clone(), v.clone()));
        v
    }

    /// The template of `req` (whose verdicts, taken from this view, are `verdicts`) for
    /// `class`; `None` for a class this view does not have.
    pub fn template<'v>(&self, verdicts: &'v Verdicts, req: &CandidateRequest, class: u32) -> Option<&'v Template> {
        let c = class as usize;
        let shape = &self.classes.get(c)?.shape;
        Some(verdicts.get(c)?.get_or_init(|| Template::compile(shape, req)))
    }

    /// A materialized host (service record and tree with usage and group counts).
    pub fn host_state(&self, rec: &HostRec) -> HostState {
        let class = &self.classes[rec.class as usize];
        let m = lock(&rec.d.m);
        let mut providers: Vec<ProviderNode> = class
            .shape
            .providers
            .iter()
            .enumerate()
            .map(|(i, p)| ProviderNode {
                id: rec.providers[i],
                name: rec.name_at(2 + i).to_string(),
                parent: p.parent.map(|x| rec.providers[x as usize]),
                traits: p.traits.clone(),
                aggregates: p.aggregates.clone(),
                inventories: BTreeMap::new(),
                usages: BTreeMap::new(),
            })
            .collect();
        for (e, entry) in class.shape.entries.iter().enumerate() {
            let node = &mut providers[entry.slot as usize];
            let inv = self.inventories.get(rec.inv[e] as usize).copied().unwrap_or_default();
            node.inventories.insert(entry.rc.clone(), inv);
            let used = rec.d.used[e].load(Ordering::Relaxed);
            if used > 0 {
                node.usages.insert(entry.rc.clone(), used);
            }
        }
        let tree = ProviderTree {
            root: rec.root,
            generation: m.generation,
            cell: Some(class.cell),
            providers,
            groups: m.groups.clone(),
        };
        drop(m);
        let host = Host {
            name: rec.name().to_string(),
            cell: class.cell,
            root_provider: rec.root,
            node: rec.node().to_string(),
            enabled: rec.d.enabled.load(Ordering::Relaxed),
            disabled_reason: rec.disabled_reason.as_deref().map(str::to_string),
            last_heartbeat: Timestamp::from_micros(rec.d.heartbeat_us.load(Ordering::Relaxed)),
            availability_zone: class.host_az.clone(),
            capabilities: class.capabilities.clone(),
        };
        HostState {
            host,
            tree,
            io_ops: rec.d.io_ops.load(Ordering::Relaxed),
            failed_builds: rec.d.failed_builds.load(Ordering::Relaxed),
        }
    }
}

/// A hash of a candidate request (its signature; equality decides).
fn signature(req: &CandidateRequest) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for g in &req.groups {
        g.suffix.hash(&mut h);
        g.resources.hash(&mut h);
        g.required.hash(&mut h);
        g.forbidden.hash(&mut h);
    }
    req.isolate.hash(&mut h);
    req.member_of.hash(&mut h);
    req.forbidden_aggregates.hash(&mut h);
    req.budget.hash(&mut h);
    h.finish()
}

// ---------------------------------------------------------------------------------------
// Score index

/// Levels of the score index: a host's level is its io_ops (capped).
pub(crate) const LEVELS: usize = 16;

/// Where a walk stands in each level: the last `(key, slot)` it read.
pub(crate) type Cursors = [Option<(u64, u32)>; LEVELS];

/// One ordered set of `(key, slot)` per io_ops level, with a flag per level saying whether
/// it holds anything: a walk skips empty levels without taking their locks (most hosts sit
/// on a few levels).
#[derive(Default)]
struct Levels([Mutex<BTreeSet<(u64, u32)>>; LEVELS], [AtomicBool; LEVELS]);

impl Levels {
    fn insert(&self, level: u32, key: u64, slot: u32) {
        let l = level as usize;
        let mut s = lock(&self.0[l]);
        s.insert((key, slot));
        self.1[l].store(true, Ordering::Relaxed);
    }

    fn remove(&self, level: u32, key: u64, slot: u32) {
        let l = level as usize;
        let mut s = lock(&self.0[l]);
        s.remove(&(key, slot));
        self.1[l].store(!s.is_empty(), Ordering::Relaxed);
    }

    fn moved(&self, old: (u32, u64), new: (u32, u64), slot: u32) {
        if old == new {
            return;
        }
        if old.0 == new.0 {
            let mut s = lock(&self.0[old.0 as usize]);
            s.remove(&(old.1, slot));
            s.insert((new.1, slot));
        } else {
            self.remove(old.0, old.1, slot);
            self.insert(new.0, new.1, slot);
        }
    }

    fn clear(&self) {
        for (s, f) in self.0.iter().zip(&self.1) {
            lock(s).clear();
            f.store(false, Ordering::Relaxed);
        }
    }

    fn len(&self) -> usize {
        self.0.iter().map(|s| lock(s).len()).sum()
    }

    /// See [`ScoreIndex::next_batch`].
    fn next_batch(
        &self,
        cursors: &mut Cursors,
        per_level: usize,
        descending: bool,
        out: &mut Vec<(u32, u64, u32)>,
    ) -> bool {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut any = false;
        for (i, level) in self.0.iter().enumerate() {
            // A level filled since the flag was read is missed by this batch only: the
            // walk is best first approximately, the weighing that follows is exact.
            if !self.1[i].load(Ordering::Relaxed) {
                continue;
            }
            let s = lock(level);
            if s.is_empty() {
                continue;
            }
            let before = out.len();
            let tag = |e: &(u64, u32)| (i as u32, e.0, e.1);
            match (descending, cursors[i]) {
                (true, Some(c)) => out.extend(s.range(..c).rev().take(per_level).map(tag)),
                (true, None) => out.extend(s.iter().rev().take(per_level).map(tag)),
                (false, Some(c)) => out.extend(s.range((Excluded(c), Unbounded)).take(per_level).map(tag)),
                (false, None) => out.extend(s.iter().take(per_level).map(tag)),
            }
            drop(s);
            if let Some(last) = out.get(before..).and_then(|x| x.last()) {
                cursors[i] = Some((last.1, last.2));
                any = true;
            }
        }
        any
    }
}

/// Hosts ordered by an approximation of their weight without the io_ops weigher (higher
/// first), in one set per io_ops level, once over the whole cloud and once per host class.
/// The io_ops weigher normalizes over the range of io_ops, which moves with every claim;
/// kept apart, it becomes an offset per level applied when the levels are merged (by the
/// scheduler's walk), so a change of the range never re-keys every host. The per-class
/// sets serve requests only a few classes can serve (a flavor only some hosts fit, a zone,
/// a cell's alternates): those walk their classes' sets, so their cost follows the hosts
/// they take, not the size of the classes or of the cloud.
#[derive(Default)]
pub(crate) struct ScoreIndex {
    all: Levels,
    by_class: RwLock<Vec<Levels>>,
}

/// Where one host sits in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    /// The host's class when it was indexed.
    pub class: u32,
    pub level: u32,
    pub key: u64,
}

impl ScoreIndex {
    /// Runs `f` on the sets of `class`, created on first use.
    fn with_class<R>(&self, class: u32, f: impl FnOnce(&Levels) -> R) -> R {
        let c = class as usize;
        {
            let classes = self.by_class.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(l) = classes.get(c) {
                return f(l);
            }
        }
        let mut classes = self.by_class.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if classes.len() <= c {
            classes.resize_with(c + 1, Levels::default);
        }
        f(&classes[c])
    }

    fn insert(&self, p: Place, slot: u32) {
        self.all.insert(p.level, p.key, slot);
        self.with_class(p.class, |l| l.insert(p.level, p.key, slot));
    }

    fn remove(&self, p: Place, slot: u32) {
        self.all.remove(p.level, p.key, slot);
        self.with_class(p.class, |l| l.remove(p.level, p.key, slot));
    }

    fn moved(&self, old: Place, new: Place, slot: u32) {
        if old == new {
            return;
        }
        self.all.moved((old.level, old.key), (new.level, new.key), slot);
        if old.class == new.class {
            self.with_class(old.class, |l| l.moved((old.level, old.key), (new.level, new.key), slot));
        } else {
            self.with_class(old.class, |l| l.remove(old.level, old.key, slot));
            self.with_class(new.class, |l| l.insert(new.level, new.key, slot));
        }
    }

    fn clear(&self) {
        self.all.clear();
        for l in self.by_class.read().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
            l.clear();
        }
    }

    /// Entries of every level from the best (`descending`) or the worst, strictly past
    /// each level's cursor, at most `per_level` from each, as `(level, key, slot)`.
    /// Cursors advance; false when every level is exhausted.
    pub fn next_batch(
        &self,
        cursors: &mut Cursors,
        per_level: usize,
        descending: bool,
        out: &mut Vec<(u32, u64, u32)>,
    ) -> bool {
        self.all.next_batch(cursors, per_level, descending, out)
    }

    /// [`next_batch`](Self::next_batch) over the hosts of one class.
    pub fn next_batch_of(
        &self,
        class: u32,
        cursors: &mut Cursors,
        per_level: usize,
        descending: bool,
        out: &mut Vec<(u32, u64, u32)>,
    ) -> bool {
        let classes = self.by_class.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        classes.get(class as usize).is_some_and(|l| l.next_batch(cursors, per_level, descending, out))
    }

    /// Entries in the whole-cloud sets (each host is also in its class's sets).
    fn len(&self) -> usize {
        self.all.len()
    }
}

/// The inverse of [`ordered`] (up to the tie-break bits).
pub(crate) fn unordered(k: u64) -> f64 {
    let b = if k >> 63 == 1 { k & !(1 << 63) } else { !k };
    f64::from_bits(b)
}

/// An `f64` as a `u64` with the same order.
fn ordered(x: f64) -> u64 {
    let b = if x.is_nan() { 0f64.to_bits() } else { x.to_bits() };
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

// ---------------------------------------------------------------------------------------
// Group index

const GROUP_SHARDS: usize = 16;

#[derive(Default)]
struct GroupIndex {
    shards: [Mutex<HashMap<GroupId, Members>>; GROUP_SHARDS],
}

impl GroupIndex {
    fn shard(&self, g: &GroupId) -> &Mutex<HashMap<GroupId, Members>> {
        let (a, b) = g.0.as_u64_pair();
        &self.shards[((a ^ b) % GROUP_SHARDS as u64) as usize]
    }

    fn set(&self, g: GroupId, slot: u32, n: u32) {
        let mut s = lock(self.shard(&g));
        if n == 0 {
            if let Some(m) = s.get_mut(&g) {
                m.remove(&slot);
                if m.is_empty() {
                    s.remove(&g);
                }
            }
        } else {
            s.entry(g).or_default().insert(slot, n);
        }
    }

    fn members(&self, g: GroupId) -> Members {
        lock(self.shard(&g)).get(&g).cloned().unwrap_or_default()
    }

    fn clear(&self) {
        for s in &self.shards {
            lock(s).clear();
        }
    }

    fn approx_bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(s).values().map(|m| 64 + m.len() * 16).sum::<usize>()).sum()
    }
}

// ---------------------------------------------------------------------------------------
// The snapshot

struct Refresher {
    cursor: ChangeCursor,
    last_catalog: Instant,
    /// Last read of heartbeats and building counts (a catalog read is one too).
    last_live: Instant,
    /// The feed announced a catalog write not read yet (see [`CATALOG_MIN_GAP`]).
    catalog_due: bool,
    classes: HashMap<ClassKey, u32>,
    inventories: HashMap<[u64; 6], u32>,
    next_slot: u32,
}

struct Freshness {
    last_refresh: Instant,
    /// Start of the last refresh that completed: the snapshot holds every change the store
    /// had committed before this instant.
    fresh_as_of: Option<Instant>,
}

/// Reference scales of the index score (the largest capacity of each weighed class).
struct Scales {
    ram: f64,
    cpu: f64,
    disk: f64,
}

/// The host state of a process, shared by its schedulers. See the module documentation.
///
/// ```no_run
/// # async fn f(store: std::sync::Arc<dyn unicell::store::Store>) -> unicell::Result<()> {
/// use unicell::scheduler::{Scheduler, SchedulerConfig, SharedSnapshot, SnapshotConfig};
/// let config = SchedulerConfig::default();
/// let snapshot = SharedSnapshot::open(
///     store,
///     SnapshotConfig::from_scheduler(&config, Some(std::time::Duration::from_millis(5))),
/// )
/// .await?;
/// let a = Scheduler::with_snapshot(snapshot.clone(), config.clone())?;
/// let b = Scheduler::with_snapshot(snapshot, config)?;
/// # Ok(()) }
/// ```
pub struct SharedSnapshot {
    store: Arc<dyn Store>,
    config: SnapshotConfig,
    view: ArcSwap<View>,
    pub(crate) index: ScoreIndex,
    groups: GroupIndex,
    refresher: tokio::sync::Mutex<Refresher>,
    freshness: Mutex<Freshness>,
    scales: Mutex<Scales>,
    counters: Counters,
    next_pending: AtomicU64,
    salt_seed: u64,
    /// The largest io_ops seen since the last catalog read (the io_ops weigher's range).
    io_max: AtomicU32,
    /// Roots of trees outside the scope (read once from the feed).
    foreign: Mutex<std::collections::HashSet<ProviderId>>,
    tailer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for SharedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSnapshot")
            .field("store", &self.store.describe())
            .field("hosts", &self.view.load().live)
            .finish_non_exhaustive()
    }
}

impl Drop for SharedSnapshot {
    fn drop(&mut self) {
        if let Some(h) = lock(&self.tailer).take() {
            h.abort();
        }
    }
}

/// A reservation of this process on one host (a claim in flight).
#[derive(Debug)]
pub(crate) struct Reservation {
    pub id: u64,
    pub dyn_: Arc<HostDyn>,
    pub root: ProviderId,
}

impl SharedSnapshot {
    /// Loads a snapshot of the store (every tree, host, aggregate and cell of
    /// `config.cells`) and, with `config.tail_interval`, starts the background task that
    /// tails the change feed (it stops when the last handle is dropped).
    pub async fn open(store: Arc<dyn Store>, config: SnapshotConfig) -> Result<Arc<SharedSnapshot>> {
        let snap = Arc::new(Self::load(store, config).await?);
        if let Some(period) = snap.config.tail_interval {
            let weak = Arc::downgrade(&snap);
            let handle = tokio::spawn(tail(weak, period));
            *lock(&snap.tailer) = Some(handle);
        }
        Ok(snap)
    }

    /// Loads a snapshot without a tailer (refreshed by its scheduler's requests).
    pub(crate) async fn load(store: Arc<dyn Store>, config: SnapshotConfig) -> Result<SharedSnapshot> {
        let salt_seed = config.seed.unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
        let snap = SharedSnapshot {
            store,
            view: ArcSwap::from_pointee(View::empty()),
            index: ScoreIndex::default(),
            groups: GroupIndex::default(),
            refresher: tokio::sync::Mutex::new(Refresher {
                cursor: ChangeCursor(String::new()),
                last_catalog: Instant::now(),
                last_live: Instant::now(),
                catalog_due: false,
                classes: HashMap::new(),
                inventories: HashMap::new(),
                next_slot: 0,
            }),
            freshness: Mutex::new(Freshness { last_refresh: Instant::now(), fresh_as_of: None }),
            scales: Mutex::new(Scales { ram: 1.0, cpu: 1.0, disk: 1.0 }),
            counters: Counters::default(),
            next_pending: AtomicU64::new(1),
            salt_seed,
            io_max: AtomicU32::new(0),
            foreign: Mutex::new(Default::default()),
            tailer: Mutex::new(None),
            config,
        };
        {
            let mut r = snap.refresher.lock().await;
            let started = Instant::now();
            snap.full_reload(&mut r).await?;
            let mut f = lock(&snap.freshness);
            f.fresh_as_of = Some(started);
            f.last_refresh = started;
        }
        Ok(snap)
    }

    /// The configuration.
    pub fn config(&self) -> &SnapshotConfig {
        &self.config
    }

    /// The store the snapshot reads.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Counters since creation.
    pub fn stats(&self) -> SnapshotStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SnapshotStats {
            refreshes: g(&c.refreshes),
            trees_reread: g(&c.trees_reread),
            trees_skipped: g(&c.trees_skipped),
            trees_from_feed: g(&c.trees_from_feed),
            full_reloads: g(&c.full_reloads),
            catalog_reloads: g(&c.catalog_reloads),
            catalog_announcements: g(&c.catalog_announcements),
            heartbeat_reads: g(&c.heartbeat_reads),
            views_published: g(&c.views_published),
        }
    }

    /// Schedulable hosts (a host record and a tree).
    pub fn known_hosts(&self) -> usize {
        self.view.load().live
    }

    /// Host classes seen so far.
    pub fn classes(&self) -> usize {
        self.view.load().classes.len()
    }

    /// An estimate of the memory the snapshot holds, in bytes: host records and their
    /// dynamic parts, names, classes, maps and indexes (allocator overhead not included).
    pub fn memory_bytes(&self) -> usize {
        let v = self.view.load();
        let mut total = std::mem::size_of::<View>() + v.hosts.capacity() * 8;
        for rec in v.hosts.iter().flatten() {
            total += rec.approx_bytes();
            total += std::mem::size_of::<HostDyn>() + 16 + rec.d.used.len() * 8;
            let m = lock(&rec.d.m);
            total += m.groups.len() * 48 + m.pending.len() * 96;
        }
        // Hash maps: key, value and a control byte per bucket, at the load factor.
        let map_entry = |k: usize, v: usize| (k + v + 1) * 8 / 7;
        total += v.by_root.capacity() * map_entry(16, 4);
        total += v.by_name.capacity() * map_entry(16, 4) + v.by_name.keys().map(|k| k.len()).sum::<usize>();
        for c in &v.classes {
            total += std::mem::size_of::<ClassInfo>()
                + c.shape.providers.iter().map(|p| 64 + p.traits.len() * 48 + p.aggregates.len() * 40).sum::<usize>()
                + c.shape.entries.len() * 64;
        }
        total += v.class_hosts.iter().map(|h| h.capacity() * 4 + 24).sum::<usize>();
        total += v.unhosted.len() * 2048 + v.treeless.len() * 512;
        // BTreeSet entries (16 bytes) with node overhead, in the whole-cloud and the class sets.
        total += self.index.len() * 48;
        total += self.groups.approx_bytes();
        total
    }

    /// A materialized host, by name.
    pub fn host_state(&self, name: &str) -> Option<HostState> {
        let v = self.view.load();
        v.by_name(name).map(|rec| v.host_state(rec))
    }

    pub(crate) fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Members of `group` per slot (a copy).
    pub(crate) fn group_members(&self, group: GroupId) -> Members {
        self.groups.members(group)
    }

    // ---- freshness -------------------------------------------------------------------

    /// Brings the snapshot up to date: the trees the store's change feed names since the
    /// last refresh are re-read (a full reload when the feed answers `Resync`); the catalog
    /// is re-read when the feed announces a catalog write, an unknown tree appeared or
    /// `catalog_resync_interval` passed, else heartbeats and building counts alone every
    /// `catalog_refresh_interval`.
    pub async fn refresh(&self) -> Result<()> {
        let mut r = self.refresher.lock().await;
        self.refresh_locked(&mut r).await
    }

    /// Refreshes unless the snapshot holds every change committed before this call's
    /// arrival (a refresh that started after it completed meanwhile), or the last refresh
    /// is younger than `min_interval`. Concurrent callers share refreshes.
    pub(crate) async fn maybe_refresh(&self, min_interval: Duration) -> Result<()> {
        let arrived = Instant::now();
        if !min_interval.is_zero() && lock(&self.freshness).last_refresh.elapsed() < min_interval {
            return Ok(());
        }
        let mut r = self.refresher.lock().await;
        {
            let f = lock(&self.freshness);
            if f.fresh_as_of.is_some_and(|t| t >= arrived) {
                return Ok(());
            }
            if !min_interval.is_zero() && f.last_refresh.elapsed() < min_interval {
                return Ok(());
            }
        }
        self.refresh_locked(&mut r).await
    }

    async fn refresh_locked(&self, r: &mut Refresher) -> Result<()> {
        let started = Instant::now();
        lock(&self.freshness).last_refresh = started;
        match self.store.changes_since(&r.cursor).await? {
            Changes::Resync => {
                tracing::info!("change feed answered Resync: full reload");
                self.full_reload(r).await?;
            }
            Changes::Trees { roots, generations, usages, catalog, next } => {
                bump(&self.counters.refreshes, 1);
                let roots = self.not_yet_held(roots, &generations);
                let roots = self.apply_feed_usages(roots, &usages);
                let unknown = if roots.is_empty() {
                    false
                } else {
                    let trees = self.read_trees(roots).await?;
                    self.apply_trees(r, trees)
                };
                r.cursor = next;
                if catalog {
                    bump(&self.counters.catalog_announcements, 1);
                    r.catalog_due = true;
                }
                let announced = r.catalog_due && r.last_catalog.elapsed() >= CATALOG_MIN_GAP;
                // A new tree without a host record is a compute registering (its record
                // comes next, announced) or a provider of Placement's alone: one read each.
                // Trees left waiting are not polled for: a record is announced when written
                // (a writer that stopped before announcing it is the resync's to find).
                if announced || unknown || r.last_catalog.elapsed() >= self.config.catalog_resync_interval {
                    self.reload_catalog(r).await?;
                } else if r.last_live.elapsed() >= self.config.catalog_refresh_interval {
                    self.reload_live(r).await?;
                }
            }
        }
        lock(&self.freshness).fresh_as_of = Some(started);
        Ok(())
    }

    /// The roots of a feed answer this snapshot must read: those the feed gives no
    /// generation for, and those whose host holds an older confirmed generation. A tree this
    /// process just claimed on is usually already at the feed's generation (the claim was
    /// confirmed with the generation the store returned), so it is not read again.
    fn not_yet_held(&self, roots: Vec<ProviderId>, generations: &BTreeMap<ProviderId, u64>) -> Vec<ProviderId> {
        if generations.is_empty() {
            return roots;
        }
        let view = self.view();
        let before = roots.len();
        let out: Vec<ProviderId> = roots
            .into_iter()
            .filter(|root| {
                let Some(&g) = generations.get(root) else {
                    return true;
                };
                let Some(rec) = view.by_root.get(root).and_then(|s| view.rec(*s)) else {
                    return true;
                };
                let m = lock(&rec.d.m);
                m.retired || m.generation < g
            })
            .collect();
        bump(&self.counters.trees_skipped, (before - out.len()) as u64);
        out
    }

    /// Applies the usage the feed carried to the trees this snapshot holds with their
    /// current structure (held at the usage's `usage_only_since` or later); returns the
    /// roots that must still be read: new trees, trees whose structure changed, trees the
    /// feed gave no usage for.
    fn apply_feed_usages(&self, roots: Vec<ProviderId>, usages: &BTreeMap<ProviderId, TreeUsage>) -> Vec<ProviderId> {
        if usages.is_empty() {
            return roots;
        }
        let view = self.view();
        let mut applied = 0;
        let out: Vec<ProviderId> = roots
            .into_iter()
            .filter(|root| {
                let (Some(u), Some(rec)) = (usages.get(root), view.by_root.get(root).and_then(|s| view.rec(*s))) else {
                    return true;
                };
                // Every provider the usage names must be one of the host's (a provider
                // added or moved in is a structural write, so this only guards the backend).
                if !u.used.keys().all(|p| rec.providers.contains(p)) {
                    return true;
                }
                let class = &view.classes[rec.class as usize];
                let mut m = lock(&rec.d.m);
                if m.retired || m.generation < u.usage_only_since {
                    return true;
                }
                let used: Vec<i64> = class
                    .shape
                    .entries
                    .iter()
                    .map(|entry| {
                        let provider = rec.providers.get(entry.slot as usize);
                        provider.and_then(|p| u.used.get(p)).and_then(|r| r.get(&entry.rc)).copied().unwrap_or(0)
                    })
                    .collect();
                set_usage(&self.groups, &rec.d, &mut m, rec.slot, &used, u.generation, &u.groups);
                self.rekey_locked(&view, rec, &m);
                applied += 1;
                false
            })
            .collect();
        bump(&self.counters.trees_from_feed, applied);
        out
    }

    /// Forces a catalog reload (hosts, aggregates, cells, building counts).
    pub async fn refresh_catalog(&self) -> Result<()> {
        let mut r = self.refresher.lock().await;
        self.reload_catalog(&mut r).await
    }

    /// Re-reads some trees now (after a failed claim or a release).
    pub(crate) async fn refresh_trees(&self, roots: Vec<ProviderId>) -> Result<()> {
        let trees = self.read_trees(roots).await?;
        let structural = self.apply_usage(trees);
        if !structural.is_empty() {
            let mut r = self.refresher.lock().await;
            self.apply_structural(&mut r, structural);
        }
        Ok(())
    }

    fn in_scope(&self, cell: Option<CellId>) -> bool {
        self.config.cells.is_empty() || cell.is_some_and(|c| self.config.cells.contains(&c))
    }

    fn scopes(&self) -> Vec<Option<CellId>> {
        if self.config.cells.is_empty() { vec![None] } else { self.config.cells.iter().copied().map(Some).collect() }
    }

    async fn read_trees(&self, roots: Vec<ProviderId>) -> Result<Vec<(ProviderId, Option<ProviderTree>)>> {
        let roots: Vec<ProviderId> = {
            let foreign = lock(&self.foreign);
            roots.into_iter().filter(|r| !foreign.contains(r)).collect()
        };
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

    /// `read` of every scope of the snapshot, concatenated. A cell whose part of the store
    /// does not answer (a retryable error) is left out of this read with a warning naming
    /// `what`: its hosts keep their last state until it answers again (Nova's HostManager
    /// skips such a cell), and the other cells keep scheduling.
    async fn read_scopes<T, F, Fut>(&self, what: &str, read: F) -> Result<Vec<T>>
    where
        F: Fn(Option<CellId>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>>>,
    {
        let mut out = Vec::new();
        for scope in self.scopes() {
            match read(scope).await {
                Ok(items) => out.extend(items),
                Err(e) if e.is_retryable() && scope.is_some() => {
                    tracing::warn!(cell = ?scope, error = %e, "cannot read a cell's {what}; left out of this read");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn load_catalog(&self) -> Result<(Vec<Host>, Vec<Aggregate>, Vec<Cell>, HashMap<String, u32>)> {
        let hosts = self.read_scopes("hosts", |scope| self.store.list_hosts(scope)).await?;
        let aggregates = self.store.list_aggregates().await?;
        let cells = self.store.list_cells().await?;
        let building = self.building_counts().await?;
        bump(&self.counters.catalog_reloads, 1);
        Ok((hosts, aggregates, cells, building))
    }

    /// BUILDING instances per host, from the store with `count_building_from_store`, else
    /// none (io_ops then count this process's own claims since this read).
    async fn building_counts(&self) -> Result<HashMap<String, u32>> {
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
                            partial: false,
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
        Ok(building)
    }

    /// Re-reads what changes without a catalog write: every host's heartbeat and building
    /// count. Applied in place (no new view: the host set and classes are unchanged).
    async fn reload_live(&self, r: &mut Refresher) -> Result<()> {
        let beats: HashMap<String, Timestamp> =
            self.read_scopes("heartbeats", |scope| self.store.host_heartbeats(scope)).await?.into_iter().collect();
        let building = self.building_counts().await?;
        r.last_live = Instant::now();
        let view = self.view();
        for rec in view.hosts.iter().flatten() {
            if let Some(at) = beats.get(rec.name()) {
                rec.d.heartbeat_us.fetch_max(at.as_micros(), Ordering::Relaxed);
            }
            let io = building.get(rec.name()).copied().unwrap_or(0);
            if rec.d.io_ops.swap(io, Ordering::Relaxed) != io {
                self.rekey(&view, rec);
            }
        }
        let max = view.hosts.iter().flatten().map(|h| h.d.io_ops.load(Ordering::Relaxed)).max().unwrap_or(0);
        self.io_max.store(max, Ordering::Relaxed);
        bump(&self.counters.heartbeat_reads, 1);
        Ok(())
    }

    async fn full_reload(&self, r: &mut Refresher) -> Result<()> {
        let cursor = self.store.change_cursor().await?;
        let mut trees = Vec::new();
        for scope in self.scopes() {
            trees.extend(self.store.list_provider_trees(scope).await?);
        }
        let (hosts, aggregates, cells, building) = self.load_catalog().await?;
        // Build failures are reported by conductors, not read from the store: keep them.
        let old = self.view();
        let failures: HashMap<String, u32> = old
            .hosts
            .iter()
            .flatten()
            .filter_map(|h| {
                let n = h.d.failed_builds.load(Ordering::Relaxed);
                (n > 0).then(|| (h.name().to_string(), n))
            })
            .collect();
        self.index.clear();
        self.groups.clear();
        self.io_max.store(0, Ordering::Relaxed);
        r.classes.clear();
        r.inventories.clear();
        r.next_slot = 0;
        {
            let mut s = lock(&self.scales);
            let max = |rc: &ResourceClass| -> f64 {
                trees
                    .iter()
                    .map(|t| {
                        t.providers
                            .iter()
                            .filter_map(|p| p.inventories.get(rc).map(Inventory::capacity))
                            .fold(0i64, i64::saturating_add)
                    })
                    .max()
                    .unwrap_or(1)
                    .max(1) as f64
            };
            s.ram = max(&ResourceClass::MemoryMb);
            s.cpu = max(&ResourceClass::Vcpu);
            s.disk = max(&ResourceClass::DiskGb);
        }
        let mut b = Builder::new(self, r, &View::empty());
        b.aggregates = aggregates.into_iter().map(|a| (a.id, a)).collect();
        b.cells = cells.into_iter().map(|c| (c.id, c)).collect();
        let mut by_root: HashMap<ProviderId, ProviderTree> = trees.into_iter().map(|t| (t.root, t)).collect();
        let mut hosts = hosts;
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        for h in hosts {
            match by_root.remove(&h.root_provider) {
                Some(t) if self.in_scope(t.cell) => {
                    let io = building.get(&h.name).copied().unwrap_or(0);
                    let fb = failures.get(&h.name).copied().unwrap_or(0);
                    b.add_host(h, &t, io, fb, None);
                }
                Some(t) => {
                    b.treeless.insert(h.root_provider, h);
                    drop(t);
                }
                None => {
                    b.treeless.insert(h.root_provider, h);
                }
            }
        }
        for (root, t) in by_root {
            if self.in_scope(t.cell) {
                b.unhosted.insert(root, t);
            }
        }
        let view = b.finish();
        self.publish(view);
        r.cursor = cursor;
        r.last_catalog = Instant::now();
        r.last_live = r.last_catalog;
        r.catalog_due = false;
        bump(&self.counters.full_reloads, 1);
        tracing::debug!(hosts = self.known_hosts(), "scheduler snapshot loaded");
        Ok(())
    }

    async fn reload_catalog(&self, r: &mut Refresher) -> Result<()> {
        let (hosts, aggregates, cells, building) = self.load_catalog().await?;
        // Announcements read so far are covered: this read started after them (and no
        // feed read runs meanwhile: both hold the refresher).
        r.catalog_due = false;
        r.last_catalog = Instant::now();
        r.last_live = r.last_catalog;
        let old = self.view();
        let mut b = Builder::new(self, r, &old);
        b.aggregates = aggregates.into_iter().map(|a| (a.id, a)).collect();
        b.cells = cells.into_iter().map(|c| (c.id, c)).collect();
        let mut seen: BTreeSet<ProviderId> = BTreeSet::new();
        let mut hosts = hosts;
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        for h in hosts {
            seen.insert(h.root_provider);
            let io = building.get(&h.name).copied().unwrap_or(0);
            if let Some(rec) = old.by_root.get(&h.root_provider).and_then(|s| old.rec(*s)).cloned() {
                let class = &old.classes[rec.class as usize];
                let same = rec.name() == h.name
                    && rec.node() == h.node
                    && class.cell == h.cell
                    && class.host_az == h.availability_zone
                    && class.capabilities == h.capabilities
                    && rec.disabled_reason.as_deref() == h.disabled_reason.as_deref();
                if same {
                    rec.d.enabled.store(h.enabled, Ordering::Relaxed);
                    rec.d.heartbeat_us.store(h.last_heartbeat.as_micros(), Ordering::Relaxed);
                    if rec.d.io_ops.swap(io, Ordering::Relaxed) != io {
                        self.rekey(&old, &rec);
                    }
                } else {
                    // Re-record the host with its current tree (materialized from the
                    // snapshot: usage and generation carry over).
                    let tree = old.host_state(&rec).tree;
                    let fb = rec.d.failed_builds.load(Ordering::Relaxed);
                    b.add_host(h, &tree, io, fb, Some(&rec));
                }
            } else if let Some(t) = b.unhosted.remove(&h.root_provider) {
                b.treeless.remove(&h.root_provider);
                b.add_host(h, &t, io, 0, None);
            } else {
                b.treeless.insert(h.root_provider, h);
            }
        }
        // Hosts whose record disappeared: their trees wait for a record again.
        let gone: Vec<Arc<HostRec>> = old.hosts.iter().flatten().filter(|h| !seen.contains(&h.root)).cloned().collect();
        for rec in gone {
            let tree = old.host_state(&rec).tree;
            b.remove_slot(rec.slot);
            b.unhosted.insert(rec.root, tree);
        }
        b.treeless.retain(|root, _| seen.contains(root));
        let view = b.finish();
        // io_ops were re-read: their range starts again from what the hosts hold.
        let max = view.hosts.iter().flatten().map(|h| h.d.io_ops.load(Ordering::Relaxed)).max().unwrap_or(0);
        self.io_max.store(max, Ordering::Relaxed);
        self.publish(view);
        Ok(())
    }

    /// Applies the trees whose structure did not change (usage and group counts only,
    /// no new view); returns the others.
    fn apply_usage(&self, trees: Vec<(ProviderId, Option<ProviderTree>)>) -> Vec<(ProviderId, Option<ProviderTree>)> {
        let old = self.view();
        let mut structural = Vec::new();
        let mut reread = 0;
        for (root, tree) in trees {
            let rec = old.by_root.get(&root).and_then(|s| old.rec(*s));
            match &tree {
                // A tree of another cell (the feed is not scoped): never read it again, a
                // tree does not change cells.
                Some(t) if !self.in_scope(t.cell) => {
                    lock(&self.foreign).insert(root);
                }
                _ => reread += 1,
            }
            match (rec, tree) {
                (Some(rec), Some(t)) if self.in_scope(t.cell) && same_structure(&old, rec, &t) => {
                    self.apply_tree(&old, rec, &t);
                }
                (None, Some(t))
                    if self.in_scope(t.cell)
                        && old.unhosted.get(&root).is_some_and(|u| u.generation >= t.generation) => {}
                (_, t) => structural.push((root, t)),
            }
        }
        bump(&self.counters.trees_reread, reread);
        structural
    }

    /// Applies freshly read trees; returns true when a tree not seen before has no known
    /// host record (a new compute: the catalog should be re-read).
    fn apply_trees(&self, r: &mut Refresher, trees: Vec<(ProviderId, Option<ProviderTree>)>) -> bool {
        let structural = self.apply_usage(trees);
        self.apply_structural(r, structural)
    }

    fn apply_structural(&self, r: &mut Refresher, structural: Vec<(ProviderId, Option<ProviderTree>)>) -> bool {
        if structural.is_empty() {
            return false;
        }
        let old = self.view();
        let mut unknown = false;
        let mut b = Builder::new(self, r, &old);
        for (root, tree) in structural {
            let rec = old.by_root.get(&root).and_then(|s| old.rec(*s)).cloned();
            match tree {
                Some(t) if self.in_scope(t.cell) => {
                    if let Some(rec) = rec {
                        let host = old.host_state(&rec).host;
                        let io = rec.d.io_ops.load(Ordering::Relaxed);
                        let fb = rec.d.failed_builds.load(Ordering::Relaxed);
                        b.add_host(host, &t, io, fb, Some(&rec));
                    } else if let Some(host) = b.treeless.remove(&root) {
                        b.add_host(host, &t, 0, 0, None);
                    } else {
                        unknown |= !b.unhosted.contains_key(&root);
                        b.unhosted.insert(root, t);
                    }
                }
                _ => {
                    if let Some(rec) = rec {
                        let host = old.host_state(&rec).host;
                        b.remove_slot(rec.slot);
                        b.treeless.insert(root, host);
                    }
                    b.unhosted.remove(&root);
                }
            }
        }
        let view = b.finish();
        self.publish(view);
        unknown
    }

    /// Replaces the usage and group counts of `rec` by a tree read at a generation not
    /// older than the snapshot's; this process's claims the read may miss stay on top.
    fn apply_tree(&self, view: &View, rec: &HostRec, t: &ProviderTree) {
        let class = &view.classes[rec.class as usize];
        let used: Vec<i64> = class
            .shape
            .entries
            .iter()
            .map(|entry| t.providers.get(entry.slot as usize).map_or(0, |p| p.used(&entry.rc)))
            .collect();
        let mut m = lock(&rec.d.m);
        if m.retired {
            return;
        }
        set_usage(&self.groups, &rec.d, &mut m, rec.slot, &used, t.generation, &t.groups);
        self.rekey_locked(view, rec, &m);
    }

    fn publish(&self, view: View) {
        self.view.store(Arc::new(view));
        bump(&self.counters.views_published, 1);
    }

    // ---- scores ------------------------------------------------------------------------

    /// The index score of a host without the io_ops weigher (higher: better under the
    /// index weights).
    pub(crate) fn score(&self, view: &View, rec: &HostRec) -> f64 {
        let class = &view.classes[rec.class as usize];
        let mult = &view.class_catalog[rec.class as usize].mult;
        let s = lock(&self.scales);
        let (ram, cpu, disk) = (s.ram, s.cpu, s.disk);
        drop(s);
        let fb = f64::from(rec.d.failed_builds.load(Ordering::Relaxed).min(4)) / 4.0;
        mult[0] * rec.free_of(&class.ram) as f64 / ram
            + mult[1] * rec.free_of(&class.cpu) as f64 / cpu
            + mult[2] * rec.free_of(&class.disk) as f64 / disk
            - mult[4] * fb
    }

    fn place_of(&self, view: &View, rec: &HostRec) -> Place {
        // The low 20 bits break ties by a per-host salt, so that equal hosts are not
        // always taken in the same order by every process.
        let key = (ordered(self.score(view, rec)) & !0xF_FFFF) | u64::from(rec.salt & 0xF_FFFF);
        let io = rec.d.io_ops.load(Ordering::Relaxed);
        self.io_max.fetch_max(io, Ordering::Relaxed);
        Place { class: rec.class, level: io.min(LEVELS as u32 - 1), key }
    }

    /// What the io_ops weigher adds to the score of hosts of `level`: the index weight
    /// times io_ops normalized over the range seen (Nova's normalization, minimum 0).
    pub(crate) fn io_max(&self) -> u32 {
        self.io_max.load(Ordering::Relaxed)
    }

    fn rekey_locked(&self, view: &View, rec: &HostRec, m: &HostMut) {
        if m.retired {
            return;
        }
        let new = self.place_of(view, rec);
        let old = rec.place();
        rec.d.key.store(new.key, Ordering::Relaxed);
        rec.d.level.store(new.level, Ordering::Relaxed);
        rec.d.class.store(new.class, Ordering::Relaxed);
        self.index.moved(old, new, rec.slot);
    }

    /// Recomputes the index place of a host (its io_ops or build failures changed).
    pub(crate) fn rekey(&self, view: &View, rec: &HostRec) {
        let m = lock(&rec.d.m);
        self.rekey_locked(view, rec, &m);
    }

    // ---- claims of this process -----------------------------------------------------

    /// Records a claim this process is about to send: its amounts count at once.
    pub(crate) fn reserve(
        &self,
        view: &View,
        rec: &HostRec,
        parts: &[(u16, i64)],
        group: Option<GroupId>,
    ) -> Reservation {
        let id = self.next_pending.fetch_add(1, Ordering::Relaxed);
        let mut m = lock(&rec.d.m);
        for (e, a) in parts {
            rec.d.used[*e as usize].fetch_add(*a, Ordering::Relaxed);
        }
        if let Some(g) = group {
            let n = m.groups.entry(g).or_insert(0);
            *n += 1;
            let n = *n;
            if !m.retired {
                self.groups.set(g, rec.slot, n);
            }
        }
        m.pending.push(Pending { id, parts: parts.to_vec(), group, done: None });
        rec.d.io_ops.fetch_add(1, Ordering::Relaxed);
        self.rekey_locked(view, rec, &m);
        Reservation { id, dyn_: rec.d.clone(), root: rec.root }
    }

    /// The record of the current view that holds `res`'s dynamic part, if any.
    fn holder(&self, res: &Reservation) -> (Arc<View>, Option<Arc<HostRec>>) {
        let v = self.view();
        let rec = v.by_root.get(&res.root).and_then(|s| v.rec(*s)).filter(|r| Arc::ptr_eq(&r.d, &res.dyn_)).cloned();
        (v, rec)
    }

    /// The store accepted the claim at `generation`.
    pub(crate) fn confirm(&self, res: &Reservation, generation: u64) {
        let (view, rec) = self.holder(res);
        let d = &res.dyn_;
        let mut m = lock(&d.m);
        let Some(i) = m.pending.iter().position(|p| p.id == res.id) else {
            return;
        };
        if m.generation >= generation {
            // A read already counted it: take the pending amounts back out.
            let p = m.pending.remove(i);
            self.unapply(d, rec.as_ref().map(|r| r.slot), &mut m, &p);
        } else if m.generation + 1 == generation {
            m.pending.remove(i);
            m.generation = generation;
        } else {
            m.pending[i].done = Some(generation);
        }
        if let Some(rec) = rec {
            self.rekey_locked(&view, &rec, &m);
        }
    }

    /// The store refused the claim (or it was replayed: nothing was written).
    pub(crate) fn cancel(&self, res: &Reservation) {
        let (view, rec) = self.holder(res);
        let d = &res.dyn_;
        let mut m = lock(&d.m);
        if let Some(i) = m.pending.iter().position(|p| p.id == res.id) {
            let p = m.pending.remove(i);
            self.unapply(d, rec.as_ref().map(|r| r.slot), &mut m, &p);
            let _ = d.io_ops.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        }
        if let Some(rec) = rec {
            self.rekey_locked(&view, &rec, &m);
        }
    }

    fn unapply(&self, d: &HostDyn, slot: Option<u32>, m: &mut HostMut, p: &Pending) {
        for (e, a) in &p.parts {
            if let Some(u) = d.used.get(*e as usize) {
                u.fetch_sub(*a, Ordering::Relaxed);
            }
        }
        if let Some(g) = p.group
            && let Some(n) = m.groups.get_mut(&g)
        {
            *n = n.saturating_sub(1);
            let n = *n;
            if n == 0 {
                m.groups.remove(&g);
            }
            if let (false, Some(slot)) = (m.retired, slot) {
                self.groups.set(g, slot, n);
            }
        }
    }

    /// Records a build result reported by a conductor (BuildFailureWeigher input).
    pub fn record_build(&self, host: &str, success: bool) {
        let v = self.view();
        let Some(rec) = v.by_name(host) else {
            return;
        };
        if success {
            rec.d.failed_builds.store(0, Ordering::Relaxed);
        } else {
            rec.d.failed_builds.fetch_add(1, Ordering::Relaxed);
        }
        self.rekey(&v, rec);
    }
}

/// Whether `t` has the structure `rec` was built from (same providers, traits,
/// aggregates, inventories and capacities): then only usage changed.
fn same_structure(view: &View, rec: &HostRec, t: &ProviderTree) -> bool {
    let class = &view.classes[rec.class as usize];
    let shape = &class.shape;
    if t.providers.len() != shape.providers.len() {
        return false;
    }
    let mut e = 0usize;
    for (i, (p, s)) in t.providers.iter().zip(&shape.providers).enumerate() {
        if p.id != rec.providers[i] || p.traits != s.traits || p.aggregates != s.aggregates {
            return false;
        }
        let parent = p.parent.and_then(|id| rec.providers.iter().position(|x| *x == id)).map(|x| x as u16);
        if parent != s.parent {
            return false;
        }
        for (rc, inv) in &p.inventories {
            let Some(entry) = shape.entries.get(e) else {
                return false;
            };
            if entry.slot as usize != i
                || &entry.rc != rc
                || entry.min_unit != inv.min_unit
                || entry.max_unit != inv.max_unit
                || entry.step_size != inv.step_size.max(1)
                || rec.cap[e] != inv.capacity()
                || view.inventories.get(rec.inv[e] as usize) != Some(inv)
            {
                return false;
            }
            e += 1;
        }
    }
    e == shape.entries.len()
}

/// Replaces usage and group counts of a host by those of its tree at `generation`, read
/// or carried by the feed, when not older than the snapshot's (else nothing): claims of
/// this process the read may not include (in flight, or answered with a later generation)
/// stay on top.
fn set_usage(
    groups_index: &GroupIndex,
    d: &HostDyn,
    m: &mut HostMut,
    slot: u32,
    used: &[i64],
    generation: u64,
    read_groups: &BTreeMap<GroupId, u32>,
) {
    if generation < m.generation {
        return;
    }
    m.generation = generation;
    let seen = m.generation;
    m.pending.retain(|p| p.done.is_none_or(|g| g > seen));
    for (e, read) in used.iter().enumerate() {
        let pending: i64 =
            m.pending.iter().flat_map(|p| p.parts.iter()).filter(|(pe, _)| *pe as usize == e).map(|(_, a)| a).sum();
        if let Some(u) = d.used.get(e) {
            u.store(read + pending, Ordering::Relaxed);
        }
    }
    let mut groups: BTreeMap<GroupId, u32> = read_groups.clone();
    for p in &m.pending {
        if let Some(g) = p.group {
            *groups.entry(g).or_insert(0) += 1;
        }
    }
    if !m.retired {
        let changed: BTreeSet<GroupId> = groups.keys().chain(m.groups.keys()).copied().collect();
        for g in changed {
            let n = groups.get(&g).copied().unwrap_or(0);
            if m.groups.get(&g).copied().unwrap_or(0) != n {
                groups_index.set(g, slot, n);
            }
        }
    }
    m.groups = groups;
}

fn inv_key(inv: &Inventory) -> [u64; 6] {
    [
        inv.total as u64,
        inv.reserved as u64,
        inv.min_unit as u64,
        inv.max_unit as u64,
        inv.step_size as u64,
        inv.allocation_ratio.to_bits(),
    ]
}

/// Builds the next view from the current one.
struct Builder<'a> {
    snap: &'a SharedSnapshot,
    r: &'a mut Refresher,
    hosts: Vec<Option<Arc<HostRec>>>,
    by_root: HashMap<ProviderId, u32>,
    by_name: HashMap<Box<str>, u32>,
    classes: Vec<Arc<ClassInfo>>,
    inventories: Vec<Inventory>,
    aggregates: HashMap<AggregateId, Aggregate>,
    cells: HashMap<CellId, Cell>,
    unhosted: HashMap<ProviderId, ProviderTree>,
    treeless: HashMap<ProviderId, Host>,
    /// Hosts added or re-recorded (value: with a fresh dynamic part): their keys are
    /// computed once the catalog of the view is known.
    added: HashMap<u32, bool>,
    /// Index multipliers of each class in the previous view.
    old_mult: Vec<[f64; 5]>,
}

impl<'a> Builder<'a> {
    fn new(snap: &'a SharedSnapshot, r: &'a mut Refresher, old: &View) -> Self {
        Builder {
            snap,
            r,
            hosts: old.hosts.clone(),
            by_root: old.by_root.clone(),
            by_name: old.by_name.clone(),
            classes: old.classes.clone(),
            inventories: (*old.inventories).clone(),
            aggregates: old.aggregates.clone(),
            cells: old.cells.clone(),
            unhosted: old.unhosted.clone(),
            treeless: old.treeless.clone(),
            added: HashMap::new(),
            old_mult: old.class_catalog.iter().map(|c| c.mult).collect(),
        }
    }

    fn remove_slot(&mut self, slot: u32) {
        let Some(rec) = self.hosts.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.by_root.remove(&rec.root);
        if self.by_name.get(rec.name()) == Some(&slot) {
            self.by_name.remove(rec.name());
        }
        let mut m = lock(&rec.d.m);
        if !m.retired {
            self.snap.index.remove(rec.place(), slot);
            for g in m.groups.keys() {
                self.snap.groups.set(*g, slot, 0);
            }
        }
        m.retired = true;
    }

    /// Adds a host with its tree, or re-records `prev` (same root, same slot) with a new
    /// host record or tree. The dynamic part of `prev` (usage, claims in flight, group
    /// counts) is kept when the inventory layout is the same; else it is retired.
    fn add_host(&mut self, host: Host, tree: &ProviderTree, io_ops: u32, failed: u32, prev: Option<&Arc<HostRec>>) {
        let split = Shape::split(tree);
        let key = ClassKey {
            cell: host.cell,
            host_az: host.availability_zone.clone(),
            capabilities: host.capabilities.clone(),
            shape: split.shape,
        };
        let class = match self.r.classes.get(&key) {
            Some(id) => *id,
            None => {
                let id = self.classes.len() as u32;
                self.r.classes.insert(key.clone(), id);
                self.classes.push(Arc::new(ClassInfo::new(key)));
                id
            }
        };
        let shape = &self.classes[class as usize].shape;
        let inv: Vec<u32> = split
            .inventories
            .iter()
            .map(|i| {
                *self.r.inventories.entry(inv_key(i)).or_insert_with(|| {
                    self.inventories.push(*i);
                    (self.inventories.len() - 1) as u32
                })
            })
            .collect();
        let slot = match prev {
            Some(p) => p.slot,
            None => {
                let s = self.r.next_slot;
                self.r.next_slot += 1;
                s
            }
        };
        let mut names = String::new();
        let mut ends = Vec::with_capacity(2 + tree.providers.len());
        for n in
            [host.name.as_str(), host.node.as_str()].into_iter().chain(tree.providers.iter().map(|p| p.name.as_str()))
        {
            names.push_str(n);
            ends.push(names.len() as u32);
        }
        let same_layout = |p: &HostRec| {
            let old = &self.classes[p.class as usize].shape.entries;
            p.providers.as_ref() == split.providers.as_slice()
                && old.len() == shape.entries.len()
                && old.iter().zip(&shape.entries).all(|(a, b)| a.slot == b.slot && a.rc == b.rc)
        };
        let reuse = prev.filter(|p| same_layout(p)).map(|p| p.d.clone());
        let fresh = reuse.is_none();
        if let Some(p) = prev {
            if p.name() != host.name && self.by_name.get(p.name()) == Some(&slot) {
                self.by_name.remove(p.name());
            }
            if fresh {
                // Another layout: the old dynamic part stops counting.
                let mut m = lock(&p.d.m);
                if !m.retired {
                    self.snap.index.remove(p.place(), slot);
                    for g in m.groups.keys() {
                        self.snap.groups.set(*g, slot, 0);
                    }
                }
                m.retired = true;
            }
        }
        let d = match reuse {
            Some(d) => {
                let mut m = lock(&d.m);
                set_usage(&self.snap.groups, &d, &mut m, slot, &split.used, tree.generation, &tree.groups);
                drop(m);
                d
            }
            None => Arc::new(HostDyn {
                used: split.used.iter().map(|u| AtomicI64::new(*u)).collect(),
                key: AtomicU64::new(0),
                level: AtomicU32::new(0),
                class: AtomicU32::new(0),
                enabled: AtomicBool::new(host.enabled),
                heartbeat_us: AtomicI64::new(host.last_heartbeat.as_micros()),
                io_ops: AtomicU32::new(io_ops),
                failed_builds: AtomicU32::new(failed),
                m: Mutex::new(HostMut {
                    generation: tree.generation,
                    retired: false,
                    pending: Vec::new(),
                    groups: tree.groups.clone(),
                }),
            }),
        };
        d.enabled.store(host.enabled, Ordering::Relaxed);
        d.heartbeat_us.store(host.last_heartbeat.as_micros(), Ordering::Relaxed);
        d.io_ops.store(io_ops, Ordering::Relaxed);
        d.failed_builds.store(failed, Ordering::Relaxed);
        let salt = {
            let (a, b) = tree.root.0.as_u64_pair();
            let mut x = crate::scheduler::SplitMix64::new(self.snap.salt_seed ^ a ^ b.rotate_left(29));
            x.next_u64() as u32
        };
        let rec = Arc::new(HostRec {
            slot,
            root: tree.root,
            class,
            providers: split.providers.into_boxed_slice(),
            names: names.into_boxed_str(),
            ends: ends.into_boxed_slice(),
            cap: split.cap.into_boxed_slice(),
            inv: inv.into_boxed_slice(),
            disabled_reason: host.disabled_reason.as_deref().map(Box::from),
            salt,
            d,
        });
        if self.hosts.len() <= slot as usize {
            self.hosts.resize(slot as usize + 1, None);
        }
        self.by_root.insert(rec.root, slot);
        self.by_name.insert(Box::from(rec.name()), slot);
        self.hosts[slot as usize] = Some(rec);
        self.added.insert(slot, fresh);
    }

    fn finish(self) -> View {
        let weights = self.snap.config.index_weights;
        let class_catalog: Vec<ClassCatalog> = self
            .classes
            .iter()
            .map(|c| {
                let zone = c.host_az.clone().or_else(|| {
                    c.root_aggregates().filter_map(|a| self.aggregates.get(a)).find_map(|a| a.availability_zone.clone())
                });
                let num = |key: &str, configured: f64| {
                    if self.aggregates.is_empty() {
                        configured
                    } else {
                        min_metadata(c.root_aggregates(), &self.aggregates, key).unwrap_or(configured)
                    }
                };
                ClassCatalog {
                    zone,
                    cell_disabled: self.cells.get(&c.cell).is_some_and(|x| x.disabled),
                    mult: [
                        num("ram_weight_multiplier", weights.ram),
                        num("cpu_weight_multiplier", weights.cpu),
                        num("disk_weight_multiplier", weights.disk),
                        num("io_ops_weight_multiplier", weights.io_ops),
                        num("build_failure_weight_multiplier", weights.build_failure),
                    ],
                    numbers: if self.aggregates.is_empty() {
                        Box::default()
                    } else {
                        crate::scheduler::weighers::METADATA_KEYS
                            .iter()
                            .filter_map(|k| min_metadata(c.root_aggregates(), &self.aggregates, k).map(|v| (*k, v)))
                            .collect()
                    },
                }
            })
            .collect();
        let mut class_hosts: Vec<Vec<u32>> = vec![Vec::new(); self.classes.len()];
        let mut live = 0;
        for rec in self.hosts.iter().flatten() {
            class_hosts[rec.class as usize].push(rec.slot);
            live += 1;
        }
        let view = View {
            hosts: self.hosts,
            by_root: self.by_root,
            by_name: self.by_name,
            classes: self.classes,
            class_catalog,
            class_hosts,
            aggregates: self.aggregates,
            cells: self.cells,
            inventories: Arc::new(self.inventories),
            unhosted: self.unhosted,
            treeless: self.treeless,
            verdicts: Mutex::new(HashMap::new()),
            live,
        };
        // Keys of new records, and of the hosts of classes whose multipliers changed
        // (aggregate metadata): the index follows the view.
        let changed: Vec<bool> = view
            .class_catalog
            .iter()
            .enumerate()
            .map(|(i, c)| self.old_mult.get(i).is_none_or(|m| *m != c.mult))
            .collect();
        for rec in view.hosts.iter().flatten() {
            let added = self.added.get(&rec.slot).copied();
            if added.is_none() && !changed[rec.class as usize] {
                continue;
            }
            let m = lock(&rec.d.m);
            if m.retired {
                continue;
            }
            let new = self.snap.place_of(&view, rec);
            let old = rec.place();
            rec.d.key.store(new.key, Ordering::Relaxed);
            rec.d.level.store(new.level, Ordering::Relaxed);
            rec.d.class.store(new.class, Ordering::Relaxed);
            if added == Some(true) {
                self.snap.index.insert(new, rec.slot);
                for (g, n) in &m.groups {
                    self.snap.groups.set(*g, rec.slot, *n);
                }
            } else {
                self.snap.index.moved(old, new, rec.slot);
            }
        }
        view
    }
}

/// The background tailer: refreshes every `period` while the snapshot lives.
async fn tail(snap: Weak<SharedSnapshot>, period: Duration) {
    let mut backoff = period;
    loop {
        tokio::time::sleep(backoff).await;
        let Some(s) = snap.upgrade() else {
            return;
        };
        match s.refresh().await {
            Ok(()) => backoff = period,
            Err(e) => {
                tracing::warn!(error = %e, "change feed tailer: refresh failed, retrying");
                backoff = (backoff * 2).min(Duration::from_secs(5)).max(period);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk_of(index: &ScoreIndex, class: Option<u32>) -> Vec<u32> {
        let mut cursors = Default::default();
        let mut out = Vec::new();
        loop {
            let mut batch = Vec::new();
            let more = match class {
                None => index.next_batch(&mut cursors, 2, true, &mut batch),
                Some(c) => index.next_batch_of(c, &mut cursors, 2, true, &mut batch),
            };
            if !more {
                break;
            }
            out.extend(batch.iter().map(|(_, _, slot)| *slot));
        }
        out.sort_unstable();
        out
    }

    #[test]
    fn class_sets_follow_every_insert_move_and_removal() {
        let index = ScoreIndex::default();
        let p = |class, level, key| Place { class, level, key };
        for slot in 0..10u32 {
            index.insert(p(slot % 3, slot % 2, u64::from(slot) * 7), slot);
        }
        assert_eq!(walk_of(&index, None), (0..10).collect::<Vec<_>>());
        assert_eq!(walk_of(&index, Some(1)), vec![1, 4, 7]);
        // Slot 4 changes class and level; slot 7 changes key only; slot 0 leaves.
        index.moved(p(1, 0, 28), p(2, 1, 5), 4);
        index.moved(p(1, 1, 49), p(1, 1, 50), 7);
        index.remove(p(0, 0, 0), 0);
        assert_eq!(walk_of(&index, Some(0)), vec![3, 6, 9]);
        assert_eq!(walk_of(&index, Some(1)), vec![1, 7]);
        assert_eq!(walk_of(&index, Some(2)), vec![2, 4, 5, 8]);
        assert_eq!(walk_of(&index, Some(9)), Vec::<u32>::new(), "a class never seen has no hosts");
        assert_eq!(walk_of(&index, None), vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(index.len(), 9);
        index.clear();
        assert_eq!(walk_of(&index, Some(2)), Vec::<u32>::new());
        assert_eq!(walk_of(&index, None), Vec::<u32>::new());
    }
}
