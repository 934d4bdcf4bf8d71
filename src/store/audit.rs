//! Audit: the invariant behind every claim, checked from the store's own data.
//!
//! For every tree: each provider's usage of each class equals the sum of the allocations
//! held on it ([`Claims::tree_allocations`]), never exceeds its capacity, and each server
//! group's member count equals the number of allocations naming that group. Tests, the
//! fault tests and the benchmarks end with it; operators can run it too (Nova's
//! `nova-manage placement audit` looks for the same drift).

use std::collections::BTreeMap;
use std::fmt;

use crate::error::Result;
use crate::model::{GroupId, ProviderId, ResourceClass};
use crate::store::prelude::*;

/// One violation found by [`audit_trees`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Usage differs from the sum of allocations.
    UsageMismatch {
        /// Provider.
        provider: ProviderId,
        /// Class.
        class: ResourceClass,
        /// Usage the tree reports.
        usage: i64,
        /// Sum of allocations.
        allocated: i64,
    },
    /// Usage above capacity (only legitimate after an inventory shrink).
    OverCapacity {
        /// Provider.
        provider: ProviderId,
        /// Class.
        class: ResourceClass,
        /// Usage.
        usage: i64,
        /// Capacity.
        capacity: i64,
    },
    /// A group's member count differs from the allocations naming it.
    GroupMismatch {
        /// Tree.
        root: ProviderId,
        /// Group.
        group: GroupId,
        /// Count the tree reports.
        count: u32,
        /// Allocations naming the group.
        members: u32,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::UsageMismatch { provider, class, usage, allocated } => {
                write!(f, "{class} on {provider}: usage {usage} but allocations sum to {allocated}")
            }
            Violation::OverCapacity { provider, class, usage, capacity } => {
                write!(f, "{class} on {provider}: usage {usage} exceeds capacity {capacity}")
            }
            Violation::GroupMismatch { root, group, count, members } => {
                write!(f, "group {group} on tree {root}: count {count} but {members} allocations")
            }
        }
    }
}

/// What an audit found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Trees checked.
    pub trees: usize,
    /// Allocations seen.
    pub allocations: usize,
    /// Every violation found.
    pub violations: Vec<Violation>,
}

impl AuditReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Audits the given trees (by any provider of each), or every tree when `roots` is `None`.
pub async fn audit_trees(store: &dyn Store, roots: Option<&[ProviderId]>) -> Result<AuditReport> {
    let trees = match roots {
        Some(roots) => {
            let mut v = Vec::with_capacity(roots.len());
            for r in roots {
                v.push(store.provider_tree(*r).await?);
            }
            v
        }
        None => store.list_provider_trees(None).await?,
    };
    let mut report = AuditReport { trees: trees.len(), ..AuditReport::default() };
    for tree in trees {
        let allocs = store.tree_allocations(tree.root).await?;
        report.allocations += allocs.len();
        let mut sums: BTreeMap<(ProviderId, ResourceClass), i64> = BTreeMap::new();
        let mut groups: BTreeMap<GroupId, u32> = BTreeMap::new();
        for a in &allocs {
            for (p, res) in &a.allocations {
                for (c, n) in res {
                    *sums.entry((*p, c.clone())).or_insert(0) += n;
                }
            }
            if let Some(g) = a.group {
                *groups.entry(g).or_insert(0) += 1;
            }
        }
        for node in &tree.providers {
            let classes: std::collections::BTreeSet<&ResourceClass> =
                node.usages.keys().chain(sums.keys().filter(|(p, _)| *p == node.id).map(|(_, c)| c)).collect();
            for class in classes {
                let usage = node.used(class);
                let allocated = sums.get(&(node.id, class.clone())).copied().unwrap_or(0);
                if usage != allocated {
                    report.violations.push(Violation::UsageMismatch {
                        provider: node.id,
                        class: class.clone(),
                        usage,
                        allocated,
                    });
                }
                let capacity = node.inventories.get(class).map(|i| i.capacity()).unwrap_or(0);
                if usage > capacity {
                    report.violations.push(Violation::OverCapacity {
                        provider: node.id,
                        class: class.clone(),
                        usage,
                        capacity,
                    });
                }
            }
        }
        let all: std::collections::BTreeSet<GroupId> = tree.groups.keys().chain(groups.keys()).copied().collect();
        for g in all {
            let count = tree.groups.get(&g).copied().unwrap_or(0);
            let members = groups.get(&g).copied().unwrap_or(0);
            if count != members {
                report.violations.push(Violation::GroupMismatch { root: tree.root, group: g, count, members });
            }
        }
    }
    Ok(report)
}
