//! [`PlacementStore`](crate::store::placement::PlacementStore) cases: Placement's provider and
//! consumer generations, the whole-tree compare-and-set every Placement write goes through,
//! allocation writes that agree with the claims API, concurrent writers that never overcommit,
//! and the custom class / trait registries. They run on every backend whose
//! [`Store::placement`] is `Some` ([`cases`](super::placement_cases)).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::fixtures::*;
use super::harness::*;
use super::{case, check};
use crate::error::{Conflict, Error, Kind};
use crate::model::*;
use crate::store::Store;
use crate::store::placement::{AllocationWrite, ExpectedGeneration, PlacementStore, update_tree};

/// The cases of this group, in the suite's order.
pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("placement::generations_follow_writes", generations_follow_writes),
        case!("placement::replace_tree_is_compare_and_set", replace_tree_is_compare_and_set),
        case!("placement::allocation_writes_agree_with_claims", allocation_writes_agree_with_claims),
        case!("placement::concurrent_writers_never_overcommit", concurrent_writers_never_overcommit),
        case!("placement::registries", registries),
    ]
}

fn placement_of(store: &dyn Store) -> Result<&dyn PlacementStore, Failure> {
    store.placement().ok_or_else(|| Failure(format!("backend {} keeps no Placement state", store.backend())))
}

fn write(consumer: ConsumerId, expected: ExpectedGeneration, allocs: &[(ProviderId, &str, i64)]) -> AllocationWrite {
    AllocationWrite {
        consumer,
        project_id: "p-placement".into(),
        user_id: "u-placement".into(),
        consumer_type: Some("INSTANCE".into()),
        expected,
        allocations: claim_req(consumer, allocs).allocations,
    }
}

async fn generations_follow_writes(store: Arc<dyn Store>) -> CaseResult {
    let p = placement_of(store.as_ref())?;
    let f = make_tree(store.as_ref(), None, 8, 4096).await?;
    let t = p.placement_tree(f.sriov).await?;
    check!(t.tree.root == f.root, "placement_tree of a child returns its tree");
    check!(t.generation(f.root) == 0 && t.generation(f.sriov) == 0, "new providers are at generation 0");
    // An inventory write through the scheduler's API moves that provider's generation only.
    let tree = store.provider_tree(f.root).await?;
    let invs = tree.node(f.numa[1]).map(|n| n.inventories.clone()).unwrap_or_default();
    store.set_inventories(f.numa[1], tree.generation, &invs).await?;
    let t = p.placement_tree(f.root).await?;
    check!(t.generation(f.numa[1]) == 1, "inventory write bumps its provider, got {}", t.generation(f.numa[1]));
    check!(t.generation(f.root) == 0, "inventory write leaves other providers");
    // A claim names providers (bumped) and creates its consumer at generation 1.
    let c = ConsumerId::new_v4();
    claim_retrying(store.as_ref(), &claim_req(c, &[(f.root, "VCPU", 2), (f.sriov, "SRIOV_NET_VF", 1)])).await?;
    let t = p.placement_tree(f.root).await?;
    check!(t.generation(f.root) == 1 && t.generation(f.sriov) == 1, "claim bumps the providers it names");
    check!(t.generation(f.numa[0]) == 0, "claim leaves the others");
    let rec = t.consumers.get(&c).ok_or_else(|| Failure("claimed consumer has no record".into()))?;
    check!(rec.generation == 1 && rec.consumer_type.is_none(), "claimed consumer at generation 1, no type");
    check!(t.tree.node(f.root).map(|n| n.used(&ResourceClass::Vcpu)) == Some(2), "usage visible");
    // An allocation write moves the consumer to 2 and keeps generations of unnamed providers.
    update_tree(p, f.root, |t| t.set_allocations(&[write(c, ExpectedGeneration::Is(1), &[(f.root, "VCPU", 3)])]))
        .await?;
    let t = p.placement_tree(f.root).await?;
    check!(t.consumers.get(&c).map(|r| r.generation) == Some(2), "consumer generation 2 after a write");
    check!(t.consumers[&c].consumer_type.as_deref() == Some("INSTANCE"), "consumer type kept");
    check!(t.generation(f.root) == 2, "named provider bumped again");
    // Release removes the consumer; a new claim starts over at 1.
    release_retrying(store.as_ref(), c).await?;
    let t = p.placement_tree(f.root).await?;
    check!(!t.consumers.contains_key(&c), "released consumer gone");
    claim_retrying(store.as_ref(), &claim_req(c, &[(f.root, "VCPU", 1)])).await?;
    let t = p.placement_tree(f.root).await?;
    check!(
        t.consumers.get(&c).map(|r| (r.generation, r.consumer_type.clone())) == Some((1, None)),
        "a consumer claimed again starts at generation 1 without its old type"
    );
    release_retrying(store.as_ref(), c).await?;
    audit_clean(store.as_ref(), &[f.root]).await
}

async fn replace_tree_is_compare_and_set(store: Arc<dyn Store>) -> CaseResult {
    let p = placement_of(store.as_ref())?;
    let f = make_tree(store.as_ref(), None, 8, 4096).await?;
    let other = make_tree(store.as_ref(), None, 8, 4096).await?;
    let old = p.placement_tree(f.root).await?;
    let mut new = old.clone();
    let g = new.generation(f.numa[0]);
    new.set_traits(f.numa[0], g, &[Trait::new("CUSTOM_CONFORMANCE")?].into())?;
    let renamed = unique("renamed");
    let old_name = old.tree.node(f.sriov).map(|n| n.name.clone()).unwrap_or_default();
    new.rename(f.sriov, &renamed)?;
    new.reparent_within(f.sriov, f.numa[1])?;
    let generation = p.replace_tree(&old, &new).await?;
    check!(generation == old.tree.generation + 1, "replace moves the tree generation by one");
    let t = p.placement_tree(f.root).await?;
    check!(t.generation(f.numa[0]) == 1, "provider generation written");
    check!(
        t.tree.node(f.numa[0]).is_some_and(|n| n.traits.iter().any(|t| t.as_str() == "CUSTOM_CONFORMANCE")),
        "traits written"
    );
    let node = t.tree.node(f.sriov).ok_or_else(|| Failure("sriov provider lost".into()))?;
    check!(node.name == renamed && node.parent == Some(f.numa[1]), "rename and re-parent written");
    let order: Vec<ProviderId> = t.tree.providers.iter().map(|n| n.id).collect();
    let pos = |x: ProviderId| order.iter().position(|y| *y == x);
    check!(pos(f.numa[1]) < pos(f.sriov), "parents still come before children");
    // The same old tree again: the generation moved, nothing is written.
    let mut stale = old.clone();
    stale.rename(f.numa[0], &unique("stale"))?;
    expect_err(p.replace_tree(&old, &stale).await, "stale replace", |e| {
        matches!(e, Error::Conflict(Conflict::Generation { .. }))
    })?;
    // A name another tree holds is refused; the old name is free again.
    let taken = store.provider_tree(other.root).await?.providers[0].name.clone();
    let cur = p.placement_tree(f.root).await?;
    let mut dup = cur.clone();
    dup.rename(f.numa[0], &taken)?;
    expect_err(p.replace_tree(&cur, &dup).await, "duplicate name", |e| {
        matches!(e, Error::Conflict(Conflict::DuplicateName { .. }))
    })?;
    check!(p.placement_tree(f.root).await?.tree.generation == cur.tree.generation, "refused replace wrote nothing");
    let reuse = ProviderId::new_v4();
    store
        .create_provider(&NewProvider {
            id: reuse,
            name: old_name,
            parent: None,
            cell: None,
            inventories: BTreeMap::new(),
            traits: Default::default(),
            aggregates: Default::default(),
        })
        .await?;
    store.delete_provider(reuse).await?;
    audit_clean(store.as_ref(), &[f.root, other.root]).await
}

async fn allocation_writes_agree_with_claims(store: Arc<dyn Store>) -> CaseResult {
    let p = placement_of(store.as_ref())?;
    let f = make_tree(store.as_ref(), None, 8, 4096).await?;
    let (a, b) = (ConsumerId::new_v4(), ConsumerId::new_v4());
    // Two consumers in one write (POST /allocations), one of them with a new-consumer check.
    update_tree(p, f.root, |t| {
        t.set_allocations(&[
            write(a, ExpectedGeneration::New, &[(f.root, "VCPU", 2), (f.numa[0], "PCPU", 1)]),
            write(b, ExpectedGeneration::Unchecked, &[(f.sriov, "SRIOV_NET_VF", 2)]),
        ])
    })
    .await?;
    let claims = store.allocations(a).await?;
    check!(claims.len() == 1 && claims[0].root == f.root, "claims API finds the written consumer");
    check!(claims[0].allocations.get(&f.numa[0]).and_then(|r| r.get(&ResourceClass::Pcpu)) == Some(&1), "amounts");
    check!(claims[0].project_id == "p-placement", "project kept");
    let mut on_tree: Vec<ConsumerId> = store.tree_allocations(f.sriov).await?.into_iter().map(|x| x.consumer).collect();
    on_tree.sort();
    let mut want = vec![a, b];
    want.sort();
    check!(on_tree == want, "tree allocations list both consumers");
    // A write whose consumer check fails changes nothing.
    let before = p.placement_tree(f.root).await?;
    let r = update_tree(p, f.root, |t| {
        t.set_allocations(&[
            write(a, ExpectedGeneration::Is(1), &[(f.root, "VCPU", 1)]),
            write(b, ExpectedGeneration::New, &[(f.sriov, "SRIOV_NET_VF", 1)]),
        ])
    })
    .await;
    expect_err(r, "stale consumer generation", |e| matches!(e, Error::Conflict(Conflict::ConsumerGeneration { .. })))?;
    let after = p.placement_tree(f.root).await?;
    check!(after == before, "a refused write leaves the tree as it was");
    // Over capacity: refused by the decision, nothing written.
    let c = ConsumerId::new_v4();
    let r = update_tree(p, f.root, |t| {
        t.set_allocations(&[write(c, ExpectedGeneration::New, &[(f.sriov, "SRIOV_NET_VF", 1)])])
    })
    .await;
    expect_err(r, "over capacity", |e| matches!(e, Error::Capacity { .. }))?;
    // Emptying a consumer removes it everywhere; the claims API agrees.
    update_tree(p, f.root, |t| t.set_allocations(&[write(b, ExpectedGeneration::Is(1), &[])])).await?;
    check!(store.allocations(b).await?.is_empty(), "emptied consumer has no allocations");
    let t = p.placement_tree(f.root).await?;
    check!(!t.consumers.contains_key(&b), "emptied consumer has no record");
    check!(t.tree.node(f.sriov).is_some_and(|n| n.used(&ResourceClass::SriovNetVf) == 0), "its usage is gone");
    // The claims API releases what the Placement API wrote.
    let released = release_retrying(store.as_ref(), a).await?;
    check!(released.roots == vec![f.root], "release finds the written consumer");
    check!(p.placement_tree(f.root).await?.consumers.is_empty(), "no consumer left");
    audit_clean(store.as_ref(), &[f.root]).await
}

async fn concurrent_writers_never_overcommit(store: Arc<dyn Store>) -> CaseResult {
    placement_of(store.as_ref())?;
    let f = make_tree(store.as_ref(), None, 6, 4096).await?;
    let workers = 24;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let store = store.clone();
        let root = f.root;
        tasks.push(tokio::spawn(one_writer(store, root)));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.map_err(|e| Failure(format!("task: {e}")))? {
            Ok(true) => won += 1,
            Ok(false) => {}
            Err(Error::Conflict(Conflict::Generation { .. })) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let t = placement_of(store.as_ref())?.placement_tree(f.root).await?;
    let used = t.tree.node(f.root).map(|n| n.used(&ResourceClass::Vcpu)).unwrap_or(-1);
    check!(won <= 6, "{won} writers won 1 VCPU each on a capacity of 6");
    check!(used == won, "usage {used} equals the {won} successful writes");
    check!(t.consumers.len() as i64 == won, "one consumer record per successful write");
    check!(won == 6, "24 writers with retries fill the 6 VCPUs, got {won}");
    audit_clean(store.as_ref(), &[f.root]).await
}

/// One client of [`concurrent_writers_never_overcommit`]: a new consumer asks for 1 VCPU,
/// retrying lost races a few times as an API client does on 409 concurrent_update.
/// `Ok(true)` when it won, `Ok(false)` when the node was full.
async fn one_writer(store: Arc<dyn Store>, root: ProviderId) -> Result<bool, Error> {
    let Some(p) = store.placement() else {
        return Err(Error::invalid("store", "no Placement state"));
    };
    let c = ConsumerId::new_v4();
    let mut last = None;
    for _ in 0..5 {
        match update_tree(p, root, |t| t.set_allocations(&[write(c, ExpectedGeneration::New, &[(root, "VCPU", 1)])]))
            .await
        {
            Ok(_) => return Ok(true),
            Err(Error::Capacity { .. }) => return Ok(false),
            Err(e @ Error::Conflict(Conflict::Generation { .. })) => last = Some(e),
            Err(e) if e.is_retryable() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(Error::not_found(Kind::Consumer, c)))
}

async fn registries(store: Arc<dyn Store>) -> CaseResult {
    let p = placement_of(store.as_ref())?;
    let suffix = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    let class = ResourceClass::parse(&format!("CUSTOM_CONF_{suffix}"))?;
    check!(p.create_resource_class(&class).await?, "new class created");
    check!(!p.create_resource_class(&class).await?, "second create reports it exists");
    check!(p.resource_classes().await?.iter().any(|e| e.name == class.as_str()), "class listed");
    expect_err(p.create_resource_class(&ResourceClass::Vcpu).await, "standard class", |e| {
        matches!(e, Error::InvalidInput { .. })
    })?;
    let t = Trait::new(format!("CUSTOM_CONF_{suffix}"))?;
    check!(p.create_trait(&t).await?, "new trait created");
    check!(!p.create_trait(&t).await?, "second create reports it exists");
    check!(p.custom_traits().await?.iter().any(|e| e.name == t.as_str()), "trait listed");
    // In use: an inventory of the class, a provider with the trait.
    let id = ProviderId::new_v4();
    store
        .create_provider(&NewProvider {
            id,
            name: unique("reg"),
            parent: None,
            cell: None,
            inventories: BTreeMap::from([(class.clone(), Inventory::with_total(1))]),
            traits: [t.clone()].into(),
            aggregates: Default::default(),
        })
        .await?;
    expect_err(p.delete_resource_class(&class).await, "class in use", |e| {
        matches!(e, Error::Conflict(Conflict::InUse { .. }))
    })?;
    expect_err(p.delete_trait(&t).await, "trait in use", |e| matches!(e, Error::Conflict(Conflict::InUse { .. })))?;
    store.delete_provider(id).await?;
    p.delete_resource_class(&class).await?;
    p.delete_trait(&t).await?;
    check!(!p.resource_classes().await?.iter().any(|e| e.name == class.as_str()), "class gone");
    expect_err(p.delete_trait(&t).await, "unknown trait", |e| matches!(e, Error::NotFound { .. }))?;
    Ok(())
}
