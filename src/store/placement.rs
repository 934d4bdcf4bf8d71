//! The parts of Placement's model the scheduler does not need, and that the Placement API
//! does: per-provider generations, consumers with project, user, type and generation,
//! allocation writes that replace what consumers hold (several consumers at once), provider
//! renames and moves, and the registries of custom resource classes and traits.
//!
//! # One primitive per backend, one decision procedure for all
//!
//! A backend implements [`PlacementStore`]: read a tree with its Placement state
//! ([`PlacementTree`]), **compare-and-set** a whole tree ([`replace_tree`]), move a subtree to
//! another tree ([`move_provider`]), and the two registries. Every Placement write (inventory,
//! traits, aggregates, rename, re-parent inside a tree, allocations of one or several
//! consumers) is decided by one pure function over a [`PlacementTree`] in this module and
//! written with [`replace_tree`], which succeeds only if the tree is still at the generation
//! the decision was made on. The decision is re-made on a fresh read when another writer won
//! ([`update_tree`]). So the store, not the API process, serializes the writes: any number of
//! API replicas on one store can neither overcommit nor lose a generation check, and every
//! backend decides exactly the same way.
//!
//! # Generations
//!
//! The tree generation ([`ProviderTree::generation`]) is the store's concurrency token: every
//! write to a tree moves it. Placement's per-provider generation
//! ([`PlacementTree::generations`]) is what clients see and send: 0 at creation, +1 when the
//! provider's inventories, traits or aggregates change and when an allocation write (a claim
//! included) names the provider, unchanged by renames, moves and deletions of allocations, as
//! in Placement. A consumer's generation is 1 after its first allocation write and +1 on each
//! later one; a consumer with no allocations left does not exist.
//!
//! # Where unicell differs from Placement
//!
//! * A consumer's allocations live on **one provider tree**: a write whose providers span two
//!   trees, or that would move a consumer's allocations from one tree to another in one
//!   request, fails with [`Error::InvalidInput`] naming the trees (unicell's claims are atomic
//!   per tree; see the crate's contract). Release the consumer first, or use a second
//!   consumer (as Nova does with migration uuids).
//! * Several consumers in one write ([`set_allocations`](PlacementTree::set_allocations)) must
//!   all be on the same tree, for the same reason.
//!
//! [`replace_tree`]: PlacementStore::replace_tree
//! [`move_provider`]: PlacementStore::move_provider

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Conflict, Error, Kind, Result};
use crate::model::{
    AggregateId, AllocationMap, ConsumerId, Inventory, ProviderId, ProviderTree, ResourceClass, Resources, Trait,
    TreeAllocation,
};
use crate::store::Store;

/// How many times [`update_tree`] re-reads and re-decides after losing a race (Placement's
/// `allocation_conflict_retry_count`).
pub const UPDATE_ATTEMPTS: usize = 10;

/// The project and user Placement records for allocations written before 1.8 (which had
/// none): Placement's `incomplete_consumer_project_id` / `_user_id` defaults.
pub const INCOMPLETE_CONSUMER_ID: &str = "00000000-0000-0000-0000-000000000000";

/// A consumer's record on the tree it holds allocations on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsumerRecord {
    /// Who, where, what: the same record the scheduler's claims write.
    pub allocation: TreeAllocation,
    /// Placement's consumer generation (1 after the first write).
    pub generation: u64,
    /// Placement's consumer type (1.38), when one was given.
    #[serde(default)]
    pub consumer_type: Option<String>,
}

/// One provider tree with the state only Placement's API needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementTree {
    /// The tree as the scheduler sees it (inventories, usages, traits, aggregates, groups,
    /// and the tree generation used for compare-and-set).
    pub tree: ProviderTree,
    /// Placement's generation of each provider; a provider absent here is at 0.
    pub generations: BTreeMap<ProviderId, u64>,
    /// Every consumer holding allocations on this tree.
    pub consumers: BTreeMap<ConsumerId, ConsumerRecord>,
}

/// What a write expects of a consumer's generation (Placement 1.28+).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedGeneration {
    /// No check (requests before 1.28).
    Unchecked,
    /// The consumer must not exist (`"consumer_generation": null`).
    New,
    /// The consumer must exist at this generation.
    Is(u64),
}

/// The new allocations of one consumer (Placement's `PUT /allocations/{consumer}` body, or one
/// entry of `POST /allocations`).
#[derive(Clone, Debug, PartialEq)]
pub struct AllocationWrite {
    /// The consumer.
    pub consumer: ConsumerId,
    /// Its project.
    pub project_id: String,
    /// Its user.
    pub user_id: String,
    /// Its type (1.38), if given.
    pub consumer_type: Option<String>,
    /// The generation check.
    pub expected: ExpectedGeneration,
    /// The allocations that replace everything the consumer holds; empty removes them all.
    /// An amount of 0 is allowed and means "nothing of this class" (Placement's removal
    /// signal); it still counts as naming the provider for its generation.
    pub allocations: AllocationMap,
}

/// Why a consumer-generation check failed (Placement's
/// `consumer generation conflict - expected X but got Y`).
fn consumer_conflict(consumer: ConsumerId, actual: Option<u64>, sent: ExpectedGeneration) -> Error {
    let actual = actual.map_or("null".to_string(), |g| g.to_string());
    let sent = match sent {
        ExpectedGeneration::Is(g) => g.to_string(),
        _ => "null".to_string(),
    };
    Error::Conflict(Conflict::ConsumerGeneration { consumer, expected: actual, got: sent })
}

impl PlacementTree {
    /// Placement's generation of `provider`.
    pub fn generation(&self, provider: ProviderId) -> u64 {
        self.generations.get(&provider).copied().unwrap_or(0)
    }

    fn bump(&mut self, provider: ProviderId) {
        *self.generations.entry(provider).or_insert(0) += 1;
    }

    fn check_provider_generation(&self, provider: ProviderId, expected: u64) -> Result<()> {
        let actual = self.generation(provider);
        if actual != expected {
            return Err(Error::Conflict(Conflict::ProviderGeneration { provider, expected, actual }));
        }
        Ok(())
    }

    fn node_mut(&mut self, provider: ProviderId) -> Result<&mut crate::model::ProviderNode> {
        self.tree.node_mut(provider).ok_or_else(|| Error::not_found(Kind::Provider, provider))
    }

    /// Replaces `provider`'s inventories if its generation is `expected` (Placement's
    /// `PUT .../inventories`). Removing a class that has allocations fails with
    /// [`Conflict::InventoryInUse`]; shrinking under usage is accepted (Placement's rule) and
    /// the classes left over capacity are returned.
    pub fn set_inventories(
        &mut self,
        provider: ProviderId,
        expected: u64,
        inventories: &BTreeMap<ResourceClass, Inventory>,
    ) -> Result<Vec<ResourceClass>> {
        for (class, inv) in inventories {
            inv.validate(&format!("{class} on {provider}"))?;
        }
        self.check_provider_generation(provider, expected)?;
        let node = self.node_mut(provider)?;
        if let Some(class) = node.usages.iter().find(|(c, u)| **u > 0 && !inventories.contains_key(*c)).map(|(c, _)| c)
        {
            return Err(Error::Conflict(Conflict::InventoryInUse { provider, class: class.clone() }));
        }
        node.inventories = inventories.clone();
        let over =
            inventories.iter().filter(|(c, inv)| node.used(c) > inv.capacity()).map(|(c, _)| c.clone()).collect();
        self.bump(provider);
        Ok(over)
    }

    /// Replaces `provider`'s traits if its generation is `expected`.
    pub fn set_traits(&mut self, provider: ProviderId, expected: u64, traits: &BTreeSet<Trait>) -> Result<()> {
        self.check_provider_generation(provider, expected)?;
        self.node_mut(provider)?.traits = traits.clone();
        self.bump(provider);
        Ok(())
    }

    /// Replaces `provider`'s aggregates; checks and bumps the generation when `expected` is
    /// given (Placement does both from 1.19 on, neither before).
    pub fn set_aggregates(
        &mut self,
        provider: ProviderId,
        expected: Option<u64>,
        aggregates: &BTreeSet<AggregateId>,
    ) -> Result<()> {
        if let Some(expected) = expected {
            self.check_provider_generation(provider, expected)?;
        }
        self.node_mut(provider)?.aggregates = aggregates.clone();
        if expected.is_some() {
            self.bump(provider);
        }
        Ok(())
    }

    /// Renames `provider` (no generation change, as in Placement). Name uniqueness across the
    /// store is the backend's part of [`PlacementStore::replace_tree`].
    pub fn rename(&mut self, provider: ProviderId, name: &str) -> Result<()> {
        crate::model::NewProvider {
            id: provider,
            name: name.to_string(),
            parent: None,
            cell: None,
            inventories: BTreeMap::new(),
            traits: BTreeSet::new(),
            aggregates: BTreeSet::new(),
        }
        .validate()?;
        self.node_mut(provider)?.name = name.to_string();
        Ok(())
    }

    /// Moves `provider` (and its subtree) under `parent`, another provider of the same tree
    /// that is not in the subtree. The root cannot move inside its own tree.
    pub fn reparent_within(&mut self, provider: ProviderId, parent: ProviderId) -> Result<()> {
        if provider == self.tree.root {
            return Err(Error::invalid(
                "parent_provider_uuid",
                "the root of a tree cannot become a child of its own tree",
            ));
        }
        if self.tree.node(parent).is_none() {
            return Err(Error::not_found(Kind::Provider, parent));
        }
        if self.subtree(provider).contains(&parent) {
            return Err(Error::invalid(
                "parent_provider_uuid",
                format!("creating a loop in the provider tree: {parent} is a descendant of {provider}"),
            ));
        }
        self.node_mut(provider)?.parent = Some(parent);
        self.tree.providers = order_parents_first(std::mem::take(&mut self.tree.providers));
        Ok(())
    }

    /// `provider` and every descendant of it.
    pub fn subtree(&self, provider: ProviderId) -> BTreeSet<ProviderId> {
        let mut out = BTreeSet::from([provider]);
        loop {
            let before = out.len();
            for p in &self.tree.providers {
                if p.parent.is_some_and(|parent| out.contains(&parent)) {
                    out.insert(p.id);
                }
            }
            if out.len() == before {
                return out;
            }
        }
    }

    /// Placement's `_set_allocations` on this tree: for every write, check the consumer's
    /// generation, drop what the consumer holds here, then check every new amount (provider
    /// in the tree, inventory of the class, `min_unit`/`max_unit`/`step_size`, capacity with
    /// Placement's overage rule: a provider may stay over capacity only if the write does not
    /// make it worse), write, bump the generation of every provider named by a write and of
    /// every consumer, and forget consumers left with nothing. All or nothing: on error
    /// `self` is unchanged.
    pub fn set_allocations(&mut self, writes: &[AllocationWrite]) -> Result<()> {
        let mut next = self.clone();
        let mut seen = BTreeSet::new();
        for w in writes {
            if !seen.insert(w.consumer) {
                return Err(Error::invalid("allocations", format!("consumer {} appears twice", w.consumer)));
            }
            let held = next.consumers.get(&w.consumer).map(|c| c.generation);
            match (w.expected, held) {
                (ExpectedGeneration::Unchecked, _) | (ExpectedGeneration::New, None) => {}
                (ExpectedGeneration::Is(g), Some(h)) if g == h => {}
                (sent, actual) => return Err(consumer_conflict(w.consumer, actual, sent)),
            }
        }
        // Usage before the write, for the overage rule.
        let before: BTreeMap<(ProviderId, ResourceClass), i64> = next
            .tree
            .providers
            .iter()
            .flat_map(|p| p.usages.iter().map(move |(c, u)| ((p.id, c.clone()), *u)))
            .collect();
        let mut groups_left = Vec::new();
        for w in writes {
            if let Some(old) = next.consumers.get(&w.consumer) {
                let old_allocs = old.allocation.allocations.clone();
                next.tree.apply(&old_allocs, -1);
                if let Some(g) = old.allocation.group {
                    groups_left.push(g);
                }
            }
        }
        // Check every new amount, summing per provider and class across writes.
        let mut sums: BTreeMap<(ProviderId, ResourceClass), i64> = BTreeMap::new();
        for w in writes {
            for (provider, resources) in &w.allocations {
                let node = next.tree.node(*provider).ok_or_else(|| {
                    Error::invalid(
                        "allocations",
                        format!(
                            "provider {provider} is not in tree {}: a write covers one provider tree",
                            next.tree.root
                        ),
                    )
                })?;
                for (class, amount) in resources {
                    if *amount < 0 || *amount > crate::model::MAX_AMOUNT {
                        return Err(Error::invalid(
                            format!("allocations[{provider}][{class}]"),
                            format!("amount {amount} must be between 0 and {}", crate::model::MAX_AMOUNT),
                        ));
                    }
                    if *amount == 0 {
                        continue;
                    }
                    let what = format!("'{class}' on resource provider '{provider}'");
                    let inv = node.inventories.get(class).ok_or_else(|| Error::not_found(Kind::Inventory, &what))?;
                    inv.check_units(&what, *amount)?;
                    let s = sums.entry((*provider, class.clone())).or_insert(0);
                    *s = s.saturating_add(*amount);
                }
            }
        }
        for ((provider, class), amount) in &sums {
            let node = next.tree.node(*provider).ok_or_else(|| Error::not_found(Kind::Provider, provider))?;
            let capacity = node.inventories.get(class).map(Inventory::capacity).unwrap_or(0);
            let used = node.used(class);
            let after = used.saturating_add(*amount);
            let prev = before.get(&(*provider, class.clone())).copied();
            if after > capacity && prev.is_none_or(|p| after > p) {
                return Err(Error::Capacity {
                    provider: *provider,
                    class: class.clone(),
                    requested: *amount,
                    used,
                    capacity,
                });
            }
        }
        // Write.
        let mut named = BTreeSet::new();
        for w in writes {
            let old = next.consumers.remove(&w.consumer);
            let allocations: AllocationMap = w
                .allocations
                .iter()
                .map(|(p, r)| {
                    (*p, r.iter().filter(|(_, a)| **a > 0).map(|(c, a)| (c.clone(), *a)).collect::<Resources>())
                })
                .filter(|(_, r)| !r.is_empty())
                .collect();
            named.extend(w.allocations.keys().copied());
            let group = old.as_ref().and_then(|o| o.allocation.group);
            if allocations.is_empty() {
                continue;
            }
            if let Some(g) = group {
                groups_left.retain(|x| *x != g);
            }
            next.tree.apply(&allocations, 1);
            next.consumers.insert(
                w.consumer,
                ConsumerRecord {
                    allocation: TreeAllocation {
                        consumer: w.consumer,
                        root: next.tree.root,
                        project_id: w.project_id.clone(),
                        user_id: w.user_id.clone(),
                        group,
                        allocations,
                    },
                    generation: old.map_or(1, |o| o.generation + 1),
                    consumer_type: w.consumer_type.clone().or(None),
                },
            );
        }
        for g in groups_left {
            if let Some(n) = next.tree.groups.get_mut(&g) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    next.tree.groups.remove(&g);
                }
            }
        }
        for p in named {
            if next.tree.node(p).is_some() {
                next.bump(p);
            }
        }
        *self = next;
        Ok(())
    }
}

/// Orders providers so that every parent comes before its children, keeping the existing
/// order otherwise (the root first).
pub fn order_parents_first(mut providers: Vec<crate::model::ProviderNode>) -> Vec<crate::model::ProviderNode> {
    let mut out = Vec::with_capacity(providers.len());
    let mut placed = BTreeSet::new();
    while !providers.is_empty() {
        let before = providers.len();
        let mut rest = Vec::new();
        for p in providers {
            if p.parent.is_none_or(|parent| placed.contains(&parent)) {
                placed.insert(p.id);
                out.push(p);
            } else {
                rest.push(p);
            }
        }
        providers = rest;
        if providers.len() == before {
            // A parent outside the tree: keep the rest as they are rather than loop.
            out.append(&mut providers);
        }
    }
    out
}

/// A custom resource class or trait as the registries keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    /// The name (`CUSTOM_...`).
    pub name: String,
    /// When it was created (microseconds since the epoch).
    pub created_at: i64,
}

/// The Placement-only state of a store (see the module documentation).
///
/// # Contract
///
/// 1. [`placement_tree`](PlacementStore::placement_tree) and
///    [`placement_trees`](PlacementStore::placement_trees) read trees consistently (one tree
///    generation) with their provider generations and consumer records, which agree with
///    what [`Claims::allocations`](crate::store::Claims::allocations) and
///    [`Claims::tree_allocations`](crate::store::Claims::tree_allocations) return.
/// 2. [`replace_tree`](PlacementStore::replace_tree) writes `new` only if the tree is still at
///    `old.tree.generation`, else fails with [`Conflict::Generation`]; the new tree generation
///    is `old + 1` and the change feed reports the tree. `new` has the same root and the
///    same provider ids as `old`; names, parents (inside the tree), inventories, traits,
///    aggregates, usages, groups, provider generations and consumers may differ. A name taken
///    by a provider outside the tree fails with [`Conflict::DuplicateName`]. Indexes (names,
///    consumers -> trees) follow, with the crash-safety of the backend's claims: an
///    allocation is never unfindable.
/// 3. Claims ([`Claims::claim`](crate::store::Claims::claim)) bump the Placement generation
///    of every provider they name and record the consumer at generation 1; releases remove
///    the consumer's records. Creating a provider starts it at generation 0.
/// 4. [`move_provider`](PlacementStore::move_provider) moves a provider and its subtree to
///    another tree (under `parent`) or makes it the root of a new tree (`None`), atomically:
///    only when no consumer holds allocations on a provider of the subtree
///    ([`Conflict::ProviderInUse`] otherwise). Provider generations are kept.
/// 5. The registries hold the **custom** resource classes and traits: `create_*` returns
///    `false` when the name exists already, `delete_*` fails with `NotFound` for an unknown
///    name and with `Conflict::InUse` when an inventory (class) or a provider (trait) uses
///    it at the time of the check.
#[async_trait]
pub trait PlacementStore: Store {
    /// The tree containing `provider`, with its Placement state.
    async fn placement_tree(&self, provider: ProviderId) -> Result<PlacementTree>;

    /// Every tree with its Placement state, ordered by root.
    async fn placement_trees(&self) -> Result<Vec<PlacementTree>>;

    /// Compare-and-set of a whole tree (contract line 2). Returns the new tree generation.
    async fn replace_tree(&self, old: &PlacementTree, new: &PlacementTree) -> Result<u64>;

    /// Moves a subtree to another tree or to a tree of its own (contract line 4).
    async fn move_provider(&self, provider: ProviderId, parent: Option<ProviderId>) -> Result<()>;

    /// The custom resource classes.
    async fn resource_classes(&self) -> Result<Vec<RegistryEntry>>;

    /// Registers a custom resource class; `false` when it exists already.
    async fn create_resource_class(&self, class: &ResourceClass) -> Result<bool>;

    /// Removes a custom resource class no inventory uses.
    async fn delete_resource_class(&self, class: &ResourceClass) -> Result<()>;

    /// The custom traits.
    async fn custom_traits(&self) -> Result<Vec<RegistryEntry>>;

    /// Registers a custom trait; `false` when it exists already.
    async fn create_trait(&self, name: &Trait) -> Result<bool>;

    /// Removes a custom trait no provider has.
    async fn delete_trait(&self, name: &Trait) -> Result<()>;
}

/// Whether a store of this scheme keeps Placement's state in this build (what [`open`]
/// accepts), so that a caller with several stores can tell before opening any.
pub fn keeps_placement_state(scheme: crate::store::Scheme) -> bool {
    use crate::store::Scheme;
    scheme == Scheme::Memory
        || (cfg!(feature = "redis") && matches!(scheme, Scheme::Redis | Scheme::RedisCluster))
        || (cfg!(feature = "sql") && matches!(scheme, Scheme::MySql | Scheme::Postgres))
}

/// Opens a store that keeps Placement's state, by URL (the schemes of
/// [`open`](crate::store::open) whose backend implements [`PlacementStore`]: memory, and
/// Redis and the SQL baseline when built with features `redis` and `sql`; not the CQL
/// backend, whose per-tree lightweight transactions do not cover the consumer records and
/// registries yet).
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn PlacementStore>> {
    let parsed = crate::store::StoreUrl::parse(url)?;
    match parsed.scheme() {
        crate::store::Scheme::Memory => Ok(std::sync::Arc::new(crate::store::memory::MemoryStore::new())),
        #[cfg(feature = "redis")]
        crate::store::Scheme::Redis | crate::store::Scheme::RedisCluster => {
            Ok(std::sync::Arc::new(crate::store::redis::RedisStore::open(&parsed).await?))
        }
        #[cfg(feature = "sql")]
        crate::store::Scheme::MySql | crate::store::Scheme::Postgres => {
            Ok(std::sync::Arc::new(crate::store::sql::SqlStore::open(&parsed).await?))
        }
        other => Err(Error::invalid(
            "store url",
            format!(
                "the {} backend does not keep Placement's state; the Placement API runs on: {}",
                other.backend(),
                PLACEMENT_BACKENDS
            ),
        )),
    }
}

/// The backends that implement [`PlacementStore`] in this build, for error messages.
const PLACEMENT_BACKENDS: &str = match (cfg!(feature = "redis"), cfg!(feature = "sql")) {
    (true, true) => "memory, redis, mysql, postgres",
    (true, false) => "memory, redis",
    (false, true) => "memory, mysql, postgres",
    (false, false) => "memory",
};

/// Reads the tree of `provider`, applies `decide` and writes the result with
/// [`PlacementStore::replace_tree`], re-reading and re-deciding up to [`UPDATE_ATTEMPTS`]
/// times when another writer moved the tree in between. `decide` sees the fresh tree each
/// time, so every check it makes (provider and consumer generations, capacity) is made
/// against the state the write lands on. Returns the written tree and `decide`'s value.
pub async fn update_tree<T>(
    store: &dyn PlacementStore,
    provider: ProviderId,
    mut decide: impl FnMut(&mut PlacementTree) -> Result<T> + Send,
) -> Result<(PlacementTree, T)> {
    let mut last = None;
    for _ in 0..UPDATE_ATTEMPTS {
        let old = store.placement_tree(provider).await?;
        let mut new = old.clone();
        let value = decide(&mut new)?;
        match store.replace_tree(&old, &new).await {
            Ok(generation) => {
                new.tree.generation = generation;
                return Ok((new, value));
            }
            Err(e @ Error::Conflict(Conflict::Generation { .. })) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::invalid("update", "no attempt made")))
}

/// Usage per class summed over every consumer whose project (and user, when given) match,
/// grouped by consumer type with the number of consumers of each group (Placement's
/// `GET /usages`): `consumer_type` `None` groups by type (consumers without one under
/// `unknown`), `all` puts everything in one group `all`, `unknown` keeps only consumers
/// without a type, any other value keeps only that type.
pub fn usages_of(
    trees: &[PlacementTree],
    project: &str,
    user: Option<&str>,
    consumer_type: Option<&str>,
) -> BTreeMap<String, (Resources, u64)> {
    let mut out: BTreeMap<String, (Resources, u64)> = BTreeMap::new();
    let mut counted: BTreeMap<String, BTreeSet<ConsumerId>> = BTreeMap::new();
    for t in trees {
        for c in t.consumers.values() {
            let a = &c.allocation;
            if a.project_id != project || user.is_some_and(|u| a.user_id != u) {
                continue;
            }
            let kind = c.consumer_type.clone().unwrap_or_else(|| "unknown".to_string());
            let group = match consumer_type {
                None => kind,
                Some("all") => "all".to_string(),
                Some(wanted) if wanted == kind => kind,
                Some(_) => continue,
            };
            let entry = out.entry(group.clone()).or_default();
            for resources in a.allocations.values() {
                for (class, amount) in resources {
                    let s = entry.0.entry(class.clone()).or_insert(0);
                    *s = s.saturating_add(*amount);
                }
            }
            if counted.entry(group).or_default().insert(c.allocation.consumer) {
                entry.1 += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ProviderNode, Resources};

    fn tree(cap: i64) -> (PlacementTree, ProviderId) {
        let id = ProviderId::new_v4();
        let node = ProviderNode {
            id,
            name: "cn".into(),
            parent: None,
            traits: BTreeSet::new(),
            aggregates: BTreeSet::new(),
            inventories: BTreeMap::from([(ResourceClass::Vcpu, Inventory::with_total(cap))]),
            usages: Resources::new(),
        };
        let t = ProviderTree { root: id, generation: 1, cell: None, providers: vec![node], groups: BTreeMap::new() };
        (PlacementTree { tree: t, generations: BTreeMap::new(), consumers: BTreeMap::new() }, id)
    }

    fn write(c: ConsumerId, p: ProviderId, n: i64, expected: ExpectedGeneration) -> AllocationWrite {
        AllocationWrite {
            consumer: c,
            project_id: "p".into(),
            user_id: "u".into(),
            consumer_type: None,
            expected,
            allocations: BTreeMap::from([(p, BTreeMap::from([(ResourceClass::Vcpu, n)]))]),
        }
    }

    #[test]
    fn replace_checks_generations_and_capacity() {
        let (mut t, p) = tree(4);
        let c = ConsumerId::new_v4();
        t.set_allocations(&[write(c, p, 3, ExpectedGeneration::New)]).unwrap();
        assert_eq!(t.consumers[&c].generation, 1);
        assert_eq!(t.generation(p), 1);
        // Replacing 3 by 4 fits because the consumer's own 3 are dropped first.
        t.set_allocations(&[write(c, p, 4, ExpectedGeneration::Is(1))]).unwrap();
        assert_eq!(t.tree.providers[0].used(&ResourceClass::Vcpu), 4);
        assert!(matches!(
            t.set_allocations(&[write(c, p, 1, ExpectedGeneration::New)]),
            Err(Error::Conflict(Conflict::ConsumerGeneration { .. }))
        ));
        let other = ConsumerId::new_v4();
        let before = t.clone();
        assert!(matches!(
            t.set_allocations(&[write(other, p, 1, ExpectedGeneration::New)]),
            Err(Error::Capacity { .. })
        ));
        assert_eq!(t, before, "a failed write changes nothing");
        // Emptying the consumer removes it.
        let mut w = write(c, p, 0, ExpectedGeneration::Is(2));
        w.allocations.clear();
        t.set_allocations(&[w]).unwrap();
        assert!(t.consumers.is_empty());
        assert_eq!(t.tree.providers[0].used(&ResourceClass::Vcpu), 0);
    }

    #[test]
    fn overage_may_stay_but_not_grow() {
        let (mut t, p) = tree(4);
        let c = ConsumerId::new_v4();
        t.set_allocations(&[write(c, p, 4, ExpectedGeneration::Unchecked)]).unwrap();
        let g = t.generation(p);
        t.set_inventories(p, g, &BTreeMap::from([(ResourceClass::Vcpu, Inventory::with_total(2))])).unwrap();
        // 4 -> 3: still over capacity 2, but better: accepted.
        t.set_allocations(&[write(c, p, 3, ExpectedGeneration::Unchecked)]).unwrap();
        // 3 -> 4: worse: refused.
        assert!(matches!(
            t.set_allocations(&[write(c, p, 4, ExpectedGeneration::Unchecked)]),
            Err(Error::Capacity { .. })
        ));
    }

    #[test]
    fn inventory_in_use_and_provider_generation() {
        let (mut t, p) = tree(4);
        t.set_allocations(&[write(ConsumerId::new_v4(), p, 1, ExpectedGeneration::Unchecked)]).unwrap();
        assert!(matches!(
            t.set_inventories(p, 0, &BTreeMap::new()),
            Err(Error::Conflict(Conflict::ProviderGeneration { expected: 0, actual: 1, .. }))
        ));
        assert!(matches!(
            t.set_inventories(p, 1, &BTreeMap::new()),
            Err(Error::Conflict(Conflict::InventoryInUse { .. }))
        ));
    }

    #[test]
    fn reparent_refuses_loops() {
        let (mut t, root) = tree(1);
        let mut add = |parent: ProviderId| {
            let id = ProviderId::new_v4();
            t.tree.providers.push(ProviderNode {
                id,
                name: id.to_string(),
                parent: Some(parent),
                traits: BTreeSet::new(),
                aggregates: BTreeSet::new(),
                inventories: BTreeMap::new(),
                usages: Resources::new(),
            });
            id
        };
        let a = add(root);
        let b = add(a);
        let c = add(root);
        assert!(t.reparent_within(a, b).is_err());
        t.reparent_within(a, c).unwrap();
        let order: Vec<_> = t.tree.providers.iter().map(|p| p.id).collect();
        let pos = |x| order.iter().position(|y| *y == x).unwrap();
        assert!(pos(c) < pos(a) && pos(a) < pos(b));
    }
}
