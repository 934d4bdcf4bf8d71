//! Redis-specific trials beyond the shared suite, on one server and on a cluster:
//! `backend::<target>::*` (change-feed trimming, catalog writes in the feed, crash leftovers
//! of the consumer index, sharded listings against the memory store, an unreachable server), and
//! `differential::<target>::matches_memory_store` (random operation sequences compared step
//! by step with the memory store).

use std::sync::Arc;

use futures::future::BoxFuture;
use libtest_mimic::Trial;
use unicell::store::conformance::differential::{self, Op};
use unicell::store::prelude::*;
use unicell::store::redis::RedisStore;

use crate::support::redis::Redis;
use crate::support::{Backend, plain_trial, trial_on};

type Check = fn(String) -> BoxFuture<'static, Result<(), String>>;

/// The Redis trials on `single` and `cluster`.
pub fn trials(single: &Arc<Redis>, cluster: &Arc<Redis>) -> Vec<Trial> {
    let checks: Vec<(&str, Check)> = vec![
        ("feed_resync_after_trim", |u| Box::pin(feed_resync_after_trim(u))),
        ("stale_index_member_ignored_then_cleaned", |u| Box::pin(stale_index_member(u))),
        ("sharded_listing_matches_memory_store", |u| Box::pin(sharded_listing(u))),
        ("catalog_writes_announced_reports_not", |u| Box::pin(catalog_announced(u))),
    ];
    let mut out = Vec::new();
    for target in [single, cluster] {
        for (name, check) in &checks {
            let (redis, check) = (target.clone(), *check);
            out.push(trial_on(
                format!("backend::{}::{name}", target.name()),
                false,
                move || async move { redis.fresh_url().await },
                check,
            ));
        }
    }
    out.push(unreachable_trial());
    for target in [single, cluster] {
        out.push(differential_trial(target));
    }
    out
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

/// On a store of its own: cell, host and aggregate writes set `catalog` in the feed, a
/// heartbeat report and a claim do not (and the reserved root never shows as a tree).
async fn catalog_announced(url: String) -> Result<(), String> {
    use unicell::model::*;
    let store = open_store(&url).await?;
    let s = |e: unicell::Error| e.to_string();
    let catalog_since = |cursor: ChangeCursor| {
        let store = &store;
        async move {
            match store.changes_since(&cursor).await.map_err(s)? {
                Changes::Trees { catalog, roots, next, .. } => Ok::<_, String>((catalog, roots, next)),
                Changes::Resync => Err("unexpected resync".to_string()),
            }
        }
    };
    let start = store.change_cursor().await.map_err(s)?;
    let cell = Cell { id: CellId::new_v4(), name: "c".into(), disabled: false };
    store.put_cell(&cell).await.map_err(s)?;
    let tree = NewProvider { cell: Some(cell.id), ..new_root("announced") };
    store.create_provider(&tree).await.map_err(s)?;
    let host = Host {
        name: "compute-1".into(),
        cell: cell.id,
        root_provider: tree.id,
        node: "node-1".into(),
        enabled: true,
        disabled_reason: None,
        last_heartbeat: Timestamp::now(),
        availability_zone: None,
        capabilities: Default::default(),
    };
    store.put_host(&host).await.map_err(s)?;
    let (catalog, roots, next) = catalog_since(start).await?;
    if !catalog || roots != vec![tree.id] {
        return Err(format!("cell and host writes: catalog {catalog}, roots {roots:?} (want true, the tree)"));
    }
    store.report_host(&host.name, Timestamp::now()).await.map_err(s)?;
    let consumer = ConsumerId::new_v4();
    store
        .claim(&ClaimRequest {
            consumer,
            project_id: "p".into(),
            user_id: "u".into(),
            allocations: std::collections::BTreeMap::from([(
                tree.id,
                std::collections::BTreeMap::from([(ResourceClass::Vcpu, 1)]),
            )]),
            group: None,
        })
        .await
        .map_err(s)?;
    let (catalog, roots, next) = catalog_since(next).await?;
    if catalog || roots != vec![tree.id] {
        return Err(format!("a report and a claim: catalog {catalog}, roots {roots:?} (want false, the tree)"));
    }
    let aggregate = Aggregate {
        id: AggregateId::new_v4(),
        name: "a".into(),
        availability_zone: None,
        metadata: Default::default(),
    };
    store.put_aggregate(&aggregate).await.map_err(s)?;
    let (catalog, roots, _) = catalog_since(next).await?;
    if !catalog || !roots.is_empty() {
        return Err(format!("an aggregate write: catalog {catalog}, roots {roots:?} (want true, none)"));
    }
    Ok(())
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
fn unreachable_trial() -> Trial {
    plain_trial("backend::redis::unreachable_is_retryable_and_redacted", || async {
        let port = unicell::testkit::free_port(false).map_err(|e| e.to_string())?;
        for url in [
            format!("redis://admin:hunter2@127.0.0.1:{port}?connect_timeout_ms=300"),
            format!("redis+cluster://admin:hunter2@127.0.0.1:{port}?connect_timeout_ms=300&retries=0"),
        ] {
            let err = match unicell::store::open(&url).await {
                Ok(s) => return Err(format!("{url}: opened {}", s.describe())),
                Err(e) => e,
            };
            if !err.is_retryable() {
                return Err(format!("an unreachable server must be retryable, got {err:?}"));
            }
            let shown = format!("{err} {err:?}");
            if shown.contains("hunter2") {
                return Err(format!("password leaked: {shown}"));
            }
        }
        Ok(())
    })
}

/// Random sequences of claims, releases and inventory writes give the same outcomes, step by
/// step, as on the reference memory store (`conformance::differential`).
fn differential_trial(target: &Arc<Redis>) -> Trial {
    let redis = target.clone();
    trial_on(
        format!("differential::{}::matches_memory_store", target.name()),
        false,
        move || async move { redis.fresh_url().await },
        |url| async move {
            use proptest::test_runner::{Config, TestCaseError, TestRunner};
            let store: Arc<dyn Store> = Arc::new(open_store(&url).await?);
            let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
            // The checker's final audit flags any usage above capacity, including the
            // legitimate kind an inventory shrink leaves (contract line 9; it fails on the
            // memory store too), so inventory writes here only grow or remove classes.
            // Shrinks are covered by the suite's `inventory::shrink_under_allocations`.
            let ops = proptest::strategy::Strategy::prop_map(crate::support::ops::ops(40), |ops| {
                ops.into_iter()
                    .map(|op| match op {
                        Op::SetTotal { tree, provider, class, total, stale } if total > 0 => {
                            Op::SetTotal { tree, provider, class, total: total + 4096, stale }
                        }
                        other => other,
                    })
                    .collect::<Vec<_>>()
            });
            // The runner is synchronous: each sequence runs on this trial's runtime.
            let handle = tokio::runtime::Handle::current();
            tokio::task::block_in_place(|| {
                runner.run(&ops, |ops| {
                    handle.block_on(differential::run(store.clone(), &ops)).map_err(|f| TestCaseError::fail(f.0))
                })
            })
            .map_err(|e| e.to_string())
        },
    )
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
                let qa = ListQuery { filters: filters.clone(), limit: Some(limit), marker: a, partial: false };
                let qb = ListQuery { filters: filters.clone(), limit: Some(limit), marker: b, partial: false };
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
