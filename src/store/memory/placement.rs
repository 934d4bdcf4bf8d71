//! [`PlacementStore`] for the embedded store: Placement's state lives next to each tree,
//! under the tree's mutex, so a compare-and-set is a generation comparison under the lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{MemoryStore, TreeState, lock, read, write};
use crate::error::{Conflict, Error, Kind, Result};
use crate::model::*;
use crate::store::placement::{ConsumerRecord, PlacementStore, PlacementTree, RegistryEntry};

/// Placement's state of one tree beyond the scheduler's [`ProviderTree`].
#[derive(Clone, Debug, Default)]
pub(super) struct Extra {
    /// Placement's provider generations (absent: 0).
    pub(super) generations: BTreeMap<ProviderId, u64>,
    /// Consumer generation and type of every consumer with allocations on the tree.
    pub(super) consumers: HashMap<ConsumerId, (u64, Option<String>)>,
}

impl Extra {
    /// A write to `provider`'s inventories, traits or aggregates.
    pub(super) fn bump(&mut self, provider: ProviderId) {
        *self.generations.entry(provider).or_insert(0) += 1;
    }

    /// A claim was written: it names its providers and creates its consumer.
    pub(super) fn claimed(&mut self, request: &ClaimRequest) {
        for provider in request.allocations.keys() {
            self.bump(*provider);
        }
        self.consumers.insert(request.consumer, (1, None));
    }
}

/// The custom resource classes and traits.
#[derive(Debug, Default)]
pub(super) struct Registry {
    classes: BTreeMap<String, i64>,
    traits: BTreeMap<String, i64>,
}

fn to_placement(s: &TreeState) -> PlacementTree {
    PlacementTree {
        tree: s.tree.clone(),
        generations: s.extra.generations.clone(),
        consumers: s
            .allocations
            .iter()
            .map(|(c, a)| {
                let (generation, consumer_type) = s.extra.consumers.get(c).cloned().unwrap_or((1, None));
                (*c, ConsumerRecord { allocation: a.clone(), generation, consumer_type })
            })
            .collect(),
    }
}

fn entries(m: &BTreeMap<String, i64>) -> Vec<RegistryEntry> {
    m.iter().map(|(name, created_at)| RegistryEntry { name: name.clone(), created_at: *created_at }).collect()
}

impl MemoryStore {
    fn live_trees(&self) -> Vec<Arc<Mutex<TreeState>>> {
        read(&self.trees).values().cloned().collect()
    }
}

#[async_trait]
impl PlacementStore for MemoryStore {
    async fn placement_tree(&self, provider: ProviderId) -> Result<PlacementTree> {
        self.with_tree(provider, |s| Ok((to_placement(s), false)))
    }

    async fn placement_trees(&self) -> Result<Vec<PlacementTree>> {
        let mut out: Vec<PlacementTree> = self
            .live_trees()
            .iter()
            .filter_map(|t| {
                let s = lock(t);
                (!s.deleted).then(|| to_placement(&s))
            })
            .collect();
        out.sort_by_key(|t| t.tree.root);
        Ok(out)
    }

    async fn replace_tree(&self, old: &PlacementTree, new: &PlacementTree) -> Result<u64> {
        let root = old.tree.root;
        let ids = |t: &PlacementTree| t.tree.providers.iter().map(|p| p.id).collect::<BTreeSet<_>>();
        if new.tree.root != root || ids(old) != ids(new) {
            return Err(Error::invalid("tree", "a tree replacement keeps the root and the set of providers"));
        }
        self.with_tree(root, |state| {
            if state.tree.generation != old.tree.generation {
                return Err(Error::Conflict(Conflict::Generation {
                    root,
                    expected: old.tree.generation,
                    actual: state.tree.generation,
                }));
            }
            // Renames: take every new name first, then give up the old ones.
            let renamed: Vec<(ProviderId, String, String)> = new
                .tree
                .providers
                .iter()
                .filter_map(|p| {
                    let before = state.tree.node(p.id)?;
                    (before.name != p.name).then(|| (p.id, before.name.clone(), p.name.clone()))
                })
                .collect();
            if !renamed.is_empty() {
                let mut names = lock(&self.names);
                for (id, _, name) in &renamed {
                    if names.get(name).is_some_and(|holder| holder != id) {
                        return Err(Error::Conflict(Conflict::DuplicateName { name: name.clone() }));
                    }
                }
                for (id, old_name, name) in &renamed {
                    if names.get(old_name) == Some(id) {
                        names.remove(old_name);
                    }
                    names.insert(name.clone(), *id);
                }
            }
            let before: BTreeSet<ConsumerId> = state.allocations.keys().copied().collect();
            let after: BTreeSet<ConsumerId> = new.consumers.keys().copied().collect();
            for c in before.difference(&after) {
                let mut index = self.consumer_shard(*c);
                if let Some(set) = index.get_mut(c) {
                    set.remove(&root);
                    if set.is_empty() {
                        index.remove(c);
                    }
                }
            }
            for c in after.difference(&before) {
                self.consumer_shard(*c).entry(*c).or_default().insert(root);
            }
            let generation = state.tree.generation;
            state.tree = new.tree.clone();
            state.tree.generation = generation;
            state.allocations = new.consumers.iter().map(|(c, r)| (*c, r.allocation.clone())).collect();
            state.extra = Extra {
                generations: new.generations.clone(),
                consumers: new.consumers.iter().map(|(c, r)| (*c, (r.generation, r.consumer_type.clone()))).collect(),
            };
            Ok((generation + 1, true))
        })
    }

    async fn move_provider(&self, provider: ProviderId, parent: Option<ProviderId>) -> Result<()> {
        let src_root = self.root_of(provider)?;
        let dst_root = match parent {
            Some(p) => Some(self.root_of(p)?),
            None if src_root == provider => return Ok(()),
            None => None,
        };
        if dst_root == Some(src_root) {
            return Err(Error::invalid("parent", "the new parent is in the same tree: replace the tree instead"));
        }
        let src = self.tree_of(provider)?;
        let dst = match dst_root {
            Some(r) => Some(read(&self.trees).get(&r).cloned().ok_or_else(|| Error::not_found(Kind::Provider, r))?),
            None => None,
        };
        // Two tree locks at once: always in root order, so two moves cannot deadlock.
        let (mut s, mut d) = match (&dst, dst_root) {
            (Some(dst), Some(dr)) if dr < src_root => {
                let d = lock(dst);
                (lock(&src), Some(d))
            }
            (Some(dst), _) => {
                let s = lock(&src);
                (s, Some(lock(dst)))
            }
            _ => (lock(&src), None),
        };
        if s.deleted || d.as_ref().is_some_and(|d| d.deleted) {
            return Err(Error::not_found(Kind::Provider, provider));
        }
        let subtree = to_placement(&s).subtree(provider);
        if s.allocations.values().any(|a| a.allocations.keys().any(|p| subtree.contains(p))) {
            return Err(Error::Conflict(Conflict::ProviderInUse { provider }));
        }
        if let (Some(p), Some(d)) = (parent, &d)
            && d.tree.node(p).is_none()
        {
            return Err(Error::not_found(Kind::Provider, p));
        }
        let (mut moved, kept): (Vec<ProviderNode>, Vec<ProviderNode>) =
            std::mem::take(&mut s.tree.providers).into_iter().partition(|n| subtree.contains(&n.id));
        s.tree.providers = kept;
        for n in &mut moved {
            if n.id == provider {
                n.parent = parent;
            }
        }
        let gens: BTreeMap<ProviderId, u64> =
            moved.iter().filter_map(|n| s.extra.generations.remove(&n.id).map(|g| (n.id, g))).collect();
        let new_root = dst_root.unwrap_or(provider);
        match d.as_mut() {
            Some(d) => {
                d.tree.providers.extend(moved);
                d.tree.providers = crate::store::placement::order_parents_first(std::mem::take(&mut d.tree.providers));
                d.extra.generations.extend(gens);
                d.tree.generation += 1;
                self.changes.record(d.tree.root, Some(d.tree.generation));
            }
            None => {
                let tree = ProviderTree {
                    root: provider,
                    generation: 1,
                    cell: s.tree.cell,
                    providers: crate::store::placement::order_parents_first(moved),
                    groups: BTreeMap::new(),
                };
                let state = TreeState {
                    tree,
                    allocations: HashMap::new(),
                    deleted: false,
                    extra: Extra { generations: gens, consumers: HashMap::new() },
                    usage_run: None,
                };
                write(&self.trees).insert(provider, Arc::new(Mutex::new(state)));
                self.changes.record(provider, Some(1));
            }
        }
        {
            let mut roots = write(&self.provider_root);
            for id in &subtree {
                roots.insert(*id, new_root);
            }
        }
        if provider == src_root {
            s.deleted = true;
            write(&self.trees).remove(&src_root);
            self.changes.record(src_root, None);
        } else {
            s.tree.generation += 1;
            self.changes.record(src_root, Some(s.tree.generation));
        }
        Ok(())
    }

    async fn resource_classes(&self) -> Result<Vec<RegistryEntry>> {
        Ok(entries(&lock(&self.registry).classes))
    }

    async fn create_resource_class(&self, class: &ResourceClass) -> Result<bool> {
        if !class.as_str().starts_with("CUSTOM_") {
            return Err(Error::invalid("resource_class", format!("{class} is a standard class")));
        }
        let mut r = lock(&self.registry);
        if r.classes.contains_key(class.as_str()) {
            return Ok(false);
        }
        r.classes.insert(class.to_string(), Timestamp::now().as_micros());
        Ok(true)
    }

    async fn delete_resource_class(&self, class: &ResourceClass) -> Result<()> {
        if !lock(&self.registry).classes.contains_key(class.as_str()) {
            return Err(Error::not_found(Kind::ResourceClass, class));
        }
        for t in self.live_trees() {
            let s = lock(&t);
            if !s.deleted && s.tree.providers.iter().any(|p| p.inventories.contains_key(class)) {
                return Err(Error::Conflict(Conflict::InUse { kind: Kind::ResourceClass, name: class.to_string() }));
            }
        }
        lock(&self.registry).classes.remove(class.as_str());
        Ok(())
    }

    async fn custom_traits(&self) -> Result<Vec<RegistryEntry>> {
        Ok(entries(&lock(&self.registry).traits))
    }

    async fn create_trait(&self, name: &Trait) -> Result<bool> {
        if !name.as_str().starts_with("CUSTOM_") {
            return Err(Error::invalid("trait", format!("{name} is not a custom trait")));
        }
        let mut r = lock(&self.registry);
        if r.traits.contains_key(name.as_str()) {
            return Ok(false);
        }
        r.traits.insert(name.to_string(), Timestamp::now().as_micros());
        Ok(true)
    }

    async fn delete_trait(&self, name: &Trait) -> Result<()> {
        if !lock(&self.registry).traits.contains_key(name.as_str()) {
            return Err(Error::not_found(Kind::Trait, name));
        }
        for t in self.live_trees() {
            let s = lock(&t);
            if !s.deleted && s.tree.providers.iter().any(|p| p.traits.contains(name)) {
                return Err(Error::Conflict(Conflict::InUse { kind: Kind::Trait, name: name.to_string() }));
            }
        }
        lock(&self.registry).traits.remove(name.as_str());
        Ok(())
    }
}
