//! A Jepsen-style failover experiment on a replicated Redis Cluster
//! ([`RedisCluster::start_replicated`]): many tasks claim and release on trees spread over
//! every shard through a [`RedisStore`]; one master is killed with SIGKILL mid-run; its
//! replica is promoted after `cluster-node-timeout`; the old master is restarted (it rejoins
//! as a replica of its successor); the load goes on. Every acknowledged claim and every
//! acknowledged release is recorded, and afterwards the store is checked against the
//! record: each acknowledged claim is still there unless its release was acknowledged, no
//! acknowledged release came back, and the audit finds nothing over capacity.
//!
//! The failover test (`tests/failover.rs`) asserts on the [`FailoverReport`] (nothing lost
//! with `wait_replicas=1`, a clean audit in every run) and the failover benchmark
//! (`unicell bench failover`) reports its figures. Nothing here asserts a timing: the
//! timings are measurements.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::LaunchError;
use super::redis_server::RedisCluster;
use crate::error::Error;
use crate::model::*;
use crate::store::StoreUrl;
use crate::store::audit::{AuditScope, audit};
use crate::store::prelude::*;
use crate::store::redis::RedisStore;

/// The shape of one run.
#[derive(Clone, Debug)]
pub struct FailoverConfig {
    /// Provider trees (spread over the shards, hence over every master).
    pub trees: usize,
    /// Concurrent tasks claiming and releasing.
    pub workers: usize,
    /// Load before the kill.
    pub before: Duration,
    /// Load after the cluster is whole again (the old master synced as a replica).
    pub after: Duration,
    /// The URL option `wait_replicas` of the store (0: acknowledge on the master's word).
    pub wait_replicas: u32,
    /// Which master to kill: the `kill`-th of the masters, in node order.
    pub kill: usize,
    /// Seed of the workers' choices.
    pub seed: u64,
}

impl Default for FailoverConfig {
    /// 48 trees, 32 workers, 3 s before, 3 s after, no replica wait, the first master.
    fn default() -> Self {
        FailoverConfig {
            trees: 48,
            workers: 32,
            before: Duration::from_secs(3),
            after: Duration::from_secs(3),
            wait_replicas: 0,
            kill: 0,
            seed: 1,
        }
    }
}

/// What one run measured and found. Times are milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FailoverReport {
    /// `wait_replicas` of the run.
    pub wait_replicas: u32,
    /// SIGKILL of the master -> its replica reports itself master.
    pub promotion_ms: f64,
    /// Promotion -> the first claim acknowledged on a tree of the killed master's shard
    /// (a tree whose claims failed after the kill). With `wait_replicas=1` this includes the
    /// restart and resync of the old master, since the promoted master has no replica
    /// before that.
    pub resume_ms: Option<f64>,
    /// Promotion -> the restarted old master reports its link to the new master up.
    pub resynced_ms: f64,
    /// Acknowledged claims per second before the kill (over the second half of `before`).
    pub claims_per_s_before: f64,
    /// Acknowledged claims per second after the cluster is whole again.
    pub claims_per_s_after: f64,
    /// Claims acknowledged.
    pub claims_acknowledged: u64,
    /// Claims refused for capacity (a legitimate answer).
    pub claims_refused: u64,
    /// Releases acknowledged.
    pub releases_acknowledged: u64,
    /// Calls that failed with a retryable error (the node was down, the cluster failing
    /// over, or too few replicas acknowledged).
    pub retryable_errors: u64,
    /// Calls that had not answered after [`CALL_BOUND`] (the client's own timeouts should
    /// end every call sooner): abandoned, their outcome unknown (also counted among the
    /// retryable errors), so that a client that hangs on a dead node shows in the figures
    /// instead of stalling the run.
    pub hung_calls: u64,
    /// Acknowledged claims, not released, missing from their tree afterwards.
    pub lost_claims: u64,
    /// Acknowledged claims still on their tree but not found through the consumer (a lost
    /// index entry: they could not be released).
    pub unindexed_claims: u64,
    /// Acknowledged releases whose allocation is on the tree again afterwards.
    pub resurrected_releases: u64,
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

/// How long the experiment waits for one claim or release before abandoning it as hung.
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

#[derive(Default)]
struct WorkerLog {
    events: Vec<Event>,
    /// Acknowledged claims not released (yet).
    held: BTreeMap<ConsumerId, ClaimRequest>,
    /// Acknowledged releases, with the tree the claim was on.
    released: BTreeMap<ConsumerId, ProviderId>,
    refused: u64,
    retryable: u64,
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

async fn worker(
    store: Arc<dyn Store>,
    roots: Arc<Vec<ProviderId>>,
    start: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
    seed: u64,
) -> Result<WorkerLog, FailoverError> {
    use std::sync::atomic::Ordering;
    let mut rng = Rng::new(seed);
    let mut log = WorkerLog::default();
    while !stop.load(Ordering::Relaxed) {
        if !log.held.is_empty() && rng.below(100) < 35 {
            let Some((&c, req)) = log.held.iter().nth(rng.below(log.held.len())) else { continue };
            let root = *req.allocations.keys().next().ok_or_else(|| FailoverError::Run("empty claim".into()))?;
            // A release whose answer was lost may or may not have happened, which the check
            // could not tell from a lost claim: repeat it (it is idempotent) until it is
            // acknowledged.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let answer = match tokio::time::timeout(CALL_BOUND, store.release(c)).await {
                    Ok(a) => a,
                    Err(_) => {
                        log.hung += 1;
                        Err(Error::Timeout { backend: "redis", message: "release abandoned by the experiment".into() })
                    }
                };
                match answer {
                    Ok(_) => {
                        log.events.push(Event { at: start.elapsed(), op: Op::Release, root, ok: true });
                        log.held.remove(&c);
                        log.released.insert(c, root);
                        break;
                    }
                    Err(e) if e.is_retryable() && Instant::now() < deadline => {
                        log.retryable += 1;
                        log.events.push(Event { at: start.elapsed(), op: Op::Release, root, ok: false });
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => return Err(FailoverError::Run(format!("release of {c}: {e} ({e:?})"))),
                }
            }
            continue;
        }
        let c = ConsumerId::new_v4();
        let root = roots[rng.below(roots.len())];
        let req = request(c, root, &mut rng);
        let answer = match tokio::time::timeout(CALL_BOUND, store.claim(&req)).await {
            Ok(a) => a,
            Err(_) => {
                log.hung += 1;
                Err(Error::Timeout { backend: "redis", message: "claim abandoned by the experiment".into() })
            }
        };
        match answer {
            Ok(_) => {
                log.events.push(Event { at: start.elapsed(), op: Op::Claim, root, ok: true });
                log.held.insert(c, req);
            }
            Err(Error::Capacity { .. }) => log.refused += 1,
            Err(e) if e.is_retryable() => {
                // Outcome unknown: the claim may be on the tree or not; nothing is checked
                // about it, as a client that gave up on it would not rely on it.
                log.retryable += 1;
                log.events.push(Event { at: start.elapsed(), op: Op::Claim, root, ok: false });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(FailoverError::Run(format!("claim of {c}: {e} ({e:?})"))),
        }
    }
    Ok(log)
}

/// Runs `f` on the cluster on a blocking thread (the testkit's server control blocks).
async fn on_cluster<T: Send + 'static>(
    cluster: &Arc<Mutex<RedisCluster>>,
    f: impl FnOnce(&mut RedisCluster) -> Result<T, LaunchError> + Send + 'static,
) -> Result<T, FailoverError> {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || f(&mut c.lock().unwrap_or_else(|e| e.into_inner())))
        .await
        .map_err(|e| FailoverError::Run(format!("cluster control task: {e}")))?
        .map_err(FailoverError::from)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs one experiment on `cluster` (replicated, every node running and synced) and
/// checks the store against what was acknowledged. The cluster is left whole (the killed
/// node restarted), so it can serve the next run with a fresh key prefix.
pub async fn run(cluster: Arc<Mutex<RedisCluster>>, cfg: &FailoverConfig) -> Result<FailoverReport, FailoverError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (url, victim, replicas) = on_cluster(&cluster, {
        let kill = cfg.kill;
        move |c| {
            c.wait_ok(Duration::from_secs(60))?;
            let masters = c.masters();
            let victim = *masters
                .get(kill % masters.len().max(1))
                .ok_or_else(|| LaunchError("the cluster has no master".into()))?;
            let replicas = c.replicas_of(victim);
            if replicas.is_empty() {
                return Err(LaunchError(format!("master {victim} has no replica to fail over to")));
            }
            Ok((c.url(), victim, replicas))
        }
    })
    .await?;
    let prefix = format!("failover-{}", uuid::Uuid::new_v4().simple());
    // Short client timeouts so that calls to the dead master fail fast instead of holding
    // workers; WAIT's timeout below the response timeout.
    let url = format!(
        "{url}&prefix={prefix}&timeout_ms=2000&connect_timeout_ms=300&retries=3&wait_replicas={}&wait_timeout_ms=1000",
        cfg.wait_replicas
    );
    let store: Arc<dyn Store> = Arc::new(RedisStore::open(&StoreUrl::parse(&url)?).await?);
    let mut roots = Vec::with_capacity(cfg.trees);
    for i in 0..cfg.trees {
        let id = ProviderId::new_v4();
        store
            .create_provider(&NewProvider {
                id,
                name: format!("{prefix}-cn{i}"),
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
    let roots = Arc::new(roots);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..cfg.workers)
        .map(|w| {
            tokio::spawn(worker(
                store.clone(),
                roots.clone(),
                start,
                stop.clone(),
                cfg.seed.wrapping_mul(1000).wrapping_add(w as u64),
            ))
        })
        .collect();

    tokio::time::sleep(cfg.before).await;
    let killed_at = on_cluster(&cluster, move |c| {
        c.kill(victim);
        Ok(Instant::now())
    })
    .await?;
    tracing::info!(victim, "failover: master killed");
    let promoted_at = on_cluster(&cluster, move |c| {
        c.wait_promoted(&replicas, Duration::from_secs(60))?;
        Ok(Instant::now())
    })
    .await?;
    tracing::info!(promotion_ms = ms(promoted_at - killed_at), "failover: replica promoted");
    let resynced_at = on_cluster(&cluster, move |c| {
        c.restart(victim)?;
        c.wait_ok(Duration::from_secs(60))?;
        Ok(Instant::now())
    })
    .await?;
    tokio::time::sleep(cfg.after).await;
    stop.store(true, Ordering::Relaxed);
    let end = start.elapsed();
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(t.await.map_err(|e| FailoverError::Run(format!("worker panicked: {e}")))??);
    }

    // Timings from the client's record.
    let (killed, promoted, resynced) = (killed_at - start, promoted_at - start, resynced_at - start);
    let events = || logs.iter().flat_map(|l| l.events.iter());
    let failed_shard: BTreeSet<ProviderId> =
        events().filter(|e| e.op == Op::Claim && !e.ok && e.at >= killed).map(|e| e.root).collect();
    let resume = events()
        .filter(|e| e.op == Op::Claim && e.ok && e.at >= promoted && failed_shard.contains(&e.root))
        .map(|e| e.at)
        .min();
    let rate = |from: Duration, to: Duration| {
        let n = events().filter(|e| e.op == Op::Claim && e.ok && e.at >= from && e.at < to).count();
        let secs = to.saturating_sub(from).as_secs_f64();
        if secs > 0.0 { n as f64 / secs } else { 0.0 }
    };
    let mut report = FailoverReport {
        wait_replicas: cfg.wait_replicas,
        promotion_ms: ms(promoted - killed),
        resume_ms: resume.map(|r| ms(r.saturating_sub(promoted))),
        resynced_ms: ms(resynced.saturating_sub(promoted)),
        claims_per_s_before: rate(killed / 2, killed),
        claims_per_s_after: rate(resynced, end),
        claims_acknowledged: events().filter(|e| e.op == Op::Claim && e.ok).count() as u64,
        claims_refused: logs.iter().map(|l| l.refused).sum(),
        releases_acknowledged: events().filter(|e| e.op == Op::Release && e.ok).count() as u64,
        retryable_errors: logs.iter().map(|l| l.retryable).sum(),
        hung_calls: logs.iter().map(|l| l.hung).sum(),
        ..FailoverReport::default()
    };

    // The check: what the store holds against what was acknowledged.
    let mut on_tree: BTreeMap<ConsumerId, TreeAllocation> = BTreeMap::new();
    for root in roots.iter() {
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
    let scope = AuditScope::trees(&roots);
    let audited = until_available("audit", || audit(&*store, &scope)).await?;
    report.audit_clean = audited.is_clean();
    report.audit = audited.to_string();
    tracing::info!(?report, "failover: run checked");
    Ok(report)
}
