//! One host as filters and weighers see it ([`HostView`]), and [`HostState`], a host
//! materialized from the snapshot (service record and provider tree) for inspection.
//!
//! Nova's HostManager copies compute node records out of every cell database and patches
//! them with instance info sent over RPC. Here the snapshot
//! ([`SharedSnapshot`](crate::scheduler::SharedSnapshot)) is read from the store only
//! (provider trees with usage and server-group member counts, so no instance list is
//! needed, joined with the host service records, aggregates and cells) and kept in a
//! compact form; filters and weighers read it through [`HostView`], which both the compact
//! hosts and a materialized [`HostState`] implement, so there is one implementation of each
//! filter and weigher.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::model::{Aggregate, AggregateId, GroupId, Host, ProviderId, ProviderTree, ResourceClass, Timestamp};

/// What filters and weighers may read of one host.
pub trait HostView {
    /// The service host name.
    fn name(&self) -> &str;
    /// Whether the compute service is enabled.
    fn enabled(&self) -> bool;
    /// Whether the service reported within `down_after` of `now`.
    fn is_up(&self, now: Timestamp, down_after: Duration) -> bool;
    /// The host's availability zone: the service record's, else the first aggregate of
    /// the root that defines one, else `default`.
    fn zone<'a>(&'a self, aggregates: &'a HashMap<AggregateId, Aggregate>, default: &'a str) -> &'a str;
    /// Hypervisor capabilities of the service record.
    fn capabilities(&self) -> &BTreeMap<String, String>;
    /// Members of `group` on the host.
    fn group_members(&self, group: GroupId) -> u32;
    /// Instances building on the host (Nova's `num_io_ops`).
    fn io_ops(&self) -> u32;
    /// Consecutive build failures reported for the host.
    fn failed_builds(&self) -> u32;
    /// Free amount of `class` over the whole tree (may be negative after a shrink).
    fn free(&self, class: &ResourceClass) -> i64;
    /// The smallest value of aggregate metadata `key` parsed as a finite number over the
    /// host's (root's) aggregates.
    fn aggregate_number(&self, aggregates: &HashMap<AggregateId, Aggregate>, key: &str) -> Option<f64>;
}

/// The smallest finite number under `key` in the metadata of `ids` (Nova's per-aggregate
/// weight multipliers: the minimum wins).
pub(crate) fn min_metadata<'a>(
    ids: impl Iterator<Item = &'a AggregateId>,
    aggregates: &HashMap<AggregateId, Aggregate>,
    key: &str,
) -> Option<f64> {
    ids.filter_map(|a| aggregates.get(a))
        .filter_map(|a| a.metadata.get(key))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .reduce(f64::min)
}

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
        self.availability_zone_ref(aggregates, default).to_string()
    }

    /// [`availability_zone`](Self::availability_zone) without a copy (the
    /// AvailabilityZoneFilter compares it for every ranked host).
    pub fn availability_zone_ref<'a>(
        &'a self,
        aggregates: &'a HashMap<AggregateId, Aggregate>,
        default: &'a str,
    ) -> &'a str {
        if let Some(az) = &self.host.availability_zone {
            return az;
        }
        self.aggregates()
            .filter_map(|a| aggregates.get(a))
            .find_map(|a| a.availability_zone.as_deref())
            .unwrap_or(default)
    }

    /// The smallest value of aggregate metadata `key` parsed as a number over the host's
    /// aggregates (Nova's per-aggregate weight multipliers: the minimum wins).
    pub fn aggregate_number(&self, aggregates: &HashMap<AggregateId, Aggregate>, key: &str) -> Option<f64> {
        if aggregates.is_empty() {
            return None;
        }
        min_metadata(self.aggregates(), aggregates, key)
    }
}

impl HostView for HostState {
    fn name(&self) -> &str {
        &self.host.name
    }
    fn enabled(&self) -> bool {
        self.host.enabled
    }
    fn is_up(&self, now: Timestamp, down_after: Duration) -> bool {
        self.host.is_up(now, down_after)
    }
    fn zone<'a>(&'a self, aggregates: &'a HashMap<AggregateId, Aggregate>, default: &'a str) -> &'a str {
        self.availability_zone_ref(aggregates, default)
    }
    fn capabilities(&self) -> &BTreeMap<String, String> {
        &self.host.capabilities
    }
    fn group_members(&self, group: GroupId) -> u32 {
        HostState::group_members(self, group)
    }
    fn io_ops(&self) -> u32 {
        self.io_ops
    }
    fn failed_builds(&self) -> u32 {
        self.failed_builds
    }
    fn free(&self, class: &ResourceClass) -> i64 {
        HostState::free(self, class)
    }
    fn aggregate_number(&self, aggregates: &HashMap<AggregateId, Aggregate>, key: &str) -> Option<f64> {
        HostState::aggregate_number(self, aggregates, key)
    }
}
