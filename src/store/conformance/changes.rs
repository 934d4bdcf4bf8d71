//! Change feed cases (contract line 11).

use std::collections::{BTreeMap, BTreeSet};
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
        case!("changes::feed_usage_is_the_trees", feed_usage_is_the_trees),
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
        Changes::Trees { roots, generations, next, .. } => {
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

/// The feed's answer for one tree: reported, its generation and its usage (if given).
async fn feed_entry(
    store: &dyn Store,
    cursor: &ChangeCursor,
    root: ProviderId,
) -> Result<(Option<u64>, Option<TreeUsage>, ChangeCursor), Failure> {
    match store.changes_since(cursor).await? {
        Changes::Trees { roots, generations, usages, next, .. } => {
            check!(roots.contains(&root), "changed tree {root} missing from {roots:?}");
            for (r, u) in &usages {
                check!(
                    generations.get(r) == Some(&u.generation),
                    "usage of {r} at generation {} but the feed gives generation {:?}",
                    u.generation,
                    generations.get(r)
                );
            }
            Ok((generations.get(&root).copied(), usages.get(&root).cloned(), next))
        }
        Changes::Resync => Err(Failure("a fresh cursor must not need a resync".into())),
    }
}

/// A reader applies a [`TreeUsage`] instead of reading the tree, so it must be the tree's
/// usage and group counts at the generation given, and `usage_only_since` must never reach
/// back over a write that was not a claim or a release. Memory gives usages here; Redis
/// gives them only for trees another handle wrote last (this case has one handle:
/// `tests/shared_snapshot.rs` checks Redis with two); the others may not, and a usage any
/// backend gives is checked the same way.
async fn feed_usage_is_the_trees(store: Arc<dyn Store>) -> CaseResult {
    let must_give = store.backend() == "memory";
    let a = make_tree(&*store, None, 8, 4096).await?;
    let created = store.provider_tree(a.root).await?.generation;
    let group = GroupId::new_v4();
    let cursor = store.change_cursor().await?;
    let mut grouped = claim_req(ConsumerId::new_v4(), &[(a.numa[0], "PCPU", 2), (a.root, "MEMORY_MB", 512)]);
    grouped.group = Some(GroupClaim { group, max_per_host: None });
    store.claim(&grouped).await?;
    let second = ConsumerId::new_v4();
    store.claim(&claim_req(second, &[(a.numa[1], "PCPU", 1)])).await?;
    let check_usage = |u: &TreeUsage, tree: &ProviderTree, structural: u64, what: &str| -> CaseResult {
        check!(
            u.generation == tree.generation,
            "{what}: usage at generation {} but the tree is at {}",
            u.generation,
            tree.generation
        );
        check!(
            u.usage_only_since >= structural && u.usage_only_since <= u.generation,
            "{what}: usage-only since {} reaches back over the structural write at {structural} (generation {})",
            u.usage_only_since,
            u.generation
        );
        let given: BTreeMap<(ProviderId, ResourceClass), i64> = u
            .used
            .iter()
            .flat_map(|(p, r)| r.iter().filter(|(_, n)| **n != 0).map(move |(c, n)| ((*p, c.clone()), *n)))
            .collect();
        check!(given == usages(tree), "{what}: feed usage {given:?} but the tree holds {:?}", usages(tree));
        check!(u.groups == tree.groups, "{what}: feed groups {:?} but the tree holds {:?}", u.groups, tree.groups);
        Ok(())
    };
    let (_, usage, next) = feed_entry(&*store, &cursor, a.root).await?;
    let tree = store.provider_tree(a.root).await?;
    match usage {
        Some(u) => check_usage(&u, &tree, created, "after two claims")?,
        None => check!(!must_give, "{} must give the usage of a tree changed by claims only", store.backend()),
    }
    // A structural write ends the run: a usage given after it starts at it or later.
    let traits = store.set_traits(a.sriov, tree.generation, &BTreeSet::from([Trait::new("CUSTOM_PHYSNET_U")?])).await?;
    let (generation, usage, next) = feed_entry(&*store, &next, a.root).await?;
    check!(usage.is_none(), "the feed gave a usage across a trait write: {usage:?}");
    if let Some(g) = generation {
        check!(g >= traits, "feed says generation {g}, the trait write left {traits}");
    }
    store.release(second).await?;
    let (_, usage, _) = feed_entry(&*store, &next, a.root).await?;
    let tree = store.provider_tree(a.root).await?;
    match usage {
        Some(u) => check_usage(&u, &tree, traits, "after a trait write and a release")?,
        None => check!(!must_give, "{} must give the usage of a tree released on", store.backend()),
    }
    Ok(())
}
