//! Property tests: the memory store (the reference every backend is compared against)
//! agrees with a naive, sequential model written directly from the contract's rules, on
//! random sequences of claims, releases and inventory writes; and the differential checker
//! agrees with itself on the memory store (so a backend failing it is the backend's fault).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use libtest_mimic::{Failed, Trial};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use unicell::Error;
use unicell::error::Conflict;
use unicell::model::*;
use unicell::store::conformance::differential::{self, Op};
use unicell::store::memory::MemoryStore;
use unicell::store::prelude::*;

/// What a consumer holds on one tree: amounts per (provider, class), and group membership.
type Held = (BTreeMap<(ProviderId, ResourceClass), i64>, bool);
/// (parent index, inventories) of one fixture provider.
type Shape = (Option<usize>, Vec<(ResourceClass, Inventory)>);

/// The naive model: plain maps, one operation at a time, rules spelled out.
struct Naive {
    /// provider -> (tree index, inventories)
    inv: BTreeMap<ProviderId, (usize, BTreeMap<ResourceClass, Inventory>)>,
    /// consumer -> tree -> (allocations, group?)
    held: HashMap<ConsumerId, BTreeMap<usize, Held>>,
    group_limit_members: BTreeMap<usize, u32>,
}

impl Naive {
    fn used(&self, p: ProviderId, c: &ResourceClass) -> i64 {
        self.held.values().flat_map(|t| t.values()).map(|(a, _)| a.get(&(p, c.clone())).copied().unwrap_or(0)).sum()
    }

    fn claim(
        &mut self,
        consumer: ConsumerId,
        parts: &[(ProviderId, ResourceClass, i64)],
        group_max: Option<Option<u32>>,
    ) -> String {
        let mut want: BTreeMap<(ProviderId, ResourceClass), i64> = BTreeMap::new();
        for (p, c, a) in parts {
            want.insert((*p, c.clone()), *a); // later parts overwrite, like building the map
        }
        if want.values().any(|a| *a < 1) {
            return "invalid".into();
        }
        let trees: BTreeSet<usize> = want.keys().map(|(p, _)| self.inv[p].0).collect();
        // the tree of the first provider in key order decides; others are "not in tree"
        let first_tree = self.inv[&want.keys().next().map(|(p, _)| *p).unwrap()].0;
        if trees.len() > 1 {
            return "invalid".into();
        }
        if let Some((held, _)) = self.held.get(&consumer).and_then(|t| t.get(&first_tree)) {
            return if *held == want { "claimed replayed=true".into() } else { "conflict consumer-mismatch".into() };
        }
        for ((p, c), a) in &want {
            let Some(inv) = self.inv[p].1.get(c) else { return "not found inventory".into() };
            if *a < inv.min_unit || *a > inv.max_unit || a % inv.step_size != 0 {
                return "invalid".into();
            }
        }
        for ((p, c), a) in &want {
            let cap = self.inv[p].1[c].capacity();
            let used = self.used(*p, c);
            if used + a > cap {
                return format!("capacity {p} {c} {a} {used} {cap}");
            }
        }
        let members = self.group_limit_members.get(&first_tree).copied().unwrap_or(0);
        if let Some(Some(max)) = group_max
            && members >= max
        {
            return "conflict group-limit".into();
        }
        if group_max.is_some() {
            *self.group_limit_members.entry(first_tree).or_insert(0) += 1;
        }
        self.held.entry(consumer).or_default().insert(first_tree, (want, group_max.is_some()));
        "claimed replayed=false".into()
    }

    fn release(&mut self, consumer: ConsumerId) -> String {
        let trees = self.held.remove(&consumer).unwrap_or_default();
        for (t, (_, in_group)) in &trees {
            if *in_group {
                *self.group_limit_members.entry(*t).or_insert(0) -= 1;
            }
        }
        format!("released {}", trees.len())
    }

    fn set_total(&mut self, p: ProviderId, c: &ResourceClass, total: i64, stale: bool) -> String {
        if stale {
            return "conflict generation".into();
        }
        let mut invs = self.inv[&p].1.clone();
        if total <= 0 {
            invs.remove(c);
        } else {
            invs.insert(c.clone(), Inventory::with_total(total));
        }
        let in_use: Vec<ResourceClass> =
            self.inv[&p].1.keys().filter(|k| !invs.contains_key(*k) && self.used(p, k) > 0).cloned().collect();
        if !in_use.is_empty() {
            return "conflict inventory-in-use".into();
        }
        let over: Vec<ResourceClass> =
            invs.iter().filter(|(k, i)| self.used(p, k) > i.capacity()).map(|(k, _)| k.clone()).collect();
        self.inv.get_mut(&p).unwrap().1 = invs;
        format!("over {over:?}")
    }
}

fn describe(r: Result<String, Error>) -> String {
    match r {
        Ok(s) => s,
        Err(Error::Capacity { provider, class, requested, used, capacity }) => {
            format!("capacity {provider} {class} {requested} {used} {capacity}")
        }
        Err(Error::Conflict(Conflict::Generation { .. })) => "conflict generation".into(),
        Err(Error::Conflict(Conflict::ConsumerMismatch { .. })) => "conflict consumer-mismatch".into(),
        Err(Error::Conflict(Conflict::GroupLimit { .. })) => "conflict group-limit".into(),
        Err(Error::Conflict(Conflict::InventoryInUse { .. })) => "conflict inventory-in-use".into(),
        Err(Error::NotFound { kind: unicell::error::Kind::Inventory, .. }) => "not found inventory".into(),
        Err(Error::InvalidInput { .. }) => "invalid".into(),
        Err(e) => format!("other {e}"),
    }
}

async fn memory_matches_naive(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = MemoryStore::new();
    let mut naive = Naive { inv: BTreeMap::new(), held: HashMap::new(), group_limit_members: BTreeMap::new() };
    let mut trees = Vec::new();
    for t in 0..2 {
        let ids: Vec<ProviderId> = (0..4).map(|_| ProviderId::new_v4()).collect();
        let shapes: [Shape; 4] = [
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
        for (p, (parent, invs)) in shapes.into_iter().enumerate() {
            let invs: BTreeMap<_, _> = invs.into_iter().collect();
            store
                .create_provider(&NewProvider {
                    id: ids[p],
                    name: format!("t{t}p{p}"),
                    parent: parent.map(|i| ids[i]),
                    cell: None,
                    inventories: invs.clone(),
                    traits: BTreeSet::new(),
                    aggregates: BTreeSet::new(),
                })
                .await
                .unwrap();
            naive.inv.insert(ids[p], (t, invs));
        }
        trees.push(ids);
    }
    let consumers: Vec<ConsumerId> = (0..10).map(|_| ConsumerId::new_v4()).collect();
    let group = GroupId::new_v4();
    for (step, op) in ops.iter().enumerate() {
        let (got, want) = match op {
            Op::Claim { consumer, parts, group_max } => {
                let parts: Vec<(ProviderId, ResourceClass, i64)> =
                    parts.iter().map(|(t, p, c, a)| (trees[*t as usize % 2][*p as usize % 4], c.clone(), *a)).collect();
                let mut allocations = AllocationMap::new();
                for (p, c, a) in &parts {
                    allocations.entry(*p).or_default().insert(c.clone(), *a);
                }
                let consumer = consumers[*consumer as usize % consumers.len()];
                let req = ClaimRequest {
                    consumer,
                    project_id: "p".into(),
                    user_id: "u".into(),
                    allocations,
                    group: group_max.map(|max_per_host| GroupClaim { group, max_per_host }),
                };
                let got = describe(store.claim(&req).await.map(|c| format!("claimed replayed={}", c.replayed)));
                (got, naive.claim(consumer, &parts, *group_max))
            }
            Op::Release { consumer } => {
                let c = consumers[*consumer as usize % consumers.len()];
                (describe(store.release(c).await.map(|r| format!("released {}", r.roots.len()))), naive.release(c))
            }
            Op::SetTotal { tree, provider, class, total, stale } => {
                let id = trees[*tree as usize % 2][*provider as usize % 4];
                let t = store.provider_tree(id).await.unwrap();
                let mut invs = t.node(id).unwrap().inventories.clone();
                if *total <= 0 {
                    invs.remove(class);
                } else {
                    invs.insert(class.clone(), Inventory::with_total(*total));
                }
                let g = if *stale { t.generation - 1 } else { t.generation };
                let got =
                    describe(store.set_inventories(id, g, &invs).await.map(|w| format!("over {:?}", w.over_capacity)));
                (got, naive.set_total(id, class, *total, *stale))
            }
        };
        prop_assert_eq!(&got, &want, "step {} {:?}", step, op);
    }
    // Final usages agree, and the store's own audit is clean.
    for ids in &trees {
        let tree = store.provider_tree(ids[0]).await.unwrap();
        for node in &tree.providers {
            for class in node.inventories.keys() {
                prop_assert_eq!(node.used(class), naive.used(node.id, class), "usage of {} on {}", class, node.id);
            }
        }
    }
    let report = unicell::store::audit::audit(&store, &Default::default()).await.unwrap();
    let only_shrinks =
        report.violations.iter().all(|v| matches!(v, unicell::store::audit::Violation::OverCapacity { .. }));
    prop_assert!(only_shrinks, "audit: {:?}", report.violations);
    Ok(())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A property over operation sequences, as a trial: the `known` sequences first, then 256
/// random ones of up to `max_ops` operations, shrunk to a minimal one on failure.
fn property(
    name: &'static str,
    known: Vec<Vec<Op>>,
    max_ops: usize,
    check: fn(Vec<Op>) -> Result<(), TestCaseError>,
) -> Trial {
    Trial::test(name, move || {
        for ops in known {
            check(ops.clone()).map_err(|e| Failed::from(format!("known sequence {ops:?}: {e}")))?;
        }
        let config = ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() };
        TestRunner::new(config).run(&support::ops::ops(max_ops), check).map_err(|e| Failed::from(e.to_string()))
    })
}

fn main() {
    support::run(
        vec![
            property(
                "memory_store_matches_the_naive_model",
                // A sequence proptest once shrank a failure to: a non-positive amount
                // overwritten by a valid one for the same provider and class.
                vec![vec![Op::Claim {
                    consumer: 0,
                    parts: vec![(0, 0, ResourceClass::Pcpu, -1), (0, 0, ResourceClass::Pcpu, 1)],
                    group_max: None,
                }]],
                60,
                |ops| rt().block_on(memory_matches_naive(ops)),
            ),
            property("differential_checker_accepts_the_reference", Vec::new(), 40, |ops| {
                let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
                rt().block_on(differential::run(store, &ops)).map_err(|f| TestCaseError::fail(f.0))
            }),
        ],
        Vec::new(),
    );
}
