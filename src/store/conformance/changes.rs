//! Change feed cases (contract line 11).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::fixtures::*;
use super::harness::*;
use super::{case, check};
use crate::error::Error;
use crate::model::*;
use crate::store::prelude::*;

/// The cases of this group, in the suite's order.
pub(super) fn cases() -> Vec<Case> {
    vec![
        case!("changes::feed_reports_changed_trees", feed_reports_changed_trees),
        case!("changes::feed_generations_are_never_behind", feed_generations_are_never_behind),
    ]
}

async fn feed_reports_changed_trees(store: Arc<dyn Store>) -> CaseResult {
    let a = make_tree(&*store, None, 8, 4096).await?;
    let b = make_tree(&*store, None, 8, 4096).await?;
    let cursor = store.change_cursor().await?;
    store.claim(&claim_req(ConsumerId::new_v4(), &[(a.numa[0], "PCPU", 1)])).await?;
    let c = make_tree(&*store, None, 8, 4096).await?;
    let (roots, next) = match store.changes_since(&cursor).await? {
        Changes::Trees { roots, next, .. } => (roots, next),
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
        Changes::Trees { roots, next, .. } => {
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

/// A generation the feed reports lets a reader skip a tree, so it must never be behind the
/// tree: at least the generation of every reported change, and absent for a deleted tree.
async fn feed_generations_are_never_behind(store: Arc<dyn Store>) -> CaseResult {
    let a = make_tree(&*store, None, 8, 4096).await?;
    let b = make_tree(&*store, None, 8, 4096).await?;
    let cursor = store.change_cursor().await?;
    let mut last = 0;
    for _ in 0..3 {
        last = store.claim(&claim_req(ConsumerId::new_v4(), &[(a.numa[0], "PCPU", 1)])).await?.generation;
    }
    let tb = store.provider_tree(b.root).await?;
    let gb = store.set_traits(b.sriov, tb.generation, &BTreeSet::from([Trait::new("CUSTOM_PHYSNET_G")?])).await?;
    let (generations, next) = match store.changes_since(&cursor).await? {
        Changes::Trees { roots, generations, next } => {
            check!(roots.contains(&a.root) && roots.contains(&b.root), "A and B must be reported: {roots:?}");
            for root in generations.keys() {
                check!(roots.contains(root), "generation given for unreported tree {root}: {generations:?}");
            }
            (generations, next)
        }
        Changes::Resync => return Err(Failure("a fresh cursor must not need a resync".into())),
    };
    if let Some(g) = generations.get(&a.root) {
        check!(*g >= last, "feed says A is at generation {g}, but the last claim left it at {last}");
    }
    if let Some(g) = generations.get(&b.root) {
        check!(*g >= gb, "feed says B is at generation {g}, but the trait write left it at {gb}");
    }
    // A deleted tree must be re-read to learn it is gone: no generation for it.
    store.delete_provider(b.sriov).await?;
    for p in b.numa.iter().rev() {
        store.delete_provider(*p).await?;
    }
    store.delete_provider(b.root).await?;
    match store.changes_since(&next).await? {
        Changes::Trees { roots, generations, .. } => {
            check!(roots.contains(&b.root), "a deleted tree must be reported: {roots:?}");
            check!(
                !generations.contains_key(&b.root),
                "a deleted tree must carry no generation (a reader would skip it): {generations:?}"
            );
        }
        Changes::Resync => return Err(Failure("unexpected resync".into())),
    }
    Ok(())
}
