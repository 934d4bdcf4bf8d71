//! Provider cases: creating, reading and deleting trees (contract lines 7 and 10).

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
        case!("providers::create_and_read_trees", create_and_read_trees),
        case!("providers::duplicates_and_unknown_parent", duplicates_and_unknown_parent),
        case!("providers::delete_rules", delete_rules),
    ]
}

async fn create_and_read_trees(store: Arc<dyn Store>) -> CaseResult {
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

async fn duplicates_and_unknown_parent(store: Arc<dyn Store>) -> CaseResult {
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

async fn delete_rules(store: Arc<dyn Store>) -> CaseResult {
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
