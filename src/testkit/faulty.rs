//! A store decorator that injects failures into a real store, for degraded-operation tests:
//! part of the store unreachable (the trees of chosen roots, as when the shard or node that
//! holds them is down), a claim whose write lands but whose answer is lost (a timeout with
//! the outcome unknown), the next N calls of an operation failing, or the next N writes of
//! an operation landing and then answering with a lost answer.
//!
//! Every injected failure is `Unavailable` or `Timeout` (what a backend returns when a node
//! is down or slow), so callers see exactly what they would see from a real outage; what
//! is not injected goes to the wrapped store unchanged.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::model::*;
use crate::store::prelude::*;

/// The failures to inject, shared between the test and its [`FaultyStore`]s; change them
/// at any time.
#[derive(Debug, Default)]
pub struct Faults {
    down_roots: Mutex<HashSet<ProviderId>>,
    lost_acks: Mutex<HashSet<ProviderId>>,
    fail_next: Mutex<HashMap<&'static str, u32>>,
    lose_next: Mutex<HashMap<&'static str, u32>>,
    injected: Mutex<BTreeMap<&'static str, u64>>,
    shards: Mutex<HashMap<ProviderId, usize>>,
}

impl Faults {
    /// New, injecting nothing.
    pub fn new() -> Arc<Self> {
        Arc::new(Faults::default())
    }

    /// Makes the trees of `roots` unreachable: claims on them, reads of them and releases
    /// of consumers holding allocations there fail with `Unavailable` (nothing applied).
    pub fn take_down(&self, roots: impl IntoIterator<Item = ProviderId>) {
        lock(&self.down_roots).extend(roots);
    }

    /// Makes every tree reachable again.
    pub fn bring_up(&self) {
        lock(&self.down_roots).clear();
    }

    /// Claims on the trees of `roots` are applied, then answered with a `Timeout` (the
    /// answer is lost: the caller cannot know the claim was made).
    pub fn lose_acks(&self, roots: impl IntoIterator<Item = ProviderId>) {
        lock(&self.lost_acks).extend(roots);
    }

    /// The next `n` calls of operation `op` (a store method's name, `update_instance`,
    /// `claim`, `release`, ...) fail with `Unavailable` without reaching the store.
    pub fn fail_next(&self, op: &'static str, n: u32) {
        *lock(&self.fail_next).entry(op).or_insert(0) += n;
    }

    /// The next `n` calls of write operation `op` (`create_instance`, `update_instance`,
    /// `put_request_spec`, `claim`, `release`, ...: any method that writes) reach the store
    /// and are applied, and then fail with `Timeout`, as when a pool or a network timed
    /// out after the server committed: the caller cannot know the write was made. A call
    /// the store refuses returns the store's own error (nothing was applied).
    pub fn lose_next_acks(&self, op: &'static str, n: u32) {
        *lock(&self.lose_next).entry(op).or_insert(0) += n;
    }

    /// Says that `root`'s tree lives in shard `shard` ([`Store::tree_shard`]), for a
    /// wrapped store that does not shard (memory).
    pub fn assign_shard(&self, root: ProviderId, shard: usize) {
        lock(&self.shards).insert(root, shard);
    }

    /// How many failures were injected, per operation.
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.injected).clone()
    }

    fn count(&self, op: &'static str) {
        *lock(&self.injected).entry(op).or_insert(0) += 1;
    }

    fn check(&self, op: &'static str) -> Result<()> {
        let mut next = lock(&self.fail_next);
        if let Some(n) = next.get_mut(op).filter(|n| **n > 0) {
            *n -= 1;
            drop(next);
            self.count(op);
            return Err(unavailable(format!("injected failure of {op}")));
        }
        Ok(())
    }

    /// Passes the answer of an applied write `r` on, unless [`lose_next_acks`] says it is
    /// lost.
    ///
    /// [`lose_next_acks`]: Self::lose_next_acks
    fn ack<T>(&self, op: &'static str, r: Result<T>) -> Result<T> {
        let r = r?;
        let mut next = lock(&self.lose_next);
        if let Some(n) = next.get_mut(op).filter(|n| **n > 0) {
            *n -= 1;
            drop(next);
            self.count(op);
            return Err(Error::Timeout {
                backend: "faulty",
                message: format!("{op}: the answer was lost (injected; the write was applied)"),
            });
        }
        Ok(r)
    }

    fn check_root(&self, op: &'static str, root: ProviderId) -> Result<()> {
        self.check(op)?;
        if lock(&self.down_roots).contains(&root) {
            self.count(op);
            return Err(unavailable(format!("{op}: the part of the store holding tree {root} is down (injected)")));
        }
        Ok(())
    }
}

fn unavailable(message: String) -> Error {
    Error::Unavailable { backend: "faulty", message }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A store whose calls go to `inner` unless [`Faults`] says they fail.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    faults: Arc<Faults>,
    /// Provider -> root, learnt from the trees read through this store, so that calls
    /// naming any provider of a tree that is down fail too.
    roots: Mutex<HashMap<ProviderId, ProviderId>>,
}

impl FaultyStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, faults: Arc<Faults>) -> Arc<Self> {
        Arc::new(FaultyStore { inner, faults, roots: Mutex::new(HashMap::new()) })
    }

    fn root_of(&self, provider: ProviderId) -> ProviderId {
        lock(&self.roots).get(&provider).copied().unwrap_or(provider)
    }

    fn learn(&self, tree: &ProviderTree) {
        let mut roots = lock(&self.roots);
        for p in &tree.providers {
            roots.insert(p.id, tree.root);
        }
    }
}

#[async_trait]
impl Providers for FaultyStore {
    async fn create_provider(&self, provider: &NewProvider) -> Result<u64> {
        self.faults.check("create_provider")?;
        let r = self.inner.create_provider(provider).await;
        self.faults.ack("create_provider", r)
    }
    async fn delete_provider(&self, provider: ProviderId) -> Result<()> {
        self.faults.check_root("delete_provider", self.root_of(provider))?;
        let r = self.inner.delete_provider(provider).await;
        self.faults.ack("delete_provider", r)
    }
    async fn provider_tree(&self, provider: ProviderId) -> Result<ProviderTree> {
        self.faults.check_root("provider_tree", self.root_of(provider))?;
        let t = self.inner.provider_tree(provider).await?;
        self.learn(&t);
        self.faults.check_root("provider_tree", t.root)?;
        Ok(t)
    }
    async fn list_provider_trees(&self, cell: Option<CellId>) -> Result<Vec<ProviderTree>> {
        self.faults.check("list_provider_trees")?;
        let trees = self.inner.list_provider_trees(cell).await?;
        for t in &trees {
            self.learn(t);
        }
        let down = lock(&self.faults.down_roots).clone();
        if let Some(t) = trees.iter().find(|t| down.contains(&t.root)) {
            self.faults.count("list_provider_trees");
            return Err(unavailable(format!("list_provider_trees: tree {} is unreachable (injected)", t.root)));
        }
        Ok(trees)
    }
    async fn set_inventories(
        &self,
        provider: ProviderId,
        generation: u64,
        inventories: &BTreeMap<ResourceClass, Inventory>,
    ) -> Result<InventoryWrite> {
        self.faults.check_root("set_inventories", self.root_of(provider))?;
        let r = self.inner.set_inventories(provider, generation, inventories).await;
        self.faults.ack("set_inventories", r)
    }
    async fn set_traits(&self, provider: ProviderId, generation: u64, traits: &BTreeSet<Trait>) -> Result<u64> {
        self.faults.check_root("set_traits", self.root_of(provider))?;
        let r = self.inner.set_traits(provider, generation, traits).await;
        self.faults.ack("set_traits", r)
    }
    async fn set_aggregates(
        &self,
        provider: ProviderId,
        generation: u64,
        aggregates: &BTreeSet<AggregateId>,
    ) -> Result<u64> {
        self.faults.check_root("set_aggregates", self.root_of(provider))?;
        let r = self.inner.set_aggregates(provider, generation, aggregates).await;
        self.faults.ack("set_aggregates", r)
    }
}

#[async_trait]
impl Claims for FaultyStore {
    async fn claim(&self, request: &ClaimRequest) -> Result<Claim> {
        let root = request.allocations.keys().next().map(|p| self.root_of(*p));
        if let Some(root) = root {
            self.faults.check_root("claim", root)?;
            if lock(&self.faults.lost_acks).contains(&root) {
                let _ = self.inner.claim(request).await?;
                self.faults.count("claim");
                return Err(Error::Timeout {
                    backend: "faulty",
                    message: format!("claim on tree {root}: the answer was lost (injected; the claim was made)"),
                });
            }
        } else {
            self.faults.check("claim")?;
        }
        let r = self.inner.claim(request).await;
        self.faults.ack("claim", r)
    }
    async fn release(&self, consumer: ConsumerId) -> Result<Released> {
        self.faults.check("release")?;
        let down = lock(&self.faults.down_roots).clone();
        if !down.is_empty() {
            for a in self.inner.allocations(consumer).await? {
                if down.contains(&a.root) {
                    self.faults.count("release");
                    return Err(unavailable(format!(
                        "release of {consumer}: tree {} is unreachable (injected)",
                        a.root
                    )));
                }
            }
        }
        let r = self.inner.release(consumer).await;
        self.faults.ack("release", r)
    }
    async fn allocations(&self, consumer: ConsumerId) -> Result<Vec<TreeAllocation>> {
        self.faults.check("allocations")?;
        self.inner.allocations(consumer).await
    }
    async fn tree_allocations(&self, provider: ProviderId) -> Result<Vec<TreeAllocation>> {
        self.faults.check_root("tree_allocations", self.root_of(provider))?;
        self.inner.tree_allocations(provider).await
    }
}

#[async_trait]
impl ChangeFeed for FaultyStore {
    async fn change_cursor(&self) -> Result<ChangeCursor> {
        self.faults.check("change_cursor")?;
        self.inner.change_cursor().await
    }
    async fn changes_since(&self, cursor: &ChangeCursor) -> Result<Changes> {
        self.faults.check("changes_since")?;
        self.inner.changes_since(cursor).await
    }
}

#[async_trait]
impl Catalog for FaultyStore {
    async fn put_cell(&self, cell: &Cell) -> Result<()> {
        self.faults.check("put_cell")?;
        let r = self.inner.put_cell(cell).await;
        self.faults.ack("put_cell", r)
    }
    async fn get_cell(&self, id: CellId) -> Result<Cell> {
        self.faults.check("get_cell")?;
        self.inner.get_cell(id).await
    }
    async fn list_cells(&self) -> Result<Vec<Cell>> {
        self.faults.check("list_cells")?;
        self.inner.list_cells().await
    }
    async fn put_host(&self, host: &Host) -> Result<()> {
        self.faults.check("put_host")?;
        let r = self.inner.put_host(host).await;
        self.faults.ack("put_host", r)
    }
    async fn get_host(&self, name: &str) -> Result<Host> {
        self.faults.check("get_host")?;
        self.inner.get_host(name).await
    }
    async fn list_hosts(&self, cell: Option<CellId>) -> Result<Vec<Host>> {
        self.faults.check("list_hosts")?;
        self.inner.list_hosts(cell).await
    }
    async fn report_host(&self, name: &str, at: Timestamp) -> Result<()> {
        self.faults.check("report_host")?;
        let r = self.inner.report_host(name, at).await;
        self.faults.ack("report_host", r)
    }
    async fn host_heartbeats(&self, cell: Option<CellId>) -> Result<Vec<(String, Timestamp)>> {
        self.faults.check("host_heartbeats")?;
        self.inner.host_heartbeats(cell).await
    }
    async fn put_flavor(&self, flavor: &Flavor) -> Result<()> {
        self.faults.check("put_flavor")?;
        let r = self.inner.put_flavor(flavor).await;
        self.faults.ack("put_flavor", r)
    }
    async fn get_flavor(&self, id: &FlavorId) -> Result<Flavor> {
        self.faults.check("get_flavor")?;
        self.inner.get_flavor(id).await
    }
    async fn list_flavors(&self) -> Result<Vec<Flavor>> {
        self.faults.check("list_flavors")?;
        self.inner.list_flavors().await
    }
    async fn put_aggregate(&self, aggregate: &Aggregate) -> Result<()> {
        self.faults.check("put_aggregate")?;
        let r = self.inner.put_aggregate(aggregate).await;
        self.faults.ack("put_aggregate", r)
    }
    async fn get_aggregate(&self, id: AggregateId) -> Result<Aggregate> {
        self.faults.check("get_aggregate")?;
        self.inner.get_aggregate(id).await
    }
    async fn list_aggregates(&self) -> Result<Vec<Aggregate>> {
        self.faults.check("list_aggregates")?;
        self.inner.list_aggregates().await
    }
    async fn create_server_group(&self, group: &ServerGroup) -> Result<()> {
        self.faults.check("create_server_group")?;
        let r = self.inner.create_server_group(group).await;
        self.faults.ack("create_server_group", r)
    }
    async fn get_server_group(&self, id: GroupId) -> Result<ServerGroup> {
        self.faults.check("get_server_group")?;
        self.inner.get_server_group(id).await
    }
    async fn delete_server_group(&self, id: GroupId) -> Result<()> {
        self.faults.check("delete_server_group")?;
        let r = self.inner.delete_server_group(id).await;
        self.faults.ack("delete_server_group", r)
    }
    async fn list_server_groups(&self) -> Result<Vec<ServerGroup>> {
        self.faults.check("list_server_groups")?;
        self.inner.list_server_groups().await
    }
    async fn put_request_spec(&self, spec: &RequestSpec) -> Result<()> {
        self.faults.check("put_request_spec")?;
        let r = self.inner.put_request_spec(spec).await;
        self.faults.ack("put_request_spec", r)
    }
    async fn get_request_spec(&self, instance: InstanceId) -> Result<RequestSpec> {
        self.faults.check("get_request_spec")?;
        self.inner.get_request_spec(instance).await
    }
    async fn delete_request_spec(&self, instance: InstanceId) -> Result<()> {
        self.faults.check("delete_request_spec")?;
        let r = self.inner.delete_request_spec(instance).await;
        self.faults.ack("delete_request_spec", r)
    }
}

#[async_trait]
impl Instances for FaultyStore {
    async fn create_instance(&self, instance: &Instance) -> Result<()> {
        self.faults.check("create_instance")?;
        let r = self.inner.create_instance(instance).await;
        self.faults.ack("create_instance", r)
    }
    async fn get_instance(&self, id: InstanceId) -> Result<Instance> {
        self.faults.check("get_instance")?;
        self.inner.get_instance(id).await
    }
    async fn update_instance(&self, id: InstanceId, patch: &InstancePatch) -> Result<Instance> {
        self.faults.check("update_instance")?;
        let r = self.inner.update_instance(id, patch).await;
        self.faults.ack("update_instance", r)
    }
    async fn delete_instance(&self, id: InstanceId) -> Result<()> {
        self.faults.check("delete_instance")?;
        let r = self.inner.delete_instance(id).await;
        self.faults.ack("delete_instance", r)
    }
    async fn list_instances(&self, query: &ListQuery) -> Result<InstancePage> {
        self.faults.check("list_instances")?;
        self.inner.list_instances(query).await
    }
    async fn repair_instance(&self, id: InstanceId) -> Result<()> {
        self.faults.check("repair_instance")?;
        self.inner.repair_instance(id).await
    }
    async fn instance_stub(&self, id: InstanceId) -> Result<Option<InstanceStub>> {
        self.faults.check("instance_stub")?;
        self.inner.instance_stub(id).await
    }
}

impl Store for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }

    fn leases(&self) -> Option<&dyn crate::store::leases::Leases> {
        self.inner.leases()
    }

    fn tree_shard(&self, root: ProviderId) -> Option<usize> {
        lock(&self.faults.shards).get(&root).copied().or_else(|| self.inner.tree_shard(root))
    }
}
