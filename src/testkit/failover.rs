//! A Jepsen-style failover experiment on a replicated datastore: many tasks claim and
//! release on provider trees through a store, others page through the instance listing;
//! one node is killed with SIGKILL mid-run; the rest of the cluster takes over; the node is
//! restarted and rejoins; the load goes on. Every acknowledged claim and every acknowledged
//! release is recorded, and afterwards the store is checked against the record: each
//! acknowledged claim is still there unless its release was acknowledged, no acknowledged
//! release came back, every complete listing showed every instance, and the audit finds
//! nothing over capacity.
//!
//! The experiment is one function, [`run`], over any [`FailoverTarget`]:
//!
//! * a replicated Redis Cluster ([`RedisCluster::start_replicated`]): the
//!   victim is a master, "taken over" means its replica was promoted after
//!   `cluster-node-timeout`, and the old master rejoins as a replica of its successor;
//! * a three-node Apache Cassandra 2.1 cluster ([`CassandraCluster`]), with
//!   replication factor 3, QUORUM and SERIAL: the victim is any node, "taken over" means
//!   both survivors' failure detectors marked it DOWN (before that, coordinators still send
//!   it requests and wait for its peers' answers; after it, they store hints for it), and
//!   the restarted node catches up through hinted handoff and read repair.
//!
//! The failover tests (`tests/failover.rs`) assert on the [`FailoverReport`] and the
//! failover benchmark (`unicell bench failover`) reports its figures. Nothing here asserts a
//! timing: the timings are measurements.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::LaunchError;
use super::cassandra::{CLUSTER_NODES, CassandraCluster};
use super::redis_server::RedisCluster;
use crate::error::Error;
use crate::model::*;
use crate::store::audit::{AuditScope, audit};
use crate::store::prelude::*;

/// A replicated datastore the experiment can break and mend: the servers, their control,
/// and the store URL the experiment opens. Methods block (they start and stop processes);
/// [`run`] calls them on a blocking thread.
pub trait FailoverTarget: Send + 'static {
    /// A node to kill, as the target names it.
    type Node: Clone + Send + Sync + std::fmt::Debug + 'static;
    /// The backend named in the errors of calls the experiment abandons.
    const BACKEND: &'static str;
    /// Waits until every node runs and the cluster is whole (every replica in sync or
    /// every node UP in every other's view).
    fn wait_whole(&mut self, within: Duration) -> Result<(), LaunchError>;
    /// The store URL of one run: `run` names its namespace (a key prefix or a keyspace,
    /// `[a-z][a-z0-9_]*`), with client options suited to a failover (short timeouts).
    fn store_url(&self, run: &str, cfg: &FailoverConfig) -> Result<String, LaunchError>;
    /// The node to kill: the `which`-th candidate, in node order.
    fn victim(&self, which: usize) -> Result<Self::Node, LaunchError>;
    /// Kills `node` with SIGKILL.
    fn kill(&mut self, node: &Self::Node) -> Result<(), LaunchError>;
    /// Waits until the rest of the cluster has taken over from the killed `node`.
    fn wait_taken_over(&mut self, node: &Self::Node, within: Duration) -> Result<(), LaunchError>;
    /// Restarts the killed `node` (then [`wait_whole`](Self::wait_whole) is called).
    fn restart(&mut self, node: &Self::Node) -> Result<(), LaunchError>;
    /// What the servers did, in their own words (log lines), for the report.
    fn server_events(&self) -> Vec<String> {
        Vec::new()
    }
}

impl FailoverTarget for RedisCluster {
    /// The master and its replicas (the candidates for promotion).
    type Node = (usize, Vec<usize>);
    const BACKEND: &'static str = "redis";

    fn wait_whole(&mut self, within: Duration) -> Result<(), LaunchError> {
        self.wait_ok(within)
    }

    fn store_url(&self, run: &str, cfg: &FailoverConfig) -> Result<String, LaunchError> {
        // Short client timeouts so that calls to the dead master fail fast instead of
        // holding workers; WAIT's timeout below the response timeout.
        Ok(format!(
            "{}&prefix={run}&timeout_ms=2000&connect_timeout_ms=300&retries=3&wait_replicas={}&wait_timeout_ms=1000",
            self.url(),
            cfg.wait_replicas
        ))
    }

    fn victim(&self, which: usize) -> Result<Self::Node, LaunchError> {
        let masters = self.masters();
        let victim = *masters
            .get(which % masters.len().max(1))
            .ok_or_else(|| LaunchError("the cluster has no master".into()))?;
        let replicas = self.replicas_of(victim);
        if replicas.is_empty() {
            return Err(LaunchError(format!("master {victim} has no replica to fail over to")));
        }
        Ok((victim, replicas))
    }

    fn kill(&mut self, node: &Self::Node) -> Result<(), LaunchError> {
        RedisCluster::kill(self, node.0);
        Ok(())
    }

    fn wait_taken_over(&mut self, node: &Self::Node, within: Duration) -> Result<(), LaunchError> {
        self.wait_promoted(&node.1, within).map(|_| ())
    }

    fn restart(&mut self, node: &Self::Node) -> Result<(), LaunchError> {
        RedisCluster::restart(self, node.0)
    }
}

impl FailoverTarget for CassandraCluster {
    /// The node's index (node `i` is 127.0.0.`i+1`).
    type Node = usize;
    const BACKEND: &'static str = "cql";

    fn wait_whole(&mut self, within: Duration) -> Result<(), LaunchError> {
        self.wait_all_up(within)
    }

    fn store_url(&self, run: &str, _cfg: &FailoverConfig) -> Result<String, LaunchError> {
        // The client's request timeout above the servers' read and write timeouts (5 s), so
        // that a replica that does not answer shows as the coordinator's timeout; below the
        // experiment's call bound.
        Ok(self.url(run, "request_timeout_ms=12000&connect_timeout_ms=2000"))
    }

    fn victim(&self, which: usize) -> Result<Self::Node, LaunchError> {
        Ok(which % CLUSTER_NODES)
    }

    fn kill(&mut self, node: &Self::Node) -> Result<(), LaunchError> {
        CassandraCluster::kill(self, *node)
    }

    fn wait_taken_over(&mut self, node: &Self::Node, within: Duration) -> Result<(), LaunchError> {
        self.wait_down(*node, within)
    }

    fn restart(&mut self, node: &Self::Node) -> Result<(), LaunchError> {
        CassandraCluster::restart(self, *node)
    }

    fn server_events(&self) -> Vec<String> {
        CassandraCluster::server_events(self)
    }
}

/// The shape of one run.
#[derive(Clone, Debug)]
pub struct FailoverConfig {
    /// Provider trees (spread over the shards, hence over every master).
    pub trees: usize,
    /// Concurrent tasks claiming and releasing.
    pub workers: usize,
    /// Concurrent tasks paging through the instance listing (0: none).
    pub listers: usize,
    /// Instances created before the run, all listed by every listing.
    pub instances: usize,
    /// Load before the kill.
    pub before: Duration,
    /// Load while the killed node stays down, once the cluster has taken over (so that
    /// the node misses writes it must catch up on).
    pub down_for: Duration,
    /// Load after the cluster is whole again (the killed node restarted and back).
    pub after: Duration,
    /// The Redis URL option `wait_replicas` (0: acknowledge on the master's word); unused
    /// on other targets.
    pub wait_replicas: u32,
    /// Which node to kill: the `kill`-th candidate (of the masters on Redis).
    pub kill: usize,
    /// How long the experiment waits for one call before abandoning it as hung.
    pub call_bound: Duration,
    /// Seed of the workers' choices.
    pub seed: u64,
}

impl Default for FailoverConfig {
    /// 48 trees, 32 workers, no listers, 3 s before, 3 s after, no replica wait, the first
    /// master, calls bounded at [`CALL_BOUND`].
    fn default() -> Self {
        FailoverConfig {
            trees: 48,
            workers: 32,
            listers: 0,
            instances: 0,
            before: Duration::from_secs(3),
            down_for: Duration::ZERO,
            after: Duration::from_secs(3),
            wait_replicas: 0,
            kill: 0,
            call_bound: CALL_BOUND,
            seed: 1,
        }
    }
}

/// What one run measured and found. Times are milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FailoverReport {
    /// `wait_replicas` of the run.
    pub wait_replicas: u32,
    /// SIGKILL of the node -> the cluster took over: on Redis, its replica reports itself
    /// master; on Cassandra, every surviving node's gossip marked it DOWN.
    pub promotion_ms: f64,
    /// Take-over -> the first claim acknowledged on a tree where a claim failed after the
    /// kill. With `wait_replicas=1` this includes the restart and resync of the old master,
    /// since the promoted master has no replica before that.
    pub resume_ms: Option<f64>,
    /// Take-over -> the cluster whole again (the restarted node synced, or seen UP by
    /// every node).
    pub resynced_ms: f64,
    /// SIGKILL -> the restart of the node began.
    pub down_ms: f64,
    /// Acknowledged claims per second before the kill (over the second half of `before`).
    pub claims_per_s_before: f64,
    /// Acknowledged claims per second while the node was down (kill -> restart).
    pub claims_per_s_down: f64,
    /// Acknowledged claims per second after the cluster is whole again.
    pub claims_per_s_after: f64,
    /// Claims acknowledged.
    pub claims_acknowledged: u64,
    /// Claims refused for capacity (a legitimate answer).
    pub claims_refused: u64,
    /// Releases acknowledged.
    pub releases_acknowledged: u64,
    /// Calls (claims, releases, listing pages) that failed with a retryable error (the
    /// node was down, the cluster failing over, too few replicas acknowledged, a timeout).
    pub retryable_errors: u64,
    /// Of those, the ones before the kill.
    pub errors_before_kill: u64,
    /// Of those, the ones between the kill and the cluster whole again.
    pub errors_while_down: u64,
    /// Of those, the ones after the cluster was whole again.
    pub errors_after_whole: u64,
    /// SIGKILL -> the first and the last retryable error after it.
    pub error_window_ms: Option<(f64, f64)>,
    /// The retryable errors by kind (the error's text, cut short), with their counts.
    pub error_kinds: BTreeMap<String, u64>,
    /// Calls that had not answered after the call bound (the client's own timeouts should
    /// end every call sooner): abandoned, their outcome unknown (also counted among the
    /// retryable errors), so that a client that hangs on a dead node shows in the figures
    /// instead of stalling the run.
    pub hung_calls: u64,
    /// Complete listings (every page answered).
    pub lists_completed: u64,
    /// Complete listings made entirely while the node was down (kill -> restart).
    pub lists_completed_while_down: u64,
    /// Listings abandoned because a page failed retryably (counted among the errors too).
    pub lists_failed: u64,
    /// Complete listings that missed an instance, showed one twice or showed one that
    /// does not exist.
    pub lists_wrong: u64,
    /// Acknowledged claims, not released, missing from their tree afterwards.
    pub lost_claims: u64,
    /// Acknowledged claims still on their tree but not found through the consumer (a lost
    /// index entry: they could not be released).
    pub unindexed_claims: u64,
    /// Acknowledged releases whose allocation is on the tree again afterwards.
    pub resurrected_releases: u64,
    /// What the servers logged about the failure (see [`FailoverTarget::server_events`]).
    pub server_events: Vec<String>,
    /// The audit of every tree after the run.
    pub audit: String,
    /// Whether the audit found nothing wrong.
    pub audit_clean: bool,
}

/// Why a run could not be completed or its checks could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// A server could not be started, killed, restarted or did not recover.
    #[error("cluster: {0}")]
    Cluster(#[from] LaunchError),
    /// A store call failed in a way a failover does not explain.
    #[error("store: {0}")]
    Store(#[from] Error),
    /// Something the run relies on did not happen.
    #[error("{0}")]
    Run(String),
}

/// The default bound of one call (see [`FailoverConfig::call_bound`]).
pub const CALL_BOUND: Duration = Duration::from_secs(10);

/// A tiny deterministic generator (xorshift64*): the library has no `rand` here.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Claim,
    Release,
}

/// One acknowledged or failed call, as the client saw it.
struct Event {
    at: Duration,
    op: Op,
    root: ProviderId,
    ok: bool,
}

/// What the client saw of one failed call.
struct Failure {
    at: Duration,
    kind: String,
}

impl Failure {
    fn of(at: Duration, e: &Error) -> Self {
        let text = e.to_string();
        let kind = match text.char_indices().nth(140) {
            Some((i, _)) => format!("{}...", &text[..i]),
            None => text,
        };
        Failure { at, kind }
    }
}

#[derive(Default)]
struct WorkerLog {
    events: Vec<Event>,
    /// Acknowledged claims not released (yet).
    held: BTreeMap<ConsumerId, ClaimRequest>,
    /// Acknowledged releases, with the tree the claim was on.
    released: BTreeMap<ConsumerId, ProviderId>,
    refused: u64,
    failures: Vec<Failure>,
    hung: u64,
}

#[derive(Default)]
struct ListerLog {
    /// (start, end) of each complete listing.
    completed: Vec<(Duration, Duration)>,
    failed: u64,
    wrong: u64,
    failures: Vec<Failure>,
    hung: u64,
}

fn request(consumer: ConsumerId, root: ProviderId, rng: &mut Rng) -> ClaimRequest {
    let mut r = Resources::new();
    r.insert(ResourceClass::Vcpu, 1 + rng.below(4) as i64);
    r.insert(ResourceClass::MemoryMb, 512 * (1 + rng.below(4) as i64));
    ClaimRequest {
        consumer,
        project_id: "p-failover".into(),
        user_id: "u-failover".into(),
        allocations: AllocationMap::from([(root, r)]),
        group: None,
    }
}

/// Repeats `f` while it fails retryably, for up to a minute.
async fn until_available<T, F, Fut>(what: &str, f: F) -> Result<T, FailoverError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => return Err(FailoverError::Run(format!("{what}: {e}"))),
        }
    }
}

/// Runs `call` with the experiment's bound: a call that has not answered by then is
/// abandoned (its outcome unknown) and counted as hung.
async fn bounded<T>(
    bound: Duration,
    backend: &'static str,
    what: &str,
    hung: &mut u64,
    call: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(bound, call).await {
        Ok(a) => a,
        Err(_) => {
            *hung += 1;
            Err(Error::Timeout { backend, message: format!("{what} abandoned by the experiment after {bound:?}") })
        }
    }
}

struct Shared {
    store: Arc<dyn Store>,
    roots: Vec<ProviderId>,
    start: Instant,
    stop: std::sync::atomic::AtomicBool,
    bound: Duration,
    backend: &'static str,
    project: String,
    instances: BTreeSet<InstanceId>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }
}

async fn worker(sh: Arc<Shared>, seed: u64) -> Result<WorkerLog, FailoverError> {
    let mut rng = Rng::new(seed);
    let mut log = WorkerLog::default();
    let store = &sh.store;
    while !sh.stopped() {
        if !log.held.is_empty() && rng.below(100) < 35 {
            let Some((&c, req)) = log.held.iter().nth(rng.below(log.held.len())) else { continue };
            let root = *req.allocations.keys().next().ok_or_else(|| FailoverError::Run("empty claim".into()))?;
            // A release whose answer was lost may or may not have happened, which the check
            // could not tell from a lost claim: repeat it (it is idempotent) until it is
            // acknowledged.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let answer = bounded(sh.bound, sh.backend, "release", &mut log.hung, store.release(c)).await;
                match answer {
                    Ok(_) => {
                        log.events.push(Event { at: sh.start.elapsed(), op: Op::Release, root, ok: true });
                        log.held.remove(&c);
                        log.released.insert(c, root);
                        break;
                    }
                    Err(e) if e.is_retryable() && Instant::now() < deadline => {
                        log.failures.push(Failure::of(sh.start.elapsed(), &e));
                        log.events.push(Event { at: sh.start.elapsed(), op: Op::Release, root, ok: false });
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => return Err(FailoverError::Run(format!("release of {c}: {e} ({e:?})"))),
                }
            }
            continue;
        }
        let c = ConsumerId::new_v4();
        let root = sh.roots[rng.below(sh.roots.len())];
        let req = request(c, root, &mut rng);
        let answer = bounded(sh.bound, sh.backend, "claim", &mut log.hung, store.claim(&req)).await;
        match answer {
            Ok(_) => {
                log.events.push(Event { at: sh.start.elapsed(), op: Op::Claim, root, ok: true });
                log.held.insert(c, req);
            }
            Err(Error::Capacity { .. }) => log.refused += 1,
            Err(e) if e.is_retryable() => {
                // Outcome unknown: the claim may be on the tree or not; nothing is checked
                // about it, as a client that gave up on it would not rely on it.
                log.failures.push(Failure::of(sh.start.elapsed(), &e));
                log.events.push(Event { at: sh.start.elapsed(), op: Op::Claim, root, ok: false });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(FailoverError::Run(format!("claim of {c}: {e} ({e:?})"))),
        }
    }
    Ok(log)
}

/// Pages through the listing of the run's instances (20 a page) again and again; a
/// complete listing must show exactly the instances created before the run.
async fn lister(sh: Arc<Shared>) -> Result<ListerLog, FailoverError> {
    let mut log = ListerLog::default();
    while !sh.stopped() {
        let began = sh.start.elapsed();
        let mut seen = Vec::new();
        let mut marker = None;
        let complete = loop {
            let q = ListQuery {
                filters: InstanceFilters { project_id: Some(sh.project.clone()), ..InstanceFilters::default() },
                limit: Some(20),
                marker,
                partial: false,
            };
            match bounded(sh.bound, sh.backend, "listing page", &mut log.hung, sh.store.list_instances(&q)).await {
                Ok(page) => {
                    seen.extend(page.instances.iter().map(|i| i.uuid));
                    match page.next_marker {
                        Some(m) => marker = Some(m),
                        None => break true,
                    }
                }
                Err(e) if e.is_retryable() => {
                    log.failures.push(Failure::of(sh.start.elapsed(), &e));
                    break false;
                }
                Err(e) => return Err(FailoverError::Run(format!("listing: {e} ({e:?})"))),
            }
        };
        if !complete {
            log.failed += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let distinct: BTreeSet<InstanceId> = seen.iter().copied().collect();
        if distinct.len() != seen.len() || distinct != sh.instances {
            log.wrong += 1;
        }
        log.completed.push((began, sh.start.elapsed()));
    }
    Ok(log)
}

/// Runs `f` on the target on a blocking thread (the testkit's server control blocks).
async fn on_target<C: FailoverTarget, T: Send + 'static>(
    target: &Arc<Mutex<C>>,
    f: impl FnOnce(&mut C) -> Result<T, LaunchError> + Send + 'static,
) -> Result<T, FailoverError> {
    let c = target.clone();
    tokio::task::spawn_blocking(move || f(&mut c.lock().unwrap_or_else(|e| e.into_inner())))
        .await
        .map_err(|e| FailoverError::Run(format!("cluster control task: {e}")))?
        .map_err(FailoverError::from)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs one experiment on `target` (every node running and in sync) and checks the store
/// against what was acknowledged. The target is left whole (the killed node restarted), so
/// it can serve the next run in a fresh namespace.
pub async fn run<C: FailoverTarget>(
    target: Arc<Mutex<C>>,
    cfg: &FailoverConfig,
) -> Result<FailoverReport, FailoverError> {
    use std::sync::atomic::Ordering;
    let run_id = format!("failover_{}", uuid::Uuid::new_v4().simple());
    let (url, victim) = on_target(&target, {
        let (kill, cfg, run_id) = (cfg.kill, cfg.clone(), run_id.clone());
        move |c| {
            c.wait_whole(Duration::from_secs(60))?;
            Ok((c.store_url(&run_id, &cfg)?, c.victim(kill)?))
        }
    })
    .await?;
    let store = crate::store::open(&url).await?;
    let mut roots = Vec::with_capacity(cfg.trees);
    for i in 0..cfg.trees {
        let id = ProviderId::new_v4();
        store
            .create_provider(&NewProvider {
                id,
                name: format!("{run_id}-cn{i}"),
                parent: None,
                cell: None,
                inventories: BTreeMap::from([
                    (ResourceClass::Vcpu, Inventory::with_total(64)),
                    (ResourceClass::MemoryMb, Inventory::with_total(32 * 1024)),
                ]),
                traits: BTreeSet::new(),
                aggregates: BTreeSet::new(),
            })
            .await?;
        roots.push(id);
    }
    let project = format!("p-{run_id}");
    let mut instances = BTreeSet::new();
    let flavor = FlavorId::new("failover")?;
    for i in 0..cfg.instances {
        let inst =
            Instance::new_building(InstanceId::new_v4(), &format!("vm-{i}"), &project, "u-failover", flavor.clone());
        store.create_instance(&inst).await?;
        instances.insert(inst.uuid);
    }
    let sh = Arc::new(Shared {
        store: store.clone(),
        roots,
        start: Instant::now(),
        stop: std::sync::atomic::AtomicBool::new(false),
        bound: cfg.call_bound,
        backend: C::BACKEND,
        project,
        instances,
    });
    let workers: Vec<_> = (0..cfg.workers)
        .map(|w| tokio::spawn(worker(sh.clone(), cfg.seed.wrapping_mul(1000).wrapping_add(w as u64))))
        .collect();
    let listers: Vec<_> = (0..cfg.listers).map(|_| tokio::spawn(lister(sh.clone()))).collect();

    tokio::time::sleep(cfg.before).await;
    let killed_at = on_target(&target, {
        let v = victim.clone();
        move |c| {
            // Stamped before the signal: calls broken by the kill fail after this instant,
            // some of them before the kill returns (it reaps the process).
            let at = Instant::now();
            c.kill(&v)?;
            Ok(at)
        }
    })
    .await?;
    tracing::info!(?victim, "failover: node killed");
    let taken_over_at = on_target(&target, {
        let v = victim.clone();
        move |c| {
            c.wait_taken_over(&v, Duration::from_secs(90))?;
            Ok(Instant::now())
        }
    })
    .await?;
    tracing::info!(ms = ms(taken_over_at - killed_at), "failover: taken over");
    tokio::time::sleep(cfg.down_for).await;
    let restart_at = Instant::now();
    let whole_at = on_target(&target, {
        let v = victim.clone();
        move |c| {
            c.restart(&v)?;
            c.wait_whole(Duration::from_secs(90))?;
            Ok(Instant::now())
        }
    })
    .await?;
    tokio::time::sleep(cfg.after).await;
    sh.stop.store(true, Ordering::Relaxed);
    let end = sh.start.elapsed();
    let mut logs = Vec::new();
    for t in workers {
        logs.push(t.await.map_err(|e| FailoverError::Run(format!("worker panicked: {e}")))??);
    }
    let mut list_logs = Vec::new();
    for t in listers {
        list_logs.push(t.await.map_err(|e| FailoverError::Run(format!("lister panicked: {e}")))??);
    }

    // Timings from the client's record.
    let start = sh.start;
    let (killed, taken_over, restarted, whole) =
        (killed_at - start, taken_over_at - start, restart_at - start, whole_at - start);
    let events = || logs.iter().flat_map(|l| l.events.iter());
    let failed_shard: BTreeSet<ProviderId> =
        events().filter(|e| e.op == Op::Claim && !e.ok && e.at >= killed).map(|e| e.root).collect();
    let resume = events()
        .filter(|e| e.op == Op::Claim && e.ok && e.at >= taken_over && failed_shard.contains(&e.root))
        .map(|e| e.at)
        .min();
    let rate = |from: Duration, to: Duration| {
        let n = events().filter(|e| e.op == Op::Claim && e.ok && e.at >= from && e.at < to).count();
        let secs = to.saturating_sub(from).as_secs_f64();
        if secs > 0.0 { n as f64 / secs } else { 0.0 }
    };
    let failures: Vec<&Failure> =
        logs.iter().flat_map(|l| l.failures.iter()).chain(list_logs.iter().flat_map(|l| l.failures.iter())).collect();
    let mut error_kinds = BTreeMap::new();
    for f in &failures {
        *error_kinds.entry(f.kind.clone()).or_insert(0) += 1;
    }
    let after_kill: Vec<Duration> = failures.iter().filter(|f| f.at >= killed).map(|f| f.at - killed).collect();
    let completed = || list_logs.iter().flat_map(|l| l.completed.iter());
    let mut report = FailoverReport {
        wait_replicas: cfg.wait_replicas,
        promotion_ms: ms(taken_over - killed),
        resume_ms: resume.map(|r| ms(r.saturating_sub(taken_over))),
        resynced_ms: ms(whole.saturating_sub(taken_over)),
        down_ms: ms(restarted.saturating_sub(killed)),
        claims_per_s_before: rate(killed / 2, killed),
        claims_per_s_down: rate(killed, restarted),
        claims_per_s_after: rate(whole, end),
        claims_acknowledged: events().filter(|e| e.op == Op::Claim && e.ok).count() as u64,
        claims_refused: logs.iter().map(|l| l.refused).sum(),
        releases_acknowledged: events().filter(|e| e.op == Op::Release && e.ok).count() as u64,
        retryable_errors: failures.len() as u64,
        errors_before_kill: failures.iter().filter(|f| f.at < killed).count() as u64,
        errors_while_down: failures.iter().filter(|f| f.at >= killed && f.at < whole).count() as u64,
        errors_after_whole: failures.iter().filter(|f| f.at >= whole).count() as u64,
        error_window_ms: after_kill
            .iter()
            .min()
            .zip(after_kill.iter().max())
            .map(|(first, last)| (ms(*first), ms(*last))),
        error_kinds,
        hung_calls: logs.iter().map(|l| l.hung).sum::<u64>() + list_logs.iter().map(|l| l.hung).sum::<u64>(),
        lists_completed: completed().count() as u64,
        lists_completed_while_down: completed().filter(|(b, e)| *b >= killed && *e < restarted).count() as u64,
        lists_failed: list_logs.iter().map(|l| l.failed).sum(),
        lists_wrong: list_logs.iter().map(|l| l.wrong).sum(),
        ..FailoverReport::default()
    };

    // The check: what the store holds against what was acknowledged.
    let mut on_tree: BTreeMap<ConsumerId, TreeAllocation> = BTreeMap::new();
    for root in sh.roots.iter() {
        for a in until_available("tree allocations", || store.tree_allocations(*root)).await? {
            on_tree.insert(a.consumer, a);
        }
    }
    for (c, req) in logs.iter().flat_map(|l| l.held.iter()) {
        match on_tree.get(c) {
            Some(a) if a.allocations == req.allocations => {
                let found = until_available("allocations", || store.allocations(*c)).await?;
                if !found.iter().any(|f| f.allocations == req.allocations) {
                    report.unindexed_claims += 1;
                }
            }
            Some(a) => {
                return Err(FailoverError::Run(format!(
                    "consumer {c} holds {:?} instead of the acknowledged {:?}",
                    a.allocations, req.allocations
                )));
            }
            None => report.lost_claims += 1,
        }
    }
    for (c, root) in logs.iter().flat_map(|l| l.released.iter()) {
        if on_tree.get(c).is_some_and(|a| a.root == *root) {
            report.resurrected_releases += 1;
        }
    }
    let scope = AuditScope::trees(&sh.roots);
    let audited = until_available("audit", || audit(&*store, &scope)).await?;
    report.audit_clean = audited.is_clean();
    report.audit = audited.to_string();
    report.server_events = on_target(&target, |c| Ok(c.server_events())).await?;
    tracing::info!(?report, "failover: run checked");
    Ok(report)
}
