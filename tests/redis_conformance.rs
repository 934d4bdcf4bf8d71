//! The whole conformance suite against a real Redis server and a real Redis Cluster.
//!
//! Single node, first that applies: `REDIS_URL`; a throwaway `redis-server` started here
//! from the installed binary; a testcontainers Redis when a Docker daemon answers; else every
//! trial is ignored with the reason. Cluster: `REDIS_CLUSTER_URL`, else a three-master
//! cluster started here from `redis-server --cluster-enabled yes` and `redis-cli --cluster
//! create`, else ignored with the reason. Every case uses a fresh key prefix; servers started
//! here are killed at the end, and prefixes on a given server are purged.

#[path = "support/redis_server.rs"]
mod redis_server;
mod support;

use std::sync::Arc;

use support::{Factory, Skip, conformance_trials};
use unicell::store::conformance::differential::Op;
use unicell::store::prelude::*;
use unicell::store::redis::RedisStore;

/// Where a target's servers live; dropping it stops what this binary started.
#[allow(dead_code)]
enum Guard {
    None,
    Single(redis_server::Single),
    Cluster(redis_server::Cluster),
    Container(
        Box<(
            tokio::runtime::Runtime,
            testcontainers_modules::testcontainers::ContainerAsync<testcontainers_modules::redis::Redis>,
        )>,
    ),
}

fn docker_answers() -> bool {
    if let Ok(h) = std::env::var("DOCKER_HOST")
        && let Some(addr) = h.strip_prefix("tcp://")
    {
        return std::net::TcpStream::connect(addr).is_ok();
    }
    std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok()
}

fn single_target() -> (Result<String, String>, Guard) {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return (Ok(url), Guard::None);
    }
    let binary_reason = match redis_server::Single::start() {
        Ok(s) => return (Ok(s.server.url()), Guard::Single(s)),
        Err(e) => e,
    };
    if !docker_answers() {
        return (
            Err(format!("no REDIS_URL, no usable redis-server ({binary_reason}), and no Docker daemon answers")),
            Guard::None,
        );
    }
    let started = (|| -> Result<_, String> {
        use testcontainers_modules::testcontainers::runners::AsyncRunner;
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        let (c, url) = rt.block_on(async {
            let c = testcontainers_modules::redis::Redis::default().start().await.map_err(|e| e.to_string())?;
            let host = c.get_host().await.map_err(|e| e.to_string())?;
            let port =
                c.get_host_port_ipv4(testcontainers_modules::redis::REDIS_PORT).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((c, format!("redis://{host}:{port}")))
        })?;
        Ok((url, Guard::Container(Box::new((rt, c)))))
    })();
    match started {
        Ok((url, g)) => (Ok(url), g),
        Err(e) => (Err(format!("testcontainers Redis failed: {e}")), Guard::None),
    }
}

fn cluster_target() -> (Result<String, String>, Guard) {
    if let Ok(url) = std::env::var("REDIS_CLUSTER_URL") {
        return (Ok(url), Guard::None);
    }
    match redis_server::Cluster::start(3) {
        Ok(c) => (Ok(c.url()), Guard::Cluster(c)),
        Err(e) => (Err(format!("no REDIS_CLUSTER_URL and no cluster could be started: {e}")), Guard::None),
    }
}

fn with_prefix(url: &str, prefix: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}prefix={prefix}")
}

fn factory(target: Result<String, String>, run: &str) -> Factory {
    let run = run.to_string();
    Arc::new(move || {
        let target = target.clone();
        let prefix = format!("{run}-{}", uuid::Uuid::new_v4().simple());
        Box::pin(async move {
            let url = target.map_err(Skip)?;
            let store = RedisStore::open(
                &unicell::store::StoreUrl::parse(&with_prefix(&url, &prefix)).map_err(|e| Skip(e.to_string()))?,
            )
            .await
            .unwrap_or_else(|e| panic!("the redis server at {url} is set up but the store does not open: {e}"));
            Ok(Arc::new(store) as Arc<dyn Store>)
        })
    })
}

/// Removes every key of this run from a server this binary did not start.
fn purge(url: &str, run: &str) {
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        return;
    };
    rt.block_on(async {
        let Ok(u) = unicell::store::StoreUrl::parse(&with_prefix(url, run)) else {
            return;
        };
        if let Ok(s) = RedisStore::open(&u).await {
            // Prefixes of this run are `<run>-<case>`: purge them all with one pattern.
            let _ = s.purge_matching(&format!("{run}-*")).await;
            let _ = s.purge().await;
        }
    });
}

/// Raw access to the server, for planting the leftovers a crash would leave.
fn raw_sadd(url: &str, key: &str, member: &str) -> Result<(), String> {
    let u = unicell::store::StoreUrl::parse(url).map_err(|e| e.to_string())?;
    let e = u.expose();
    let first = format!("redis://{}:{}", e.host_str().unwrap_or("127.0.0.1"), e.port().unwrap_or(6379));
    let mut cmd = redis::cmd("SADD");
    cmd.arg(key).arg(member);
    if u.scheme() == unicell::store::Scheme::RedisCluster {
        let mut nodes = vec![first];
        for seed in u.param("seeds").unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
            nodes.push(format!("redis://{seed}"));
        }
        let client = redis::cluster::ClusterClient::new(nodes).map_err(|e| e.to_string())?;
        let mut c = client.get_connection().map_err(|e| e.to_string())?;
        cmd.query::<i64>(&mut c).map_err(|e| e.to_string())?;
    } else {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut c = client.get_connection().map_err(|e| e.to_string())?;
        cmd.query::<i64>(&mut c).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn new_root(name: &str) -> unicell::model::NewProvider {
    use unicell::model::*;
    NewProvider {
        id: ProviderId::new_v4(),
        name: format!("{name}-{}", uuid::Uuid::new_v4().simple()),
        parent: None,
        cell: None,
        inventories: std::collections::BTreeMap::from([(ResourceClass::Vcpu, Inventory::with_total(8))]),
        traits: Default::default(),
        aggregates: Default::default(),
    }
}

type Check = fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// Redis-specific checks beyond the shared suite, on each target.
fn backend_trials(target: &str, url: Result<String, String>, run: &str) -> Vec<libtest_mimic::Trial> {
    let checks: Vec<(&str, Check)> = vec![
        ("feed_resync_after_trim", |u| Box::pin(feed_resync_after_trim(u))),
        ("stale_index_member_ignored_then_cleaned", |u| Box::pin(stale_index_member(u))),
        ("sharded_listing_matches_memory_store", |u| Box::pin(sharded_listing(u))),
    ];
    checks
        .into_iter()
        .map(|(name, check)| {
            let url = url.clone();
            let run = run.to_string();
            libtest_mimic::Trial::ignorable_test(format!("backend::{target}::{name}"), move || {
                let url = match url {
                    Ok(u) => u,
                    Err(reason) => return Ok(libtest_mimic::Completion::ignored_with(reason)),
                };
                let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
                let prefixed = with_prefix(&url, &format!("{run}-{}", uuid::Uuid::new_v4().simple()));
                rt.block_on(check(prefixed))?;
                Ok(libtest_mimic::Completion::Completed)
            })
        })
        .collect()
}

async fn open_store(url: &str) -> Result<RedisStore, String> {
    RedisStore::open(&unicell::store::StoreUrl::parse(url).map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())
}

/// With one tombstone kept per shard, deleting two trees trims the feed: a cursor from before
/// must get `Resync`, a cursor from after must not.
async fn feed_resync_after_trim(url: String) -> Result<(), String> {
    use unicell::model::Changes;
    let store = open_store(&format!("{url}&tombstones=1&tree_shards=1")).await?;
    let before = store.change_cursor().await.map_err(|e| e.to_string())?;
    for _ in 0..3 {
        let p = new_root("trim");
        store.create_provider(&p).await.map_err(|e| e.to_string())?;
        store.delete_provider(p.id).await.map_err(|e| e.to_string())?;
    }
    match store.changes_since(&before).await.map_err(|e| e.to_string())? {
        Changes::Resync => {}
        other => return Err(format!("a cursor older than trimmed tombstones must resync, got {other:?}")),
    }
    let after = store.change_cursor().await.map_err(|e| e.to_string())?;
    let p = new_root("trim");
    store.create_provider(&p).await.map_err(|e| e.to_string())?;
    match store.changes_since(&after).await.map_err(|e| e.to_string())? {
        Changes::Trees { roots, .. } if roots == vec![p.id] => Ok(()),
        other => Err(format!("expected exactly the new tree, got {other:?}")),
    }
}

/// A consumer-index member whose claim never ran (what a crash between the index write and
/// the claim script leaves in cluster mode) is ignored by readers and removed once older than
/// the grace period; the consumer's real claims are unaffected.
async fn stale_index_member(url: String) -> Result<(), String> {
    use unicell::model::*;
    let store = open_store(&format!("{url}&grace_ms=0")).await?;
    let prefix = store.config().prefix.clone();
    let tree = new_root("stale");
    store.create_provider(&tree).await.map_err(|e| e.to_string())?;
    let consumer = ConsumerId::new_v4();
    let ghost = format!("{}|deadbeef|{}", tree.id, 1);
    raw_sadd(&url, &format!("{prefix}:cons:{consumer}"), &ghost)?;
    let held = store.allocations(consumer).await.map_err(|e| e.to_string())?;
    if !held.is_empty() {
        return Err(format!("a member without allocation must not be reported: {held:?}"));
    }
    let released = store.release(consumer).await.map_err(|e| e.to_string())?;
    if !released.roots.is_empty() {
        return Err(format!("nothing was held, yet release reports {released:?}"));
    }
    let req = ClaimRequest {
        consumer,
        project_id: "p".into(),
        user_id: "u".into(),
        allocations: AllocationMap::from([(tree.id, Resources::from([(ResourceClass::Vcpu, 2)]))]),
        group: None,
    };
    store.claim(&req).await.map_err(|e| e.to_string())?;
    raw_sadd(&url, &format!("{prefix}:cons:{consumer}"), &ghost)?;
    let held = store.allocations(consumer).await.map_err(|e| e.to_string())?;
    if held.len() != 1 || held[0].allocations != req.allocations {
        return Err(format!("the real claim must be found once: {held:?}"));
    }
    let released = store.release(consumer).await.map_err(|e| e.to_string())?;
    if released.roots != vec![tree.id] {
        return Err(format!("release must free the tree: {released:?}"));
    }
    let t = store.provider_tree(tree.id).await.map_err(|e| e.to_string())?;
    if !t.providers[0].usages.is_empty() {
        return Err(format!("usage left after release: {:?}", t.providers[0].usages));
    }
    Ok(())
}

/// A server that does not answer is a retryable `Unavailable` (or `Timeout`), and neither the
/// error nor the store's description ever shows the password.
fn unreachable_trial() -> libtest_mimic::Trial {
    libtest_mimic::Trial::test("backend::redis::unreachable_is_retryable_and_redacted", || {
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        rt.block_on(async {
            let port = redis_server::free_port(false).ok_or("no free port")?;
            for url in [
                format!("redis://admin:hunter2@127.0.0.1:{port}?connect_timeout_ms=300"),
                format!("redis+cluster://admin:hunter2@127.0.0.1:{port}?connect_timeout_ms=300&retries=0"),
            ] {
                let err = match unicell::store::open(&url).await {
                    Ok(s) => return Err(format!("{url}: opened {}", s.describe()).into()),
                    Err(e) => e,
                };
                if !err.is_retryable() {
                    return Err(format!("an unreachable server must be retryable, got {err:?}").into());
                }
                let shown = format!("{err} {err:?}");
                if shown.contains("hunter2") {
                    return Err(format!("password leaked: {shown}").into());
                }
            }
            Ok(())
        })
    })
}

/// Random sequences of claims, releases and inventory writes give the same outcomes, step by
/// step, as on the reference memory store (`conformance::differential`).
fn differential_trial(target: &str, url: Result<String, String>, run: &str) -> libtest_mimic::Trial {
    let run = run.to_string();
    libtest_mimic::Trial::ignorable_test(format!("differential::{target}::matches_memory_store"), move || {
        use proptest::test_runner::{Config, TestCaseError, TestRunner};
        let url = match url {
            Ok(u) => u,
            Err(reason) => return Ok(libtest_mimic::Completion::ignored_with(reason)),
        };
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        let prefixed = with_prefix(&url, &format!("{run}-{}", uuid::Uuid::new_v4().simple()));
        let store: Arc<dyn Store> = Arc::new(rt.block_on(open_store(&prefixed))?);
        let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
        // The checker's final audit flags any usage above capacity, including the legitimate
        // kind an inventory shrink leaves (contract line 9; it fails on the memory store too),
        // so inventory writes here only grow or remove classes. Shrinks are covered by the
        // suite's `inventory::shrink_under_allocations`.
        let ops = proptest::strategy::Strategy::prop_map(support::ops::ops(40), |ops| {
            ops.into_iter()
                .map(|op| match op {
                    Op::SetTotal { tree, provider, class, total, stale } if total > 0 => {
                        Op::SetTotal { tree, provider, class, total: total + 4096, stale }
                    }
                    other => other,
                })
                .collect::<Vec<_>>()
        });
        runner
            .run(&ops, |ops| {
                rt.block_on(unicell::store::conformance::differential::run(store.clone(), &ops))
                    .map_err(|f| TestCaseError::fail(f.0))
            })
            .map_err(|e| e.to_string())?;
        Ok(libtest_mimic::Completion::Completed)
    })
}

/// 400 instances (many sharing a `created_at`) over 16 index shards: every page of every
/// listing, filtered or not, at several page sizes, equals the memory store's.
async fn sharded_listing(url: String) -> Result<(), String> {
    use unicell::model::*;
    use unicell::store::memory::MemoryStore;
    let redis = open_store(&format!("{url}&instance_shards=16")).await?;
    let memory = MemoryStore::new();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let projects = [format!("pa-{tag}"), format!("pb-{tag}"), format!("pc-{tag}")];
    let base = Timestamp::now().as_micros();
    for n in 0..400i64 {
        let mut i = Instance::new_building(
            InstanceId::new_v4(),
            &format!("vm-{tag}-{n}"),
            &projects[(n % 3) as usize],
            "u",
            FlavorId::new("m1").map_err(|e| e.to_string())?,
        );
        i.created_at = Timestamp::from_micros(base + (n * 7919) % 97);
        i.updated_at = i.created_at;
        i.vm_state = if n % 5 == 0 { VmState::Active } else { VmState::Building };
        i.deleted = n % 11 == 0;
        if n % 4 == 0 {
            i.tags.insert(format!("t-{tag}"));
        }
        redis.create_instance(&i).await.map_err(|e| e.to_string())?;
        memory.create_instance(&i).await.map_err(|e| e.to_string())?;
    }
    let name = |s: &str| Some(format!("vm-{tag}-{s}"));
    let queries = vec![
        InstanceFilters { name: name(""), ..Default::default() },
        InstanceFilters { project_id: Some(projects[1].clone()), ..Default::default() },
        InstanceFilters { name: name("1"), vm_states: vec![VmState::Active], ..Default::default() },
        InstanceFilters { project_id: Some(projects[2].clone()), tags: vec![format!("t-{tag}")], ..Default::default() },
        InstanceFilters { name: name(""), deleted: Some(true), ..Default::default() },
        InstanceFilters { name: name("39"), ..Default::default() },
    ];
    for filters in queries {
        for limit in [1u32, 7, 50, 1000] {
            let (mut a, mut b) = (None, None);
            let mut pages = 0;
            loop {
                let qa = ListQuery { filters: filters.clone(), limit: Some(limit), marker: a };
                let qb = ListQuery { filters: filters.clone(), limit: Some(limit), marker: b };
                let pa = redis.list_instances(&qa).await.map_err(|e| e.to_string())?;
                let pb = memory.list_instances(&qb).await.map_err(|e| e.to_string())?;
                let ids = |p: &InstancePage| p.instances.iter().map(|i| i.uuid).collect::<Vec<_>>();
                if ids(&pa) != ids(&pb) || pa.next_marker != pb.next_marker {
                    return Err(format!("page {pages} of {filters:?} limit {limit} differs from the reference"));
                }
                pages += 1;
                if pa.next_marker.is_none() {
                    break;
                }
                (a, b) = (pa.next_marker, pb.next_marker);
            }
        }
    }
    Ok(())
}

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let run = format!("unicell-conf-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (single, single_guard) = single_target();
    let (cluster, cluster_guard) = cluster_target();
    let mut trials = conformance_trials("redis", factory(single.clone(), &run));
    trials.extend(conformance_trials("redis-cluster", factory(cluster.clone(), &run)));
    trials.extend(backend_trials("redis", single.clone(), &run));
    let cluster_for_diff = cluster.clone();
    trials.extend(backend_trials("redis-cluster", cluster, &run));
    trials.push(unreachable_trial());
    trials.push(differential_trial("redis", single.clone(), &run));
    trials.push(differential_trial("redis-cluster", cluster_for_diff, &run));
    let conclusion = libtest_mimic::run(&args, trials);
    if let (Ok(url), Guard::None) = (&single, &single_guard) {
        purge(url, &run);
    }
    drop(single_guard);
    drop(cluster_guard);
    conclusion.exit();
}
