//! The shared snapshot: one per process, kept fresh by one background tailer of the change
//! feed, used by several schedulers at once. Each case gets two *independent* handles on
//! one store (for a networked store, two connections opened from the URL, as two
//! processes would have; for the memory store, two handles on the same in-process store)
//! and writes through the second one what the snapshot of the first must learn from the
//! feed alone. Runs on the memory store and on every URL of `UNICELL_TEST_STORES` (a store
//! that cannot be opened makes its trials IGNORED with the reason).

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use support::fixtures::{audit, e, flavor, spec};
use support::{Why, trial_on};
use unicell::model::*;
use unicell::scheduler::{RankingMode, Scheduler, SchedulerConfig, SharedSnapshot, SnapshotConfig};
use unicell::sim::{Cloud, HostSpec};
use unicell::store::conformance::check;
use unicell::store::memory::MemoryStore;
use unicell::store::prelude::*;

type R = Result<(), String>;
type Case = fn((Arc<dyn Store>, Arc<dyn Store>)) -> Pin<Box<dyn Future<Output = R> + Send>>;

macro_rules! case2 {
    ($f:path) => {
        (stringify!($f), (|(a, b)| Box::pin($f(a, b))) as Case)
    };
}

fn main() {
    let cases = vec![
        case2!(tailer_applies_claims_made_through_another_handle),
        case2!(tailer_follows_hosts_appearing_and_leaving),
        case2!(tailer_reads_heartbeats_on_its_timer),
        case2!(schedulers_sharing_a_snapshot_never_overcommit),
        case2!(indexed_ranking_matches_the_exhaustive_best_weight),
        case2!(requests_few_hosts_can_serve_walk_their_classes),
    ];
    support::run(trials(cases), Vec::new());
}

/// A key prefix unique to one case (Redis), as the harness's stores do.
fn isolated(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else { return url.to_string() };
    let pairs: Vec<(String, String)> = u.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if !pairs.iter().any(|(k, _)| k == "prefix") {
        return url.to_string();
    }
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let pairs: Vec<(String, String)> = pairs
        .into_iter()
        .map(|(k, v)| if k == "prefix" { (k, format!("{v}-{}", &suffix[..8])) } else { (k, v) })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

/// Two independent handles on the store at `url` (two connections, as two processes).
async fn two_handles(url: String, label: String) -> Result<(Arc<dyn Store>, Arc<dyn Store>), Why> {
    let url = isolated(&url);
    let what = format!("opening store {label}");
    let a = match unicell::store::open(&url).await {
        Ok(s) => s,
        Err(err) => return Err(Why::from_open_error(&what, &url, &err).await),
    };
    let b = unicell::store::open(&url).await.map_err(|err| Why::Fail(format!("{what} (second handle): {err}")))?;
    Ok((a, b))
}

fn trials(cases: Vec<(&'static str, Case)>) -> Vec<Trial> {
    let urls: Vec<String> = std::env::var("UNICELL_TEST_STORES")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = Vec::new();
    for (name, f) in cases {
        out.push(trial_on(
            format!("memory::{name}"),
            false,
            || async {
                let s: Arc<dyn Store> = Arc::new(MemoryStore::new());
                Ok::<_, Why>((s.clone(), s))
            },
            f,
        ));
        for (i, url) in urls.iter().enumerate() {
            let url = url.clone();
            let scheme = url.split("://").next().unwrap_or("store").to_string();
            let repeats = urls[..i].iter().any(|u| u.starts_with(&format!("{scheme}://")));
            let label = if repeats { format!("{scheme}#{}", i + 1) } else { scheme };
            out.push(trial_on(format!("{label}::{name}"), false, move || two_handles(url, label), f));
        }
    }
    out
}

/// A snapshot of `cloud`'s cell on `store`, tailing the feed every 5 ms.
async fn tailing(store: Arc<dyn Store>, cloud: &Cloud) -> Result<Arc<SharedSnapshot>, String> {
    let config = SnapshotConfig::from_scheduler(&cloud.config(), Some(Duration::from_millis(5)));
    SharedSnapshot::open(store, config).await.map_err(e)
}

/// Polls `cond` on the snapshot until it holds (the tailer is asynchronous), for at most
/// 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) -> R {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > Duration::from_secs(10) {
            return Err(format!("the tailer never applied: {what}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn claim(root: ProviderId, vcpu: i64, group: Option<GroupClaim>) -> ClaimRequest {
    ClaimRequest {
        consumer: ConsumerId::new_v4(),
        project_id: "proj".into(),
        user_id: "user".into(),
        allocations: BTreeMap::from([(root, BTreeMap::from([(ResourceClass::Vcpu, vcpu)]))]),
        group,
    }
}

async fn tailer_applies_claims_made_through_another_handle(store: Arc<dyn Store>, other: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(3, HostSpec::sized(16, 32768, 500)).await.map_err(e)?;
    let g = cloud.group(GroupPolicy::AntiAffinity, Some(3)).await.map_err(e)?;
    let snap = tailing(store.clone(), &cloud).await?;
    let name = cloud.hosts[1].name.clone();
    let free = |snap: &SharedSnapshot| snap.host_state(&name).map(|h| h.free(&ResourceClass::Vcpu));
    check!(free(&snap) == Some(16), "loaded: {:?}", free(&snap));
    // Claims by "another process": the snapshot learns them from the feed only.
    let mut consumers = Vec::new();
    for n in [3, 5] {
        let c = claim(cloud.hosts[1].root, n, Some(GroupClaim { group: g.id, max_per_host: Some(3) }));
        other.claim(&c).await.map_err(e)?;
        consumers.push(c.consumer);
    }
    eventually("two claims", || free(&snap) == Some(8)).await?;
    let hs = snap.host_state(&name).ok_or("host")?;
    check!(hs.group_members(g.id) == 2, "group members from the feed: {:?}", hs.tree.groups);
    // A release by the other handle too.
    other.release(consumers[0]).await.map_err(e)?;
    eventually("a release", || free(&snap) == Some(11)).await?;
    check!(snap.host_state(&name).is_some_and(|h| h.group_members(g.id) == 1), "member released");
    // A scheduler on the snapshot sees the other handle's claims without refreshing itself.
    let s = Scheduler::with_snapshot(
        snap.clone(),
        SchedulerConfig { min_refresh_interval: Duration::from_secs(3600), ..cloud.config() },
    )
    .map_err(e)?;
    other.claim(&claim(cloud.hosts[0].root, 16, None)).await.map_err(e)?;
    other.claim(&claim(cloud.hosts[2].root, 16, None)).await.map_err(e)?;
    eventually("full hosts", || {
        snap.host_state(&cloud.hosts[0].name).is_some_and(|h| h.free(&ResourceClass::Vcpu) == 0)
            && snap.host_state(&cloud.hosts[2].name).is_some_and(|h| h.free(&ResourceClass::Vcpu) == 0)
    })
    .await?;
    // Memory and Redis carry the usage of the other handle's claims and release in the
    // feed (group counts included): the snapshot read no tree to learn them.
    if matches!(store.backend(), "memory" | "redis") {
        let st = snap.stats();
        check!(
            st.trees_reread == 0 && st.trees_from_feed >= 3,
            "another handle's claims and release applied from the feed's usage, no tree read: {st:?}"
        );
    }
    let out = s.select_destinations(&spec(flavor(2, 1024, 10)), &[InstanceId::new_v4()], 2).await.map_err(e)?;
    check!(out[0][0].host == name && out[0].len() == 1, "only host 1 has room: {out:?}");
    check!(s.stats().claim_conflicts == 0, "no claim refused: {:?}", s.stats());
    check!(snap.stats().full_reloads == 1, "no reload: {:?}", snap.stats());
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn tailer_follows_hosts_appearing_and_leaving(store: Arc<dyn Store>, other: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(2, HostSpec::default()).await.map_err(e)?;
    let snap = tailing(store.clone(), &cloud).await?;
    check!(snap.known_hosts() == 2, "loaded {}", snap.known_hosts());
    // A new compute registered through the other handle.
    let mut via_other = Cloud { store: other.clone(), ..cloud.clone() };
    let newcomer = via_other.add_host(HostSpec::default().nested().map_err(e)?).await.map_err(e)?;
    eventually("a new host", || snap.host_state(&newcomer.name).is_some()).await?;
    check!(snap.known_hosts() == 3, "known {}", snap.known_hosts());
    let s = Scheduler::with_snapshot(snap.clone(), cloud.config()).map_err(e)?;
    let mut f = flavor(2, 1024, 10);
    f.extra_specs.insert("hw:cpu_policy".into(), "dedicated".into());
    let out = s.select_destinations(&spec(f), &[InstanceId::new_v4()], 0).await.map_err(e)?;
    check!(out[0][0].host == newcomer.name, "the only host with PCPU: {out:?}");
    // Disabled by an operator through the other handle: the feed announces the write and
    // the tailer reads the catalog again (not after the 10 s timer: the wait is 5 s).
    let mut h = other.get_host(&cloud.hosts[0].name).await.map_err(e)?;
    h.enabled = false;
    let announced = snap.stats().catalog_announcements;
    let asked = Instant::now();
    other.put_host(&h).await.map_err(e)?;
    eventually("a host disabled", || snap.host_state(&h.name).is_some_and(|s| !s.host.enabled)).await?;
    check!(asked.elapsed() < Duration::from_secs(5), "the disabled host was seen after {:?}", asked.elapsed());
    check!(snap.stats().catalog_announcements > announced, "announced by the feed: {:?}", snap.stats());
    // Deleted: forgotten.
    let gone = cloud.hosts[1].clone();
    other.delete_provider(gone.root).await.map_err(e)?;
    eventually("a deleted tree", || snap.known_hosts() == 2 && snap.host_state(&gone.name).is_none()).await?;
    Ok(())
}

async fn tailer_reads_heartbeats_on_its_timer(store: Arc<dyn Store>, other: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(2, HostSpec::default()).await.map_err(e)?;
    let config = SnapshotConfig {
        catalog_refresh_interval: Duration::from_millis(50),
        ..SnapshotConfig::from_scheduler(&cloud.config(), Some(Duration::from_millis(5)))
    };
    let snap = SharedSnapshot::open(store.clone(), config).await.map_err(e)?;
    let name = cloud.hosts[0].name.clone();
    let beat = |snap: &SharedSnapshot| snap.host_state(&name).map(|h| h.host.last_heartbeat);
    let before = beat(&snap).ok_or("host")?;
    let reloads = snap.stats().catalog_reloads;
    // A compute's report through the other handle: not a catalog write, read on the timer.
    let later = before.plus(Duration::from_secs(30));
    other.report_host(&name, later).await.map_err(e)?;
    eventually("a heartbeat", || beat(&snap) == Some(later)).await?;
    let st = snap.stats();
    check!(st.heartbeat_reads >= 1, "heartbeats read on their timer: {st:?}");
    // Stores whose trials share nothing (memory, Redis with a prefix per case): nothing
    // else wrote to the catalog, so the report cost no catalog read.
    if matches!(store.backend(), "memory" | "redis") {
        check!(st.catalog_reloads == reloads, "a report is not a catalog change: {st:?}");
    }
    // An older report does not move it back, in the store or in the snapshot.
    other.report_host(&name, before).await.map_err(e)?;
    let reads = snap.stats().heartbeat_reads;
    eventually("another heartbeat read", || snap.stats().heartbeat_reads > reads + 1).await?;
    check!(beat(&snap) == Some(later), "the heartbeat went back to {:?}", beat(&snap));
    Ok(())
}

async fn schedulers_sharing_a_snapshot_never_overcommit(store: Arc<dyn Store>, other: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    for i in 0..12 {
        let spec = HostSpec::sized(8, 16384, 200);
        let spec = if i % 4 == 0 { spec.nested().map_err(e)? } else { spec };
        cloud.add_host(spec).await.map_err(e)?;
    }
    let g = cloud.group(GroupPolicy::AntiAffinity, Some(1)).await.map_err(e)?;
    let snap = tailing(store.clone(), &cloud).await?;
    let shared: Vec<Arc<Scheduler>> = (0..4)
        .map(|k| {
            Scheduler::with_snapshot(
                snap.clone(),
                SchedulerConfig {
                    host_subset_size: 1 + k,
                    seed: Some(k as u64),
                    min_refresh_interval: Duration::from_secs(3600),
                    ..cloud.config()
                },
            )
            .map(Arc::new)
        })
        .collect::<Result<_, _>>()
        .map_err(e)?;
    // A scheduler of "another process", with its own snapshot on the other handle.
    let outsider = Arc::new(Scheduler::new(other.clone(), cloud.config()).await.map_err(e)?);
    let mut tasks = Vec::new();
    for i in 0..120usize {
        let s = if i % 5 == 4 { outsider.clone() } else { shared[i % 4].clone() };
        let mut sp = spec(flavor(1 + (i % 3) as i64, 1024, 10));
        if i % 7 == 0 {
            sp.hints.group = Some(g.id);
        }
        let n = if i % 11 == 0 { 2 } else { 1 };
        tasks.push(tokio::spawn(async move {
            let ids: Vec<InstanceId> = (0..n).map(|_| InstanceId::new_v4()).collect();
            s.select_destinations(&sp, &ids, 2).await.map(|l| (ids, l))
        }));
    }
    let mut placed = 0;
    for t in tasks {
        match t.await.map_err(e)? {
            Ok((ids, lists)) => {
                placed += ids.len();
                for l in &lists {
                    for alt in &l[1..] {
                        check!(alt.cell == l[0].cell && alt.host != l[0].host, "alternates: {l:?}");
                    }
                }
            }
            Err(unicell::scheduler::ScheduleError::NoValidHost { .. }) => {}
            Err(other) => return Err(e(other)),
        }
    }
    let allocations = audit(&store, cloud.cell).await?;
    check!(allocations.len() == placed, "{} consumers hold allocations for {placed} placed", allocations.len());
    // 12 hosts of 8 VCPU: the stream overflows them, so they end nearly full.
    let vcpus: i64 =
        allocations.values().flat_map(|a| a.allocations.values()).filter_map(|r| r.get(&ResourceClass::Vcpu)).sum();
    check!(vcpus >= 72, "the cloud filled up: {vcpus} of 96 VCPU claimed by {placed} instances");
    for h in &cloud.hosts {
        let t = store.provider_tree(h.root).await.map_err(e)?;
        check!(t.groups.get(&g.id).copied().unwrap_or(0) <= 1, "anti-affinity on {}: {:?}", h.name, t.groups);
    }
    // The shared snapshot converges on the store's state.
    eventually("convergence", || {
        cloud.hosts.iter().all(|h| {
            let Some(hs) = snap.host_state(&h.name) else { return false };
            let Some(root) = hs.tree.providers.first() else { return false };
            let used: i64 = allocations
                .values()
                .filter(|a| a.root == h.root)
                .filter_map(|a| a.allocations.get(&h.root).and_then(|r| r.get(&ResourceClass::Vcpu)))
                .sum();
            root.used(&ResourceClass::Vcpu) == used
        })
    })
    .await?;
    Ok(())
}

/// Two schedulers measuring the quality of every decision on one snapshot of `cloud`: the
/// indexed ranking and the exhaustive one (unlimited candidates).
async fn measured_pair(store: Arc<dyn Store>, cloud: &Cloud) -> Result<(Scheduler, Scheduler), String> {
    let snap = tailing(store, cloud).await?;
    let measured = SchedulerConfig { measure_quality: true, ..cloud.config() };
    let indexed = Scheduler::with_snapshot(snap.clone(), measured.clone()).map_err(e)?;
    let exhaustive = Scheduler::with_snapshot(
        snap,
        SchedulerConfig { ranking: RankingMode::Exhaustive, max_placement_results: None, ..measured },
    )
    .map_err(e)?;
    Ok((indexed, exhaustive))
}

async fn indexed_ranking_matches_the_exhaustive_best_weight(store: Arc<dyn Store>, _other: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    for i in 0..40i64 {
        cloud
            .add_host(HostSpec::sized(8 + (i % 5) * 4, 8192 + (i % 7) * 4096, 100 + (i % 3) * 100))
            .await
            .map_err(e)?;
    }
    let (indexed, exhaustive) = measured_pair(store.clone(), &cloud).await?;
    // Alternate the two on one cloud of unequal hosts, each decision measured against an
    // exhaustive weighing of the same state.
    for i in 0..60 {
        let sp = spec(flavor(1 + i % 3, 1024 * (1 + i % 2), 10));
        indexed.select_destinations(&sp, &[InstanceId::new_v4()], 0).await.map_err(e)?;
        exhaustive.select_destinations(&sp, &[InstanceId::new_v4()], 0).await.map_err(e)?;
    }
    let (qi, qe) = (indexed.quality(), exhaustive.quality());
    eprintln!("quality on {}: indexed {qi:?}, exhaustive {qe:?}", store.backend());
    check!(qe.decisions == 60 && qe.min_q == 1.0, "the exhaustive ranking picks the best (subset 1): {qe:?}");
    check!(qi.decisions == 60 && qi.mean_q >= 0.97, "indexed close to the best: {qi:?}");
    audit(&store, cloud.cell).await?;
    Ok(())
}

/// A request only a few hosts can serve (a trait on 4 hosts of 48) is ranked from those
/// hosts' classes alone, best first, with alternates from them too; a host that gains the
/// trait (its class changes under the same slot) is found there at once.
async fn requests_few_hosts_can_serve_walk_their_classes(store: Arc<dyn Store>, _other: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    let mut fast = Vec::new();
    for i in 0..48i64 {
        let mut h = HostSpec::sized(8 + (i % 5) * 4, 16384 + (i % 7) * 4096, 200);
        if i % 12 == 0 {
            h = h.with_trait("CUSTOM_FAST").map_err(e)?;
        }
        if i == 5 {
            h = HostSpec::sized(64, 262_144, 2000);
        }
        let host = cloud.add_host(h).await.map_err(e)?;
        if i % 12 == 0 {
            fast.push(host.name.clone());
        }
    }
    let big = cloud.hosts[5].clone();
    let (indexed, exhaustive) = measured_pair(store.clone(), &cloud).await?;
    let mut f = flavor(1, 1024, 10);
    f.extra_specs.insert("trait:CUSTOM_FAST".into(), "required".into());
    for _ in 0..8 {
        let lists = indexed.select_destinations(&spec(f.clone()), &[InstanceId::new_v4()], 2).await.map_err(e)?;
        for s in &lists[0] {
            check!(fast.contains(&s.host), "{} (chosen or alternate) lacks the trait; trait hosts: {fast:?}", s.host);
        }
        check!(lists[0].len() == 3, "two alternates among the other trait hosts: {:?}", lists[0]);
        exhaustive.select_destinations(&spec(f.clone()), &[InstanceId::new_v4()], 0).await.map_err(e)?;
    }
    // The four are every host that passes: weighed among themselves, as the exhaustive
    // ranking weighs them (their io_ops once normalized against the whole cloud's range
    // made the indexed choice differ in 3 decisions of 8, q 0.73).
    let qi = indexed.quality();
    check!(qi.decisions == 8 && qi.min_q == 1.0, "indexed picks the best of the trait hosts: {qi:?}");

    // The biggest host gains the trait: another class, the same slot.
    let tree = store.provider_tree(big.root).await.map_err(e)?;
    let traits: std::collections::BTreeSet<Trait> = [Trait::new("CUSTOM_FAST").map_err(e)?].into();
    store.set_traits(big.root, tree.generation, &traits).await.map_err(e)?;
    let t0 = Instant::now();
    loop {
        let lists = indexed.select_destinations(&spec(f.clone()), &[InstanceId::new_v4()], 0).await.map_err(e)?;
        if lists[0][0].host == big.name {
            break;
        }
        check!(t0.elapsed() < Duration::from_secs(10), "the host that gained the trait (the biggest) was never chosen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    audit(&store, cloud.cell).await?;
    Ok(())
}
