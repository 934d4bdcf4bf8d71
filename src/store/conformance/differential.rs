//! Differential checking: the same sequence of operations applied to a store under test and
//! to a fresh [`MemoryStore`] (the reference) must give
//! the same outcome at every step and the same trees at the end. Property tests generate
//! the sequences (see `tests/model_properties.rs`); any backend can run them.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::check;
use super::fixtures::{unique, usages};
use super::harness::{CaseResult, claim_retrying, release_retrying};
use crate::error::{Conflict, Error};
use crate::model::*;
use crate::store::memory::MemoryStore;
use crate::store::prelude::*;

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
        let report =
            crate::store::audit::audit(&*sides[0].store, &crate::store::audit::AuditScope::trees(&[ids[0]])).await?;
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
