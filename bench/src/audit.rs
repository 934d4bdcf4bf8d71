//! The final audit of a scheduling run: read back every provider tree and every allocation
//! and check the invariants the store and the conductor promise.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::StreamExt;
use serde::Serialize;
use unicell::model::{ConsumerId, ProviderId, ResourceClass};
use unicell::store::prelude::*;

use crate::progress;

/// What the audit found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Audit {
    /// Provider trees read.
    pub trees: usize,
    /// Providers read.
    pub providers: usize,
    /// Allocations (consumer x tree) read.
    pub allocations: usize,
    /// `provider class used/capacity` for every provider over capacity.
    pub over_capacity: Vec<String>,
    /// `provider class usage != sum` for every usage that differs from its allocations.
    pub usage_mismatches: Vec<String>,
    /// Instances that ended ACTIVE but hold no allocation.
    pub active_without_allocation: Vec<String>,
    /// Instances that ended in ERROR but still hold an allocation (a leaked claim).
    pub failed_with_allocation: Vec<String>,
}

impl Audit {
    /// True when no invariant is broken.
    pub fn ok(&self) -> bool {
        self.over_capacity.is_empty()
            && self.usage_mismatches.is_empty()
            && self.active_without_allocation.is_empty()
            && self.failed_with_allocation.is_empty()
    }

    /// One line for the summary.
    pub fn line(&self) -> String {
        if self.ok() {
            format!(
                "audit OK: {} trees, {} providers, {} allocations; no provider over capacity; \
                 usage equals the sum of allocations everywhere; every ACTIVE instance holds \
                 its claim and no ERROR instance holds one",
                self.trees, self.providers, self.allocations
            )
        } else {
            format!(
                "audit FAILED: {} over capacity, {} usage mismatches, {} active without \
                 allocation, {} failed with allocation (first: {})",
                self.over_capacity.len(),
                self.usage_mismatches.len(),
                self.active_without_allocation.len(),
                self.failed_with_allocation.len(),
                self.over_capacity
                    .iter()
                    .chain(&self.usage_mismatches)
                    .chain(&self.active_without_allocation)
                    .chain(&self.failed_with_allocation)
                    .next()
                    .map_or("-", String::as_str)
            )
        }
    }
}

/// Audits every tree of `store`, and the allocations of the instances that ended `active`
/// (must hold some) and `failed` (must hold none).
pub async fn audit(store: &Arc<dyn Store>, active: &[ConsumerId], failed: &[ConsumerId]) -> Result<Audit> {
    let trees = store.list_provider_trees(None).await.context("list_provider_trees")?;
    let mut a = Audit { trees: trees.len(), ..Default::default() };
    let bar = progress::bar("audit trees", trees.len() as u64);
    let mut reads = futures::stream::iter(trees.into_iter().map(|tree| {
        let store = Arc::clone(store);
        async move {
            let allocs = store.tree_allocations(tree.root).await;
            (tree, allocs)
        }
    }))
    .buffer_unordered(16);
    while let Some((tree, allocs)) = reads.next().await {
        let allocs = allocs.with_context(|| format!("tree_allocations {}", tree.root))?;
        a.allocations += allocs.len();
        let mut sum: BTreeMap<(ProviderId, ResourceClass), i64> = BTreeMap::new();
        for ta in &allocs {
            for (p, res) in &ta.allocations {
                for (c, amount) in res {
                    *sum.entry((*p, c.clone())).or_insert(0) += amount;
                }
            }
        }
        for node in &tree.providers {
            a.providers += 1;
            for (class, inv) in &node.inventories {
                let used = node.used(class);
                if used > inv.capacity() {
                    a.over_capacity.push(format!("{} {class} {used}/{}", node.name, inv.capacity()));
                }
            }
            let classes = node
                .usages
                .keys()
                .cloned()
                .chain(sum.keys().filter(|(p, _)| *p == node.id).map(|(_, c)| c.clone()))
                .collect::<std::collections::BTreeSet<_>>();
            for class in classes {
                let s = sum.get(&(node.id, class.clone())).copied().unwrap_or(0);
                if node.used(&class) != s {
                    a.usage_mismatches.push(format!(
                        "{} {class} usage {} != sum of allocations {s}",
                        node.name,
                        node.used(&class)
                    ));
                }
            }
        }
        progress::inc(&bar, 1);
    }
    drop(bar);
    let checks = active.iter().map(|c| (*c, true)).chain(failed.iter().map(|c| (*c, false)));
    let mut reads = futures::stream::iter(checks.map(|(c, should_hold)| {
        let store = Arc::clone(store);
        async move { (c, should_hold, store.allocations(c).await) }
    }))
    .buffer_unordered(32);
    while let Some((c, should_hold, held)) = reads.next().await {
        let held = held.with_context(|| format!("allocations of {c}"))?;
        match (should_hold, held.is_empty()) {
            (true, true) => a.active_without_allocation.push(c.to_string()),
            (false, false) => a.failed_with_allocation.push(c.to_string()),
            _ => {}
        }
    }
    Ok(a)
}
