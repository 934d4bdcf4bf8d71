//! Shared fixtures and harness for the scheduler, conductor and stress test binaries.
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
use unicell::scheduler::{Scheduler, SchedulerConfig};
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

/// A compute host created by [`Cloud::add_host`].
#[derive(Clone, Debug)]
pub struct HostInfo {
    /// Service host name.
    pub name: String,
    /// Root provider.
    pub root: ProviderId,
    /// NUMA children (nested hosts only).
    pub numa: Vec<ProviderId>,
    /// SR-IOV PF child (nested hosts only).
    pub pf: Option<ProviderId>,
}

/// How to build a host.
#[derive(Clone, Debug)]
pub struct HostSpec {
    pub vcpu: i64,
    pub mem_mb: i64,
    pub disk_gb: i64,
    pub traits: Vec<&'static str>,
    pub aggregates: Vec<AggregateId>,
    pub enabled: bool,
    pub heartbeat_age_s: u64,
    pub az: Option<String>,
    pub capabilities: Vec<(&'static str, &'static str)>,
    /// Two NUMA children (PCPU 8 each, NUMA_MEMORY_MB) and a PF (SRIOV_NET_VF 4,
    /// CUSTOM_PHYSNET_A) under NUMA 0.
    pub nested: bool,
}

impl Default for HostSpec {
    fn default() -> Self {
        HostSpec {
            vcpu: 16,
            mem_mb: 32768,
            disk_gb: 500,
            traits: vec![],
            aggregates: vec![],
            enabled: true,
            heartbeat_age_s: 0,
            az: None,
            capabilities: vec![],
            nested: false,
        }
    }
}

impl HostSpec {
    /// A host with these sizes and defaults for the rest.
    pub fn sized(vcpu: i64, mem_mb: i64, disk_gb: i64) -> Self {
        HostSpec { vcpu, mem_mb, disk_gb, ..Default::default() }
    }
}

/// A test cloud: one fresh cell in a (possibly shared) store.
pub struct Cloud {
    pub store: Arc<dyn Store>,
    pub cell: CellId,
    pub tag: String,
    pub hosts: Vec<HostInfo>,
}

impl Cloud {
    /// A fresh cell.
    pub async fn new(store: Arc<dyn Store>) -> Result<Cloud, String> {
        let cell = CellId::new_v4();
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        store.put_cell(&Cell { id: cell, name: format!("cell-{tag}"), disabled: false }).await.map_err(e)?;
        Ok(Cloud { store, cell, tag, hosts: Vec::new() })
    }

    /// Adds a host; its name is `<tag>-h<index>` so hosts sort by creation order.
    pub async fn add_host(&mut self, spec: HostSpec) -> Result<HostInfo, String> {
        let name = format!("{}-h{:04}", self.tag, self.hosts.len());
        let root = ProviderId::new_v4();
        let mut traits = BTreeSet::new();
        for t in &spec.traits {
            traits.insert(Trait::new(*t).map_err(e)?);
        }
        self.store
            .create_provider(&NewProvider {
                id: root,
                name: name.clone(),
                parent: None,
                cell: Some(self.cell),
                inventories: BTreeMap::from([
                    (ResourceClass::Vcpu, Inventory::with_total(spec.vcpu)),
                    (ResourceClass::MemoryMb, Inventory::with_total(spec.mem_mb)),
                    (ResourceClass::DiskGb, Inventory::with_total(spec.disk_gb)),
                ]),
                traits,
                aggregates: spec.aggregates.iter().copied().collect(),
            })
            .await
            .map_err(e)?;
        let mut numa = Vec::new();
        let mut pf = None;
        if spec.nested {
            for n in 0..2 {
                let id = ProviderId::new_v4();
                self.store
                    .create_provider(&NewProvider {
                        id,
                        name: format!("{name}-numa{n}"),
                        parent: Some(root),
                        cell: Some(self.cell),
                        inventories: BTreeMap::from([
                            (ResourceClass::Pcpu, Inventory::with_total(8)),
                            (ResourceClass::NumaMemoryMb, Inventory::with_total(16384)),
                        ]),
                        traits: BTreeSet::new(),
                        aggregates: BTreeSet::new(),
                    })
                    .await
                    .map_err(e)?;
                numa.push(id);
            }
            let id = ProviderId::new_v4();
            self.store
                .create_provider(&NewProvider {
                    id,
                    name: format!("{name}-pf0"),
                    parent: Some(numa[0]),
                    cell: Some(self.cell),
                    inventories: BTreeMap::from([(ResourceClass::SriovNetVf, Inventory::with_total(4))]),
                    traits: BTreeSet::from([Trait::new("CUSTOM_PHYSNET_A").map_err(e)?]),
                    aggregates: BTreeSet::new(),
                })
                .await
                .map_err(e)?;
            pf = Some(id);
        }
        self.store
            .put_host(&Host {
                name: name.clone(),
                cell: self.cell,
                root_provider: root,
                node: format!("{name}.node"),
                enabled: spec.enabled,
                disabled_reason: (!spec.enabled).then(|| "test".to_string()),
                last_heartbeat: Timestamp::now().minus(std::time::Duration::from_secs(spec.heartbeat_age_s)),
                availability_zone: spec.az.clone(),
                capabilities: spec.capabilities.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            })
            .await
            .map_err(e)?;
        let info = HostInfo { name, root, numa, pf };
        self.hosts.push(info.clone());
        Ok(info)
    }

    /// `n` identical hosts.
    pub async fn add_hosts(&mut self, n: usize, spec: HostSpec) -> Result<(), String> {
        for _ in 0..n {
            self.add_host(spec.clone()).await?;
        }
        Ok(())
    }

    /// A scheduler configuration scoped to this cell, deterministic.
    pub fn config(&self) -> SchedulerConfig {
        SchedulerConfig { cells: vec![self.cell], seed: Some(7), ..Default::default() }
    }

    /// A scheduler scoped to this cell.
    pub async fn scheduler(&self) -> Result<Arc<Scheduler>, String> {
        self.scheduler_with(self.config()).await
    }

    /// A scheduler with a custom configuration.
    pub async fn scheduler_with(&self, config: SchedulerConfig) -> Result<Arc<Scheduler>, String> {
        Ok(Arc::new(Scheduler::new(self.store.clone(), config).await.map_err(e)?))
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Option<&HostInfo> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Creates a server group.
    pub async fn group(&self, policy: GroupPolicy, max_per_host: Option<u32>) -> Result<ServerGroup, String> {
        let g = ServerGroup {
            id: GroupId::new_v4(),
            name: format!("g-{}", self.tag),
            project_id: "proj".into(),
            user_id: "user".into(),
            policy,
            max_per_host,
        };
        self.store.create_server_group(&g).await.map_err(e)?;
        Ok(g)
    }
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

/// A request spec for `flavor`.
pub fn spec(flavor: Flavor) -> RequestSpec {
    RequestSpec {
        instance_uuid: InstanceId::new_v4(),
        flavor,
        image_properties: BTreeMap::new(),
        is_bfv: false,
        num_instances: 1,
        project_id: "proj".into(),
        user_id: "user".into(),
        availability_zone: None,
        hints: SchedulerHints::default(),
        requested_destination: None,
        ignore_hosts: vec![],
        force_hosts: vec![],
    }
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
