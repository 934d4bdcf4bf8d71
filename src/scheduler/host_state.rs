//! The scheduler's snapshot of host state, fed only by the store.
//!
//! Nova's HostManager copies compute node records out of every cell database and patches
//! them with instance info sent over RPC. Here a snapshot is a set of [`ProviderTree`]s read
//! from the store (with usage and server-group member counts, so no instance list is
//! needed), joined with the [`Host`] service records, aggregates and cells. It is refreshed
//! through the store's change feed (only trees that changed are re-read), and updated at once
//! with the scheduler's own successful claims (and only those: a host whose claim failed is
//! re-read instead).

use std::collections::{BTreeSet, HashMap};

use crate::model::{
    Aggregate, AggregateId, AllocationMap, Cell, CellId, GroupId, Host, ProviderId, ProviderTree, ResourceClass,
};

/// One compute host as the scheduler sees it: its service record and its provider tree.
#[derive(Clone, Debug, PartialEq)]
pub struct HostState {
    /// The compute service record (enabled, heartbeat, zone, capabilities).
    pub host: Host,
    /// The host's provider tree, with usage and group member counts.
    pub tree: ProviderTree,
    /// Instances building on the host: counted from the store at the last catalog refresh,
    /// plus the builds this scheduler claimed since (Nova's `num_io_ops`).
    pub io_ops: u32,
    /// Consecutive build failures reported for this host (reset by a success).
    pub failed_builds: u32,
}

impl HostState {
    /// A host state from a service record and its tree.
    pub fn new(host: Host, tree: ProviderTree) -> Self {
        HostState { host, tree, io_ops: 0, failed_builds: 0 }
    }

    /// The service host name.
    pub fn name(&self) -> &str {
        &self.host.name
    }

    /// The root provider.
    pub fn root(&self) -> ProviderId {
        self.tree.root
    }

    /// Free amount of `class` over the whole tree (capacity minus usage, summed over the
    /// providers that have it; may be negative after an inventory shrink).
    pub fn free(&self, class: &ResourceClass) -> i64 {
        self.tree.providers.iter().filter_map(|p| p.free(class)).sum()
    }

    /// Members of `group` on this host.
    pub fn group_members(&self, group: GroupId) -> u32 {
        self.tree.groups.get(&group).copied().unwrap_or(0)
    }

    /// The aggregates of the root provider (they span the whole tree).
    pub fn aggregates(&self) -> impl Iterator<Item = &AggregateId> {
        // The store lists the root first; fall back to a search for any other order.
        let root = match self.tree.providers.first() {
            Some(p) if p.id == self.tree.root => Some(p),
            _ => self.tree.root_node(),
        };
        root.into_iter().flat_map(|n| n.aggregates.iter())
    }

    /// The host's availability zone: the service record's, else the first aggregate of the
    /// root that defines one, else `default`.
    pub fn availability_zone(&self, aggregates: &HashMap<AggregateId, Aggregate>, default: &str) -> String {
        if let Some(az) = &self.host.availability_zone {
            return az.clone();
        }
        self.aggregates()
            .filter_map(|a| aggregates.get(a))
            .find_map(|a| a.availability_zone.clone())
            .unwrap_or_else(|| default.to_string())
    }

    /// The smallest value of aggregate metadata `key` parsed as a number over the host's
    /// aggregates (Nova's per-aggregate weight multipliers: the minimum wins).
    pub fn aggregate_number(&self, aggregates: &HashMap<AggregateId, Aggregate>, key: &str) -> Option<f64> {
        if aggregates.is_empty() {
            return None;
        }
        self.aggregates()
            .filter_map(|a| aggregates.get(a))
            .filter_map(|a| a.metadata.get(key))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .reduce(f64::min)
    }
}

/// The whole snapshot. Held behind a lock by the scheduler; public so filters, weighers and
/// tests can work on one directly.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Hosts with both a service record and a tree, by root provider.
    pub hosts: HashMap<ProviderId, HostState>,
    /// Trees whose host record is not known (yet): not schedulable.
    pub unhosted: HashMap<ProviderId, ProviderTree>,
    /// Service records whose tree is not known (yet).
    pub treeless: HashMap<ProviderId, Host>,
    /// Aggregates by id (availability zones, weight multipliers).
    pub aggregates: HashMap<AggregateId, Aggregate>,
    /// Cells by id (disabled cells take no builds).
    pub cells: HashMap<CellId, Cell>,
    /// Building instances per host name, from the store's instance records.
    pub building: HashMap<String, u32>,
    /// Consecutive build failures per host name, as reported by conductors.
    pub build_failures: HashMap<String, u32>,
}

impl Snapshot {
    /// Replaces or inserts a tree read from the store. Returns false when no service record
    /// is known for it (the caller may reload the catalog).
    pub fn put_tree(&mut self, tree: ProviderTree) -> bool {
        let root = tree.root;
        if let Some(h) = self.hosts.get_mut(&root) {
            h.tree = tree;
            return true;
        }
        if let Some(host) = self.treeless.remove(&root) {
            let mut state = HostState::new(host, tree);
            state.io_ops = self.building.get(&state.host.name).copied().unwrap_or(0);
            state.failed_builds = self.build_failures.get(&state.host.name).copied().unwrap_or(0);
            self.hosts.insert(root, state);
            return true;
        }
        self.unhosted.insert(root, tree);
        false
    }

    /// Forgets a tree that no longer exists.
    pub fn remove_tree(&mut self, root: ProviderId) {
        if let Some(h) = self.hosts.remove(&root) {
            self.treeless.insert(root, h.host);
        }
        self.unhosted.remove(&root);
    }

    /// Replaces the catalog (hosts, aggregates, cells, building counts) and re-joins hosts
    /// with trees. Trees are kept.
    pub fn set_catalog(
        &mut self,
        hosts: Vec<Host>,
        aggregates: Vec<Aggregate>,
        cells: Vec<Cell>,
        building: HashMap<String, u32>,
    ) {
        let mut trees: HashMap<ProviderId, ProviderTree> = self.unhosted.drain().collect();
        for (root, h) in self.hosts.drain() {
            trees.insert(root, h.tree);
        }
        self.treeless.clear();
        self.aggregates = aggregates.into_iter().map(|a| (a.id, a)).collect();
        self.cells = cells.into_iter().map(|c| (c.id, c)).collect();
        self.building = building;
        for host in hosts {
            self.treeless.insert(host.root_provider, host);
        }
        for (_, tree) in trees {
            self.put_tree(tree);
        }
    }

    /// Records a successful claim of this scheduler at once (Nova's
    /// `consume_from_request`, but only for a host that was actually claimed): usage, the
    /// group member count and io_ops. `generation` is the tree generation the store
    /// reported for the claim; when the snapshot already shows it (a concurrent refresh
    /// read the tree after the claim), nothing is added twice.
    pub fn apply_claim(
        &mut self,
        root: ProviderId,
        allocations: &AllocationMap,
        group: Option<GroupId>,
        generation: u64,
    ) {
        let Some(h) = self.hosts.get_mut(&root) else {
            return;
        };
        if h.tree.generation >= generation {
            return;
        }
        h.tree.apply(allocations, 1);
        if let Some(g) = group {
            *h.tree.groups.entry(g).or_insert(0) += 1;
        }
        if h.tree.generation + 1 == generation {
            h.tree.generation = generation;
        }
        h.io_ops += 1;
    }

    /// Records a build result reported by a conductor (BuildFailureWeigher input).
    pub fn record_build(&mut self, host: &str, success: bool) {
        let n = if success {
            self.build_failures.remove(host);
            0
        } else {
            let n = self.build_failures.entry(host.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        for h in self.hosts.values_mut().filter(|h| h.host.name == host) {
            h.failed_builds = n;
        }
    }

    /// Roots of every known tree (hosted or not).
    pub fn roots(&self) -> BTreeSet<ProviderId> {
        self.hosts.keys().chain(self.unhosted.keys()).copied().collect()
    }
}
