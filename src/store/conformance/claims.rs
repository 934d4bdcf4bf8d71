//! Claim cases: the fit rule, idempotence, release, all-or-nothing, errors that say why
//! and server groups (contract lines 1 to 6).

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
        case!("claims::fit_and_usage", fit_and_usage),
        case!("claims::replay_is_noop", replay_is_noop),
        case!("claims::different_amounts_conflict", different_amounts_conflict),
        case!("claims::release_is_idempotent", release_is_idempotent),
        case!("claims::multi_provider_all_or_nothing", multi_provider_all_or_nothing),
        case!("claims::spanning_trees_rejected", spanning_trees_rejected),
        case!("claims::capacity_error_names_provider_and_class", capacity_error_names_provider_and_class),
        case!("claims::reserved_and_allocation_ratio", reserved_and_allocation_ratio),
        case!("claims::bad_input_errors", bad_input_errors),
        case!("claims::consumer_on_two_trees", consumer_on_two_trees),
        case!("claims::group_limit", group_limit),
        case!("claims::batch_applies_each_claim_on_its_own", batch_applies_each_claim_on_its_own),
    ]
}

async fn fit_and_usage(store: Arc<dyn Store>) -> CaseResult {
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

async fn replay_is_noop(store: Arc<dyn Store>) -> CaseResult {
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

async fn different_amounts_conflict(store: Arc<dyn Store>) -> CaseResult {
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

async fn release_is_idempotent(store: Arc<dyn Store>) -> CaseResult {
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

async fn multi_provider_all_or_nothing(store: Arc<dyn Store>) -> CaseResult {
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

async fn spanning_trees_rejected(store: Arc<dyn Store>) -> CaseResult {
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

async fn capacity_error_names_provider_and_class(store: Arc<dyn Store>) -> CaseResult {
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

async fn reserved_and_allocation_ratio(store: Arc<dyn Store>) -> CaseResult {
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

async fn bad_input_errors(store: Arc<dyn Store>) -> CaseResult {
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

async fn consumer_on_two_trees(store: Arc<dyn Store>) -> CaseResult {
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

async fn group_limit(store: Arc<dyn Store>) -> CaseResult {
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

/// `claim_batch`: one result per request, in order; an impossible claim fails alone and the
/// others are applied; replaying the batch replays the claims that landed.
async fn batch_applies_each_claim_on_its_own(store: Arc<dyn Store>) -> CaseResult {
    let a = make_tree(&*store, None, 12, 4096).await?;
    let b = make_tree(&*store, None, 12, 4096).await?;
    let batch = vec![
        claim_req(ConsumerId::new_v4(), &[(a.root, "VCPU", 2), (a.numa[0], "PCPU", 1)]),
        claim_req(ConsumerId::new_v4(), &[(a.root, "VCPU", 100)]),
        claim_req(ConsumerId::new_v4(), &[(b.root, "VCPU", 3)]),
        claim_req(ConsumerId::new_v4(), &[(b.root, "VCPU", 1), (b.sriov, "SRIOV_NET_VF", 3)]),
        claim_req(ConsumerId::new_v4(), &[(a.root, "VCPU", 4)]),
    ];
    let results = store.claim_batch(&batch).await?;
    check!(results.len() == batch.len(), "{} results for a batch of {}", results.len(), batch.len());
    let landed: Vec<bool> = results.iter().map(|r| r.is_ok()).collect();
    check!(landed == [true, false, true, false, true], "which claims of the batch landed: {landed:?}");
    check!(
        matches!(&results[1], Err(Error::Capacity { provider, .. }) if *provider == a.root),
        "the impossible VCPU claim must fail with a capacity error on A: {:?}",
        results[1]
    );
    check!(
        matches!(&results[3], Err(Error::Capacity { provider, .. }) if *provider == b.sriov),
        "three VFs on a two-VF function must fail with a capacity error on it: {:?}",
        results[3]
    );
    for (i, r) in results.iter().enumerate() {
        if let Ok(c) = r {
            check!(!c.replayed, "claim {i} of a fresh batch says it was replayed");
            let want = if i == 2 { b.root } else { a.root };
            check!(c.root == want, "claim {i} landed on {} instead of {want}", c.root);
        }
    }
    let ta = store.provider_tree(a.root).await?;
    let tb = store.provider_tree(b.root).await?;
    let used = |t: &ProviderTree, p: ProviderId, c: &str| {
        t.providers.iter().find(|n| n.id == p).map_or(-1, |n| n.used(&rc(c)))
    };
    check!(used(&ta, a.root, "VCPU") == 6, "VCPU used on A: {} (want 2 + 4)", used(&ta, a.root, "VCPU"));
    check!(used(&ta, a.numa[0], "PCPU") == 1, "PCPU used on A's NUMA 0");
    check!(used(&tb, b.root, "VCPU") == 3, "VCPU used on B: {} (want 3)", used(&tb, b.root, "VCPU"));
    check!(used(&tb, b.sriov, "SRIOV_NET_VF") == 0, "the refused claim left VFs used on B");
    // The failed claim of B also took nothing of its VCPU amount (all-or-nothing per claim).
    let again = store.claim_batch(&batch).await?;
    for (i, (r, first)) in again.iter().zip(&results).enumerate() {
        match (r, first) {
            (Ok(c), Ok(_)) => check!(c.replayed, "claim {i} replayed in a second batch must say replayed"),
            (Err(_), Err(_)) => {}
            _ => return Err(Failure(format!("claim {i}: replay gave {r:?} after {first:?}"))),
        }
    }
    check!(store.claim_batch(&[]).await?.is_empty(), "an empty batch must answer an empty list");
    audit_clean(&*store, &[a.root, b.root]).await
}
