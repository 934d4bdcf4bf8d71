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
//! ```ignore
//! for case in unicell::store::conformance::cases() {
//!     let store: Arc<dyn Store> = open_my_backend().await?;
//!     (case.run)(store).await?;
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::error::{Conflict, Error, Kind};
use crate::model::*;
use crate::store::Store;

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
        Case {
            name: $name,
            run: |s| Box::pin($f(s)),
        }
    };
}

/// Every case of the suite, in a stable order.
pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "providers::create_and_read_trees",
            providers_create_and_read_trees
        ),
        case!("claims::fit_and_usage", claims_fit_and_usage),
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

async fn make_tree(
    store: &dyn Store,
    cell: Option<CellId>,
    vcpu: i64,
    mem: i64,
) -> Result<Fixture, Failure> {
    let root = ProviderId::new_v4();
    store
        .create_provider(&NewProvider {
            id: root,
            name: unique("cn"),
            parent: None,
            cell,
            inventories: BTreeMap::from([
                (ResourceClass::Vcpu, Inventory::with_total(vcpu)),
                (
                    ResourceClass::MemoryMb,
                    Inventory {
                        step_size: 256,
                        ..Inventory::with_total(mem)
                    },
                ),
                (
                    ResourceClass::DiskGb,
                    Inventory {
                        reserved: 10,
                        ..Inventory::with_total(110)
                    },
                ),
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
    check!(
        tree.providers.len() == 4,
        "expected 4 providers, got {}",
        tree.providers.len()
    );
    check!(tree.providers[0].id == f.root, "root must come first");
    let pos = |id| tree.providers.iter().position(|p| p.id == id);
    check!(
        pos(f.numa[0]) < pos(f.sriov),
        "parents must come before children"
    );
    check!(tree.cell == Some(cell), "cell lost");
    let from_child = store.provider_tree(f.sriov).await?;
    check!(
        from_child == tree,
        "reading the tree through a child must give the same tree"
    );
    let listed = store.list_provider_trees(Some(cell)).await?;
    check!(
        listed.len() == 1 && listed[0] == tree,
        "list_provider_trees(cell) must return exactly the tree"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// claims

async fn claims_fit_and_usage(store: Arc<dyn Store>) -> CaseResult {
    let f = make_tree(&*store, None, 8, 4096).await?;
    let before = store.provider_tree(f.root).await?;
    let c = ConsumerId::new_v4();
    let req = claim_req(
        c,
        &[
            (f.root, "VCPU", 2),
            (f.root, "MEMORY_MB", 512),
            (f.numa[0], "PCPU", 1),
        ],
    );
    let claim = store.claim(&req).await?;
    check!(
        !claim.replayed && claim.root == f.root,
        "first claim is not a replay: {claim:?}"
    );
    let after = store.provider_tree(f.root).await?;
    check!(
        after.generation != before.generation,
        "a claim must change the tree generation"
    );
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
    check!(
        held.len() == 1 && held[0].allocations == req.allocations,
        "allocations(consumer) = {held:?}"
    );
    Ok(())
}

#[allow(dead_code)]
fn _unused(_: Kind, _: Conflict, _: HashMap<u8, u8>) {}
