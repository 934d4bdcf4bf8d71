//! Shared harness and small fixtures for the scheduler, conductor and stress test binaries.
//! The test cloud itself is the library's simulated cloud (`unicell::sim::Cloud`, grown host
//! by host from `HostSpec`s).
//!
//! Every case is a plain async fn over `Arc<dyn Store>` and only looks at what it created:
//! a fresh cell per case, schedulers scoped to that cell. So the same cases run against
//! the memory store (always, a fresh store per case) and against any store URL listed in
//! `UNICELL_TEST_STORES` (comma-separated, opened with `unicell::store::open`; a store that
//! cannot be opened makes its trials IGNORED with the reason, never passed).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use libtest_mimic::{Completion, Failed, Trial};
use unicell::model::*;
pub use unicell::sim::{Cloud, HostSpec};
use unicell::store::audit::AuditScope;
use unicell::store::memory::MemoryStore;
use unicell::store::prelude::*;

/// What a case returns.
pub type CaseResult = Result<(), String>;
/// A case.
pub type CaseFn = fn(Arc<dyn Store>) -> Pin<Box<dyn Future<Output = CaseResult> + Send>>;

/// `check!(cond, "fmt", args)` fails the case with a message and location.
macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!("{} (at {}:{})", format!($($fmt)+), file!(), line!()));
        }
    };
}

/// `case!(path)` turns an async fn into a named case.
macro_rules! case {
    ($f:path) => {
        (stringify!($f), (|s| Box::pin($f(s))) as $crate::sched_common::CaseFn)
    };
}

/// Turns errors into case failures.
pub fn e<E: std::fmt::Display>(err: E) -> String {
    format!("unexpected error: {err}")
}

/// A URL whose key prefix (Redis) is unique to one case, so that cases running at the same
/// time do not see each other's trees in the change feed (the feed reports every change
/// under a prefix, correctly). Stores without a `prefix` option are shared as given.
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

/// The trials of one binary: every case on a fresh memory store, then on each URL of
/// `UNICELL_TEST_STORES`.
pub fn trials(cases: Vec<(&'static str, CaseFn)>) -> Vec<Trial> {
    let mut out = Vec::new();
    let urls: Vec<String> = std::env::var("UNICELL_TEST_STORES")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for (name, f) in &cases {
        let f = *f;
        out.push(Trial::test(format!("memory::{name}"), move || {
            run(async move { Ok(Arc::new(MemoryStore::new()) as Arc<dyn Store>) }, f).map(|_| ())
        }));
        for (i, url) in urls.iter().enumerate() {
            let url = url.clone();
            // `redis::case`, or `redis#2::case` when a scheme repeats (memory is always first).
            let scheme = url.split("://").next().unwrap_or("store").to_string();
            let repeats = scheme == "memory" || urls[..i].iter().any(|u| u.starts_with(&format!("{scheme}://")));
            let label = if repeats { format!("{scheme}#{}", i + 1) } else { scheme };
            out.push(Trial::ignorable_test(format!("{label}::{name}"), move || {
                run(
                    async move {
                        let url = isolated(&url);
                        unicell::store::open(&url).await.map_err(|err| format!("cannot open store {label}: {err}"))
                    },
                    f,
                )
            }));
        }
    }
    out
}

fn run(
    store: impl Future<Output = Result<Arc<dyn Store>, String>> + Send + 'static,
    f: CaseFn,
) -> Result<Completion, Failed> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
    rt.block_on(async move {
        let store = match store.await {
            Ok(s) => s,
            Err(reason) => return Ok(Completion::ignored_with(reason)),
        };
        f(store).await.map_err(Failed::from)?;
        Ok(Completion::Completed)
    })
}

/// A flavor.
pub fn flavor(vcpus: i64, memory_mb: i64, root_gb: i64) -> Flavor {
    Flavor {
        id: FlavorId::new(format!("f{vcpus}-{memory_mb}-{root_gb}"))
            .unwrap_or_else(|_| FlavorId::new("f").expect("static flavor id is valid")),
        name: format!("f{vcpus}"),
        vcpus,
        memory_mb,
        root_gb,
        ephemeral_gb: 0,
        swap_mb: 0,
        extra_specs: BTreeMap::new(),
    }
}

/// A request spec for one instance of `flavor`.
pub fn spec(flavor: Flavor) -> RequestSpec {
    unicell::sim::requests::request_spec(flavor, InstanceId::new_v4(), 1, "proj", "user")
}

/// A new instance record for `flavor` (the conductor sets the states).
pub fn instance(flavor: &Flavor) -> Instance {
    let now = Timestamp::now();
    let uuid = InstanceId::new_v4();
    Instance {
        uuid,
        name: format!("vm-{}", &uuid.to_string()[..8]),
        project_id: "proj".into(),
        user_id: "user".into(),
        cell: None,
        host: None,
        node: None,
        flavor: flavor.id.clone(),
        vm_state: VmState::Building,
        task_state: None,
        created_at: now,
        updated_at: now,
        launched_at: None,
        deleted: false,
        availability_zone: None,
        metadata: BTreeMap::new(),
        tags: BTreeSet::new(),
        fault: None,
        system_metadata: Default::default(),
    }
}

/// Audits every tree of `cell` with the store's audit (usage equals the sum of its
/// allocations, none over capacity, group member counts equal the allocations naming the
/// group), checks that no consumer holds allocations on two trees, and returns the
/// allocations by consumer.
pub async fn audit(store: &Arc<dyn Store>, cell: CellId) -> Result<BTreeMap<ConsumerId, TreeAllocation>, String> {
    let report = unicell::store::audit::audit(&**store, &AuditScope::cell(cell)).await.map_err(e)?;
    if !report.is_clean() {
        let v: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
        return Err(format!("audit found violations: {}", v.join("; ")));
    }
    let mut by_consumer = BTreeMap::new();
    for tree in store.list_provider_trees(Some(cell)).await.map_err(e)? {
        for a in store.tree_allocations(tree.root).await.map_err(e)? {
            let consumer = a.consumer;
            if by_consumer.insert(consumer, a).is_some() {
                return Err(format!("consumer {consumer} holds allocations on two trees"));
            }
        }
    }
    Ok(by_consumer)
}
