//! Inventory cases: optimistic writes with generations, shrinking under allocations and
//! invalid inventories (contract lines 7 to 9).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::fixtures::*;
use super::harness::*;
use super::{case, check};
use crate::error::{Conflict, Error, Kind};
use crate::model::*;
use crate::store::prelude::*;

/// The cases of this group, in the suite's order.
pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("inventory::stale_generation_conflicts", stale_generation_conflicts),
        case!("inventory::shrink_under_allocations", shrink_under_allocations),
        case!("inventory::invalid_inventory_rejected", invalid_inventory_rejected),
    ]
}

async fn stale_generation_conflicts(store: Arc<dyn Store>) -> CaseResult {
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

async fn shrink_under_allocations(store: Arc<dyn Store>) -> CaseResult {
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

async fn invalid_inventory_rejected(store: Arc<dyn Store>) -> CaseResult {
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
