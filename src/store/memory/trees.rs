//! The memory store's provider trees and claims.
//!
//! There is no global lock on the claim path. Each provider tree sits behind its own mutex;
//! a claim takes shared (read) locks on two small indexes (provider -> root, root -> tree),
//! then only its tree's mutex, decides with [`ClaimRequest::evaluate`], writes, records the
//! consumer -> tree index entry and the change-feed entry while still holding the tree lock,
//! and returns. Claims on different trees never wait for each other.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::error::{Conflict, Error, Kind, Result};
use crate::model::*;
use crate::store::prelude::*;

use super::{MemoryStore, SHARDS, lock, read, shard_of, write};

pub(super) struct TreeState {
    pub(super) tree: ProviderTree,
    pub(super) allocations: HashMap<ConsumerId, TreeAllocation>,
    /// Set when the tree was deleted while someone held its `Arc`.
    pub(super) deleted: bool,
    /// Placement's provider generations and consumer records.
    pub(super) extra: super::placement::Extra,
    /// `(start, last)`: every write from generation `start` up to `last` was a claim or a
    /// release (what the change feed vouches for in a [`TreeUsage`]). Only claims and
    /// releases set it, so any other write, present or future, ends the run by default.
    pub(super) usage_run: Option<(u64, u64)>,
}

/// What a write to a tree changed, for the change feed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Wrote {
    /// Nothing: no generation change, no feed entry.
    Nothing,
    /// Usage and group counts only (a claim or a release).
    Usage,
    /// Anything else (inventories, traits, aggregates, providers).
    Structure,
}

impl From<bool> for Wrote {
    fn from(wrote: bool) -> Self {
        if wrote { Wrote::Structure } else { Wrote::Nothing }
    }
}

impl MemoryStore {
    pub(super) fn root_of(&self, provider: ProviderId) -> Result<ProviderId> {
        read(&self.provider_root).get(&provider).copied().ok_or_else(|| Error::not_found(Kind::Provider, provider))
    }

    pub(super) fn tree_of(&self, provider: ProviderId) -> Result<Arc<Mutex<TreeState>>> {
        let root = self.root_of(provider)?;
        read(&self.trees).get(&root).cloned().ok_or_else(|| Error::not_found(Kind::Provider, provider))
    }

    pub(super) fn consumer_shard(
        &self,
        consumer: ConsumerId,
    ) -> MutexGuard<'_, HashMap<ConsumerId, BTreeSet<ProviderId>>> {
        lock(&self.consumers[shard_of(&consumer, SHARDS)])
    }

    /// Runs `f` on the locked, live tree of `provider`, recording a change when `f` says it
    /// wrote (returns `(value, true)`) and bumping the generation.
    pub(super) fn with_tree<T, W: Into<Wrote>>(
        &self,
        provider: ProviderId,
        f: impl FnOnce(&mut TreeState) -> Result<(T, W)>,
    ) -> Result<T> {
        let tree = self.tree_of(provider)?;
        let mut state = lock(&tree);
        if state.deleted {
            return Err(Error::not_found(Kind::Provider, provider));
        }
        let (value, wrote) = f(&mut state)?;
        let wrote = wrote.into();
        if wrote != Wrote::Nothing {
            let before = state.tree.generation;
            state.tree.generation += 1;
            state.usage_run = match (wrote, state.usage_run) {
                (Wrote::Usage, Some((start, last))) if last == before => Some((start, before + 1)),
                (Wrote::Usage, _) => Some((before, before + 1)),
                _ => None,
            };
            // A deleted tree must be re-read (to learn it is gone), so it carries no generation.
            let generation = (!state.deleted).then_some(state.tree.generation);
            self.changes.record(state.tree.root, generation);
        }
        Ok(value)
    }

    fn check_generation(state: &TreeState, expected: u64) -> Result<()> {
        if state.tree.generation != expected {
            return Err(Error::Conflict(Conflict::Generation {
                root: state.tree.root,
                expected,
                actual: state.tree.generation,
            }));
        }
        Ok(())
    }
}

#[async_trait]
impl Providers for MemoryStore {
    async fn create_provider(&self, p: &NewProvider) -> Result<u64> {
        p.validate()?;
        if read(&self.provider_root).contains_key(&p.id) {
            return Err(Error::already_exists(Kind::Provider, p.id));
        }
        // Reserve the name first so two creates cannot both take it.
        {
            let mut names = lock(&self.names);
            if names.contains_key(&p.name) {
                return Err(Error::Conflict(Conflict::DuplicateName { name: p.name.clone() }));
            }
            names.insert(p.name.clone(), p.id);
        }
        let unreserve = || {
            lock(&self.names).remove(&p.name);
        };
        let node = ProviderNode {
            id: p.id,
            name: p.name.clone(),
            parent: p.parent,
            traits: p.traits.clone(),
            aggregates: p.aggregates.clone(),
            inventories: p.inventories.clone(),
            usages: Resources::new(),
        };
        let result = match p.parent {
            None => {
                let mut roots = write(&self.provider_root);
                match roots.entry(p.id) {
                    Entry::Occupied(_) => Err(Error::already_exists(Kind::Provider, p.id)),
                    Entry::Vacant(slot) => {
                        let tree = ProviderTree {
                            root: p.id,
                            generation: 1,
                            cell: p.cell,
                            providers: vec![node],
                            groups: BTreeMap::new(),
                        };
                        // The tree exists before its id resolves, so a reader that finds the
                        // id always finds the tree.
                        write(&self.trees).insert(
                            p.id,
                            Arc::new(Mutex::new(TreeState {
                                tree,
                                allocations: HashMap::new(),
                                deleted: false,
                                extra: Default::default(),
                                usage_run: None,
                            })),
                        );
                        slot.insert(p.id);
                        self.changes.record(p.id, Some(1));
                        Ok(1)
                    }
                }
            }
            Some(parent) => self.with_tree(parent, |state| {
                match write(&self.provider_root).entry(p.id) {
                    Entry::Occupied(_) => return Err(Error::already_exists(Kind::Provider, p.id)),
                    Entry::Vacant(slot) => slot.insert(state.tree.root),
                };
                state.tree.providers.push(node);
                Ok((state.tree.generation + 1, true))
            }),
        };
        if result.is_err() {
            unreserve();
        }
        result
    }

    async fn delete_provider(&self, provider: ProviderId) -> Result<()> {
        let root = self.root_of(provider)?;
        let name = self.with_tree(provider, |state| {
            if state.tree.providers.iter().any(|p| p.parent == Some(provider)) {
                return Err(Error::Conflict(Conflict::ProviderInUse { provider }));
            }
            let node = state.tree.node(provider).ok_or_else(|| Error::not_found(Kind::Provider, provider))?;
            if !node.usages.is_empty() || (provider == root && !state.allocations.is_empty()) {
                return Err(Error::Conflict(Conflict::ProviderInUse { provider }));
            }
            let name = node.name.clone();
            state.tree.providers.retain(|p| p.id != provider);
            state.extra.generations.remove(&provider);
            if provider == root {
                state.deleted = true;
            }
            Ok((name, true))
        })?;
        write(&self.provider_root).remove(&provider);
        lock(&self.names).remove(&name);
        if provider == root {
            write(&self.trees).remove(&root);
        }
        Ok(())
    }

    async fn provider_tree(&self, provider: ProviderId) -> Result<ProviderTree> {
        self.with_tree(provider, |s| Ok((s.tree.clone(), false)))
    }

    async fn list_provider_trees(&self, cell: Option<CellId>) -> Result<Vec<ProviderTree>> {
        let trees: Vec<_> = read(&self.trees).values().cloned().collect();
        let mut out: Vec<ProviderTree> = trees
            .iter()
            .filter_map(|t| {
                let s = lock(t);
                (!s.deleted && cell.is_none_or(|c| s.tree.cell == Some(c))).then(|| s.tree.clone())
            })
            .collect();
        out.sort_by_key(|t| t.root);
        Ok(out)
    }

    async fn set_inventories(
        &self,
        provider: ProviderId,
        generation: u64,
        inventories: &BTreeMap<ResourceClass, Inventory>,
    ) -> Result<InventoryWrite> {
        for (class, inv) in inventories {
            inv.validate(&format!("{class} on {provider}"))?;
        }
        self.with_tree(provider, |state| {
            Self::check_generation(state, generation)?;
            let node = state.tree.node_mut(provider).ok_or_else(|| Error::not_found(Kind::Provider, provider))?;
            if let Some(class) = node.usages.keys().find(|c| !inventories.contains_key(*c)) {
                return Err(Error::Conflict(Conflict::InventoryInUse { provider, class: class.clone() }));
            }
            node.inventories = inventories.clone();
            let over_capacity =
                inventories.iter().filter(|(c, inv)| node.used(c) > inv.capacity()).map(|(c, _)| c.clone()).collect();
            state.extra.bump(provider);
            Ok((InventoryWrite { generation: generation + 1, over_capacity }, true))
        })
    }

    async fn set_traits(&self, provider: ProviderId, generation: u64, traits: &BTreeSet<Trait>) -> Result<u64> {
        self.with_tree(provider, |state| {
            Self::check_generation(state, generation)?;
            let node = state.tree.node_mut(provider).ok_or_else(|| Error::not_found(Kind::Provider, provider))?;
            node.traits = traits.clone();
            state.extra.bump(provider);
            Ok((generation + 1, true))
        })
    }

    async fn set_aggregates(
        &self,
        provider: ProviderId,
        generation: u64,
        aggregates: &BTreeSet<AggregateId>,
    ) -> Result<u64> {
        self.with_tree(provider, |state| {
            Self::check_generation(state, generation)?;
            let node = state.tree.node_mut(provider).ok_or_else(|| Error::not_found(Kind::Provider, provider))?;
            node.aggregates = aggregates.clone();
            state.extra.bump(provider);
            Ok((generation + 1, true))
        })
    }
}

#[async_trait]
impl Claims for MemoryStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim> {
        request.validate()?;
        for provider in request.allocations.keys() {
            self.root_of(*provider)?;
        }
        let first = *request.allocations.keys().next().ok_or_else(|| Error::invalid("allocations", "empty"))?;
        self.with_tree(first, |state| {
            let held = state.allocations.get(&request.consumer).map(|a| &a.allocations);
            if request.evaluate(&state.tree, held)? {
                return Ok((
                    Claim { root: state.tree.root, generation: state.tree.generation, replayed: true },
                    Wrote::Nothing,
                ));
            }
            let allocations = normalized(&request.allocations);
            state.tree.apply(&allocations, 1);
            if let Some(g) = request.group {
                *state.tree.groups.entry(g.group).or_insert(0) += 1;
            }
            state.allocations.insert(
                request.consumer,
                TreeAllocation {
                    consumer: request.consumer,
                    root: state.tree.root,
                    project_id: request.project_id.clone(),
                    user_id: request.user_id.clone(),
                    group: request.group.map(|g| g.group),
                    allocations,
                },
            );
            self.consumer_shard(request.consumer).entry(request.consumer).or_default().insert(state.tree.root);
            state.extra.claimed(request);
            Ok((Claim { root: state.tree.root, generation: state.tree.generation + 1, replayed: false }, Wrote::Usage))
        })
    }

    async fn release(&self, consumer: ConsumerId) -> Result<Released> {
        let roots: Vec<ProviderId> =
            self.consumer_shard(consumer).get(&consumer).map(|s| s.iter().copied().collect()).unwrap_or_default();
        let mut released = Vec::new();
        for root in roots {
            let done = self.with_tree(root, |state| {
                let Some(alloc) = state.allocations.remove(&consumer) else {
                    return Ok((false, Wrote::Nothing));
                };
                state.extra.consumers.remove(&consumer);
                state.tree.apply(&alloc.allocations, -1);
                if let Some(g) = alloc.group
                    && let Some(n) = state.tree.groups.get_mut(&g)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        state.tree.groups.remove(&g);
                    }
                }
                let mut index = self.consumer_shard(consumer);
                if let Some(set) = index.get_mut(&consumer) {
                    set.remove(&root);
                    if set.is_empty() {
                        index.remove(&consumer);
                    }
                }
                Ok((true, Wrote::Usage))
            });
            match done {
                Ok(true) => released.push(root),
                Ok(false) | Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Released { roots: released })
    }

    async fn allocations(&self, consumer: ConsumerId) -> Result<Vec<TreeAllocation>> {
        let roots: Vec<ProviderId> =
            self.consumer_shard(consumer).get(&consumer).map(|s| s.iter().copied().collect()).unwrap_or_default();
        let mut out = Vec::new();
        for root in roots {
            if let Ok(Some(a)) = self.with_tree(root, |s| Ok((s.allocations.get(&consumer).cloned(), false))) {
                out.push(a);
            }
        }
        Ok(out)
    }

    async fn tree_allocations(&self, provider: ProviderId) -> Result<Vec<TreeAllocation>> {
        self.with_tree(provider, |s| {
            let mut v: Vec<_> = s.allocations.values().cloned().collect();
            v.sort_by_key(|a| a.consumer);
            Ok((v, false))
        })
    }
}
