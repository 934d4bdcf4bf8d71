//! The embedded store (`memory://`): the default backend and the reference model every
//! other backend is compared against.
//!
//! # Concurrency
//!
//! There is no global lock on the claim path. Each provider tree sits behind its own mutex;
//! a claim takes shared (read) locks on two small indexes (provider -> root, root -> tree),
//! then only its tree's mutex, decides with [`ClaimRequest::evaluate`], writes, records the
//! consumer -> tree index entry and the change-feed entry while still holding the tree lock,
//! and returns. Claims on different trees never wait for each other.
//!
//! # Change feed
//!
//! Every tree write appends `(seq, root)` to one of [`SHARDS`] logs chosen by root, taking
//! `seq` from a global counter *while holding that shard's lock*. A reader first reads the
//! counter, then scans the shards; any write with a smaller `seq` either is already in its
//! shard or is holding the shard's lock and will be seen when the reader gets it. So the
//! counter read first is a safe next cursor: nothing below it can be missed. Each shard keeps
//! the last [`SHARD_CAPACITY`] entries; an older cursor gets [`Changes::Resync`].

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;

use crate::error::{Conflict, Error, Kind, Result};
use crate::model::*;
use crate::store::prelude::*;

/// Number of change-log shards.
pub const SHARDS: usize = 32;
/// Entries kept per change-log shard before old ones are dropped.
pub const SHARD_CAPACITY: usize = 8192;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

fn shard_of<K: Hash>(k: &K, n: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    k.hash(&mut h);
    (h.finish() as usize) % n
}

struct TreeState {
    tree: ProviderTree,
    allocations: HashMap<ConsumerId, TreeAllocation>,
    /// Set when the tree was deleted while someone held its `Arc`.
    deleted: bool,
}

#[derive(Default)]
struct LogShard {
    entries: VecDeque<(u64, ProviderId)>,
    /// Highest seq dropped from this shard (0: none).
    dropped_upto: u64,
}

struct ChangeLog {
    seq: AtomicU64,
    shards: Vec<Mutex<LogShard>>,
}

impl ChangeLog {
    fn new() -> Self {
        ChangeLog { seq: AtomicU64::new(0), shards: (0..SHARDS).map(|_| Mutex::default()).collect() }
    }

    fn record(&self, root: ProviderId) {
        let mut shard = lock(&self.shards[shard_of(&root, SHARDS)]);
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        shard.entries.push_back((seq, root));
        if shard.entries.len() > SHARD_CAPACITY
            && let Some((dropped, _)) = shard.entries.pop_front()
        {
            shard.dropped_upto = dropped;
        }
    }

    fn cursor(&self) -> ChangeCursor {
        ChangeCursor(format!("mem:{}", self.seq.load(Ordering::SeqCst)))
    }

    fn since(&self, cursor: &ChangeCursor) -> Result<Changes> {
        let since: u64 = cursor.0.strip_prefix("mem:").and_then(|s| s.parse().ok()).ok_or_else(|| {
            Error::invalid("change cursor", format!("{:?} was not issued by a memory store", cursor.0))
        })?;
        let next = self.seq.load(Ordering::SeqCst);
        let mut roots = BTreeSet::new();
        for shard in &self.shards {
            let shard = lock(shard);
            if shard.dropped_upto > since {
                return Ok(Changes::Resync);
            }
            let start = shard.entries.partition_point(|(s, _)| *s <= since);
            roots.extend(shard.entries.range(start..).map(|(_, r)| *r));
        }
        Ok(Changes::Trees { roots: roots.into_iter().collect(), next: ChangeCursor(format!("mem:{next}")) })
    }
}

#[derive(Default)]
struct CatalogData {
    cells: BTreeMap<CellId, Cell>,
    hosts: BTreeMap<String, Host>,
    flavors: BTreeMap<FlavorId, Flavor>,
    aggregates: BTreeMap<AggregateId, Aggregate>,
    groups: BTreeMap<GroupId, ServerGroup>,
    specs: HashMap<InstanceId, RequestSpec>,
}

#[derive(Default)]
struct InstanceData {
    by_id: HashMap<InstanceId, Instance>,
    /// Every instance in listing order.
    order: BTreeSet<SortKey>,
    /// Per project, in listing order.
    by_project: HashMap<String, BTreeSet<SortKey>>,
}

/// The embedded in-process store. Cheap to create; everything is lost when it is dropped.
pub struct MemoryStore {
    trees: RwLock<HashMap<ProviderId, Arc<Mutex<TreeState>>>>,
    provider_root: RwLock<HashMap<ProviderId, ProviderId>>,
    names: Mutex<HashMap<String, ProviderId>>,
    consumers: Vec<Mutex<HashMap<ConsumerId, BTreeSet<ProviderId>>>>,
    changes: ChangeLog,
    catalog: RwLock<CatalogData>,
    instances: RwLock<InstanceData>,
    leases: super::leases::MemoryLeases,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").field("trees", &read(&self.trees).len()).finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            trees: RwLock::default(),
            provider_root: RwLock::default(),
            names: Mutex::default(),
            consumers: (0..SHARDS).map(|_| Mutex::default()).collect(),
            changes: ChangeLog::new(),
            catalog: RwLock::default(),
            instances: RwLock::default(),
            leases: super::leases::MemoryLeases::default(),
        }
    }

    fn root_of(&self, provider: ProviderId) -> Result<ProviderId> {
        read(&self.provider_root).get(&provider).copied().ok_or_else(|| Error::not_found(Kind::Provider, provider))
    }

    fn tree_of(&self, provider: ProviderId) -> Result<Arc<Mutex<TreeState>>> {
        let root = self.root_of(provider)?;
        read(&self.trees).get(&root).cloned().ok_or_else(|| Error::not_found(Kind::Provider, provider))
    }

    fn consumer_shard(&self, consumer: ConsumerId) -> MutexGuard<'_, HashMap<ConsumerId, BTreeSet<ProviderId>>> {
        lock(&self.consumers[shard_of(&consumer, SHARDS)])
    }

    /// Runs `f` on the locked, live tree of `provider`, recording a change when `f` says it
    /// wrote (returns `(value, true)`) and bumping the generation.
    fn with_tree<T>(&self, provider: ProviderId, f: impl FnOnce(&mut TreeState) -> Result<(T, bool)>) -> Result<T> {
        let tree = self.tree_of(provider)?;
        let mut state = lock(&tree);
        if state.deleted {
            return Err(Error::not_found(Kind::Provider, provider));
        }
        let (value, wrote) = f(&mut state)?;
        if wrote {
            state.tree.generation += 1;
            self.changes.record(state.tree.root);
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
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn describe(&self) -> String {
        "memory://".to_string()
    }

    fn leases(&self) -> Option<&dyn super::leases::Leases> {
        Some(&self.leases)
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
                            Arc::new(Mutex::new(TreeState { tree, allocations: HashMap::new(), deleted: false })),
                        );
                        slot.insert(p.id);
                        self.changes.record(p.id);
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
            Ok((InventoryWrite { generation: generation + 1, over_capacity }, true))
        })
    }

    async fn set_traits(&self, provider: ProviderId, generation: u64, traits: &BTreeSet<Trait>) -> Result<u64> {
        self.with_tree(provider, |state| {
            Self::check_generation(state, generation)?;
            let node = state.tree.node_mut(provider).ok_or_else(|| Error::not_found(Kind::Provider, provider))?;
            node.traits = traits.clone();
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
                return Ok((Claim { root: state.tree.root, generation: state.tree.generation, replayed: true }, false));
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
            Ok((Claim { root: state.tree.root, generation: state.tree.generation + 1, replayed: false }, true))
        })
    }

    async fn release(&self, consumer: ConsumerId) -> Result<Released> {
        let roots: Vec<ProviderId> =
            self.consumer_shard(consumer).get(&consumer).map(|s| s.iter().copied().collect()).unwrap_or_default();
        let mut released = Vec::new();
        for root in roots {
            let done = self.with_tree(root, |state| {
                let Some(alloc) = state.allocations.remove(&consumer) else {
                    return Ok((false, false));
                };
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
                Ok((true, true))
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

#[async_trait]
impl ChangeFeed for MemoryStore {
    async fn change_cursor(&self) -> Result<ChangeCursor> {
        Ok(self.changes.cursor())
    }

    async fn changes_since(&self, cursor: &ChangeCursor) -> Result<Changes> {
        self.changes.since(cursor)
    }
}

#[async_trait]
impl Catalog for MemoryStore {
    async fn put_cell(&self, cell: &Cell) -> Result<()> {
        if cell.name.is_empty() {
            return Err(Error::invalid("cell.name", "must not be empty"));
        }
        write(&self.catalog).cells.insert(cell.id, cell.clone());
        Ok(())
    }

    async fn get_cell(&self, id: CellId) -> Result<Cell> {
        read(&self.catalog).cells.get(&id).cloned().ok_or_else(|| Error::not_found(Kind::Cell, id))
    }

    async fn list_cells(&self) -> Result<Vec<Cell>> {
        Ok(read(&self.catalog).cells.values().cloned().collect())
    }

    async fn put_host(&self, host: &Host) -> Result<()> {
        if host.name.is_empty() || host.name.len() > 255 {
            return Err(Error::invalid("host.name", "must be 1 to 255 characters"));
        }
        write(&self.catalog).hosts.insert(host.name.clone(), host.clone());
        Ok(())
    }

    async fn get_host(&self, name: &str) -> Result<Host> {
        read(&self.catalog).hosts.get(name).cloned().ok_or_else(|| Error::not_found(Kind::Host, name))
    }

    async fn list_hosts(&self, cell: Option<CellId>) -> Result<Vec<Host>> {
        Ok(read(&self.catalog).hosts.values().filter(|h| cell.is_none_or(|c| h.cell == c)).cloned().collect())
    }

    async fn put_flavor(&self, flavor: &Flavor) -> Result<()> {
        flavor.validate()?;
        write(&self.catalog).flavors.insert(flavor.id.clone(), flavor.clone());
        Ok(())
    }

    async fn get_flavor(&self, id: &FlavorId) -> Result<Flavor> {
        read(&self.catalog).flavors.get(id).cloned().ok_or_else(|| Error::not_found(Kind::Flavor, id))
    }

    async fn list_flavors(&self) -> Result<Vec<Flavor>> {
        Ok(read(&self.catalog).flavors.values().cloned().collect())
    }

    async fn put_aggregate(&self, aggregate: &Aggregate) -> Result<()> {
        write(&self.catalog).aggregates.insert(aggregate.id, aggregate.clone());
        Ok(())
    }

    async fn get_aggregate(&self, id: AggregateId) -> Result<Aggregate> {
        read(&self.catalog).aggregates.get(&id).cloned().ok_or_else(|| Error::not_found(Kind::Aggregate, id))
    }

    async fn list_aggregates(&self) -> Result<Vec<Aggregate>> {
        Ok(read(&self.catalog).aggregates.values().cloned().collect())
    }

    async fn create_server_group(&self, group: &ServerGroup) -> Result<()> {
        group.validate()?;
        let mut c = write(&self.catalog);
        if c.groups.contains_key(&group.id) {
            return Err(Error::already_exists(Kind::ServerGroup, group.id));
        }
        c.groups.insert(group.id, group.clone());
        Ok(())
    }

    async fn get_server_group(&self, id: GroupId) -> Result<ServerGroup> {
        read(&self.catalog).groups.get(&id).cloned().ok_or_else(|| Error::not_found(Kind::ServerGroup, id))
    }

    async fn delete_server_group(&self, id: GroupId) -> Result<()> {
        write(&self.catalog).groups.remove(&id).map(|_| ()).ok_or_else(|| Error::not_found(Kind::ServerGroup, id))
    }

    async fn put_request_spec(&self, spec: &RequestSpec) -> Result<()> {
        write(&self.catalog).specs.insert(spec.instance_uuid, spec.clone());
        Ok(())
    }

    async fn get_request_spec(&self, instance: InstanceId) -> Result<RequestSpec> {
        read(&self.catalog).specs.get(&instance).cloned().ok_or_else(|| Error::not_found(Kind::RequestSpec, instance))
    }

    async fn delete_request_spec(&self, instance: InstanceId) -> Result<()> {
        write(&self.catalog).specs.remove(&instance);
        Ok(())
    }
}

#[async_trait]
impl Instances for MemoryStore {
    async fn create_instance(&self, instance: &Instance) -> Result<()> {
        instance.validate()?;
        let mut t = write(&self.instances);
        if t.by_id.contains_key(&instance.uuid) {
            return Err(Error::already_exists(Kind::Instance, instance.uuid));
        }
        let key = instance.sort_key();
        t.order.insert(key);
        t.by_project.entry(instance.project_id.clone()).or_default().insert(key);
        t.by_id.insert(instance.uuid, instance.clone());
        Ok(())
    }

    async fn get_instance(&self, id: InstanceId) -> Result<Instance> {
        read(&self.instances).by_id.get(&id).cloned().ok_or_else(|| Error::not_found(Kind::Instance, id))
    }

    async fn update_instance(&self, id: InstanceId, patch: &InstancePatch) -> Result<Instance> {
        let mut t = write(&self.instances);
        let i = t.by_id.get_mut(&id).ok_or_else(|| Error::not_found(Kind::Instance, id))?;
        i.apply(patch, Timestamp::now());
        Ok(i.clone())
    }

    async fn delete_instance(&self, id: InstanceId) -> Result<()> {
        let mut t = write(&self.instances);
        let i = t.by_id.remove(&id).ok_or_else(|| Error::not_found(Kind::Instance, id))?;
        let key = i.sort_key();
        t.order.remove(&key);
        if let Some(set) = t.by_project.get_mut(&i.project_id) {
            set.remove(&key);
            if set.is_empty() {
                t.by_project.remove(&i.project_id);
            }
        }
        Ok(())
    }

    async fn list_instances(&self, query: &ListQuery) -> Result<InstancePage> {
        let t = read(&self.instances);
        let start = match query.marker {
            Some(m) => Bound::Excluded(t.by_id.get(&m).ok_or_else(|| Error::not_found(Kind::Marker, m))?.sort_key()),
            None => Bound::Unbounded,
        };
        let limit = query.effective_limit();
        if limit == 0 {
            return Ok(InstancePage::default());
        }
        let empty = BTreeSet::new();
        let index = match &query.filters.project_id {
            Some(p) => t.by_project.get(p).unwrap_or(&empty),
            None => &t.order,
        };
        let mut instances: Vec<Instance> = index
            .range((start, Bound::Unbounded))
            .filter_map(|k| t.by_id.get(&k.uuid))
            .filter(|i| query.filters.matches(i))
            .take(limit + 1)
            .cloned()
            .collect();
        let next_marker = if instances.len() > limit {
            instances.truncate(limit);
            instances.last().map(|i| i.uuid)
        } else {
            None
        };
        Ok(InstancePage { instances, next_marker })
    }
}
