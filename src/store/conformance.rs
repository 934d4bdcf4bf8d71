//! The conformance suite: the store contract as executable checks.
//!
//! Each case is a plain async function over an `Arc<dyn Store>` (an `Arc` because the race
//! cases spawn tasks). Cases only create objects with fresh random ids and names, and check
//! only what they created, so they may run concurrently against one shared store (a shared
//! Redis server, database or keyspace) as well as against a fresh store each.
//!
//! A backend's test binary turns [`cases`] into named trials, one per case, so that the
//! output lists every contract line by name for every backend:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use unicell::store::{Store, conformance, memory::MemoryStore};
//! for case in conformance::cases() {
//!     let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//!     (case.run)(store).await?;
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::error::{Conflict, Error, Kind};
use crate::model::*;
use crate::store::prelude::*;

/// Why a case failed: a readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(format!("unexpected store error: {e} ({e:?})"))
    }
}

/// What a case returns.
pub type CaseResult = Result<(), Failure>;

/// One named conformance case.
#[derive(Clone, Copy)]
pub struct Case {
    /// Stable name, used as the test name (`claims::replay_is_noop`).
    pub name: &'static str,
    /// Runs the case against a store.
    pub run: fn(Arc<dyn Store>) -> BoxFuture<'static, CaseResult>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(Failure(format!("{} (at {}:{})", format!($($fmt)+), file!(), line!())));
        }
    };
}

macro_rules! case {
    ($name:literal, $f:path) => {
        Case { name: $name, run: |s| Box::pin($f(s)) }
    };
}

/// Every case of the suite, in a stable order.
pub fn cases() -> Vec<Case> {
    vec![
        case!("model::bad_names_rejected", model_bad_names_rejected),
        case!("providers::create_and_read_trees", providers_create_and_read_trees),
        case!("providers::duplicates_and_unknown_parent", providers_duplicates_and_unknown_parent),
        case!("providers::delete_rules", providers_delete_rules),
        case!("claims::fit_and_usage", claims_fit_and_usage),
        case!("claims::replay_is_noop", claims_replay_is_noop),
        case!("claims::different_amounts_conflict", claims_different_amounts_conflict),
        case!("claims::release_is_idempotent", claims_release_is_idempotent),
        case!("claims::multi_provider_all_or_nothing", claims_multi_provider_all_or_nothing),
        case!("claims::spanning_trees_rejected", claims_spanning_trees_rejected),
        case!("claims::capacity_error_names_provider_and_class", claims_capacity_error_names_provider_and_class),
        case!("claims::reserved_and_allocation_ratio", claims_reserved_and_allocation_ratio),
        case!("claims::bad_input_errors", claims_bad_input_errors),
        case!("claims::consumer_on_two_trees", claims_consumer_on_two_trees),
        case!("claims::group_limit", claims_group_limit),
        case!("inventory::stale_generation_conflicts", inventory_stale_generation_conflicts),
        case!("inventory::shrink_under_allocations", inventory_shrink_under_allocations),
        case!("inventory::invalid_inventory_rejected", inventory_invalid_inventory_rejected),
        case!("changes::feed_reports_changed_trees", changes_feed_reports_changed_trees),
        case!("race::concurrent_claims_never_overcommit", race_concurrent_claims_never_overcommit),
        case!("race::group_limit_under_concurrency", race_group_limit_under_concurrency),
        case!("race::claim_release_churn", race_claim_release_churn),
        case!("catalog::cells_hosts_flavors_aggregates", catalog_cells_hosts_flavors_aggregates),
        case!("catalog::server_groups_and_request_specs", catalog_server_groups_and_request_specs),
        case!("instances::create_read_update_delete", instances_create_read_update_delete),
        case!("instances::soft_delete_and_changes_since", instances_soft_delete_and_changes_since),
        case!("instances::filters", instances_filters),
        case!("instances::limit_cap_zero_and_next_marker", instances_limit_cap_zero_and_next_marker),
        case!("instances::unknown_marker_is_an_error", instances_unknown_marker_is_an_error),
        case!("instances::paging_under_concurrent_inserts", instances_paging_under_concurrent_inserts),
        case!("instances::system_metadata_round_trip", instances_system_metadata_round_trip),
        case!("leases::compare_and_set", leases_compare_and_set),
        case!("leases::one_winner_under_concurrency", leases_one_winner_under_concurrency),
    ]
}

/// Runs every case in order and returns the failures by case name; empty means the store
/// conforms. For quick checks outside a test harness.
pub async fn run_all(store: Arc<dyn Store>) -> Vec<(&'static str, Failure)> {
    let mut failures = Vec::new();
    for case in cases() {
        if let Err(f) = (case.run)(store.clone()).await {
            failures.push((case.name, f));
        }
    }
    failures
}

// ---------------------------------------------------------------------------------------
// fixtures

fn rc(s: &str) -> ResourceClass {
    ResourceClass::parse(s).unwrap_or(ResourceClass::Vcpu)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A compute-node tree: root with VCPU/MEMORY_MB/DISK_GB and `numa` NUMA children with
/// VCPU and NUMA_MEMORY_MB, plus one SR-IOV child with SRIOV_NET_VF.
struct Fixture {
    root: ProviderId,
    numa: Vec<ProviderId>,
    sriov: ProviderId,
}

async fn make_tree(store: &dyn Store, cell: Option<CellId>, vcpu: i64, mem: i64) -> Result<Fixture, Failure> {
    let root = ProviderId::new_v4();
    store
        .create_provider(&NewProvider {
            id: root,
            name: unique("cn"),
            parent: None,
            cell,
            inventories: BTreeMap::from([
                (ResourceClass::Vcpu, Inventory::with_total(vcpu)),
                (ResourceClass::MemoryMb, Inventory { step_size: 256, ..Inventory::with_total(mem) }),
                (ResourceClass::DiskGb, Inventory { reserved: 10, ..Inventory::with_total(110) }),
            ]),
            traits: BTreeSet::from([Trait::new("HW_CPU_X86_AVX2")?]),
            aggregates: BTreeSet::new(),
        })
        .await?;
    let mut numa = Vec::new();
    for n in 0..2 {
        let id = ProviderId::new_v4();
        store
            .create_provider(&NewProvider {
                id,
                name: unique(&format!("numa{n}")),
                parent: Some(root),
                cell,
                inventories: BTreeMap::from([
                    (ResourceClass::Pcpu, Inventory::with_total(4)),
                    (ResourceClass::NumaMemoryMb, Inventory::with_total(1024)),
                ]),
                traits: BTreeSet::new(),
                aggregates: BTreeSet::new(),
            })
            .await?;
        numa.push(id);
    }
    let sriov = ProviderId::new_v4();
    store
        .create_provider(&NewProvider {
            id: sriov,
            name: unique("pf"),
            parent: Some(numa[0]),
            cell,
            inventories: BTreeMap::from([(ResourceClass::SriovNetVf, Inventory::with_total(2))]),
            traits: BTreeSet::from([Trait::new("CUSTOM_PHYSNET_A")?]),
            aggregates: BTreeSet::new(),
        })
        .await?;
    Ok(Fixture { root, numa, sriov })
}

fn claim_req(consumer: ConsumerId, allocs: &[(ProviderId, &str, i64)]) -> ClaimRequest {
    let mut allocations = AllocationMap::new();
    for (p, c, a) in allocs {
        allocations.entry(*p).or_default().insert(rc(c), *a);
    }
    ClaimRequest {
        consumer,
        project_id: "p-conformance".into(),
        user_id: "u-conformance".into(),
        allocations,
        group: None,
    }
}

// ---------------------------------------------------------------------------------------
// providers

async fn providers_create_and_read_trees(store: Arc<dyn Store>) -> CaseResult {
    let cell = CellId::new_v4();
    let f = make_tree(&*store, Some(cell), 8, 4096).await?;
    let tree = store.provider_tree(f.root).await?;
    check!(tree.root == f.root, "root {} != {}", tree.root, f.root);
    check!(tree.providers.len() == 4, "expected 4 providers, got {}", tree.providers.len());
    check!(tree.providers[0].id == f.root, "root must come first");
    let pos = |id| tree.providers.iter().position(|p| p.id == id);
    check!(pos(f.numa[0]) < pos(f.sriov), "parents must come before children");
    check!(tree.cell == Some(cell), "cell lost");
    let from_child = store.provider_tree(f.sriov).await?;
    check!(from_child == tree, "reading the tree through a child must give the same tree");
    let listed = store.list_provider_trees(Some(cell)).await?;
    check!(listed.len() == 1 && listed[0] == tree, "list_provider_trees(cell) must return exactly the tree");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// claims

async fn claims_fit_and_usage(store: Arc<dyn Store>) -> CaseResult {
    let f = make_tree(&*store, None, 8, 4096).await?;
    let before = store.provider_tree(f.root).await?;
    let c = ConsumerId::new_v4();
    let req = claim_req(c, &[(f.root, "VCPU", 2), (f.root, "MEMORY_MB", 512), (f.numa[0], "PCPU", 1)]);
    let claim = store.claim(&req).await?;
    check!(!claim.replayed && claim.root == f.root, "first claim is not a replay: {claim:?}");
    let after = store.provider_tree(f.root).await?;
    check!(after.generation != before.generation, "a claim must change the tree generation");
    check!(
        claim.generation == after.generation,
        "claim reports generation {} but tree has {}",
        claim.generation,
        after.generation
    );
    let root = after.node(f.root).ok_or(Failure("root vanished".into()))?;
    check!(
        root.used(&ResourceClass::Vcpu) == 2 && root.used(&ResourceClass::MemoryMb) == 512,
        "usage {:?}",
        root.usages
    );
    let held = store.allocations(c).await?;
    check!(held.len() == 1 && held[0].allocations == req.allocations, "allocations(consumer) = {held:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// helpers

fn expect_err<T: std::fmt::Debug>(
    r: Result<T, Error>,
    what: &str,
    pred: impl Fn(&Error) -> bool,
) -> Result<Error, Failure> {
    match r {
        Ok(v) => Err(Failure(format!("{what}: expected an error, got Ok({v:?})"))),
        Err(e) if pred(&e) => Ok(e),
        Err(e) => Err(Failure(format!("{what}: wrong error {e} ({e:?})"))),
    }
}

/// A claim retried on retryable errors. Claims are idempotent, so replaying after a timeout
/// (outcome unknown) or a generation race is safe and tells what really happened.
async fn claim_retrying(store: &dyn Store, req: &ClaimRequest) -> Result<Claim, Error> {
    let mut attempt = 0;
    loop {
        match store.claim(req).await {
            Err(e) if e.is_retryable() && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
            }
            other => return other,
        }
    }
}

async fn release_retrying(store: &dyn Store, consumer: ConsumerId) -> Result<Released, Error> {
    let mut attempt = 0;
    loop {
        match store.release(consumer).await {
            Err(e) if e.is_retryable() && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
            }
            other => return other,
        }
    }
}

fn usages(tree: &ProviderTree) -> BTreeMap<(ProviderId, ResourceClass), i64> {
    let mut m = BTreeMap::new();
    for p in &tree.providers {
        for (c, n) in &p.usages {
            if *n != 0 {
                m.insert((p.id, c.clone()), *n);
            }
        }
    }
    m
}

async fn audit_clean(store: &dyn Store, roots: &[ProviderId]) -> CaseResult {
    let report = crate::store::audit::audit_trees(store, Some(roots)).await?;
    check!(
        report.is_clean(),
        "audit found violations: {}",
        report.violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; ")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// model

async fn model_bad_names_rejected(_store: Arc<dyn Store>) -> CaseResult {
    for bad in ["vcpu", "CUSTOM_", "CUSTOM_lower", "MEMORY", "CUSTOM_A B", ""] {
        check!(
            matches!(ResourceClass::parse(bad), Err(Error::InvalidInput { .. })),
            "resource class {bad:?} must be rejected"
        );
    }
    for bad in ["GOLD", "CUSTOM_", "hw_cpu_x86_avx", "HW_", "CUSTOM_a"] {
        check!(matches!(Trait::new(bad), Err(Error::InvalidInput { .. })), "trait {bad:?} must be rejected");
    }
    // Names arriving as data (JSON) go through the same validation.
    let json = r#"{"consumer":"6f0c8d9e-2a43-4c36-9d6b-7b0c7f1e2a11","project_id":"p","user_id":"u",
        "allocations":{"6f0c8d9e-2a43-4c36-9d6b-7b0c7f1e2a12":{"CUSTOM_bad":1}}}"#;
    check!(serde_json::from_str::<ClaimRequest>(json).is_err(), "a claim naming CUSTOM_bad must not deserialize");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// providers (continued)

async fn providers_duplicates_and_unknown_parent(store: Arc<dyn Store>) -> CaseResult {
    let f = make_tree(&*store, None, 4, 1024).await?;
    let tree = store.provider_tree(f.root).await?;
    let name = tree.providers[0].name.clone();
    let dup_id = NewProvider {
        id: f.root,
        name: unique("other"),
        parent: None,
        cell: None,
        inventories: BTreeMap::new(),
        traits: BTreeSet::new(),
        aggregates: BTreeSet::new(),
    };
    expect_err(store.create_provider(&dup_id).await, "duplicate provider id", |e| {
        matches!(e, Error::AlreadyExists { kind: Kind::Provider, .. })
    })?;
    let dup_name = NewProvider { id: ProviderId::new_v4(), name: name.clone(), ..dup_id.clone() };
    expect_err(store.create_provider(&dup_name).await, "duplicate provider name", |e| {
        matches!(e, Error::Conflict(Conflict::DuplicateName { .. }))
    })?;
    let orphan = NewProvider {
        id: ProviderId::new_v4(),
        name: unique("orphan"),
        parent: Some(ProviderId::new_v4()),
        ..dup_id.clone()
    };
    expect_err(store.create_provider(&orphan).await, "unknown parent", |e| {
        matches!(e, Error::NotFound { kind: Kind::Provider, .. })
    })?;
    let bad_name = NewProvider { id: ProviderId::new_v4(), name: String::new(), ..dup_id.clone() };
    expect_err(store.create_provider(&bad_name).await, "empty provider name", |e| {
        matches!(e, Error::InvalidInput { .. })
    })?;
    expect_err(store.provider_tree(ProviderId::new_v4()).await, "unknown provider", |e| {
        matches!(e, Error::NotFound { kind: Kind::Provider, .. })
    })?;
    let after = store.provider_tree(f.root).await?;
    check!(after.providers.len() == 4, "failed creates must not add providers");
    Ok(())
}

async fn providers_delete_rules(store: Arc<dyn Store>) -> CaseResult {
    let f = make_tree(&*store, None, 4, 1024).await?;
    expect_err(store.delete_provider(f.numa[0]).await, "delete a provider with children", |e| {
        matches!(e, Error::Conflict(Conflict::ProviderInUse { .. }))
    })?;
    let c = ConsumerId::new_v4();
    store.claim(&claim_req(c, &[(f.sriov, "SRIOV_NET_VF", 1)])).await?;
    expect_err(store.delete_provider(f.sriov).await, "delete a provider with allocations", |e| {
        matches!(e, Error::Conflict(Conflict::ProviderInUse { .. }))
    })?;
    store.release(c).await?;
    let g0 = store.provider_tree(f.root).await?.generation;
    store.delete_provider(f.sriov).await?;
    let t = store.provider_tree(f.root).await?;
    check!(t.node(f.sriov).is_none(), "deleted provider still in tree");
    check!(t.generation != g0, "deleting a child must change the tree generation");
    expect_err(store.provider_tree(f.sriov).await, "read deleted provider", |e| matches!(e, Error::NotFound { .. }))?;
    store.delete_provider(f.numa[0]).await?;
    store.delete_provider(f.numa[1]).await?;
    store.delete_provider(f.root).await?;
    expect_err(store.provider_tree(f.root).await, "read deleted tree", |e| matches!(e, Error::NotFound { .. }))?;
    // The name is free again.
    let again = make_tree(&*store, None, 1, 256).await?;
    store.delete_provider(again.sriov).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// claims (continued)

async fn claims_replay_is_noop(store: Arc<dyn Store>) -> CaseResult {
    let f = make_tree(&*store, None, 8, 4096).await?;
    let c = ConsumerId::new_v4();
    let req = claim_req(c, &[(f.root, "VCPU", 3), (f.numa[1], "PCPU", 2), (f.sriov, "SRIOV_NET_VF", 1)]);
    let first = store.claim(&req).await?;
    let t1 = store.provider_tree(f.root).await?;
    let again = store.claim(&req).await?;
    check!(again.replayed, "replaying a claim must report replayed = true");
    let t2 = store.provider_tree(f.root).await?;
    check!(t1 == t2, "a replay must change nothing (tree before {t1:?}, after {t2:?})");
    check!(again.generation == first.generation, "a replay must report the unchanged generation");
    check!(store.allocations(c).await?.len() == 1, "one allocation after replay");
    audit_clean(&*store, &[f.root]).await
}

async fn claims_different_amounts_conflict(store: Arc<dyn Store>) -> CaseResult {
    let f = make_tree(&*store, None, 8, 4096).await?;
    let c = ConsumerId::new_v4();
    store.claim(&claim_req(c, &[(f.root, "VCPU", 1)])).await?;
    let before = store.provider_tree(f.root).await?;
    expect_err(store.claim(&claim_req(c, &[(f.root, "VCPU", 2)])).await, "different amounts", |e| {
        matches!(e, Error::Conflict(Conflict::ConsumerMismatch { .. }))
    })?;
    check!(store.provider_tree(f.root).await? == before, "a refused claim must write nothing");
    Ok(())
}

async fn claims_release_is_idempotent(store: Arc<dyn Store>) -> CaseResult {
    let f = make_tree(&*store, None, 8, 4096).await?;
    let c = ConsumerId::new_v4();
    store.claim(&claim_req(c, &[(f.root, "VCPU", 4), (f.root, "MEMORY_MB", 1024), (f.numa[0], "PCPU", 1)])).await?;
    let r1 = store.release(c).await?;
    check!(r1.roots == vec![f.root], "release must report the tree it released from: {r1:?}");
    let t1 = store.provider_tree(f.root).await?;
    check!(usages(&t1).is_empty(), "usage must be zero after release: {:?}", usages(&t1));
    let r2 = store.release(c).await?;
    check!(r2.roots.is_empty(), "second release must release nothing: {r2:?}");
    check!(store.provider_tree(f.root).await? == t1, "a second release must change nothing");
    let r3 = store.release(ConsumerId::new_v4()).await?;
    check!(r3.roots.is_empty(), "releasing an unknown consumer is a no-op");
    check!(store.allocations(c).await?.is_empty(), "allocations must be empty after release");
    // The released capacity can be claimed again, and the consumer may claim again.
    store.claim(&claim_req(c, &[(f.root, "VCPU", 8)])).await?;
    audit_clean(&*store, &[f.root]).await
}

async fn claims_multi_provider_all_or_nothing(store: Arc<dyn Store>) -> CaseResult {
    let f = make_tree(&*store, None, 8, 4096).await?;
    // Fill the SR-IOV device (2 VFs).
    store.claim(&claim_req(ConsumerId::new_v4(), &[(f.sriov, "SRIOV_NET_VF", 2)])).await?;
    let before = store.provider_tree(f.root).await?;
    let c = ConsumerId::new_v4();
    let req = claim_req(c, &[(f.root, "VCPU", 2), (f.numa[0], "PCPU", 1), (f.sriov, "SRIOV_NET_VF", 1)]);
    let e = expect_err(store.claim(&req).await, "claim whose third provider lacks room", |e| {
        matches!(e, Error::Capacity { .. })
    })?;
    if let Error::Capacity { provider, class, .. } = &e {
        check!(*provider == f.sriov && *class == ResourceClass::SriovNetVf, "wrong capacity culprit: {e}");
    }
    let after = store.provider_tree(f.root).await?;
    check!(after == before, "a failed multi-provider claim must write nothing, generation included");
    check!(store.allocations(c).await?.is_empty(), "the failed consumer must hold nothing");
    audit_clean(&*store, &[f.root]).await
}

async fn claims_spanning_trees_rejected(store: Arc<dyn Store>) -> CaseResult {
    let a = make_tree(&*store, None, 8, 4096).await?;
    let b = make_tree(&*store, None, 8, 4096).await?;
    let c = ConsumerId::new_v4();
    expect_err(
        store.claim(&claim_req(c, &[(a.root, "VCPU", 1), (b.root, "VCPU", 1)])).await,
        "claim spanning two trees",
        |e| matches!(e, Error::InvalidInput { .. }),
    )?;
    check!(usages(&store.provider_tree(a.root).await?).is_empty(), "tree A must be untouched");
    check!(usages(&store.provider_tree(b.root).await?).is_empty(), "tree B must be untouched");
    Ok(())
}

async fn claims_capacity_error_names_provider_and_class(store: Arc<dyn Store>) -> CaseResult {
    let f = make_tree(&*store, None, 8, 4096).await?;
    store.claim(&claim_req(ConsumerId::new_v4(), &[(f.root, "MEMORY_MB", 3840)])).await?;
    let e = expect_err(
        store.claim(&claim_req(ConsumerId::new_v4(), &[(f.root, "VCPU", 1), (f.root, "MEMORY_MB", 512)])).await,
        "memory exhausted",
        |e| matches!(e, Error::Capacity { .. }),
    )?;
    match e {
        Error::Capacity { provider, class, requested, used, capacity } => {
            check!(provider == f.root, "provider {provider} != root");
            check!(class == ResourceClass::MemoryMb, "class {class} != MEMORY_MB");
            check!(requested == 512 && used == 3840 && capacity == 4096, "figures {requested}/{used}/{capacity}");
        }
        other => return Err(Failure(format!("unexpected {other}"))),
    }
    Ok(())
}

async fn claims_reserved_and_allocation_ratio(store: Arc<dyn Store>) -> CaseResult {
    let root = ProviderId::new_v4();
    store
        .create_provider(&NewProvider {
            id: root,
            name: unique("ratio"),
            parent: None,
            cell: None,
            inventories: BTreeMap::from([(
                ResourceClass::Vcpu,
                Inventory { total: 10, reserved: 3, allocation_ratio: 1.5, ..Inventory::default() },
            )]),
            traits: BTreeSet::new(),
            aggregates: BTreeSet::new(),
        })
        .await?;
    // capacity = floor((10 - 3) * 1.5) = 10
    store.claim(&claim_req(ConsumerId::new_v4(), &[(root, "VCPU", 6)])).await?;
    store.claim(&claim_req(ConsumerId::new_v4(), &[(root, "VCPU", 4)])).await?;
    let e = expect_err(store.claim(&claim_req(ConsumerId::new_v4(), &[(root, "VCPU", 1)])).await, "full", |e| {
        matches!(e, Error::Capacity { .. })
    })?;
    check!(matches!(e, Error::Capacity { capacity: 10, used: 10, .. }), "capacity must be 10: {e}");
    Ok(())
}

async fn claims_bad_input_errors(store: Arc<dyn Store>) -> CaseResult {
    let f = make_tree(&*store, None, 8, 4096).await?;
    let before = store.provider_tree(f.root).await?;
    let c = ConsumerId::new_v4();
    let invalid = |e: &Error| matches!(e, Error::InvalidInput { .. });
    expect_err(store.claim(&claim_req(c, &[(f.root, "VCPU", 0)])).await, "zero amount", invalid)?;
    expect_err(store.claim(&claim_req(c, &[(f.root, "VCPU", -2)])).await, "negative amount", invalid)?;
    expect_err(store.claim(&claim_req(c, &[])).await, "empty claim", invalid)?;
    expect_err(store.claim(&claim_req(c, &[(f.root, "MEMORY_MB", 300)])).await, "off step_size", invalid)?;
    expect_err(
        store.claim(&claim_req(c, &[(f.root, "VCPU", crate::model::MAX_AMOUNT + 1)])).await,
        "above max amount",
        invalid,
    )?;
    let mut no_project = claim_req(c, &[(f.root, "VCPU", 1)]);
    no_project.project_id.clear();
    expect_err(store.claim(&no_project).await, "empty project", invalid)?;
    // min_unit / max_unit
    let g = store.provider_tree(f.root).await?.generation;
    let mut invs = store.provider_tree(f.root).await?.providers[0].inventories.clone();
    invs.insert(ResourceClass::Vcpu, Inventory { min_unit: 2, max_unit: 4, ..Inventory::with_total(8) });
    store.set_inventories(f.root, g, &invs).await?;
    expect_err(store.claim(&claim_req(c, &[(f.root, "VCPU", 1)])).await, "below min_unit", invalid)?;
    expect_err(store.claim(&claim_req(c, &[(f.root, "VCPU", 6)])).await, "above max_unit", invalid)?;
    expect_err(store.claim(&claim_req(c, &[(ProviderId::new_v4(), "VCPU", 1)])).await, "unknown provider", |e| {
        matches!(e, Error::NotFound { kind: Kind::Provider, .. })
    })?;
    expect_err(store.claim(&claim_req(c, &[(f.sriov, "VCPU", 1)])).await, "class the provider lacks", |e| {
        matches!(e, Error::NotFound { kind: Kind::Inventory, .. })
    })?;
    expect_err(store.claim(&claim_req(c, &[(f.root, "CUSTOM_NOT_HERE", 1)])).await, "custom class nobody has", |e| {
        matches!(e, Error::NotFound { kind: Kind::Inventory, .. })
    })?;
    let after = store.provider_tree(f.root).await?;
    check!(usages(&after) == usages(&before), "bad claims must write nothing");
    check!(store.allocations(c).await?.is_empty(), "bad claims must leave no allocation");
    Ok(())
}

async fn claims_consumer_on_two_trees(store: Arc<dyn Store>) -> CaseResult {
    let a = make_tree(&*store, None, 8, 4096).await?;
    let b = make_tree(&*store, None, 8, 4096).await?;
    let c = ConsumerId::new_v4();
    store.claim(&claim_req(c, &[(a.root, "VCPU", 1)])).await?;
    store.claim(&claim_req(c, &[(b.root, "VCPU", 2)])).await?;
    let mut held: Vec<ProviderId> = store.allocations(c).await?.iter().map(|a| a.root).collect();
    held.sort();
    let mut want = vec![a.root, b.root];
    want.sort();
    check!(held == want, "consumer must hold on both trees: {held:?}");
    let mut released = store.release(c).await?.roots;
    released.sort();
    check!(released == want, "release must free both trees: {released:?}");
    audit_clean(&*store, &[a.root, b.root]).await
}

async fn claims_group_limit(store: Arc<dyn Store>) -> CaseResult {
    let f = make_tree(&*store, None, 16, 8192).await?;
    let group = GroupId::new_v4();
    let req = |max| {
        let mut r = claim_req(ConsumerId::new_v4(), &[(f.root, "VCPU", 1)]);
        r.group = Some(GroupClaim { group, max_per_host: max });
        r
    };
    let first = req(Some(2));
    store.claim(&first).await?;
    store.claim(&req(Some(2))).await?;
    // replaying a member's claim is still a replay, not a third member
    check!(store.claim(&first).await?.replayed, "group member replay must be a replay");
    let before = store.provider_tree(f.root).await?;
    check!(before.groups.get(&group) == Some(&2), "group count must be 2: {:?}", before.groups);
    expect_err(store.claim(&req(Some(2))).await, "third member with max 2", |e| {
        matches!(e, Error::Conflict(Conflict::GroupLimit { max_per_host: 2, .. }))
    })?;
    check!(store.provider_tree(f.root).await? == before, "a refused group claim writes nothing");
    // No limit: membership is recorded but not limited.
    store.claim(&req(None)).await?;
    check!(store.provider_tree(f.root).await?.groups.get(&group) == Some(&3), "unlimited member counted");
    store.release(first.consumer).await?;
    check!(store.provider_tree(f.root).await?.groups.get(&group) == Some(&2), "release decrements the group");
    audit_clean(&*store, &[f.root]).await
}

// ---------------------------------------------------------------------------------------
// inventory

async fn inventory_stale_generation_conflicts(store: Arc<dyn Store>) -> CaseResult {
    let f = make_tree(&*store, None, 8, 4096).await?;
    let t = store.provider_tree(f.root).await?;
    let g = t.generation;
    let invs = t.providers[0].inventories.clone();
    let w = store.set_inventories(f.root, g, &invs).await?;
    check!(w.generation != g, "an inventory write must change the generation");
    let fresh = store.provider_tree(f.root).await?.generation;
    check!(fresh == w.generation, "reported generation {} != tree generation {fresh}", w.generation);
    let is_gen = |e: &Error| matches!(e, Error::Conflict(Conflict::Generation { .. })) && e.is_retryable();
    expect_err(store.set_inventories(f.root, g, &invs).await, "stale inventory write", is_gen)?;
    let traits = BTreeSet::from([Trait::new("CUSTOM_GOLD")?]);
    expect_err(store.set_traits(f.root, g, &traits).await, "stale traits write", is_gen)?;
    let aggs = BTreeSet::from([AggregateId::new_v4()]);
    expect_err(store.set_aggregates(f.numa[0], g, &aggs).await, "stale aggregates write (child)", is_gen)?;
    // A claim moves the generation, so a write based on a pre-claim read conflicts.
    let g2 = store.set_traits(f.root, fresh, &traits).await?;
    store.claim(&claim_req(ConsumerId::new_v4(), &[(f.numa[1], "PCPU", 1)])).await?;
    expect_err(store.set_aggregates(f.root, g2, &aggs).await, "write after a claim", is_gen)?;
    let g3 = store.provider_tree(f.root).await?.generation;
    let g4 = store.set_aggregates(f.numa[0], g3, &aggs).await?;
    let t = store.provider_tree(f.root).await?;
    check!(t.generation == g4, "set_aggregates must return the new generation");
    check!(t.node(f.root).map(|n| n.traits.clone()) == Some(traits), "traits not written");
    check!(t.node(f.numa[0]).map(|n| n.aggregates.clone()) == Some(aggs), "aggregates not written");
    expect_err(store.set_traits(ProviderId::new_v4(), 1, &BTreeSet::new()).await, "unknown provider", |e| {
        matches!(e, Error::NotFound { kind: Kind::Provider, .. })
    })?;
    Ok(())
}

async fn inventory_shrink_under_allocations(store: Arc<dyn Store>) -> CaseResult {
    let f = make_tree(&*store, None, 8, 4096).await?;
    let c1 = ConsumerId::new_v4();
    let c2 = ConsumerId::new_v4();
    store.claim(&claim_req(c1, &[(f.root, "VCPU", 4)])).await?;
    store.claim(&claim_req(c2, &[(f.root, "VCPU", 3)])).await?;
    let t = store.provider_tree(f.root).await?;
    let mut invs = t.providers[0].inventories.clone();
    invs.insert(ResourceClass::Vcpu, Inventory::with_total(5));
    // Placement accepts shrinking below usage and reports it.
    let w = store.set_inventories(f.root, t.generation, &invs).await?;
    check!(w.over_capacity == vec![ResourceClass::Vcpu], "over_capacity must name VCPU: {:?}", w.over_capacity);
    // No claim may add VCPU while over capacity.
    expect_err(store.claim(&claim_req(ConsumerId::new_v4(), &[(f.root, "VCPU", 1)])).await, "claim while over", |e| {
        matches!(e, Error::Capacity { class: ResourceClass::Vcpu, .. })
    })?;
    // Other classes are unaffected.
    store.claim(&claim_req(ConsumerId::new_v4(), &[(f.root, "MEMORY_MB", 256)])).await?;
    // Removing a class that has allocations is refused.
    let t = store.provider_tree(f.root).await?;
    let mut without_vcpu = invs.clone();
    without_vcpu.remove(&ResourceClass::Vcpu);
    expect_err(store.set_inventories(f.root, t.generation, &without_vcpu).await, "remove VCPU in use", |e| {
        matches!(e, Error::Conflict(Conflict::InventoryInUse { class: ResourceClass::Vcpu, .. }))
    })?;
    check!(store.provider_tree(f.root).await? == t, "a refused inventory write changes nothing");
    // After releases, usage 3 of 5: 2 fit, 3 do not.
    store.release(c1).await?;
    expect_err(store.claim(&claim_req(ConsumerId::new_v4(), &[(f.root, "VCPU", 3)])).await, "3 of 2 free", |e| {
        matches!(e, Error::Capacity { .. })
    })?;
    store.claim(&claim_req(ConsumerId::new_v4(), &[(f.root, "VCPU", 2)])).await?;
    // A class without allocations can be removed.
    let t = store.provider_tree(f.root).await?;
    let mut no_disk = t.providers[0].inventories.clone();
    no_disk.remove(&ResourceClass::DiskGb);
    store.set_inventories(f.root, t.generation, &no_disk).await?;
    let t = store.provider_tree(f.root).await?;
    check!(!t.providers[0].inventories.contains_key(&ResourceClass::DiskGb), "DISK_GB must be gone");
    audit_clean(&*store, &[f.root]).await
}

async fn inventory_invalid_inventory_rejected(store: Arc<dyn Store>) -> CaseResult {
    let f = make_tree(&*store, None, 8, 4096).await?;
    let t = store.provider_tree(f.root).await?;
    for bad in [
        Inventory::with_total(0),
        Inventory { reserved: 9, ..Inventory::with_total(8) },
        Inventory { step_size: 0, ..Inventory::with_total(8) },
        Inventory { min_unit: 4, max_unit: 2, ..Inventory::with_total(8) },
        Inventory { allocation_ratio: -1.0, ..Inventory::with_total(8) },
    ] {
        let invs = BTreeMap::from([(ResourceClass::Vcpu, bad)]);
        expect_err(store.set_inventories(f.root, t.generation, &invs).await, &format!("inventory {bad:?}"), |e| {
            matches!(e, Error::InvalidInput { .. })
        })?;
    }
    let bad_new = NewProvider {
        id: ProviderId::new_v4(),
        name: unique("bad-inv"),
        parent: None,
        cell: None,
        inventories: BTreeMap::from([(ResourceClass::Vcpu, Inventory::with_total(-5))]),
        traits: BTreeSet::new(),
        aggregates: BTreeSet::new(),
    };
    expect_err(store.create_provider(&bad_new).await, "provider with bad inventory", |e| {
        matches!(e, Error::InvalidInput { .. })
    })?;
    check!(store.provider_tree(f.root).await? == t, "rejected writes change nothing");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// change feed

async fn changes_feed_reports_changed_trees(store: Arc<dyn Store>) -> CaseResult {
    let a = make_tree(&*store, None, 8, 4096).await?;
    let b = make_tree(&*store, None, 8, 4096).await?;
    let cursor = store.change_cursor().await?;
    store.claim(&claim_req(ConsumerId::new_v4(), &[(a.numa[0], "PCPU", 1)])).await?;
    let c = make_tree(&*store, None, 8, 4096).await?;
    let (roots, next) = match store.changes_since(&cursor).await? {
        Changes::Trees { roots, next } => (roots, next),
        Changes::Resync => return Err(Failure("a fresh cursor must not need a resync".into())),
    };
    check!(roots.contains(&a.root), "claimed tree A missing from changes {roots:?}");
    check!(roots.contains(&c.root), "new tree C missing from changes {roots:?}");
    // Inventory, traits, release and deletion are changes too.
    let tb = store.provider_tree(b.root).await?;
    store.set_traits(b.sriov, tb.generation, &BTreeSet::from([Trait::new("CUSTOM_PHYSNET_B")?])).await?;
    let consumer = ConsumerId::new_v4();
    store.claim(&claim_req(consumer, &[(c.root, "VCPU", 1)])).await?;
    let cursor2 = match store.changes_since(&next).await? {
        Changes::Trees { roots, next } => {
            check!(roots.contains(&b.root) && roots.contains(&c.root), "B and C must be reported: {roots:?}");
            next
        }
        Changes::Resync => return Err(Failure("unexpected resync".into())),
    };
    store.release(consumer).await?;
    store.delete_provider(a.sriov).await?;
    match store.changes_since(&cursor2).await? {
        Changes::Trees { roots, .. } => {
            check!(roots.contains(&c.root), "a release must be reported: {roots:?}");
            check!(roots.contains(&a.root), "a provider deletion must be reported: {roots:?}");
        }
        Changes::Resync => return Err(Failure("unexpected resync".into())),
    }
    expect_err(store.changes_since(&ChangeCursor("garbage".into())).await, "garbage cursor", |e| {
        matches!(e, Error::InvalidInput { .. })
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// races

/// Number of concurrent workers in the race cases.
pub const RACE_WORKERS: usize = 48;

async fn race_concurrent_claims_never_overcommit(store: Arc<dyn Store>) -> CaseResult {
    use rand::{Rng, SeedableRng};
    let mut trees = Vec::new();
    for _ in 0..3 {
        trees.push(make_tree(&*store, None, 12, 4096).await?);
    }
    let trees = Arc::new(trees);
    let mut tasks = Vec::new();
    for w in 0..RACE_WORKERS {
        let store = store.clone();
        let trees = trees.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed + w as u64);
            let mut won: Vec<ClaimRequest> = Vec::new();
            let mut refused: Vec<ProviderId> = Vec::new();
            let mut misses = 0;
            let mut attempts = 0;
            while misses < 10 && attempts < 200 {
                attempts += 1;
                let t = &trees[rng.random_range(0..trees.len())];
                let mut parts = vec![
                    (t.root, "VCPU", rng.random_range(1..=3)),
                    (t.root, "MEMORY_MB", 256 * rng.random_range(1..=3)),
                ];
                if rng.random_bool(0.4) {
                    parts.push((t.numa[rng.random_range(0..2)], "PCPU", rng.random_range(1..=2)));
                }
                if rng.random_bool(0.25) {
                    parts.push((t.sriov, "SRIOV_NET_VF", 1));
                }
                let req = claim_req(ConsumerId::new_v4(), &parts);
                match claim_retrying(&*store, &req).await {
                    Ok(c) if !c.replayed => {
                        misses = 0;
                        won.push(req);
                    }
                    Ok(_) => won.push(req), // a retried claim whose first attempt landed
                    Err(Error::Capacity { provider, class, requested, used, capacity }) => {
                        misses += 1;
                        refused.push(provider);
                        let asked = req.allocations.get(&provider).and_then(|r| r.get(&class));
                        if asked != Some(&requested) {
                            return Err(Failure(format!(
                                "capacity error names {class} on {provider} with {requested}, not in the claim {:?}",
                                req.allocations
                            )));
                        }
                        if used + requested <= capacity {
                            return Err(Failure(format!(
                                "capacity error for {class} on {provider} although {used} + {requested} <= {capacity}"
                            )));
                        }
                    }
                    Err(e) => return Err(Failure(format!("unexpected claim error under contention: {e}"))),
                }
            }
            Ok::<_, Failure>((won, refused))
        }));
    }
    let mut expected: BTreeMap<(ProviderId, ResourceClass), i64> = BTreeMap::new();
    let mut wins = 0;
    let mut refused_on: BTreeSet<ProviderId> = BTreeSet::new();
    for t in tasks {
        let (won, refused) = t.await.map_err(|e| Failure(format!("worker panicked: {e}")))??;
        refused_on.extend(refused);
        for req in won {
            wins += 1;
            for (p, res) in &req.allocations {
                for (c, n) in res {
                    *expected.entry((*p, c.clone())).or_insert(0) += n;
                }
            }
        }
    }
    check!(wins > 0, "no claim succeeded at all");
    for t in trees.iter() {
        let tree = store.provider_tree(t.root).await?;
        for node in &tree.providers {
            for (class, inv) in &node.inventories {
                let used = node.used(class);
                let want = expected.get(&(node.id, class.clone())).copied().unwrap_or(0);
                check!(used == want, "{class} on {}: usage {used} != sum of successful claims {want}", node.id);
                check!(
                    used <= inv.capacity(),
                    "{class} on {}: OVERCOMMIT usage {used} > capacity {}",
                    node.id,
                    inv.capacity()
                );
            }
        }
        // The race really raced: every tree took claims and refused some for lack of room.
        check!(
            tree.providers.iter().any(|p| !p.usages.is_empty()),
            "tree {} took no claim: the race did not race",
            tree.root
        );
        check!(
            tree.providers.iter().any(|p| refused_on.contains(&p.id)),
            "tree {} never refused a claim: it was never contended up to its capacity",
            tree.root
        );
    }
    let roots: Vec<_> = trees.iter().map(|t| t.root).collect();
    audit_clean(&*store, &roots).await
}

async fn race_group_limit_under_concurrency(store: Arc<dyn Store>) -> CaseResult {
    let mut trees = Vec::new();
    for _ in 0..4 {
        trees.push(make_tree(&*store, None, 64, 16384).await?);
    }
    let group = GroupId::new_v4();
    let roots: Arc<Vec<ProviderId>> = Arc::new(trees.iter().map(|t| t.root).collect());
    let mut tasks = Vec::new();
    for w in 0..RACE_WORKERS {
        let store = store.clone();
        let roots = roots.clone();
        tasks.push(tokio::spawn(async move {
            // every worker tries every host, starting at a different one
            for k in 0..roots.len() {
                let root = roots[(w + k) % roots.len()];
                let mut req = claim_req(ConsumerId::new_v4(), &[(root, "VCPU", 1)]);
                req.group = Some(GroupClaim { group, max_per_host: Some(2) });
                match claim_retrying(&*store, &req).await {
                    Ok(_) => return Ok(Some(root)),
                    Err(Error::Conflict(Conflict::GroupLimit { .. })) => continue,
                    Err(e) => return Err(Failure(format!("unexpected error: {e}"))),
                }
            }
            Ok::<_, Failure>(None)
        }));
    }
    let mut placed: BTreeMap<ProviderId, u32> = BTreeMap::new();
    for t in tasks {
        if let Some(root) = t.await.map_err(|e| Failure(format!("worker panicked: {e}")))?? {
            *placed.entry(root).or_insert(0) += 1;
        }
    }
    for root in roots.iter() {
        let n = placed.get(root).copied().unwrap_or(0);
        check!(n == 2, "host {root} got {n} group members, want exactly 2 (max_per_host)");
        let tree = store.provider_tree(*root).await?;
        check!(tree.groups.get(&group) == Some(&2), "tree group count {:?}", tree.groups.get(&group));
    }
    audit_clean(&*store, &roots).await
}

async fn race_claim_release_churn(store: Arc<dyn Store>) -> CaseResult {
    use rand::{Rng, SeedableRng};
    let f = make_tree(&*store, None, 6, 2048).await?;
    let root = f.root;
    let sriov = f.sriov;
    let mut tasks = Vec::new();
    for w in 0..RACE_WORKERS / 2 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0xc0ffee + w as u64);
            let mut held: Option<ClaimRequest> = None;
            for _ in 0..40 {
                if let Some(req) = held.take() {
                    release_retrying(&*store, req.consumer).await?;
                    continue;
                }
                let mut parts = vec![(root, "VCPU", rng.random_range(1..=2))];
                if rng.random_bool(0.5) {
                    parts.push((sriov, "SRIOV_NET_VF", 1));
                }
                let req = claim_req(ConsumerId::new_v4(), &parts);
                match claim_retrying(&*store, &req).await {
                    Ok(_) => held = Some(req),
                    Err(Error::Capacity { .. }) => {}
                    Err(e) => return Err(Failure(format!("unexpected error: {e}"))),
                }
            }
            Ok::<_, Failure>(held)
        }));
    }
    let mut still_held = Vec::new();
    for t in tasks {
        if let Some(req) = t.await.map_err(|e| Failure(format!("worker panicked: {e}")))?? {
            still_held.push(req);
        }
    }
    audit_clean(&*store, &[root]).await?;
    let allocs = store.tree_allocations(root).await?;
    check!(
        allocs.len() == still_held.len(),
        "{} allocations on the tree, {} held by workers",
        allocs.len(),
        still_held.len()
    );
    for req in still_held {
        release_retrying(&*store, req.consumer).await?;
    }
    let tree = store.provider_tree(root).await?;
    check!(usages(&tree).is_empty(), "usage left after every release: {:?}", usages(&tree));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// catalog

async fn catalog_cells_hosts_flavors_aggregates(store: Arc<dyn Store>) -> CaseResult {
    let cell = Cell { id: CellId::new_v4(), name: unique("cell"), disabled: false };
    store.put_cell(&cell).await?;
    check!(store.get_cell(cell.id).await? == cell, "cell round trip");
    check!(store.list_cells().await?.contains(&cell), "list_cells");
    let renamed = Cell { name: unique("cell2"), disabled: true, ..cell.clone() };
    store.put_cell(&renamed).await?;
    check!(store.get_cell(cell.id).await? == renamed, "put_cell must replace");
    expect_err(store.get_cell(CellId::new_v4()).await, "unknown cell", |e| {
        matches!(e, Error::NotFound { kind: Kind::Cell, .. })
    })?;

    let f = make_tree(&*store, Some(cell.id), 8, 4096).await?;
    let host = Host {
        name: unique("compute"),
        cell: cell.id,
        root_provider: f.root,
        node: unique("node"),
        enabled: true,
        disabled_reason: None,
        last_heartbeat: Timestamp::from_micros(1_790_000_000_000_000),
        availability_zone: Some("az1".into()),
        capabilities: BTreeMap::from([("hypervisor_type".into(), "QEMU".into())]),
    };
    store.put_host(&host).await?;
    check!(store.get_host(&host.name).await? == host, "host round trip");
    let disabled = Host { enabled: false, disabled_reason: Some("maintenance".into()), ..host.clone() };
    store.put_host(&disabled).await?;
    check!(store.get_host(&host.name).await? == disabled, "put_host must replace");
    let in_cell = store.list_hosts(Some(cell.id)).await?;
    check!(in_cell == vec![disabled.clone()], "list_hosts(cell) = {in_cell:?}");
    check!(store.list_hosts(None).await?.contains(&disabled), "list_hosts(None)");
    check!(store.list_hosts(Some(CellId::new_v4())).await?.is_empty(), "list_hosts(other cell)");
    expect_err(store.get_host(&unique("nohost")).await, "unknown host", |e| {
        matches!(e, Error::NotFound { kind: Kind::Host, .. })
    })?;

    let flavor = Flavor {
        id: FlavorId::new(unique("m1"))?,
        name: "m1.small".into(),
        vcpus: 2,
        memory_mb: 2048,
        root_gb: 20,
        ephemeral_gb: 0,
        swap_mb: 0,
        extra_specs: BTreeMap::from([
            ("resources:SRIOV_NET_VF".into(), "1".into()),
            ("trait:HW_CPU_X86_AVX2".into(), "required".into()),
        ]),
    };
    store.put_flavor(&flavor).await?;
    check!(store.get_flavor(&flavor.id).await? == flavor, "flavor round trip");
    check!(store.list_flavors().await?.contains(&flavor), "list_flavors");
    let bad = Flavor {
        id: FlavorId::new(unique("bad"))?,
        extra_specs: BTreeMap::from([("resources:CUSTOM_x".into(), "1".into())]),
        ..flavor.clone()
    };
    expect_err(store.put_flavor(&bad).await, "flavor with a malformed class", |e| {
        matches!(e, Error::InvalidInput { .. })
    })?;
    expect_err(store.get_flavor(&bad.id).await, "rejected flavor must not be stored", |e| {
        matches!(e, Error::NotFound { kind: Kind::Flavor, .. })
    })?;

    let agg = Aggregate {
        id: AggregateId::new_v4(),
        name: unique("agg"),
        availability_zone: Some("az1".into()),
        metadata: BTreeMap::from([("ssd".into(), "true".into())]),
    };
    store.put_aggregate(&agg).await?;
    check!(store.get_aggregate(agg.id).await? == agg, "aggregate round trip");
    check!(store.list_aggregates().await?.contains(&agg), "list_aggregates");
    expect_err(store.get_aggregate(AggregateId::new_v4()).await, "unknown aggregate", |e| {
        matches!(e, Error::NotFound { kind: Kind::Aggregate, .. })
    })?;
    Ok(())
}

async fn catalog_server_groups_and_request_specs(store: Arc<dyn Store>) -> CaseResult {
    let group = ServerGroup {
        id: GroupId::new_v4(),
        name: unique("grp"),
        project_id: "p".into(),
        user_id: "u".into(),
        policy: GroupPolicy::AntiAffinity,
        max_per_host: Some(2),
    };
    store.create_server_group(&group).await?;
    check!(store.get_server_group(group.id).await? == group, "group round trip");
    expect_err(store.create_server_group(&group).await, "duplicate group", |e| {
        matches!(e, Error::AlreadyExists { kind: Kind::ServerGroup, .. })
    })?;
    let bad = ServerGroup { id: GroupId::new_v4(), policy: GroupPolicy::Affinity, ..group.clone() };
    expect_err(store.create_server_group(&bad).await, "affinity with max_per_host", |e| {
        matches!(e, Error::InvalidInput { .. })
    })?;
    store.delete_server_group(group.id).await?;
    expect_err(store.get_server_group(group.id).await, "deleted group", |e| {
        matches!(e, Error::NotFound { kind: Kind::ServerGroup, .. })
    })?;
    expect_err(store.delete_server_group(group.id).await, "deleting twice", |e| {
        matches!(e, Error::NotFound { kind: Kind::ServerGroup, .. })
    })?;

    let spec = RequestSpec {
        instance_uuid: InstanceId::new_v4(),
        flavor: Flavor {
            id: FlavorId::new("1")?,
            name: "tiny".into(),
            vcpus: 1,
            memory_mb: 512,
            root_gb: 1,
            ephemeral_gb: 0,
            swap_mb: 0,
            extra_specs: BTreeMap::new(),
        },
        image_properties: BTreeMap::from([("hw_architecture".into(), "x86_64".into())]),
        is_bfv: false,
        num_instances: 2,
        project_id: "p".into(),
        user_id: "u".into(),
        availability_zone: Some("az1".into()),
        hints: SchedulerHints { group: Some(group.id), same_host: vec![], different_host: vec![InstanceId::new_v4()] },
        requested_destination: None,
        ignore_hosts: vec!["h1".into()],
        force_hosts: vec![],
    };
    store.put_request_spec(&spec).await?;
    check!(store.get_request_spec(spec.instance_uuid).await? == spec, "request spec round trip");
    let changed = RequestSpec { num_instances: 3, ..spec.clone() };
    store.put_request_spec(&changed).await?;
    check!(store.get_request_spec(spec.instance_uuid).await? == changed, "put_request_spec must replace");
    store.delete_request_spec(spec.instance_uuid).await?;
    store.delete_request_spec(spec.instance_uuid).await?;
    expect_err(store.get_request_spec(spec.instance_uuid).await, "deleted spec", |e| {
        matches!(e, Error::NotFound { kind: Kind::RequestSpec, .. })
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// instances

fn new_instance(project: &str, name: &str, created_at: Timestamp) -> Instance {
    let mut i = Instance::new_building(
        InstanceId::new_v4(),
        name,
        project,
        "u-conformance",
        FlavorId::new("m1.tiny").unwrap_or_else(|_| FlavorId::new("1").unwrap_or_else(|e| panic!("{e}"))),
    );
    i.created_at = created_at;
    i.updated_at = created_at;
    i
}

async fn list_all(store: &dyn Store, filters: &InstanceFilters, limit: u32) -> Result<Vec<Instance>, Failure> {
    let mut out = Vec::new();
    let mut marker = None;
    for _ in 0..100_000 {
        let page = store.list_instances(&ListQuery { filters: filters.clone(), limit: Some(limit), marker }).await?;
        out.extend(page.instances);
        match page.next_marker {
            Some(m) => marker = Some(m),
            None => return Ok(out),
        }
    }
    Err(Failure("listing did not end".into()))
}

fn uuids(v: &[Instance]) -> Vec<InstanceId> {
    v.iter().map(|i| i.uuid).collect()
}

async fn instances_create_read_update_delete(store: Arc<dyn Store>) -> CaseResult {
    let project = unique("p");
    let mut i = new_instance(&project, "vm-1", Timestamp::now());
    i.metadata.insert("role".into(), "web".into());
    i.tags.insert("blue".into());
    store.create_instance(&i).await?;
    check!(store.get_instance(i.uuid).await? == i, "instance round trip must preserve every field");
    expect_err(store.create_instance(&i).await, "duplicate instance", |e| {
        matches!(e, Error::AlreadyExists { kind: Kind::Instance, .. })
    })?;
    let cell = CellId::new_v4();
    let launched = Timestamp::now();
    let patch = InstancePatch {
        vm_state: Some(VmState::Active),
        task_state: Some(None),
        cell: Some(Some(cell)),
        host: Some(Some("compute-1".into())),
        node: Some(Some("node-1".into())),
        launched_at: Some(Some(launched)),
        availability_zone: Some(Some("az1".into())),
        tags: Some(BTreeSet::from(["blue".to_string(), "prod".to_string()])),
        ..InstancePatch::default()
    };
    let updated = store.update_instance(i.uuid, &patch).await?;
    let mut want = i.clone();
    want.apply(&patch, updated.updated_at);
    check!(updated == want, "update must apply exactly the patch: got {updated:?}, want {want:?}");
    check!(updated.updated_at >= i.updated_at, "updated_at must not go backwards");
    check!(updated.created_at == i.created_at, "created_at is immutable");
    check!(store.get_instance(i.uuid).await? == updated, "read after update");
    let fault = Fault { code: 500, message: "No valid host".into(), details: "x".into(), created_at: Timestamp::now() };
    let cleared = store
        .update_instance(
            i.uuid,
            &InstancePatch {
                vm_state: Some(VmState::Error),
                host: Some(None),
                node: Some(None),
                fault: Some(Some(fault.clone())),
                ..InstancePatch::default()
            },
        )
        .await?;
    check!(cleared.host.is_none() && cleared.node.is_none(), "Some(None) must clear host and node");
    check!(cleared.fault == Some(fault), "fault must round trip");
    check!(cleared.cell == Some(cell), "fields not in the patch are kept");
    store.delete_instance(i.uuid).await?;
    expect_err(store.get_instance(i.uuid).await, "read deleted", |e| {
        matches!(e, Error::NotFound { kind: Kind::Instance, .. })
    })?;
    expect_err(store.delete_instance(i.uuid).await, "delete twice", |e| {
        matches!(e, Error::NotFound { kind: Kind::Instance, .. })
    })?;
    expect_err(store.update_instance(i.uuid, &InstancePatch::default()).await, "update deleted", |e| {
        matches!(e, Error::NotFound { kind: Kind::Instance, .. })
    })?;
    let page = store
        .list_instances(&ListQuery {
            filters: InstanceFilters { project_id: Some(project.clone()), ..Default::default() },
            ..Default::default()
        })
        .await?;
    check!(page.instances.is_empty(), "a deleted instance must not be listed");
    let mut bad = new_instance(&project, "bad", Timestamp::now());
    bad.project_id.clear();
    expect_err(store.create_instance(&bad).await, "instance without project", |e| {
        matches!(e, Error::InvalidInput { .. })
    })?;
    Ok(())
}

async fn instances_soft_delete_and_changes_since(store: Arc<dyn Store>) -> CaseResult {
    let project = unique("p");
    let old = Timestamp::now().minus(std::time::Duration::from_secs(3600));
    let a = new_instance(&project, "a", old);
    let b = new_instance(&project, "b", old.plus(std::time::Duration::from_micros(1)));
    store.create_instance(&a).await?;
    store.create_instance(&b).await?;
    let cutoff = Timestamp::now();
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    store
        .update_instance(
            a.uuid,
            &InstancePatch { deleted: Some(true), vm_state: Some(VmState::Deleted), ..Default::default() },
        )
        .await?;
    let by = |f: InstanceFilters| InstanceFilters { project_id: Some(project.clone()), ..f };
    let live = list_all(&*store, &by(InstanceFilters::default()), 10).await?;
    check!(uuids(&live) == vec![b.uuid], "default listing hides soft-deleted: {:?}", uuids(&live));
    let deleted = list_all(&*store, &by(InstanceFilters { deleted: Some(true), ..Default::default() }), 10).await?;
    check!(uuids(&deleted) == vec![a.uuid], "deleted=true lists only soft-deleted: {:?}", uuids(&deleted));
    let changed =
        list_all(&*store, &by(InstanceFilters { changes_since: Some(cutoff), ..Default::default() }), 10).await?;
    check!(
        uuids(&changed) == vec![a.uuid],
        "changes_since lists what changed since, deleted included: {:?}",
        uuids(&changed)
    );
    let everything =
        list_all(&*store, &by(InstanceFilters { changes_since: Some(old), ..Default::default() }), 10).await?;
    check!(uuids(&everything) == vec![b.uuid, a.uuid], "changes_since(old) lists both: {:?}", uuids(&everything));
    check!(store.get_instance(a.uuid).await?.deleted, "a soft-deleted instance can still be read");
    store.update_instance(a.uuid, &InstancePatch { deleted: Some(false), ..Default::default() }).await?;
    let live = list_all(&*store, &by(InstanceFilters::default()), 1).await?;
    check!(uuids(&live) == vec![b.uuid, a.uuid], "a restored instance is listed again");
    Ok(())
}

async fn instances_filters(store: Arc<dyn Store>) -> CaseResult {
    let project = unique("p");
    let token = unique("flt").replace('-', "");
    let t0 = Timestamp::now().minus(std::time::Duration::from_secs(60));
    let (c1, c2) = (CellId::new_v4(), CellId::new_v4());
    let mk = |name: &str, user: &str, vm: VmState, host: Option<&str>, cell: Option<CellId>, tags: &[&str], dt: u64| {
        let mut i = new_instance(&project, &format!("{token}-{name}"), t0.plus(std::time::Duration::from_micros(dt)));
        i.user_id = user.into();
        i.vm_state = vm;
        i.host = host.map(String::from);
        i.cell = cell;
        i.tags = tags.iter().map(|s| s.to_string()).collect();
        i
    };
    let all = vec![
        mk("web-1", "u1", VmState::Active, Some("h1"), Some(c1), &["a", "b"], 5),
        mk("web-2", "u2", VmState::Error, Some("h2"), Some(c2), &["b"], 5),
        mk("db-1", "u1", VmState::Active, Some("h2"), Some(c1), &[], 3),
        mk("db-2", "u2", VmState::Building, None, None, &["c"], 1),
    ];
    for i in &all {
        store.create_instance(i).await?;
    }
    let mut ordered = all.clone();
    ordered.sort_by_key(|i| i.sort_key());
    let queries: Vec<(&str, InstanceFilters)> = vec![
        ("project", InstanceFilters::default()),
        ("vm_state active", InstanceFilters { vm_states: vec![VmState::Active], ..Default::default() }),
        (
            "vm_state active|error",
            InstanceFilters { vm_states: vec![VmState::Active, VmState::Error], ..Default::default() },
        ),
        ("host h2", InstanceFilters { host: Some("h2".into()), ..Default::default() }),
        ("cell c1", InstanceFilters { cell: Some(c1), ..Default::default() }),
        ("name web", InstanceFilters { name: Some("web".into()), ..Default::default() }),
        ("name -2", InstanceFilters { name: Some("-2".into()), ..Default::default() }),
        ("name with %", InstanceFilters { name: Some("%".into()), ..Default::default() }),
        ("user u2", InstanceFilters { user_id: Some("u2".into()), ..Default::default() }),
        ("tags b", InstanceFilters { tags: vec!["b".into()], ..Default::default() }),
        ("tags a,b", InstanceFilters { tags: vec!["a".into(), "b".into()], ..Default::default() }),
        ("tags-any a,c", InstanceFilters { tags_any: vec!["a".into(), "c".into()], ..Default::default() }),
        (
            "active on h2",
            InstanceFilters { vm_states: vec![VmState::Active], host: Some("h2".into()), ..Default::default() },
        ),
    ];
    let expected_counts = [4, 2, 3, 2, 2, 2, 2, 0, 2, 2, 1, 2, 1];
    for ((what, f), want_n) in queries.into_iter().zip(expected_counts) {
        let scoped = InstanceFilters { project_id: Some(project.clone()), ..f };
        let want: Vec<InstanceId> = ordered.iter().filter(|i| scoped.matches(i)).map(|i| i.uuid).collect();
        check!(want.len() == want_n, "test bug: filter {what} should match {want_n}");
        for limit in [1, 3, 1000] {
            let got = list_all(&*store, &scoped, limit).await?;
            check!(uuids(&got) == want, "filter {what} (limit {limit}): got {:?}, want {want:?}", uuids(&got));
        }
    }
    // Without a project: the name filter still finds exactly ours, in order.
    let global = list_all(&*store, &InstanceFilters { name: Some(token.clone()), ..Default::default() }, 2).await?;
    check!(uuids(&global) == uuids(&ordered), "global name filter: {:?}", uuids(&global));
    let none =
        list_all(&*store, &InstanceFilters { project_id: Some(unique("nobody")), ..Default::default() }, 5).await?;
    check!(none.is_empty(), "an unknown project lists nothing");
    Ok(())
}

async fn instances_limit_cap_zero_and_next_marker(store: Arc<dyn Store>) -> CaseResult {
    let project = unique("p");
    let t0 = Timestamp::now().minus(std::time::Duration::from_secs(600));
    let n = MAX_LIMIT as usize + 3;
    let instances: Vec<Instance> = (0..n)
        .map(|k| new_instance(&project, "cap", t0.plus(std::time::Duration::from_micros((k / 7) as u64))))
        .collect();
    for chunk in instances.chunks(32) {
        futures::future::try_join_all(chunk.iter().map(|i| store.create_instance(i))).await?;
    }
    let filters = InstanceFilters { project_id: Some(project.clone()), ..Default::default() };
    let q = |limit: Option<u32>, marker: Option<InstanceId>| ListQuery { filters: filters.clone(), limit, marker };
    let big = store.list_instances(&q(Some(5000), None)).await?;
    check!(big.instances.len() == MAX_LIMIT as usize, "limit above the cap is clamped: got {}", big.instances.len());
    check!(big.next_marker == big.instances.last().map(|i| i.uuid), "next_marker is the last uuid when more remain");
    let default = store.list_instances(&q(None, None)).await?;
    check!(uuids(&default.instances) == uuids(&big.instances), "no limit means the cap");
    let rest = store.list_instances(&q(Some(5000), big.next_marker)).await?;
    check!(
        rest.instances.len() == 3 && rest.next_marker.is_none(),
        "last page: {} and {:?}",
        rest.instances.len(),
        rest.next_marker
    );
    let zero = store.list_instances(&q(Some(0), None)).await?;
    check!(zero.instances.is_empty() && zero.next_marker.is_none(), "limit 0 gives an empty page");
    let mut sorted = instances.clone();
    sorted.sort_by_key(|i| i.sort_key());
    let all: Vec<InstanceId> = big.instances.iter().chain(rest.instances.iter()).map(|i| i.uuid).collect();
    check!(all == uuids(&sorted), "pages must follow created_at desc, uuid desc");
    // A page that ends exactly at the end has no next marker (Nova would send one).
    let exact = store.list_instances(&q(Some(3), Some(big.instances[MAX_LIMIT as usize - 1].uuid))).await?;
    check!(exact.instances.len() == 3 && exact.next_marker.is_none(), "exact last page must not offer a next marker");
    Ok(())
}

async fn instances_unknown_marker_is_an_error(store: Arc<dyn Store>) -> CaseResult {
    let project = unique("p");
    store.create_instance(&new_instance(&project, "x", Timestamp::now())).await?;
    for filters in [InstanceFilters::default(), InstanceFilters { project_id: Some(project), ..Default::default() }] {
        expect_err(
            store.list_instances(&ListQuery { filters, limit: Some(10), marker: Some(InstanceId::new_v4()) }).await,
            "unknown marker",
            |e| matches!(e, Error::NotFound { kind: Kind::Marker, .. }),
        )?;
    }
    Ok(())
}

async fn instances_paging_under_concurrent_inserts(store: Arc<dyn Store>) -> CaseResult {
    use rand::{Rng, SeedableRng};
    let project = unique("p");
    let token = unique("page");
    let t0 = Timestamp::now().minus(std::time::Duration::from_secs(120));
    // Few distinct created_at values: many ties, which only the uuid breaks.
    let at = move |k: u64| t0.plus(std::time::Duration::from_micros(k));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let initial: Vec<Instance> = (0..240).map(|_| new_instance(&project, &token, at(rng.random_range(0..8)))).collect();
    for chunk in initial.chunks(24) {
        futures::future::try_join_all(chunk.iter().map(|i| store.create_instance(i))).await?;
    }
    let existing: BTreeSet<InstanceId> = initial.iter().map(|i| i.uuid).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut inserters = Vec::new();
    for w in 0..3u64 {
        let store = store.clone();
        let stop = stop.clone();
        let project = project.clone();
        let token = token.clone();
        inserters.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + w);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 150 {
                let i = new_instance(&project, &token, at(rng.random_range(0..10)));
                store.create_instance(&i).await?;
                n += 1;
                tokio::task::yield_now().await;
            }
            Ok::<_, Error>(())
        }));
    }
    let filters_list = [
        InstanceFilters { project_id: Some(project.clone()), ..Default::default() },
        InstanceFilters { name: Some(token.clone()), ..Default::default() },
    ];
    let mut result = Ok(());
    'outer: for filters in filters_list {
        let mut seen: Vec<Instance> = Vec::new();
        let mut marker = None;
        loop {
            let limit = rng.random_range(1..=37);
            let page =
                match store.list_instances(&ListQuery { filters: filters.clone(), limit: Some(limit), marker }).await {
                    Ok(p) => p,
                    Err(e) => {
                        result = Err(Failure(format!("listing failed: {e}")));
                        break 'outer;
                    }
                };
            if page.instances.len() > limit as usize {
                result = Err(Failure(format!("page of {} exceeds limit {limit}", page.instances.len())));
                break 'outer;
            }
            seen.extend(page.instances);
            match page.next_marker {
                Some(m) => marker = Some(m),
                None => break,
            }
        }
        for w in seen.windows(2) {
            if w[0].sort_key() >= w[1].sort_key() {
                result = Err(Failure(format!(
                    "listing out of order or repeated ({filters:?}): {:?} then {:?}",
                    w[0].sort_key(),
                    w[1].sort_key()
                )));
                break 'outer;
            }
        }
        let mut count: BTreeMap<InstanceId, usize> = BTreeMap::new();
        for i in &seen {
            *count.entry(i.uuid).or_insert(0) += 1;
        }
        if let Some(missing) = existing.iter().find(|u| count.get(u) != Some(&1)) {
            result = Err(Failure(format!(
                "instance {missing} existed before paging but was seen {} times ({filters:?})",
                count.get(missing).copied().unwrap_or(0)
            )));
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in inserters {
        t.await.map_err(|e| Failure(format!("inserter panicked: {e}")))??;
    }
    result
}

// ---------------------------------------------------------------------------------------
// differential testing against the reference store

/// Differential checking: the same sequence of operations applied to a store under test and
/// to a fresh [`MemoryStore`](crate::store::memory::MemoryStore) (the reference) must give
/// the same outcome at every step and the same trees at the end. Property tests generate
/// the sequences (see `tests/model_properties.rs`); any backend can run them.
pub mod differential {
    use super::*;
    use crate::store::memory::MemoryStore;

    /// Providers per tree in the differential fixture: root, numa0, numa1, sriov.
    pub const PROVIDERS: usize = 4;
    /// Trees in the differential fixture.
    pub const TREES: usize = 2;

    /// One operation, with small indexes instead of ids so generators stay simple.
    #[derive(Clone, Debug)]
    pub enum Op {
        /// Claim by consumer `consumer` of `parts` = (tree, provider index, class, amount),
        /// optionally as a member of the fixture's group with a per-host limit.
        Claim {
            /// Consumer index.
            consumer: u8,
            /// (tree, provider, class, amount) parts.
            parts: Vec<(u8, u8, ResourceClass, i64)>,
            /// Group limit, if the claim names the group.
            group_max: Option<Option<u32>>,
        },
        /// Release a consumer.
        Release {
            /// Consumer index.
            consumer: u8,
        },
        /// Replace one class's inventory total on a provider (other fields default),
        /// with the current generation or a stale one.
        SetTotal {
            /// Tree index.
            tree: u8,
            /// Provider index.
            provider: u8,
            /// Class.
            class: ResourceClass,
            /// New total; 0 removes the class.
            total: i64,
            /// Use a stale generation.
            stale: bool,
        },
    }

    struct Side {
        store: Arc<dyn Store>,
    }

    /// (parent index, inventories) of one fixture provider.
    type ProviderShape = (Option<usize>, Vec<(ResourceClass, Inventory)>);

    /// Outcome of one op, comparable across stores (ids are identical on both sides).
    fn outcome<T: std::fmt::Debug>(r: &Result<T, Error>) -> String {
        match r {
            Ok(_) => "ok".into(),
            Err(Error::Capacity { provider, class, requested, used, capacity }) => {
                format!("capacity {provider} {class} {requested} {used} {capacity}")
            }
            Err(Error::Conflict(_)) => "conflict".into(),
            Err(Error::NotFound { kind, .. }) => format!("not found {kind}"),
            Err(Error::InvalidInput { .. }) => "invalid".into(),
            Err(e) => format!("other {e}"),
        }
    }

    fn conflict_kind(e: &Error) -> &'static str {
        match e {
            Error::Conflict(Conflict::Generation { .. }) => "generation",
            Error::Conflict(Conflict::ConsumerMismatch { .. }) => "consumer-mismatch",
            Error::Conflict(Conflict::GroupLimit { .. }) => "group-limit",
            Error::Conflict(Conflict::InventoryInUse { .. }) => "inventory-in-use",
            _ => "",
        }
    }

    /// Applies `ops` to `store` and to a fresh memory store and compares them step by step.
    pub async fn run(store: Arc<dyn Store>, ops: &[Op]) -> CaseResult {
        let reference: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let sides = [Side { store }, Side { store: reference }];
        // Same ids and names on both sides; fresh ones per run so a shared store is fine.
        let trees: Vec<[ProviderId; PROVIDERS]> = (0..TREES)
            .map(|_| [ProviderId::new_v4(), ProviderId::new_v4(), ProviderId::new_v4(), ProviderId::new_v4()])
            .collect();
        let names: Vec<[String; PROVIDERS]> =
            (0..TREES).map(|_| [unique("d-root"), unique("d-numa0"), unique("d-numa1"), unique("d-pf")]).collect();
        let consumers: Vec<ConsumerId> = (0..16).map(|_| ConsumerId::new_v4()).collect();
        let group = GroupId::new_v4();
        for side in &sides {
            for (t, ids) in trees.iter().enumerate() {
                let specs: [ProviderShape; PROVIDERS] = [
                    (
                        None,
                        vec![
                            (ResourceClass::Vcpu, Inventory::with_total(8)),
                            (ResourceClass::MemoryMb, Inventory { step_size: 256, ..Inventory::with_total(2048) }),
                        ],
                    ),
                    (Some(0), vec![(ResourceClass::Pcpu, Inventory { max_unit: 2, ..Inventory::with_total(4) })]),
                    (Some(0), vec![(ResourceClass::Pcpu, Inventory::with_total(4))]),
                    (Some(1), vec![(ResourceClass::SriovNetVf, Inventory::with_total(2))]),
                ];
                for (p, (parent, invs)) in specs.into_iter().enumerate() {
                    side.store
                        .create_provider(&NewProvider {
                            id: ids[p],
                            name: names[t][p].clone(),
                            parent: parent.map(|i| ids[i]),
                            cell: None,
                            inventories: invs.into_iter().collect(),
                            traits: BTreeSet::new(),
                            aggregates: BTreeSet::new(),
                        })
                        .await?;
                }
            }
        }
        for (step, op) in ops.iter().enumerate() {
            let mut results = Vec::new();
            for side in &sides {
                let s = &*side.store;
                let r: Result<String, Error> = match op {
                    Op::Claim { consumer, parts, group_max } => {
                        let mut allocations = AllocationMap::new();
                        for (t, p, c, a) in parts {
                            let id = trees[*t as usize % TREES][*p as usize % PROVIDERS];
                            allocations.entry(id).or_default().insert(c.clone(), *a);
                        }
                        let req = ClaimRequest {
                            consumer: consumers[*consumer as usize % consumers.len()],
                            project_id: "p".into(),
                            user_id: "u".into(),
                            allocations,
                            group: group_max.map(|max_per_host| GroupClaim { group, max_per_host }),
                        };
                        claim_retrying(s, &req).await.map(|c| format!("claimed replayed={}", c.replayed))
                    }
                    Op::Release { consumer } => release_retrying(s, consumers[*consumer as usize % consumers.len()])
                        .await
                        .map(|r| format!("released {}", r.roots.len())),
                    Op::SetTotal { tree, provider, class, total, stale } => {
                        let id = trees[*tree as usize % TREES][*provider as usize % PROVIDERS];
                        let t = s.provider_tree(id).await?;
                        let mut invs = t.node(id).map(|n| n.inventories.clone()).unwrap_or_default();
                        if *total <= 0 {
                            invs.remove(class);
                        } else {
                            invs.insert(class.clone(), Inventory::with_total(*total));
                        }
                        let g = if *stale { t.generation.wrapping_sub(1) } else { t.generation };
                        s.set_inventories(id, g, &invs).await.map(|w| format!("over {:?}", w.over_capacity))
                    }
                };
                results.push(match &r {
                    Ok(v) => v.clone(),
                    Err(e) => format!("{} {}", outcome(&r), conflict_kind(e)),
                });
            }
            check!(
                results[0] == results[1],
                "step {step} {op:?}: store says {:?}, reference says {:?}",
                results[0],
                results[1]
            );
        }
        for ids in &trees {
            let a = sides[0].store.provider_tree(ids[0]).await?;
            let b = sides[1].store.provider_tree(ids[0]).await?;
            check!(usages(&a) == usages(&b), "final usages differ: {:?} vs reference {:?}", usages(&a), usages(&b));
            check!(a.groups == b.groups, "final group counts differ: {:?} vs {:?}", a.groups, b.groups);
            let inv = |t: &ProviderTree| t.providers.iter().map(|p| (p.id, p.inventories.clone())).collect::<Vec<_>>();
            check!(inv(&a) == inv(&b), "final inventories differ");
            // Usage above capacity is legitimate after an inventory shrink (contract line 9)
            // and was already compared with the reference; any other violation is not.
            let report = crate::store::audit::audit_trees(&*sides[0].store, Some(&[ids[0]])).await?;
            let real: Vec<String> = report
                .violations
                .iter()
                .filter(|v| !matches!(v, crate::store::audit::Violation::OverCapacity { .. }))
                .map(|v| v.to_string())
                .collect();
            check!(real.is_empty(), "audit found violations: {}", real.join("; "));
        }
        Ok(())
    }
}

// ---- instances: system metadata ------------------------------------------------------

async fn instances_system_metadata_round_trip(store: Arc<dyn Store>) -> CaseResult {
    let mut inst =
        Instance::new_building(InstanceId::new_v4(), &unique("sysmeta"), &unique("p"), "u", FlavorId::new("1")?);
    inst.system_metadata.insert("image_ref".into(), "70a599e0-31e7-49b7-b260-868f441e862b".into());
    inst.system_metadata.insert("description".into(), "with \"quotes\", commas and = signs".into());
    store.create_instance(&inst).await?;
    let got = store.get_instance(inst.uuid).await?;
    check!(got.system_metadata == inst.system_metadata, "system_metadata read back {:?}", got.system_metadata);
    let patched = store
        .update_instance(inst.uuid, &InstancePatch { vm_state: Some(VmState::Active), ..Default::default() })
        .await?;
    check!(patched.system_metadata == inst.system_metadata, "a patch keeps system_metadata");
    let page = store
        .list_instances(&ListQuery {
            filters: InstanceFilters { project_id: Some(inst.project_id.clone()), ..Default::default() },
            limit: Some(10),
            marker: None,
        })
        .await?;
    check!(
        page.instances.iter().any(|i| i.uuid == inst.uuid && i.system_metadata == inst.system_metadata),
        "the listing shows system_metadata"
    );
    store.delete_instance(inst.uuid).await?;
    Ok(())
}

// ---- build leases ----------------------------------------------------------------------

fn leases_of(store: &dyn Store) -> Result<&dyn crate::store::leases::Leases, Failure> {
    store.leases().ok_or_else(|| Failure(format!("backend {} has no build leases", store.backend())))
}

async fn leases_compare_and_set(store: Arc<dyn Store>) -> CaseResult {
    use crate::store::leases::BuildLease;
    let leases = leases_of(store.as_ref())?;
    let id = InstanceId::new_v4();
    let now = Timestamp::now();
    let lease = BuildLease { instance: id, owner: "replica-a".into(), expires_at: now, version: 7, attempts: 0 };
    check!(leases.get_lease(id).await?.is_none(), "no lease before create");
    leases.create_lease(&lease).await?;
    let got = leases.get_lease(id).await?;
    check!(got.as_ref().map(|l| l.version) == Some(1), "create writes version 1, got {got:?}");
    check!(got.as_ref().map(|l| l.owner.as_str()) == Some("replica-a"), "owner kept");
    expect_err(leases.create_lease(&lease).await, "second create", |e| {
        matches!(e, Error::AlreadyExists { kind: Kind::BuildLease, .. })
    })?;
    let later = now.plus(std::time::Duration::from_secs(30));
    let renewed = leases.replace_lease(id, 1, "replica-a", later, 0).await?;
    check!(renewed.as_ref().map(|l| l.version) == Some(2), "replace at the right version applies: {renewed:?}");
    check!(leases.replace_lease(id, 1, "replica-b", later, 1).await?.is_none(), "a stale version does not apply");
    let taken = leases.replace_lease(id, 2, "replica-b", later, 1).await?;
    check!(taken.as_ref().map(|l| (l.owner.as_str(), l.attempts)) == Some(("replica-b", 1)), "takeover: {taken:?}");
    let got = leases.get_lease(id).await?;
    check!(got == taken, "read back the takeover: {got:?}");
    check!(got.as_ref().is_some_and(|l| l.expires_at == later), "expiry kept to the microsecond");
    check!(leases.list_leases().await?.iter().any(|l| l.instance == id && l.version == 3), "listed at version 3");
    check!(!leases.delete_lease(id, 2).await?, "delete at a stale version does nothing");
    check!(leases.delete_lease(id, 3).await?, "delete at the right version");
    check!(leases.get_lease(id).await?.is_none(), "gone after delete");
    check!(!leases.delete_lease(id, 3).await?, "deleting twice is false");
    check!(leases.replace_lease(id, 3, "replica-c", later, 0).await?.is_none(), "no replace of a deleted lease");
    let bad = BuildLease { owner: String::new(), ..lease.clone() };
    expect_err(leases.create_lease(&bad).await, "empty owner", |e| matches!(e, Error::InvalidInput { .. }))?;
    Ok(())
}

async fn leases_one_winner_under_concurrency(store: Arc<dyn Store>) -> CaseResult {
    use crate::store::leases::BuildLease;
    leases_of(store.as_ref())?;
    let id = InstanceId::new_v4();
    let expired = Timestamp::now().minus(std::time::Duration::from_secs(60));
    leases_of(store.as_ref())?
        .create_lease(&BuildLease { instance: id, owner: "dead".into(), expires_at: expired, version: 1, attempts: 0 })
        .await?;
    let reapers = (0..8).map(|n| {
        let store = store.clone();
        async move {
            let leases = store.leases().ok_or_else(|| Failure("no leases".into()))?;
            let owner = format!("reaper-{n}");
            Ok::<_, Failure>(leases.replace_lease(id, 1, &owner, Timestamp::now(), 1).await?.is_some())
        }
    });
    let results = futures::future::join_all(reapers).await;
    let mut winners = 0;
    for r in results {
        if r? {
            winners += 1;
        }
    }
    check!(winners == 1, "{winners} reapers took one lease over");
    let leases = leases_of(store.as_ref())?;
    check!(leases.delete_lease(id, 2).await?, "the winner's version is 2");
    Ok(())
}
