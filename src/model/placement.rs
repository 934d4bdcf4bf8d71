//! Placement's model: provider trees, inventories with usage, claims and allocations.
//!
//! The unit of atomicity is the provider *tree* (a compute-node root and its nested
//! children): a claim writes every amount of one consumer on one tree, or nothing, and every
//! write to a tree changes the tree's single generation. Placement keeps a generation per
//! provider; one per tree is stricter (a write to a NUMA child conflicts with a concurrent
//! inventory write on its root), but it is exactly what a single CQL partition, a single
//! Redis hash slot or a single SQL row lock can guard, and trees are small.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::{AggregateId, CellId, ConsumerId, GroupId, Inventory, ProviderId, ResourceClass, Trait};

/// Amounts per resource class.
pub type Resources = BTreeMap<ResourceClass, i64>;

/// Amounts per provider and class: the body of a claim, and what a consumer holds on a tree.
pub type AllocationMap = BTreeMap<ProviderId, Resources>;

/// A provider to create. A provider without `parent` is the root of a new tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewProvider {
    /// The provider's uuid.
    pub id: ProviderId,
    /// Unique name across the store (for a compute node, its hypervisor hostname).
    pub name: String,
    /// The parent provider, which must exist; `None` makes this provider a root.
    pub parent: Option<ProviderId>,
    /// The cell the tree belongs to. Only read for roots; children inherit their root's.
    pub cell: Option<CellId>,
    /// Initial inventories.
    #[serde(default)]
    pub inventories: BTreeMap<ResourceClass, Inventory>,
    /// Initial traits.
    #[serde(default)]
    pub traits: BTreeSet<Trait>,
    /// Initial aggregates. Aggregates on a root apply to the whole tree (Placement's rule).
    #[serde(default)]
    pub aggregates: BTreeSet<AggregateId>,
}

impl NewProvider {
    /// Checks the name and every inventory.
    pub fn validate(&self) -> Result<(), Error> {
        if self.name.is_empty() || self.name.len() > 200 || self.name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "provider.name",
                format!("{:?} must be 1 to 200 printable characters", self.name),
            ));
        }
        if self.parent == Some(self.id) {
            return Err(Error::invalid("provider.parent", "a provider cannot be its own parent"));
        }
        if self.id.0.is_nil() {
            // Stores record catalog writes in the tree change feed under the nil uuid.
            return Err(Error::invalid("provider.uuid", "the nil uuid is reserved"));
        }
        for (class, inv) in &self.inventories {
            inv.validate(&format!("{class} on {}", self.id))?;
        }
        Ok(())
    }
}

/// One provider of a tree as the scheduler sees it: inventory and current usage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderNode {
    /// The provider's uuid.
    pub id: ProviderId,
    /// The provider's unique name.
    pub name: String,
    /// Its parent; `None` for the root.
    pub parent: Option<ProviderId>,
    /// Traits on this provider.
    pub traits: BTreeSet<Trait>,
    /// Aggregates this provider is a member of.
    pub aggregates: BTreeSet<AggregateId>,
    /// Inventory per class.
    pub inventories: BTreeMap<ResourceClass, Inventory>,
    /// Sum of all allocations per class (classes with no allocation may be absent).
    pub usages: Resources,
}

impl ProviderNode {
    /// Current usage of `class` (0 when nothing is allocated).
    pub fn used(&self, class: &ResourceClass) -> i64 {
        self.usages.get(class).copied().unwrap_or(0)
    }

    /// `capacity - used` for `class`, or `None` when the provider has no such inventory.
    /// Negative when inventory shrank under existing allocations.
    pub fn free(&self, class: &ResourceClass) -> Option<i64> {
        self.inventories.get(class).map(|inv| inv.capacity().saturating_sub(self.used(class)))
    }
}

/// A whole provider tree with usage: the scheduler's unit of state and of claims.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderTree {
    /// The root provider (the compute node).
    pub root: ProviderId,
    /// Changes on every write to any provider of the tree, allocations included.
    pub generation: u64,
    /// The cell the tree belongs to.
    pub cell: Option<CellId>,
    /// Every provider of the tree, the root first and every parent before its children.
    pub providers: Vec<ProviderNode>,
    /// For each server group with members on this tree, how many consumers it has here.
    pub groups: BTreeMap<GroupId, u32>,
}

impl ProviderTree {
    /// The provider `id` if it belongs to this tree.
    pub fn node(&self, id: ProviderId) -> Option<&ProviderNode> {
        self.providers.iter().find(|p| p.id == id)
    }

    /// Mutable access to provider `id`.
    pub fn node_mut(&mut self, id: ProviderId) -> Option<&mut ProviderNode> {
        self.providers.iter_mut().find(|p| p.id == id)
    }

    /// The root provider.
    pub fn root_node(&self) -> Option<&ProviderNode> {
        self.node(self.root)
    }

    /// Adds (or with a negative sign removes) an allocation to the usages, as a successful
    /// claim (or a release) does. Used by schedulers to keep their snapshot current.
    pub fn apply(&mut self, allocations: &AllocationMap, sign: i64) {
        for (provider, resources) in allocations {
            if let Some(node) = self.node_mut(*provider) {
                for (class, amount) in resources {
                    let used = node.usages.entry(class.clone()).or_insert(0);
                    // Saturating: a snapshot's usage is advisory (the claim re-checks
                    // against the store), so an absurd amount pins it, never wraps it.
                    *used = used.saturating_add(sign.saturating_mul(*amount));
                    if *used <= 0 {
                        node.usages.remove(class);
                    }
                }
            }
        }
    }
}

/// A server group's part in a claim: the claim records the consumer as a member of `group`
/// on the tree and, when `max_per_host` is set, fails with [`Conflict::GroupLimit`] if the
/// tree already holds that many members. Because the check is inside the atomic claim,
/// anti-affinity holds even for separate requests scheduled at the same moment.
///
/// [`Conflict::GroupLimit`]: crate::error::Conflict::GroupLimit
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupClaim {
    /// The server group.
    pub group: GroupId,
    /// At most this many members of the group on one host (tree); `None`: no limit.
    pub max_per_host: Option<u32>,
}

/// A claim: all the amounts one consumer takes on one provider tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// Who consumes (for an instance build, the instance uuid).
    pub consumer: ConsumerId,
    /// The consumer's project.
    pub project_id: String,
    /// The consumer's user.
    pub user_id: String,
    /// Amounts per provider; every provider must belong to the same tree.
    pub allocations: AllocationMap,
    /// Optional server-group membership and per-host limit, checked atomically.
    #[serde(default)]
    pub group: Option<GroupClaim>,
}

impl ClaimRequest {
    /// The stateless checks every backend makes before touching storage: at least one
    /// amount, every amount between 1 and [`MAX_AMOUNT`](crate::model::MAX_AMOUNT), project
    /// and user present.
    pub fn validate(&self) -> Result<(), Error> {
        if self.allocations.is_empty() || self.allocations.values().all(|r| r.is_empty()) {
            return Err(Error::invalid("allocations", "a claim needs at least one amount"));
        }
        for (provider, resources) in &self.allocations {
            for (class, amount) in resources {
                if !(1..=crate::model::MAX_AMOUNT).contains(amount) {
                    return Err(Error::invalid(
                        format!("allocations[{provider}][{class}]"),
                        format!("amount {amount} must be between 1 and {}", crate::model::MAX_AMOUNT),
                    ));
                }
            }
        }
        for (field, v) in [("project_id", &self.project_id), ("user_id", &self.user_id)] {
            if v.is_empty() || v.len() > 255 {
                return Err(Error::invalid(field, "must be 1 to 255 characters"));
            }
        }
        Ok(())
    }

    /// The reference decision for a claim on `tree` (the tree holding its first provider),
    /// given what the consumer already holds there: every backend must decide exactly as
    /// this function does, whatever its storage.
    ///
    /// Returns `Ok(true)` for a replay (the consumer already holds exactly these amounts:
    /// nothing to write), `Ok(false)` when the claim fits and must be written, or the error
    /// the claim fails with. Checks, in order: every provider is in the tree
    /// ([`Error::InvalidInput`] otherwise), replay or [`Conflict::ConsumerMismatch`], each
    /// class has inventory ([`Error::NotFound`] of kind `Inventory`), unit rules
    /// ([`Error::InvalidInput`]), capacity ([`Error::Capacity`] naming the first provider and
    /// class in key order that does not fit), then the group limit.
    ///
    /// [`Conflict::ConsumerMismatch`]: crate::error::Conflict::ConsumerMismatch
    pub fn evaluate(&self, tree: &ProviderTree, held: Option<&AllocationMap>) -> Result<bool, Error> {
        use crate::error::{Conflict, Kind};
        for provider in self.allocations.keys() {
            if tree.node(*provider).is_none() {
                return Err(Error::invalid(
                    "allocations",
                    format!("provider {provider} is not in tree {}: a claim covers one provider tree", tree.root),
                ));
            }
        }
        if let Some(held) = held {
            if normalized(held) == normalized(&self.allocations) {
                return Ok(true);
            }
            return Err(Error::Conflict(Conflict::ConsumerMismatch { consumer: self.consumer, root: tree.root }));
        }
        for (provider, resources) in &self.allocations {
            let node = tree.node(*provider).ok_or_else(|| Error::not_found(Kind::Provider, provider))?;
            for (class, amount) in resources {
                let inv = node
                    .inventories
                    .get(class)
                    .ok_or_else(|| Error::not_found(Kind::Inventory, format!("{class} on provider {provider}")))?;
                // Named lazily: this runs for every amount of every claim, the text only on an error.
                inv.check_units(&format_args!("{class} on provider {provider}"), *amount)?;
            }
        }
        for (provider, resources) in &self.allocations {
            let node = tree.node(*provider).ok_or_else(|| Error::not_found(Kind::Provider, provider))?;
            for (class, amount) in resources {
                let capacity = node.inventories.get(class).map(Inventory::capacity).unwrap_or(0);
                let used = node.used(class);
                if used.checked_add(*amount).is_none_or(|total| total > capacity) {
                    return Err(Error::Capacity {
                        provider: *provider,
                        class: class.clone(),
                        requested: *amount,
                        used,
                        capacity,
                    });
                }
            }
        }
        if let Some(GroupClaim { group, max_per_host: Some(max) }) = self.group {
            let members = tree.groups.get(&group).copied().unwrap_or(0);
            if members >= max {
                return Err(Error::Conflict(Conflict::GroupLimit { group, root: tree.root, max_per_host: max }));
            }
        }
        Ok(false)
    }
}

/// Drops empty per-provider maps so that `{p: {}}` and `{}` compare equal.
pub fn normalized(a: &AllocationMap) -> AllocationMap {
    a.iter().filter(|(_, r)| !r.is_empty()).map(|(p, r)| (*p, r.clone())).collect()
}

/// The result of a successful claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The tree the claim was made on.
    pub root: ProviderId,
    /// The tree's generation after the claim (unchanged for a replay).
    pub generation: u64,
    /// True when the consumer already held exactly these amounts and nothing was written.
    pub replayed: bool,
}

/// What one consumer holds on one tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TreeAllocation {
    /// The consumer.
    pub consumer: ConsumerId,
    /// The tree.
    pub root: ProviderId,
    /// The consumer's project.
    pub project_id: String,
    /// The consumer's user.
    pub user_id: String,
    /// The server group the claim named, if any.
    pub group: Option<GroupId>,
    /// Amounts per provider and class.
    pub allocations: AllocationMap,
}

/// The result of a release.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The trees the consumer's allocations were removed from; empty when it held nothing
    /// (release is idempotent).
    pub roots: Vec<ProviderId>,
}

/// The result of an inventory write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryWrite {
    /// The tree's new generation.
    pub generation: u64,
    /// Classes whose usage now exceeds the new capacity. Placement accepts such a write
    /// (with a warning) as long as no class with allocations is removed; further claims of
    /// those classes fail until usage drops.
    pub over_capacity: Vec<ResourceClass>,
}

/// A position in a store's feed of provider-tree changes. Opaque: only the backend that
/// issued it can read it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChangeCursor(pub String);

/// The answer to [`ChangeFeed::changes_since`](crate::store::ChangeFeed::changes_since).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Changes {
    /// These trees (by root) may have changed since the cursor; it may name a tree that did
    /// not change, never omits one that did. `next` is the cursor for the next call.
    Trees {
        /// Roots of the trees to re-read (deleted trees included).
        roots: Vec<ProviderId>,
        /// For roots of `roots` whose latest reported change the backend can vouch for: the
        /// tree's generation once every change reported here is applied (never lower than
        /// the generation any reported change produced). A reader that already holds this
        /// generation of the tree, or a later one (its own claim, confirmed with the
        /// generation the store returned), need not read the tree again; that is what
        /// keeps a scheduler from re-reading every tree it just claimed on. A root missing
        /// here must be re-read. Backends that cannot tell leave it empty.
        #[serde(default)]
        generations: BTreeMap<ProviderId, u64>,
        /// For roots of `roots` whose writes since some generation were all claims and
        /// releases: the tree's usage and group counts, so that a reader holding the tree's
        /// structure brings it up to date without reading the tree (see [`TreeUsage`]).
        /// Always consistent with `generations` for the same root. Backends that cannot
        /// tell leave it empty; a root missing here is read as before.
        #[serde(default)]
        usages: BTreeMap<ProviderId, TreeUsage>,
        /// A cell, host record or aggregate was written since the cursor (heartbeats,
        /// [`report_host`](crate::store::Catalog::report_host), are not catalog writes): the
        /// reader should read the catalog again. Like `roots`, it may be set when nothing a
        /// reader cares about changed.
        #[serde(default)]
        catalog: bool,
        /// Cursor for the next call.
        next: ChangeCursor,
    },
    /// The cursor is too old for the backend's change feed: reload everything.
    Resync,
}

/// The root under which a backend records catalog writes in its tree change feed: the nil
/// uuid, which no provider may have ([`NewProvider::validate`] refuses it).
/// [`Changes::from_feed`] turns it into [`Changes::Trees::catalog`], so it never reaches a
/// reader as a root.
pub(crate) const CATALOG_ROOT: ProviderId = ProviderId(uuid::Uuid::nil());

impl Changes {
    /// A feed answer from what a backend's feed holds: the roots of the trees written (and
    /// [`CATALOG_ROOT`] for catalog writes) since the cursor.
    pub(crate) fn from_feed(
        roots: impl IntoIterator<Item = ProviderId>,
        mut generations: BTreeMap<ProviderId, u64>,
        mut usages: BTreeMap<ProviderId, TreeUsage>,
        next: ChangeCursor,
    ) -> Changes {
        let mut catalog = false;
        let roots = roots
            .into_iter()
            .filter(|r| {
                let entry = *r == CATALOG_ROOT;
                catalog |= entry;
                !entry
            })
            .collect();
        generations.remove(&CATALOG_ROOT);
        usages.remove(&CATALOG_ROOT);
        Changes::Trees { roots, generations, usages, catalog, next }
    }
}

/// A tree's usage at one generation, as a change feed carries it beside the tree's root.
///
/// Why: a scheduler in another process learns of a claim from the feed; without the amounts
/// it must read the whole tree again (a round trip and a decode per claim anyone makes).
/// With them it applies the claim as it would a tree read, provided the tree's structure
/// (providers, inventories, traits, aggregates) is the one it holds: every write after
/// `usage_only_since` up to `generation` was a claim or a release, so a reader holding the
/// tree at `usage_only_since` or later has that structure. A reader holding an older
/// generation must read the tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeUsage {
    /// The tree's generation these figures are read at.
    pub generation: u64,
    /// The generation before the run of claims and releases that ends at `generation`
    /// (the last generation a structural write, or the tree's creation, produced, or a
    /// later one when the backend cannot tell).
    pub usage_only_since: u64,
    /// Usage per provider of the tree; a provider or class missing uses nothing.
    pub used: BTreeMap<ProviderId, Resources>,
    /// Server-group members on the tree (as [`ProviderTree::groups`]).
    pub groups: BTreeMap<GroupId, u32>,
}
