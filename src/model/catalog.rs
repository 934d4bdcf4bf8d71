//! Nova's catalog: cells, hosts, aggregates, flavors, server groups, request specs and
//! the scheduler's selections.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::{
    AggregateId, AllocationMap, CellId, FlavorId, GroupId, InstanceId, ProviderId, ResourceClass, Resources, Timestamp,
    Trait,
};

/// A cell: a failure and scaling domain of hosts. In unicell it is only a label on hosts,
/// trees and instances (all in one store); the SQL baseline gives each its own database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    /// The cell's uuid.
    pub id: CellId,
    /// Its name.
    pub name: String,
    /// A disabled cell receives no new builds.
    #[serde(default)]
    pub disabled: bool,
}

/// A compute host: the nova-compute service and its (single) compute node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// Service host name (unique).
    pub name: String,
    /// The cell the host is in.
    pub cell: CellId,
    /// The compute node's provider: the root of the host's provider tree.
    pub root_provider: ProviderId,
    /// Hypervisor hostname of the compute node.
    pub node: String,
    /// Whether the compute service accepts new instances.
    pub enabled: bool,
    /// Why it was disabled, when it was.
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// Last time the service reported (the ComputeFilter's liveness check reads it).
    pub last_heartbeat: Timestamp,
    /// The availability zone, from the host's aggregates (None: the default zone).
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Hypervisor facts read by the ImagePropertiesFilter (`hypervisor_type`,
    /// `architecture`, `vm_mode`, `hypervisor_version`).
    #[serde(default)]
    pub capabilities: BTreeMap<String, String>,
}

impl Host {
    /// Whether the service counts as up: it reported within `down_after` of `now`.
    pub fn is_up(&self, now: Timestamp, down_after: Duration) -> bool {
        self.last_heartbeat.plus(down_after) >= now
    }
}

/// A host aggregate (mirrored into Placement as an aggregate of the hosts' root providers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Its uuid.
    pub id: AggregateId,
    /// Its name.
    pub name: String,
    /// The availability zone this aggregate defines, if any.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A flavor. Extra specs `resources[N]:CLASS=AMOUNT` and `trait[N]:NAME=required|forbidden`
/// become part of the resource request, as in Nova.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flavor {
    /// Flavor id.
    pub id: FlavorId,
    /// Flavor name.
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: i64,
    /// RAM in MiB.
    pub memory_mb: i64,
    /// Root disk in GiB.
    pub root_gb: i64,
    /// Ephemeral disk in GiB.
    #[serde(default)]
    pub ephemeral_gb: i64,
    /// Swap in MiB.
    #[serde(default)]
    pub swap_mb: i64,
    /// Extra specs.
    #[serde(default)]
    pub extra_specs: BTreeMap<String, String>,
}

/// A group of resources that must come from providers of one tree, with the traits the
/// providers must have and must not have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestGroup {
    /// `None` for the unsuffixed group, whose amounts may come from several providers of the
    /// tree; `Some(suffix)` for a numbered group, whose amounts come from one provider.
    pub suffix: Option<String>,
    /// Amounts per class.
    pub resources: Resources,
    /// Traits required (on the tree for the unsuffixed group, on the provider otherwise).
    pub required: BTreeSet<Trait>,
    /// Traits forbidden.
    pub forbidden: BTreeSet<Trait>,
}

/// What a flavor (and image) asks of Placement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRequest {
    /// The unsuffixed group first, then numbered groups in suffix order.
    pub groups: Vec<RequestGroup>,
}

impl ResourceRequest {
    /// Total amount of each class over all groups. Saturates at `i64::MAX` rather than
    /// wrapping: a request built by [`Flavor::resource_request`] has at most 65 groups of
    /// amounts up to [`MAX_AMOUNT`](crate::model::MAX_AMOUNT), far below, but a hand-built
    /// one may not; a saturated total exceeds every capacity, so nothing fits it.
    pub fn totals(&self) -> Resources {
        let mut t = Resources::new();
        for g in &self.groups {
            for (c, a) in &g.resources {
                let e = t.entry(c.clone()).or_insert(0);
                *e = e.saturating_add(*a);
            }
        }
        t
    }
}

impl Flavor {
    /// Validates the flavor's sizes and extra specs.
    pub fn validate(&self) -> Result<(), Error> {
        if self.name.is_empty() || self.name.len() > 255 {
            return Err(Error::invalid("flavor.name", "must be 1 to 255 characters"));
        }
        // Nova's flavor schema bounds every size by its database's 32-bit integer columns,
        // the same bound as Placement's amounts.
        let max = crate::model::MAX_AMOUNT;
        for (f, v) in [("flavor.vcpus", self.vcpus), ("flavor.memory_mb", self.memory_mb)] {
            if !(1..=max).contains(&v) {
                return Err(Error::invalid(f, format!("{v} must be between 1 and {max}")));
            }
        }
        for (f, v) in [
            ("flavor.root_gb", self.root_gb),
            ("flavor.ephemeral_gb", self.ephemeral_gb),
            ("flavor.swap_mb", self.swap_mb),
        ] {
            if !(0..=max).contains(&v) {
                return Err(Error::invalid(f, format!("{v} must be between 0 and {max}")));
            }
        }
        self.resource_request(false).map(|_| ())
    }

    /// Translates the flavor into a resource request as Nova's
    /// `ResourceRequest.from_request_spec` does: VCPU (PCPU when `hw:cpu_policy=dedicated`),
    /// MEMORY_MB and DISK_GB (root unless boot-from-volume, plus ephemeral plus swap rounded
    /// up to GiB) in the unsuffixed group, zero amounts dropped; `resources[N]:CLASS=AMOUNT`
    /// overrides or adds amounts (0 removes a class), `trait[N]:NAME=required|forbidden`
    /// adds traits. Unknown classes, traits or values are errors, not ignored.
    pub fn resource_request(&self, is_bfv: bool) -> Result<ResourceRequest, Error> {
        let mut groups: BTreeMap<Option<String>, RequestGroup> = BTreeMap::new();
        let base = groups.entry(None).or_default();
        let cpu_class = match self.extra_specs.get("hw:cpu_policy").map(String::as_str) {
            Some("dedicated") => ResourceClass::Pcpu,
            Some("shared") | None => ResourceClass::Vcpu,
            Some(other) => {
                return Err(Error::invalid(
                    "flavor.extra_specs[hw:cpu_policy]",
                    format!("{other:?} must be shared or dedicated"),
                ));
            }
        };
        // Checked: sizes come from API bodies and catalogs, and a flavor that was never
        // validated may carry anything.
        let too_big = |what: &str| {
            Error::invalid(
                "flavor",
                format!("{what} exceeds the largest amount Placement accepts ({})", crate::model::MAX_AMOUNT),
            )
        };
        let swap_gb = self.swap_mb.checked_add(1023).map(|s| s / 1024).ok_or_else(|| too_big("swap_mb"))?;
        let disk = (if is_bfv { 0 } else { self.root_gb })
            .checked_add(self.ephemeral_gb)
            .and_then(|d| d.checked_add(swap_gb))
            .ok_or_else(|| too_big("root_gb + ephemeral_gb + swap"))?;
        for (class, amount) in
            [(cpu_class, self.vcpus), (ResourceClass::MemoryMb, self.memory_mb), (ResourceClass::DiskGb, disk)]
        {
            if amount > crate::model::MAX_AMOUNT {
                return Err(too_big(&format!("{class} {amount}")));
            }
            if amount > 0 {
                base.resources.insert(class, amount);
            }
        }
        for (key, value) in &self.extra_specs {
            let field = || format!("flavor.extra_specs[{key}]");
            let (prefix, name) = match key.split_once(':') {
                Some(x) => x,
                None => continue,
            };
            let (kind, suffix) = if let Some(s) = prefix.strip_prefix("resources") {
                ("resources", s)
            } else if let Some(s) = prefix.strip_prefix("trait") {
                ("trait", s)
            } else {
                continue; // other namespaces (hw:, capabilities:, ...) are for filters
            };
            if !suffix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') || suffix.len() > 64 {
                return Err(Error::invalid(field(), format!("bad group suffix {suffix:?}")));
            }
            let suffix = (!suffix.is_empty()).then(|| suffix.to_string());
            let group = groups.entry(suffix.clone()).or_insert_with(|| RequestGroup { suffix, ..Default::default() });
            if kind == "resources" {
                let class = ResourceClass::parse(name).map_err(|e| Error::invalid(field(), e.to_string()))?;
                let amount: i64 =
                    value.parse().map_err(|_| Error::invalid(field(), format!("{value:?} is not an integer")))?;
                if !(0..=crate::model::MAX_AMOUNT).contains(&amount) {
                    return Err(Error::invalid(
                        field(),
                        format!("{amount} must be between 0 and {}", crate::model::MAX_AMOUNT),
                    ));
                }
                if amount == 0 {
                    group.resources.remove(&class);
                } else {
                    group.resources.insert(class, amount);
                }
            } else {
                let t = Trait::new(name).map_err(|e| Error::invalid(field(), e.to_string()))?;
                match value.as_str() {
                    "required" => group.required.insert(t),
                    "forbidden" => group.forbidden.insert(t),
                    other => {
                        return Err(Error::invalid(field(), format!("{other:?} must be required or forbidden")));
                    }
                };
            }
        }
        for g in groups.values() {
            if let Some(t) = g.required.intersection(&g.forbidden).next() {
                return Err(Error::invalid("flavor.extra_specs", format!("trait {t} is both required and forbidden")));
            }
            if g.suffix.is_some() && g.resources.is_empty() {
                return Err(Error::invalid(
                    "flavor.extra_specs",
                    format!("group {:?} has traits but no resources", g.suffix.as_deref().unwrap_or("")),
                ));
            }
        }
        Ok(ResourceRequest {
            groups: groups.into_values().filter(|g| g.suffix.is_none() || !g.resources.is_empty()).collect(),
        })
    }
}

/// A server group's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupPolicy {
    /// All members on one host (a filter).
    Affinity,
    /// No two members on one host, or at most `max_per_host` (a filter, enforced in claims).
    AntiAffinity,
    /// Prefer one host (a weigher).
    SoftAffinity,
    /// Prefer different hosts (a weigher).
    SoftAntiAffinity,
}

/// A server group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerGroup {
    /// Its uuid.
    pub id: GroupId,
    /// Its name.
    pub name: String,
    /// Owning project.
    pub project_id: String,
    /// Owning user.
    pub user_id: String,
    /// The policy.
    pub policy: GroupPolicy,
    /// `rules.max_server_per_host`; only valid with anti-affinity (default 1 there).
    #[serde(default)]
    pub max_per_host: Option<u32>,
}

impl ServerGroup {
    /// Checks Nova's rule that only anti-affinity takes `max_server_per_host` (>= 1).
    pub fn validate(&self) -> Result<(), Error> {
        match (self.policy, self.max_per_host) {
            (_, Some(0)) => Err(Error::invalid("server_group.max_per_host", "must be at least 1")),
            (GroupPolicy::AntiAffinity, _) | (_, None) => Ok(()),
            (p, Some(_)) => Err(Error::invalid(
                "server_group.max_per_host",
                format!("only the anti-affinity policy takes max_server_per_host, not {p:?}"),
            )),
        }
    }

    /// The per-host limit a claim must enforce: `max_per_host` (default 1) for
    /// anti-affinity, none otherwise.
    pub fn claim_limit(&self) -> Option<u32> {
        match self.policy {
            GroupPolicy::AntiAffinity => Some(self.max_per_host.unwrap_or(1)),
            _ => None,
        }
    }
}

/// Scheduler hints of a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerHints {
    /// Server group the instances join.
    #[serde(default)]
    pub group: Option<GroupId>,
    /// Place on the same host as these instances.
    #[serde(default)]
    pub same_host: Vec<InstanceId>,
    /// Place on a different host from these instances.
    #[serde(default)]
    pub different_host: Vec<InstanceId>,
}

/// A requested destination (`requested_destination`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// Only this cell.
    #[serde(default)]
    pub cell: Option<CellId>,
    /// Only this host.
    #[serde(default)]
    pub host: Option<String>,
    /// Only this node.
    #[serde(default)]
    pub node: Option<String>,
    /// `member_of`: each inner list is an OR-group; all inner lists must match (AND).
    #[serde(default)]
    pub aggregates: Vec<Vec<AggregateId>>,
    /// Aggregates the host must not be in.
    #[serde(default)]
    pub forbidden_aggregates: Vec<AggregateId>,
}

/// Everything the scheduler needs to place the instances of one build request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestSpec {
    /// The (first) instance this spec belongs to; the store keys request specs by it.
    pub instance_uuid: InstanceId,
    /// The flavor.
    pub flavor: Flavor,
    /// Image properties (`hw_architecture`, `img_hv_type`, `hw_vm_mode`,
    /// `traits_required` as comma-separated traits, ...).
    #[serde(default)]
    pub image_properties: BTreeMap<String, String>,
    /// Boot from volume: the root disk is not claimed.
    #[serde(default)]
    pub is_bfv: bool,
    /// Number of instances.
    pub num_instances: u32,
    /// Project.
    pub project_id: String,
    /// User.
    pub user_id: String,
    /// Requested availability zone.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Hints.
    #[serde(default)]
    pub hints: SchedulerHints,
    /// Requested destination.
    #[serde(default)]
    pub requested_destination: Option<Destination>,
    /// Hosts to leave out.
    #[serde(default)]
    pub ignore_hosts: Vec<String>,
    /// Hosts to use (filters are skipped for them, as in Nova).
    #[serde(default)]
    pub force_hosts: Vec<String>,
}

/// One destination returned by the scheduler: the claimed host (first in each list) or an
/// alternate (not claimed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// Service host.
    pub host: String,
    /// Node name.
    pub node: String,
    /// Root provider of the host's tree.
    pub provider: ProviderId,
    /// The host's cell.
    pub cell: CellId,
    /// The allocation that was (for the first) or would be (for alternates) claimed.
    pub allocation: AllocationMap,
    /// The host's availability zone.
    pub availability_zone: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn flavor(vcpus: i64, memory_mb: i64, root_gb: i64, ephemeral_gb: i64, swap_mb: i64) -> Flavor {
        Flavor {
            id: FlavorId::new("f").unwrap(),
            name: "f".into(),
            vcpus,
            memory_mb,
            root_gb,
            ephemeral_gb,
            swap_mb,
            extra_specs: BTreeMap::new(),
        }
    }

    /// Sizes from API bodies and catalogs: out-of-range ones are InvalidInput from both
    /// `validate` and `resource_request` (which may see an unvalidated flavor), never a
    /// panic (debug) or a wrapped amount (release).
    #[test]
    fn huge_flavor_sizes_and_extra_specs_are_invalid_input() {
        let max = crate::model::MAX_AMOUNT;
        let huge = [
            flavor(i64::MAX, 1, 0, 0, 0),
            flavor(1, i64::MAX, 0, 0, 0),
            flavor(1, 1, i64::MAX, i64::MAX, 0),
            flavor(1, 1, 0, 0, i64::MAX),
            flavor(1, 1, max, max, max),
            flavor(1, 1, max, 0, 2048),
        ];
        for f in huge {
            assert!(matches!(f.validate(), Err(Error::InvalidInput { .. })), "{f:?} validated");
            assert!(matches!(f.resource_request(false), Err(Error::InvalidInput { .. })), "{f:?} requested");
        }
        let ok = flavor(1, 1, max, 0, 0);
        assert_eq!(ok.resource_request(false).unwrap().totals()[&ResourceClass::DiskGb], max);
        for amount in [i64::MAX.to_string(), (max + 1).to_string(), "99999999999999999999".into(), "-1".into()] {
            let mut f = flavor(1, 1, 0, 0, 0);
            f.extra_specs.insert("resources:VCPU".into(), amount.clone());
            assert!(matches!(f.validate(), Err(Error::InvalidInput { .. })), "resources:VCPU={amount} accepted");
        }
        // Many numbered groups of the largest amount add up without wrapping.
        let mut f = flavor(1, 1, 0, 0, 0);
        for g in 1..=8 {
            f.extra_specs.insert(format!("resources{g}:VCPU"), max.to_string());
        }
        let totals = f.resource_request(false).unwrap().totals();
        assert_eq!(totals[&ResourceClass::Vcpu], max * 8 + 1);
        let hand_built = ResourceRequest {
            groups: (0..3)
                .map(|_| RequestGroup {
                    resources: BTreeMap::from([(ResourceClass::Vcpu, i64::MAX)]),
                    ..Default::default()
                })
                .collect(),
        };
        assert_eq!(hand_built.totals()[&ResourceClass::Vcpu], i64::MAX);
    }
}
