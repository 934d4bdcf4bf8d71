//! Host filters: what Placement-like candidate generation cannot express.
//!
//! Each filter is a [`HostFilter`]; the scheduler runs the enabled ones in order
//! ([`SchedulerConfig::enabled_filters`](crate::scheduler::SchedulerConfig::enabled_filters))
//! and counts how many hosts each removed, for the NoValidHost reason. Forced hosts
//! (`force_hosts`) skip filters, as in Nova.

use std::collections::{BTreeSet, HashMap};

use crate::model::{Aggregate, AggregateId, GroupPolicy, RequestSpec, ServerGroup, Timestamp};
use crate::scheduler::SchedulerConfig;
#[cfg(test)]
use crate::scheduler::host_state::HostState;
use crate::scheduler::host_state::HostView;

/// Everything a filter or weigher may read besides the host: prepared once per request.
#[derive(Debug)]
pub struct FilterContext<'a> {
    /// The request.
    pub spec: &'a RequestSpec,
    /// The scheduler configuration.
    pub config: &'a SchedulerConfig,
    /// "Now", for liveness.
    pub now: Timestamp,
    /// The request's server group, if any.
    pub group: Option<&'a ServerGroup>,
    /// Hosts (by name) that already hold members of the group, in the snapshot.
    pub group_hosts: &'a BTreeSet<String>,
    /// `same_host`: names of the hosts running the hinted instances (`None`: no hint).
    pub same_host: Option<&'a BTreeSet<String>>,
    /// `different_host`: names of the hosts running the hinted instances.
    pub different_host: &'a BTreeSet<String>,
    /// Aggregates (zones, per-aggregate multipliers).
    pub aggregates: &'a HashMap<AggregateId, Aggregate>,
}

/// A host filter (Nova's `BaseHostFilter`).
pub trait HostFilter: Send + Sync + std::fmt::Debug {
    /// The filter's name as used in `enabled_filters` and in NoValidHost reasons.
    fn name(&self) -> &'static str;
    /// Whether the host may receive the instance.
    fn host_passes(&self, host: &dyn HostView, ctx: &FilterContext<'_>) -> bool;
    /// True when the verdict depends only on what hosts of one class share (zone,
    /// capabilities, aggregates, cell): the indexed ranking then asks once per class.
    fn class_level(&self) -> bool {
        false
    }
}

/// Nova's default filters that apply here, plus the hint filters (no-ops without hints).
pub const DEFAULT_FILTERS: &[&str] = &[
    "ComputeFilter",
    "AvailabilityZoneFilter",
    "ImagePropertiesFilter",
    "ServerGroupAntiAffinityFilter",
    "ServerGroupAffinityFilter",
    "SameHostFilter",
    "DifferentHostFilter",
];

/// Every filter this scheduler knows, by name.
pub const ALL_FILTERS: &[&str] = &[
    "ComputeFilter",
    "AvailabilityZoneFilter",
    "ImagePropertiesFilter",
    "ServerGroupAntiAffinityFilter",
    "ServerGroupAffinityFilter",
    "SameHostFilter",
    "DifferentHostFilter",
    "IoOpsFilter",
];

/// The filter called `name`, or `None` for an unknown name.
pub fn by_name(name: &str) -> Option<Box<dyn HostFilter>> {
    Some(match name {
        "ComputeFilter" => Box::new(ComputeFilter),
        "AvailabilityZoneFilter" => Box::new(AvailabilityZoneFilter),
        "ImagePropertiesFilter" => Box::new(ImagePropertiesFilter),
        "ServerGroupAntiAffinityFilter" => Box::new(ServerGroupAntiAffinityFilter),
        "ServerGroupAffinityFilter" => Box::new(ServerGroupAffinityFilter),
        "SameHostFilter" => Box::new(SameHostFilter),
        "DifferentHostFilter" => Box::new(DifferentHostFilter),
        "IoOpsFilter" => Box::new(IoOpsFilter),
        _ => return None,
    })
}

/// The compute service must be enabled and alive: its last heartbeat within
/// `service_down_time` (Placement knows disabled hosts only through a trait and knows
/// nothing of liveness).
#[derive(Debug, Clone, Copy)]
pub struct ComputeFilter;

impl HostFilter for ComputeFilter {
    fn name(&self) -> &'static str {
        "ComputeFilter"
    }
    fn host_passes(&self, host: &dyn HostView, ctx: &FilterContext<'_>) -> bool {
        host.enabled() && host.is_up(ctx.now, ctx.config.service_down_time)
    }
}

/// The host's availability zone (service record, else its aggregates, else the default
/// zone) must be the requested one.
#[derive(Debug, Clone, Copy)]
pub struct AvailabilityZoneFilter;

impl HostFilter for AvailabilityZoneFilter {
    fn name(&self) -> &'static str {
        "AvailabilityZoneFilter"
    }
    fn host_passes(&self, host: &dyn HostView, ctx: &FilterContext<'_>) -> bool {
        match &ctx.spec.availability_zone {
            None => true,
            Some(az) => host.zone(ctx.aggregates, &ctx.config.default_availability_zone) == az,
        }
    }
    fn class_level(&self) -> bool {
        true
    }
}

/// Anti-affinity: the host must hold fewer than `max_per_host` (default 1) members of the
/// group. The same limit is part of the claim, so it also holds against concurrent
/// separate requests; the filter only avoids claims that are bound to fail.
#[derive(Debug, Clone, Copy)]
pub struct ServerGroupAntiAffinityFilter;

impl HostFilter for ServerGroupAntiAffinityFilter {
    fn name(&self) -> &'static str {
        "ServerGroupAntiAffinityFilter"
    }
    fn host_passes(&self, host: &dyn HostView, ctx: &FilterContext<'_>) -> bool {
        match ctx.group {
            Some(g) if g.policy == GroupPolicy::AntiAffinity => host.group_members(g.id) < g.claim_limit().unwrap_or(1),
            _ => true,
        }
    }
}

/// Affinity: once the group has members, only their host(s) pass.
#[derive(Debug, Clone, Copy)]
pub struct ServerGroupAffinityFilter;

impl HostFilter for ServerGroupAffinityFilter {
    fn name(&self) -> &'static str {
        "ServerGroupAffinityFilter"
    }
    fn host_passes(&self, host: &dyn HostView, ctx: &FilterContext<'_>) -> bool {
        match ctx.group {
            Some(g) if g.policy == GroupPolicy::Affinity => {
                ctx.group_hosts.is_empty() || ctx.group_hosts.contains(host.name())
            }
            _ => true,
        }
    }
}

/// `same_host` hint: the host must run one of the hinted instances.
#[derive(Debug, Clone, Copy)]
pub struct SameHostFilter;

impl HostFilter for SameHostFilter {
    fn name(&self) -> &'static str {
        "SameHostFilter"
    }
    fn host_passes(&self, host: &dyn HostView, ctx: &FilterContext<'_>) -> bool {
        ctx.same_host.is_none_or(|hosts| hosts.contains(host.name()))
    }
}

/// `different_host` hint: the host must run none of the hinted instances.
#[derive(Debug, Clone, Copy)]
pub struct DifferentHostFilter;

impl HostFilter for DifferentHostFilter {
    fn name(&self) -> &'static str {
        "DifferentHostFilter"
    }
    fn host_passes(&self, host: &dyn HostView, ctx: &FilterContext<'_>) -> bool {
        // Most requests have no hint: no name is read then.
        ctx.different_host.is_empty() || !ctx.different_host.contains(host.name())
    }
}

/// Fewer than `max_io_ops_per_host` instances building on the host. Not enabled by default
/// (as in Nova): the count comes from the store only at catalog refreshes.
#[derive(Debug, Clone, Copy)]
pub struct IoOpsFilter;

impl HostFilter for IoOpsFilter {
    fn name(&self) -> &'static str {
        "IoOpsFilter"
    }
    fn host_passes(&self, host: &dyn HostView, ctx: &FilterContext<'_>) -> bool {
        host.io_ops() < ctx.config.max_io_ops_per_host
    }
}

/// Image properties against the hypervisor's capabilities (`Host::capabilities`, values
/// may be comma-separated lists): `hw_architecture` vs `architecture`, `img_hv_type` vs
/// `hypervisor_type`, `hw_vm_mode` vs `vm_mode` (all canonicalized as Nova does, e.g.
/// `amd64` = `x86_64`, `hv` = `hvm`), and `img_hv_requested_version` (such as `>=6000` or
/// `>= 2.6`) vs `hypervisor_version`. An image without these properties passes everywhere;
/// a host lacking a capability the image asks for fails.
#[derive(Debug, Clone, Copy)]
pub struct ImagePropertiesFilter;

fn canonical_arch(s: &str) -> String {
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "amd64" | "x64" | "x86-64" => "x86_64".into(),
        "i386" | "i486" | "i586" | "x86" => "i686".into(),
        "arm64" => "aarch64".into(),
        "ppc64el" => "ppc64le".into(),
        _ => s,
    }
}

fn canonical_hv(s: &str) -> String {
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "xapi" => "xen".into(),
        _ => s,
    }
}

fn canonical_vm_mode(s: &str) -> String {
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "hv" => "hvm".into(),
        "pv" => "xen".into(),
        "baremetal" => "hvm".into(),
        _ => s,
    }
}

/// Parses a dotted version (`6.0.1`, `6000`) into comparable parts.
fn version_parts(s: &str) -> Option<Vec<u64>> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    s.split('.').map(|p| p.trim().parse::<u64>().ok()).collect()
}

/// Whether `have` satisfies `spec` (`>=6000`, `<2.0`, `==1.2`, `!=3`, or a bare version
/// meaning `==`).
pub fn version_satisfies(have: &str, spec: &str) -> bool {
    let spec = spec.trim();
    let (op, v) = ["<=", ">=", "==", "!=", "<", ">", "="]
        .iter()
        .find_map(|op| spec.strip_prefix(op).map(|rest| (*op, rest)))
        .unwrap_or(("==", spec));
    let (Some(mut a), Some(mut b)) = (version_parts(have), version_parts(v)) else {
        return false;
    };
    let n = a.len().max(b.len());
    a.resize(n, 0);
    b.resize(n, 0);
    match op {
        "<=" => a <= b,
        ">=" => a >= b,
        "<" => a < b,
        ">" => a > b,
        "!=" => a != b,
        _ => a == b,
    }
}

impl HostFilter for ImagePropertiesFilter {
    fn name(&self) -> &'static str {
        "ImagePropertiesFilter"
    }
    fn host_passes(&self, host: &dyn HostView, ctx: &FilterContext<'_>) -> bool {
        let props = &ctx.spec.image_properties;
        let caps = host.capabilities();
        type Canon = fn(&str) -> String;
        let checks: [(&str, &str, Canon); 3] = [
            ("hw_architecture", "architecture", canonical_arch),
            ("img_hv_type", "hypervisor_type", canonical_hv),
            ("hw_vm_mode", "vm_mode", canonical_vm_mode),
        ];
        for (prop, cap, canon) in checks {
            if let Some(want) = props.get(prop) {
                let want = canon(want);
                let ok = caps.get(cap).is_some_and(|have| have.split(',').any(|h| canon(h) == want));
                if !ok {
                    return false;
                }
            }
        }
        if let Some(spec) = props.get("img_hv_requested_version") {
            match caps.get("hypervisor_version") {
                Some(have) if version_satisfies(have, spec) => {}
                _ => return false,
            }
        }
        true
    }
    fn class_level(&self) -> bool {
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    pub(crate) fn spec() -> RequestSpec {
        RequestSpec {
            instance_uuid: InstanceId::new_v4(),
            flavor: Flavor {
                id: FlavorId::new("f1").unwrap(),
                name: "small".into(),
                vcpus: 1,
                memory_mb: 512,
                root_gb: 1,
                ephemeral_gb: 0,
                swap_mb: 0,
                extra_specs: BTreeMap::new(),
            },
            image_properties: BTreeMap::new(),
            is_bfv: false,
            num_instances: 1,
            project_id: "p".into(),
            user_id: "u".into(),
            availability_zone: None,
            hints: SchedulerHints::default(),
            requested_destination: None,
            ignore_hosts: vec![],
            force_hosts: vec![],
        }
    }

    pub(crate) fn host(name: &str) -> HostState {
        let root = ProviderId::new_v4();
        HostState::new(
            Host {
                name: name.into(),
                cell: CellId::new_v4(),
                root_provider: root,
                node: name.into(),
                enabled: true,
                disabled_reason: None,
                last_heartbeat: Timestamp::now(),
                availability_zone: None,
                capabilities: BTreeMap::new(),
            },
            ProviderTree {
                root,
                generation: 1,
                cell: None,
                providers: vec![ProviderNode {
                    id: root,
                    name: name.into(),
                    parent: None,
                    traits: BTreeSet::new(),
                    aggregates: BTreeSet::new(),
                    inventories: BTreeMap::new(),
                    usages: Resources::new(),
                }],
                groups: BTreeMap::new(),
            },
        )
    }

    pub(crate) struct Env {
        pub spec: RequestSpec,
        pub config: SchedulerConfig,
        pub group: Option<ServerGroup>,
        pub group_hosts: BTreeSet<String>,
        pub same: Option<BTreeSet<String>>,
        pub different: BTreeSet<String>,
        pub aggregates: HashMap<AggregateId, Aggregate>,
    }

    impl Env {
        pub(crate) fn new() -> Self {
            Env {
                spec: spec(),
                config: SchedulerConfig::default(),
                group: None,
                group_hosts: BTreeSet::new(),
                same: None,
                different: BTreeSet::new(),
                aggregates: HashMap::new(),
            }
        }
        pub(crate) fn ctx(&self) -> FilterContext<'_> {
            FilterContext {
                spec: &self.spec,
                config: &self.config,
                now: Timestamp::now(),
                group: self.group.as_ref(),
                group_hosts: &self.group_hosts,
                same_host: self.same.as_ref(),
                different_host: &self.different,
                aggregates: &self.aggregates,
            }
        }
    }

    pub(crate) fn group(policy: GroupPolicy, max: Option<u32>) -> ServerGroup {
        ServerGroup {
            id: GroupId::new_v4(),
            name: "g".into(),
            project_id: "p".into(),
            user_id: "u".into(),
            policy,
            max_per_host: max,
        }
    }

    #[test]
    fn every_known_filter_resolves() {
        for n in ALL_FILTERS {
            assert_eq!(by_name(n).unwrap().name(), *n);
        }
        assert!(by_name("NoSuchFilter").is_none());
    }

    #[test]
    fn compute_filter_checks_enabled_and_heartbeat() {
        let env = Env::new();
        let ctx = env.ctx();
        let mut h = host("a");
        assert!(ComputeFilter.host_passes(&h, &ctx));
        h.host.enabled = false;
        assert!(!ComputeFilter.host_passes(&h, &ctx));
        h.host.enabled = true;
        h.host.last_heartbeat = Timestamp::now().minus(Duration::from_secs(61));
        assert!(!ComputeFilter.host_passes(&h, &ctx));
        h.host.last_heartbeat = Timestamp::now().minus(Duration::from_secs(30));
        assert!(ComputeFilter.host_passes(&h, &ctx));
    }

    #[test]
    fn availability_zone_from_host_aggregate_or_default() {
        let mut env = Env::new();
        let agg = Aggregate {
            id: AggregateId::new_v4(),
            name: "az-agg".into(),
            availability_zone: Some("az2".into()),
            metadata: BTreeMap::new(),
        };
        env.aggregates.insert(agg.id, agg.clone());
        let mut in_agg = host("b");
        in_agg.tree.providers[0].aggregates.insert(agg.id);
        let mut explicit = host("c");
        explicit.host.availability_zone = Some("az1".into());
        let plain = host("d");
        env.spec.availability_zone = Some("az2".into());
        let ctx = env.ctx();
        assert!(AvailabilityZoneFilter.host_passes(&in_agg, &ctx));
        assert!(!AvailabilityZoneFilter.host_passes(&explicit, &ctx));
        assert!(!AvailabilityZoneFilter.host_passes(&plain, &ctx));
        env.spec.availability_zone = Some("nova".into());
        let ctx = env.ctx();
        assert!(AvailabilityZoneFilter.host_passes(&plain, &ctx));
        env.spec.availability_zone = None;
        assert!(AvailabilityZoneFilter.host_passes(&explicit, &env.ctx()));
    }

    #[test]
    fn anti_affinity_respects_max_per_host() {
        let mut env = Env::new();
        let g = group(GroupPolicy::AntiAffinity, Some(2));
        env.group = Some(g.clone());
        let mut h = host("a");
        assert!(ServerGroupAntiAffinityFilter.host_passes(&h, &env.ctx()));
        h.tree.groups.insert(g.id, 1);
        assert!(ServerGroupAntiAffinityFilter.host_passes(&h, &env.ctx()));
        h.tree.groups.insert(g.id, 2);
        assert!(!ServerGroupAntiAffinityFilter.host_passes(&h, &env.ctx()));
        env.group = Some(group(GroupPolicy::AntiAffinity, None));
        let mut h = host("b");
        h.tree.groups.insert(env.group.as_ref().unwrap().id, 1);
        assert!(!ServerGroupAntiAffinityFilter.host_passes(&h, &env.ctx()));
        env.group = Some(group(GroupPolicy::SoftAntiAffinity, None));
        assert!(ServerGroupAntiAffinityFilter.host_passes(&h, &env.ctx()));
    }

    #[test]
    fn affinity_follows_existing_members() {
        let mut env = Env::new();
        env.group = Some(group(GroupPolicy::Affinity, None));
        let a = host("a");
        let b = host("b");
        assert!(ServerGroupAffinityFilter.host_passes(&a, &env.ctx()));
        env.group_hosts.insert("a".into());
        assert!(ServerGroupAffinityFilter.host_passes(&a, &env.ctx()));
        assert!(!ServerGroupAffinityFilter.host_passes(&b, &env.ctx()));
        env.group = Some(group(GroupPolicy::SoftAffinity, None));
        assert!(ServerGroupAffinityFilter.host_passes(&b, &env.ctx()));
    }

    #[test]
    fn same_and_different_host() {
        let mut env = Env::new();
        let a = host("a");
        let b = host("b");
        assert!(SameHostFilter.host_passes(&b, &env.ctx()));
        env.same = Some(BTreeSet::from(["a".to_string()]));
        assert!(SameHostFilter.host_passes(&a, &env.ctx()));
        assert!(!SameHostFilter.host_passes(&b, &env.ctx()));
        env.same = Some(BTreeSet::new());
        assert!(!SameHostFilter.host_passes(&a, &env.ctx()), "hinted instances nowhere");
        env.different = BTreeSet::from(["a".to_string()]);
        assert!(!DifferentHostFilter.host_passes(&a, &env.ctx()));
        assert!(DifferentHostFilter.host_passes(&b, &env.ctx()));
    }

    #[test]
    fn io_ops_limit() {
        let env = Env::new();
        let mut h = host("a");
        h.io_ops = 7;
        assert!(IoOpsFilter.host_passes(&h, &env.ctx()));
        h.io_ops = 8;
        assert!(!IoOpsFilter.host_passes(&h, &env.ctx()));
    }

    #[test]
    fn image_properties() {
        let mut env = Env::new();
        let mut h = host("a");
        h.host.capabilities = BTreeMap::from([
            ("architecture".to_string(), "x86_64,i686".to_string()),
            ("hypervisor_type".to_string(), "QEMU".to_string()),
            ("vm_mode".to_string(), "hvm".to_string()),
            ("hypervisor_version".to_string(), "6002".to_string()),
        ]);
        let bare = host("b");
        assert!(ImagePropertiesFilter.host_passes(&bare, &env.ctx()));
        env.spec.image_properties = BTreeMap::from([
            ("hw_architecture".to_string(), "amd64".to_string()),
            ("img_hv_type".to_string(), "qemu".to_string()),
            ("hw_vm_mode".to_string(), "hv".to_string()),
            ("img_hv_requested_version".to_string(), ">=6000".to_string()),
        ]);
        assert!(ImagePropertiesFilter.host_passes(&h, &env.ctx()));
        assert!(!ImagePropertiesFilter.host_passes(&bare, &env.ctx()));
        env.spec.image_properties.insert("img_hv_requested_version".into(), "<6000".into());
        assert!(!ImagePropertiesFilter.host_passes(&h, &env.ctx()));
        env.spec.image_properties = BTreeMap::from([("hw_architecture".to_string(), "aarch64".to_string())]);
        assert!(!ImagePropertiesFilter.host_passes(&h, &env.ctx()));
    }

    #[test]
    fn versions_compare() {
        assert!(version_satisfies("6.0.1", ">=6"));
        assert!(version_satisfies("2.6", "2.6.0"));
        assert!(!version_satisfies("2.6", "!=2.6"));
        assert!(version_satisfies("10", ">9.9"));
        assert!(!version_satisfies("x", ">=1"));
    }
}
