//! `unicell bench faults`: both designs losing a node (or a cell) under the same load, one
//! after the other, side by side.
//!
//! The project's argument is that failure isolation comes from the datastore's replication,
//! not from splitting the data into cells as Nova does. This benchmark shows what a client
//! sees in each case:
//!
//! 1. **unicell on a replicated Redis Cluster** (3 masters + 3 replicas, started by the
//!    bench): one master is killed with SIGKILL; its replica is promoted after
//!    `cluster-node-timeout`; the old master is restarted later and rejoins as a replica.
//! 2. **The SQL cells baseline, Nova's layout**: three throwaway MariaDB servers, the API
//!    database and cell 0 on the first, cell 1 and cell 2 on a server each; cell 1's server
//!    is killed with SIGKILL and restarted later. `down_cell=skip` (Nova's default): lists
//!    skip the cell and the page names it in `unreachable`.
//!
//! The load is the same on both, three cells of provider trees and instances:
//!
//! * builders: an instance is created (a build request), a claim is made on a random tree,
//!   and the instance is put in the tree's cell on the tree's host (on the SQL baseline,
//!   the move from the API database's build requests into the cell database, as Nova's
//!   conductor does); each builder keeps a few instances and tears down its oldest (release,
//!   delete). A build that fails at any step counts as failed, by step and error kind, and
//!   is cleaned up as far as the store lets it. The bench does not run the scheduler's
//!   filters: the tree is drawn at random, as a scheduler that already chose would claim.
//! * listers: page through the listing of a fixed project (its instances spread over the
//!   three cells, created before the run), 50 a page, and count pages answered, failed,
//!   and partial (`unreachable` not empty), and how many of the project's instances a
//!   full listing showed.
//!
//! Figures per candidate and second (the chart and the JSON): builds OK and failed, pages OK,
//! failed and partial, instances visible. Per candidate: the kill -> last client-visible
//! fault (a failed build or page, a partial page), the kill -> full throughput again (the
//! first second from which every second has at least 80% of the builds/s before the kill
//! and no fault), the least fraction of the project visible in a full listing while the node
//! was down, and the audit of every tree at the end. Nothing is asserted on a timing; the
//! benchmark fails (after writing its report) only if an audit is not clean.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use unicell::model::*;
use unicell::store::audit::{AuditScope, audit};
use unicell::store::prelude::*;
use unicell::testkit::redis_server::RedisCluster;
use unicell::testkit::sql_server::{SqlKind, SqlServer};

use crate::candidate::CandidateDurability;
use crate::chart::{self, Panel, Series};
use crate::error::{Context, Result, bail};
use crate::report::{self, Report};
use crate::stats::Table;
use crate::{Common, knob, progress};

/// Cells of the cloud on both candidates (on the SQL baseline, one database each).
const CELLS: usize = 3;
/// The cell whose server is killed on the SQL baseline.
const DOWN_CELL: usize = 1;
/// Instances a listing page holds.
const PAGE: u32 = 50;
/// How long a builder avoids a cell after a build into it failed (see [`builder`]).
const AVOID: Duration = Duration::from_secs(2);
/// How long the bench waits for one call before abandoning it (counted as a timeout).
const CALL_BOUND: Duration = Duration::from_secs(10);

/// Options of `unicell bench faults`.
#[derive(Debug, Clone)]
pub struct FaultsOptions {
    /// Common options (`stores` is ignored: the bench starts its own servers).
    pub common: Common,
    /// Provider trees, spread over the cells [default: 60; quick: 24].
    pub trees: Option<usize>,
    /// Concurrent building tasks [default: 16; quick: 6].
    pub builders: Option<usize>,
    /// Concurrent listing tasks [default: 4; quick: 2].
    pub listers: Option<usize>,
    /// Instances of the listed project, spread over the cells [default: 600; quick: 150].
    pub instances: Option<usize>,
    /// Load before the kill, ms [default: 10000; quick: 5000].
    pub before_ms: Option<u64>,
    /// The node stays down this long, ms [default: 30000; quick: 14000].
    pub down_ms: Option<u64>,
    /// Load after the restart, ms [default: 10000; quick: 6000].
    pub after_ms: Option<u64>,
    /// `cluster-node-timeout` of the Redis nodes, ms.
    pub node_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Params {
    trees: usize,
    builders: usize,
    listers: usize,
    instances: usize,
    cells: usize,
    page: u32,
    before_ms: u64,
    down_ms: u64,
    after_ms: u64,
    node_timeout_ms: u64,
    seed: u64,
    quick: bool,
}

/// One second of one candidate's run.
#[derive(Debug, Clone, Default, Serialize)]
struct Second {
    /// Seconds since the load began.
    t: u64,
    builds_ok: u64,
    builds_failed: u64,
    builds_refused: u64,
    pages_ok: u64,
    pages_partial: u64,
    pages_failed: u64,
    /// The fewest instances of the listed project a full listing ending in this second
    /// showed (None: no listing completed in it).
    visible_min: Option<usize>,
}

/// What one candidate measured.
#[derive(Debug, Clone, Serialize)]
struct Outcome {
    candidate: String,
    /// What was killed.
    victim: String,
    /// Share of the cloud the victim held: the killed master's slots, or the cell's trees.
    share_of_cloud: f64,
    /// Seconds since the load began: the kill, the restart, the node back (synced or
    /// listening).
    kill_s: f64,
    restart_s: f64,
    back_s: f64,
    /// Redis: kill -> the replica reports itself master.
    promoted_ms: Option<f64>,
    builds_per_s_before: f64,
    builds_per_s_down: f64,
    builds_per_s_after: f64,
    builds_ok: u64,
    builds_failed: u64,
    builds_refused: u64,
    /// Teardowns (release, delete) that failed, to be retried.
    teardowns_failed: u64,
    /// Failed builds and pages by step and error kind.
    errors: BTreeMap<String, u64>,
    pages_ok: u64,
    pages_partial: u64,
    pages_failed: u64,
    /// Cells a partial page named (as the store names them).
    unreachable_named: BTreeSet<String>,
    /// Instances of the listed project.
    expected_visible: usize,
    /// The fewest a full listing that overlapped the outage (ended after the kill, began
    /// before the node was back) showed (None: no listing did).
    visible_min_while_down: Option<usize>,
    /// Full listings that overlapped the outage, and those that showed everything.
    listings_while_down: u64,
    listings_whole_while_down: u64,
    /// Kill -> the last failed build, failed page or partial page.
    last_fault_ms: Option<f64>,
    /// Kill -> the start of the first second from which on every second has no fault and,
    /// with the next two, at least 80% of the builds/s before the kill (None: not within
    /// the run).
    full_throughput_ms: Option<f64>,
    audit_clean: bool,
    audit: String,
    seconds: Vec<Second>,
}

#[derive(Debug, Serialize)]
struct Results {
    candidates: Vec<Outcome>,
}

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
    }
}

/// Short name of an error's kind, for the counts by kind.
fn kind_of(e: &unicell::Error) -> &'static str {
    match e {
        unicell::Error::NotFound { .. } => "not found",
        unicell::Error::AlreadyExists { .. } => "already exists",
        unicell::Error::Capacity { .. } => "capacity",
        unicell::Error::Conflict(_) => "conflict",
        unicell::Error::InvalidInput { .. } => "invalid input",
        unicell::Error::Unavailable { .. } => "unavailable",
        unicell::Error::Timeout { .. } => "timeout",
        _ => "backend error",
    }
}

/// A call with the bench's bound: one that hangs shows as a timeout instead of stalling.
async fn bounded<T>(call: impl std::future::Future<Output = unicell::Result<T>>) -> unicell::Result<T> {
    match tokio::time::timeout(CALL_BOUND, call).await {
        Ok(r) => r,
        Err(_) => {
            Err(unicell::Error::Timeout { backend: "bench", message: format!("no answer within {CALL_BOUND:?}") })
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ev {
    BuildOk,
    BuildFailed,
    BuildRefused,
    PageOk,
    PagePartial,
    PageFailed,
}

#[derive(Default)]
struct Log {
    /// (seconds since start, event).
    events: Vec<(f64, Ev)>,
    errors: BTreeMap<String, u64>,
    /// (start and end of a full listing, instances it showed, whether all its pages were
    /// complete).
    listings: Vec<(f64, f64, usize, bool)>,
    /// Teardowns (release, delete) that failed and were set aside to retry.
    teardowns_failed: u64,
    unreachable: BTreeSet<String>,
}

impl Log {
    fn error(&mut self, step: &str, e: &unicell::Error) {
        *self.errors.entry(format!("{step}: {}", kind_of(e))).or_insert(0) += 1;
    }
}

struct Shared {
    store: Arc<dyn Store>,
    /// (root provider, its cell, its host name).
    trees: Vec<(ProviderId, CellId, String)>,
    project: String,
    flavor: FlavorId,
    start: Instant,
    stop: AtomicBool,
    /// The cells whose hosts the last catalog load read (see [`catalog`]).
    cells_seen: std::sync::RwLock<BTreeSet<CellId>>,
}

impl Shared {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

fn claim_request(consumer: ConsumerId, root: ProviderId, rng: &mut Rng) -> ClaimRequest {
    let mut r = Resources::new();
    r.insert(ResourceClass::Vcpu, 1 + rng.below(2) as i64);
    r.insert(ResourceClass::MemoryMb, 512 * (1 + rng.below(2) as i64));
    ClaimRequest {
        consumer,
        project_id: "p-faults-build".into(),
        user_id: "u-faults".into(),
        allocations: AllocationMap::from([(root, r)]),
        group: None,
    }
}

/// Loads the host catalog (`list_hosts` over every cell) every [`AVOID`], as a scheduler's
/// HostManager refreshes its host states, and publishes the cells whose hosts it read. On
/// the SQL baseline a down cell's hosts are left out (`down_cell=skip`), so builders stop
/// choosing its trees; a load that fails keeps the previous catalog.
async fn catalog(sh: Arc<Shared>) -> Log {
    let mut log = Log::default();
    while !sh.stop.load(Ordering::Relaxed) {
        match bounded(sh.store.list_hosts(None)).await {
            Ok(hosts) => {
                let cells: BTreeSet<CellId> = hosts.iter().map(|h| h.cell).collect();
                *sh.cells_seen.write().unwrap_or_else(|e| e.into_inner()) = cells;
            }
            Err(e) => log.error("host catalog", &e),
        }
        tokio::time::sleep(AVOID).await;
    }
    log
}

/// The queue of built instances to tear down, shared by the tearing-down tasks.
type Teardowns = Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<InstanceId>>>;

/// Tears built instances down (release the claim, whose consumer is the instance; delete
/// it), as other API requests would: in tasks of their own, so that a teardown waiting on a
/// down cell holds no builder. One that fails is queued again after [`AVOID`].
async fn teardown(sh: Arc<Shared>, rx: Teardowns, again: tokio::sync::mpsc::UnboundedSender<InstanceId>) -> Log {
    let mut log = Log::default();
    while !sh.stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(200), async { rx.lock().await.recv().await }).await;
        let Ok(Some(old)) = next else { continue };
        let done = match bounded(sh.store.release(ConsumerId::from(old))).await {
            Ok(_) | Err(unicell::Error::NotFound { .. }) => {
                matches!(bounded(sh.store.delete_instance(old)).await, Ok(()) | Err(unicell::Error::NotFound { .. }))
            }
            Err(_) => false,
        };
        if !done {
            log.teardowns_failed += 1;
            let again = again.clone();
            tokio::spawn(async move {
                tokio::time::sleep(AVOID).await;
                let _ = again.send(old);
            });
        }
    }
    log
}

/// Builds instances one after another and queues each for teardown.
///
/// A builder chooses among the trees of the cells the last host catalog load read
/// ([`catalog`]), and avoids a cell for [`AVOID`] after a build into it failed (on both
/// candidates), as a scheduler drops the hosts it could not read.
async fn builder(sh: Arc<Shared>, seed: u64, done: tokio::sync::mpsc::UnboundedSender<InstanceId>) -> Log {
    let mut rng = Rng::new(seed);
    let mut log = Log::default();
    let mut avoid: BTreeMap<CellId, Instant> = BTreeMap::new();
    while !sh.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        avoid.retain(|_, until| *until > now);
        let usable: Vec<usize> = {
            let seen = sh.cells_seen.read().unwrap_or_else(|e| e.into_inner());
            (0..sh.trees.len())
                .filter(|&i| seen.contains(&sh.trees[i].1) && !avoid.contains_key(&sh.trees[i].1))
                .collect()
        };
        let pick = if usable.is_empty() { rng.below(sh.trees.len()) } else { usable[rng.below(usable.len())] };
        let (root, cell, host) = sh.trees[pick].clone();
        let id = InstanceId::new_v4();
        let inst = Instance::new_building(id, "faults-build", "p-faults-build", "u-faults", sh.flavor.clone());
        if let Err(e) = bounded(sh.store.create_instance(&inst)).await {
            log.error("create", &e);
            log.events.push((sh.now(), Ev::BuildFailed));
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let req = claim_request(ConsumerId::from(id), root, &mut rng);
        match bounded(sh.store.claim(&req)).await {
            Ok(_) => {}
            Err(e) => {
                let refused = matches!(e, unicell::Error::Capacity { .. });
                if refused {
                    log.events.push((sh.now(), Ev::BuildRefused));
                } else {
                    log.error("claim", &e);
                    log.events.push((sh.now(), Ev::BuildFailed));
                    let _ = bounded(sh.store.release(req.consumer)).await;
                }
                let _ = bounded(sh.store.delete_instance(id)).await;
                if !refused {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                continue;
            }
        }
        let patch = InstancePatch {
            cell: Some(Some(cell)),
            host: Some(Some(host.clone())),
            node: Some(Some(host)),
            vm_state: Some(VmState::Active),
            ..InstancePatch::default()
        };
        match bounded(sh.store.update_instance(id, &patch)).await {
            Ok(_) => {
                log.events.push((sh.now(), Ev::BuildOk));
                let _ = done.send(id);
            }
            Err(e) => {
                // Nova's conductor would put the instance in ERROR (cell0); here it is
                // unwound, and kept for teardown if that fails too.
                log.error("into cell", &e);
                log.events.push((sh.now(), Ev::BuildFailed));
                avoid.insert(cell, Instant::now() + AVOID);
                let _ = done.send(id);
            }
        }
    }
    log
}

/// Pages through the listed project again and again.
async fn lister(sh: Arc<Shared>) -> Log {
    let mut log = Log::default();
    while !sh.stop.load(Ordering::Relaxed) {
        let began = sh.now();
        let mut seen = BTreeSet::new();
        let mut marker = None;
        let mut whole = true;
        let complete = loop {
            let q = ListQuery {
                filters: InstanceFilters { project_id: Some(sh.project.clone()), ..InstanceFilters::default() },
                limit: Some(PAGE),
                marker,
                partial: false,
            };
            match bounded(sh.store.list_instances(&q)).await {
                Ok(page) => {
                    if page.is_complete() {
                        log.events.push((sh.now(), Ev::PageOk));
                    } else {
                        whole = false;
                        log.events.push((sh.now(), Ev::PagePartial));
                        log.unreachable.extend(page.unreachable.iter().map(|u| u.part.clone()));
                    }
                    seen.extend(page.instances.iter().map(|i| i.uuid));
                    match page.next_marker {
                        Some(m) => marker = Some(m),
                        None => break true,
                    }
                }
                Err(e) => {
                    log.error("list page", &e);
                    log.events.push((sh.now(), Ev::PageFailed));
                    break false;
                }
            }
        };
        if complete {
            log.listings.push((began, sh.now(), seen.len(), whole));
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    log
}

/// The servers of one candidate and how to break and mend them.
enum Target {
    Redis { cluster: RedisCluster, victim: usize, replicas: Vec<usize> },
    Sql { servers: Vec<SqlServer> },
}

/// Runs `f` on the target on a blocking thread (starting and stopping servers blocks).
async fn blocking<T: Send + 'static>(
    target: Target,
    f: impl FnOnce(&mut Target) -> Result<T> + Send + 'static,
) -> Result<(Target, T)> {
    tokio::task::spawn_blocking(move || {
        let mut t = target;
        let r = f(&mut t)?;
        Ok((t, r))
    })
    .await
    .context("server control task")?
}

struct Setup {
    label: String,
    victim: String,
    url: String,
}

fn sql_url(servers: &[SqlServer]) -> Result<String> {
    let mut api = url::Url::parse(&format!("{}/faults_api", servers[0].url())).context("API database URL")?;
    {
        let mut q = api.query_pairs_mut();
        for c in 0..CELLS {
            q.append_pair("cell_url", &format!("{}/faults_cell{c}", servers[c % servers.len()].url()));
        }
        // Nova's CELL_TIMEOUT is 60 s; 5 s keeps a hung cell inside the run. A killed
        // server refuses connections, so this bound is rarely what ends a call.
        q.append_pair("cell_timeout", "5s");
    }
    Ok(api.to_string())
}

/// One candidate's run: the cloud, the load, the kill, the restart, the figures.
async fn run_one(mut target: Target, setup: Setup, p: &Params) -> Result<(Outcome, Target)> {
    let store = unicell::store::open(&setup.url).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let cells: Vec<CellId> = (0..CELLS).map(|_| CellId::new_v4()).collect();
    for (i, c) in cells.iter().enumerate() {
        store.put_cell(&Cell { id: *c, name: format!("cell{i}"), disabled: false }).await?;
    }
    let flavor = FlavorId::new("faults")?;
    let mut trees = Vec::with_capacity(p.trees);
    for i in 0..p.trees {
        let id = ProviderId::new_v4();
        let cell = cells[i % CELLS];
        let name = format!("faults-{run_id}-cn{i}");
        store
            .create_provider(&NewProvider {
                id,
                name: name.clone(),
                parent: None,
                cell: Some(cell),
                inventories: BTreeMap::from([
                    (ResourceClass::Vcpu, Inventory::with_total(64)),
                    (ResourceClass::MemoryMb, Inventory::with_total(64 * 1024)),
                ]),
                traits: BTreeSet::new(),
                aggregates: BTreeSet::new(),
            })
            .await?;
        store
            .put_host(&Host {
                name: name.clone(),
                cell,
                root_provider: id,
                node: name.clone(),
                enabled: true,
                disabled_reason: None,
                last_heartbeat: Timestamp::now(),
                availability_zone: None,
                capabilities: BTreeMap::new(),
            })
            .await?;
        trees.push((id, cell, name));
    }
    let project = format!("p-faults-{run_id}");
    let mut batch = Vec::new();
    for i in 0..p.instances {
        let mut inst = Instance::new_building(InstanceId::new_v4(), &format!("vm-{i}"), &project, "u", flavor.clone());
        inst.cell = Some(cells[i % CELLS]);
        inst.vm_state = VmState::Active;
        batch.push(inst);
        if batch.len() == 50 || i + 1 == p.instances {
            store.create_instances(&batch).await?;
            batch.clear();
        }
    }
    let share_of_cloud = match &target {
        // Three masters share the 16384 slots evenly (redis-cli --cluster create).
        Target::Redis { .. } => 1.0 / 3.0,
        Target::Sql { .. } => trees.iter().filter(|t| t.1 == cells[DOWN_CELL]).count() as f64 / trees.len() as f64,
    };
    let sh = Arc::new(Shared {
        store: store.clone(),
        trees,
        project,
        flavor,
        start: Instant::now(),
        stop: AtomicBool::new(false),
        cells_seen: std::sync::RwLock::new(cells.iter().copied().collect()),
    });
    let total_s = (p.before_ms + p.down_ms + p.after_ms) / 1000;
    let bar = progress::bar(&format!("faults: {}", setup.label), total_s.max(1));
    let ticker = {
        let (sh, bar) = (sh.clone(), bar.clone());
        tokio::spawn(async move {
            while !sh.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress::inc(&bar, 1);
            }
        })
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let rx: Teardowns = Arc::new(tokio::sync::Mutex::new(rx));
    let mut builders: Vec<_> = (0..p.builders)
        .map(|b| tokio::spawn(builder(sh.clone(), p.seed.wrapping_mul(1000).wrapping_add(b as u64), tx.clone())))
        .collect();
    builders.extend((0..p.builders).map(|_| tokio::spawn(teardown(sh.clone(), rx.clone(), tx.clone()))));
    drop(tx);
    let mut listers: Vec<_> = (0..p.listers).map(|_| tokio::spawn(lister(sh.clone()))).collect();
    listers.push(tokio::spawn(catalog(sh.clone())));

    tokio::time::sleep(Duration::from_millis(p.before_ms)).await;
    let kill_s = sh.now();
    let (t, ()) = blocking(target, |t| {
        match t {
            Target::Redis { cluster, victim, .. } => cluster.kill(*victim),
            Target::Sql { servers } => servers[DOWN_CELL].kill().context("SIGKILL of the cell server")?,
        }
        Ok(())
    })
    .await?;
    target = t;
    tracing::info!(candidate = %setup.label, "faults: node killed");
    let promoted_ms = if let Target::Redis { .. } = &target {
        let (t, at) = blocking(target, |t| match t {
            Target::Redis { cluster, replicas, .. } => {
                cluster.wait_promoted(replicas, Duration::from_secs(60)).context("promotion of a replica")?;
                Ok(Instant::now())
            }
            Target::Sql { .. } => Ok(Instant::now()),
        })
        .await?;
        target = t;
        Some((at.duration_since(sh.start).as_secs_f64() - kill_s) * 1000.0)
    } else {
        None
    };
    let down_until = sh.start + Duration::from_secs_f64(kill_s) + Duration::from_millis(p.down_ms);
    tokio::time::sleep_until(down_until.into()).await;
    let restart_s = sh.now();
    let (t, ()) = blocking(target, |t| {
        match t {
            Target::Redis { cluster, victim, .. } => {
                cluster.restart(*victim).context("restart of the killed master")?;
                cluster.wait_ok(Duration::from_secs(90)).context("the cluster whole again")?;
            }
            Target::Sql { servers } => servers[DOWN_CELL].restart().context("restart of the cell server")?,
        }
        Ok(())
    })
    .await?;
    target = t;
    let back_s = sh.now();
    tracing::info!(candidate = %setup.label, "faults: node back");
    tokio::time::sleep(Duration::from_millis(p.after_ms)).await;
    sh.stop.store(true, Ordering::Relaxed);
    let end_s = sh.now();
    let mut logs = Vec::new();
    for t in builders.into_iter().chain(listers) {
        logs.push(t.await.context("load task")?);
    }
    ticker.abort();
    drop(bar);

    // Per second.
    let n_s = end_s.ceil() as usize;
    let mut seconds: Vec<Second> = (0..n_s).map(|t| Second { t: t as u64, ..Second::default() }).collect();
    for (at, ev) in logs.iter().flat_map(|l| l.events.iter()) {
        let Some(s) = seconds.get_mut(*at as usize) else { continue };
        match ev {
            Ev::BuildOk => s.builds_ok += 1,
            Ev::BuildFailed => s.builds_failed += 1,
            Ev::BuildRefused => s.builds_refused += 1,
            Ev::PageOk => s.pages_ok += 1,
            Ev::PagePartial => s.pages_partial += 1,
            Ev::PageFailed => s.pages_failed += 1,
        }
    }
    for (_, at, n, _) in logs.iter().flat_map(|l| l.listings.iter()) {
        if let Some(s) = seconds.get_mut(*at as usize) {
            s.visible_min = Some(s.visible_min.map_or(*n, |m| m.min(*n)));
        }
    }
    let events = || logs.iter().flat_map(|l| l.events.iter());
    let rate = |from: f64, to: f64| {
        let n = events().filter(|(at, e)| *e == Ev::BuildOk && *at >= from && *at < to).count();
        if to > from { n as f64 / (to - from) } else { 0.0 }
    };
    // Before the kill, skipping the first second (connections warming up).
    let before_rate = rate(1.0_f64.min(kill_s / 2.0), kill_s);
    let is_fault = |e: &Ev| matches!(e, Ev::BuildFailed | Ev::PagePartial | Ev::PageFailed);
    let last_fault_ms = events()
        .filter(|(at, e)| *at >= kill_s && is_fault(e))
        .map(|(at, _)| (at - kill_s) * 1000.0)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    // The first whole second after the kill from which every whole second is healthy.
    let first = kill_s.ceil() as usize;
    let last_whole = end_s.floor() as usize;
    // Healthy: no fault in the second, and the builds of the second and the next two (a
    // shared machine's noise) at least 80% of the rate before the kill.
    let healthy = |b: usize| {
        let Some(s) = seconds.get(b) else { return false };
        let window: Vec<u64> =
            (b..(b + 3).min(last_whole)).filter_map(|i| seconds.get(i)).map(|s| s.builds_ok).collect();
        let mean = window.iter().sum::<u64>() as f64 / window.len().max(1) as f64;
        s.builds_failed == 0 && s.pages_failed == 0 && s.pages_partial == 0 && mean >= 0.8 * before_rate
    };
    let mut full_from = None;
    for b in (first..last_whole).rev() {
        if healthy(b) {
            full_from = Some(b);
        } else {
            break;
        }
    }
    let listings_down: Vec<&(f64, f64, usize, bool)> = logs
        .iter()
        .flat_map(|l| l.listings.iter())
        .filter(|(began, at, _, _)| *at > kill_s && *began < back_s)
        .collect();
    let mut errors = BTreeMap::new();
    let mut unreachable = BTreeSet::new();
    for l in &logs {
        for (k, n) in &l.errors {
            *errors.entry(k.clone()).or_insert(0) += n;
        }
        unreachable.extend(l.unreachable.iter().cloned());
    }
    let count = |ev: Ev| events().filter(|(_, e)| *e == ev).count() as u64;
    let roots: Vec<ProviderId> = sh.trees.iter().map(|t| t.0).collect();
    let audited = audit(&*store, &AuditScope::trees(&roots)).await?;
    let outcome = Outcome {
        candidate: setup.label,
        victim: setup.victim,
        share_of_cloud,
        kill_s,
        restart_s,
        back_s,
        promoted_ms,
        builds_per_s_before: before_rate,
        builds_per_s_down: rate(kill_s, restart_s),
        builds_per_s_after: rate(back_s, end_s),
        builds_ok: count(Ev::BuildOk),
        builds_failed: count(Ev::BuildFailed),
        builds_refused: count(Ev::BuildRefused),
        teardowns_failed: logs.iter().map(|l| l.teardowns_failed).sum(),
        errors,
        pages_ok: count(Ev::PageOk),
        pages_partial: count(Ev::PagePartial),
        pages_failed: count(Ev::PageFailed),
        unreachable_named: unreachable,
        expected_visible: p.instances,
        visible_min_while_down: listings_down.iter().map(|l| l.2).min(),
        listings_while_down: listings_down.len() as u64,
        listings_whole_while_down: listings_down.iter().filter(|l| l.2 == p.instances && l.3).count() as u64,
        last_fault_ms,
        full_throughput_ms: full_from.map(|b| (b as f64 - kill_s) * 1000.0),
        audit_clean: audited.is_clean(),
        audit: audited.to_string(),
        seconds,
    };
    Ok((outcome, target))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the benchmark.
pub async fn run(a: FaultsOptions) -> Result<()> {
    let quick = a.common.quick;
    let p = Params {
        trees: knob(a.trees, quick, 24, 60),
        builders: knob(a.builders, quick, 6, 16),
        listers: knob(a.listers, quick, 2, 4),
        instances: knob(a.instances, quick, 150, 600),
        cells: CELLS,
        page: PAGE,
        before_ms: knob(a.before_ms, quick, 5000, 10_000),
        down_ms: knob(a.down_ms, quick, 14_000, 30_000),
        after_ms: knob(a.after_ms, quick, 6000, 10_000),
        node_timeout_ms: a.node_timeout_ms,
        seed: a.common.seed,
        quick,
    };
    if p.trees < CELLS || p.builders == 0 || p.listers == 0 || p.node_timeout_ms == 0 {
        bail!(Invalid, "--trees must be at least {CELLS}; --builders, --listers and --node-timeout-ms at least 1");
    }
    let env = report::Environment::capture();
    let mut notes = vec![format!("load average at start: {}", loadavg())];
    if !a.common.stores.is_empty() {
        notes.push("--stores ignored: the benchmark starts its own servers".into());
    }
    println!(
        "bench faults: {} trees and {} listed instances over {CELLS} cells, {} builders, {} listers; \
         {} ms before the kill, {} ms down, {} ms after the restart",
        p.trees, p.instances, p.builders, p.listers, p.before_ms, p.down_ms, p.after_ms
    );
    let mut outcomes = Vec::new();
    let mut durability = Vec::new();

    // 1. unicell on a replicated Redis Cluster.
    let cluster = tokio::task::spawn_blocking({
        let timeout = Duration::from_millis(p.node_timeout_ms);
        move || RedisCluster::start_replicated(3, 1, timeout)
    })
    .await
    .context("cluster start task")?
    .context("starting a replicated Redis Cluster")?;
    let victim = *cluster.masters().first().ok_or_else(|| crate::Error::Failed("the cluster has no master".into()))?;
    let replicas = cluster.replicas_of(victim);
    let url = format!("{}&prefix=faults&timeout_ms=2000&connect_timeout_ms=300&retries=3", cluster.url());
    let label = "redis-cluster 3+3 (unicell)".to_string();
    let d = crate::durability::read(&url, &[], None).await;
    durability.push(CandidateDurability {
        candidate: label.clone(),
        durability: d,
        servers_started: 6,
        cell_servers: 0,
    });
    let setup = Setup { label, victim: format!("master node {victim} (SIGKILL)"), url };
    let (o, target) = run_one(Target::Redis { cluster, victim, replicas }, setup, &p).await?;
    let _ = tokio::task::spawn_blocking(move || drop(target)).await;
    print_outcome(&o);
    outcomes.push(o);

    // 2. The SQL cells baseline, each cell's database on a server of its own.
    let servers = tokio::task::spawn_blocking(|| {
        let started: Vec<std::thread::JoinHandle<_>> = (0..CELLS)
            .map(|_| {
                std::thread::spawn(|| {
                    // mariadb-install-db run three at a time has failed now and then on this
                    // machine: one more try, alone, before giving up.
                    SqlServer::start(SqlKind::MariaDb).or_else(|e| {
                        tracing::warn!(error = %e, "starting a MariaDB server failed; trying again");
                        SqlServer::start(SqlKind::MariaDb)
                    })
                })
            })
            .collect();
        started
            .into_iter()
            .map(|h| h.join().map_err(|_| crate::Error::Failed("a server start panicked".into())))
            .collect::<Result<Vec<_>>>()
    })
    .await
    .context("server start task")??
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .context("starting the MariaDB servers")?;
    let url = sql_url(&servers)?;
    let label = format!("sql cells, {CELLS} MariaDB servers (Nova)");
    let extra: Vec<String> = servers[1..].iter().map(SqlServer::url).collect();
    let d = crate::durability::read(&url, &extra, None).await;
    durability.push(CandidateDurability {
        candidate: label.clone(),
        durability: d,
        servers_started: servers.len(),
        cell_servers: extra.len(),
    });
    let setup = Setup { label, victim: format!("cell{DOWN_CELL}'s database server (SIGKILL)"), url };
    let (o, target) = run_one(Target::Sql { servers }, setup, &p).await?;
    let _ = tokio::task::spawn_blocking(move || drop(target)).await;
    print_outcome(&o);
    outcomes.push(o);

    let mut table = Table::new([
        "candidate",
        "killed",
        "share",
        "builds/s before",
        "while down",
        "after",
        "builds failed",
        "pages ok/partial/failed",
        "visible (outage)",
        "kill->last fault",
        "kill->full rate",
        "audit",
    ]);
    let ms = |m: Option<f64>| m.map(|m| format!("{:.1} s", m / 1000.0)).unwrap_or_else(|| "-".into());
    for o in &outcomes {
        table.row([
            o.candidate.clone(),
            o.victim.clone(),
            format!("{:.0}%", o.share_of_cloud * 100.0),
            format!("{:.0}", o.builds_per_s_before),
            format!("{:.0}", o.builds_per_s_down),
            format!("{:.0}", o.builds_per_s_after),
            o.builds_failed.to_string(),
            format!("{}/{}/{}", o.pages_ok, o.pages_partial, o.pages_failed),
            match o.visible_min_while_down {
                Some(v) => format!("min {v} of {}", o.expected_visible),
                None => "no full listing".into(),
            },
            ms(o.last_fault_ms),
            o.full_throughput_ms.map(|m| format!("{:.1} s", m / 1000.0)).unwrap_or_else(|| "not in run".into()),
            if o.audit_clean { "clean".into() } else { "FAILED".to_string() },
        ]);
    }
    println!("\n{}", table.render());
    notes.push(format!("load average at the end: {}", loadavg()));
    notes.push(
        "builds: create instance, claim on a random tree, move it into the tree's cell; \
         the scheduler's filters are not run"
            .into(),
    );

    let colors = [0usize, 1];
    let mut panels = Vec::new();
    let mut builds = Panel {
        title: "successful builds per second (dashed: kill and restart)".into(),
        x_label: "s since the load began".into(),
        y_label: "builds/s".into(),
        log_y: false,
        series: Vec::new(),
    };
    let mut lists = Panel {
        title: "listed instances visible per full listing (min per second)".into(),
        x_label: "s since the load began".into(),
        y_label: "instances".into(),
        log_y: false,
        series: Vec::new(),
    };
    let top = outcomes.iter().flat_map(|o| o.seconds.iter().map(|s| s.builds_ok)).max().unwrap_or(1) as f64;
    for (o, c) in outcomes.iter().zip(colors) {
        builds.series.push(Series {
            name: o.candidate.clone(),
            points: o.seconds.iter().map(|s| (s.t as f64 + 0.5, s.builds_ok as f64)).collect(),
            color: c,
            dashed: false,
        });
        lists.series.push(Series {
            name: o.candidate.clone(),
            points: o.seconds.iter().filter_map(|s| s.visible_min.map(|v| (s.t as f64 + 0.5, v as f64))).collect(),
            color: c,
            dashed: false,
        });
        for (what, at, panel_top) in [("kill", o.kill_s, top), ("restart", o.restart_s, top)] {
            builds.series.push(Series {
                name: format!("{what}: {}", o.candidate),
                points: vec![(at, 0.0), (at, panel_top)],
                color: c,
                dashed: true,
            });
        }
    }
    panels.push(builds);
    panels.push(lists);
    let svg = chart::lines(
        &a.common.out,
        "faults",
        "bench faults: losing a Redis master vs a Nova cell's database",
        &panels,
    )?;
    chart::footer(
        &svg,
        &durability.iter().map(|d| format!("{}: {}", d.candidate, d.durability.summary)).collect::<Vec<_>>(),
    )?;

    let failed: Vec<String> =
        outcomes.iter().filter(|o| !o.audit_clean).map(|o| format!("{}: {}", o.candidate, o.audit)).collect();
    let report = Report {
        bench: "faults",
        parameters: p,
        environment: env,
        durability,
        results: Results { candidates: outcomes },
        notes,
    };
    let json = report::write_json(&a.common.out, "faults", &report)?;
    report::print_outputs(&json, &svg);
    if !failed.is_empty() {
        bail!(Failed, "faults: audit not clean: {}", failed.join("; "));
    }
    Ok(())
}

fn print_outcome(o: &Outcome) {
    println!(
        "  {}: killed {} at {:.1} s{}, restarted at {:.1} s, back at {:.1} s; {} builds ok, {} failed; \
         pages {} ok, {} partial, {} failed; errors {:?}; {}",
        o.candidate,
        o.victim,
        o.kill_s,
        o.promoted_ms.map(|m| format!(" (replica promoted after {m:.0} ms)")).unwrap_or_default(),
        o.restart_s,
        o.back_s,
        o.builds_ok,
        o.builds_failed,
        o.pages_ok,
        o.pages_partial,
        o.pages_failed,
        o.errors,
        if o.audit_clean { "audit clean" } else { "AUDIT FAILED" },
    );
}
