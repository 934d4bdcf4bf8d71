//! Host weighers, combined as Nova's `BaseWeightHandler` does: each weigher's raw values are
//! min-max normalized to 0..1 over the candidate hosts (all equal: all 0; a weigher's
//! `minval` floor, such as 0 for free RAM, takes part in the minimum), multiplied by the
//! weigher's multiplier for that host (configuration, overridden by aggregate metadata of
//! the same name, the minimum winning) and summed. Higher is better. A positive RAM, CPU or
//! disk multiplier spreads, a negative one packs.

use crate::model::{GroupPolicy, ResourceClass};
use crate::scheduler::filters::FilterContext;
use crate::scheduler::host_state::HostView;

/// A host weigher (Nova's `BaseHostWeigher`).
pub trait HostWeigher: Send + Sync + std::fmt::Debug {
    /// The weigher's name.
    fn name(&self) -> &'static str;
    /// The configured multiplier (before aggregate overrides).
    fn configured(&self, ctx: &FilterContext<'_>) -> f64;
    /// Aggregate metadata key that overrides the multiplier.
    fn metadata_key(&self) -> &'static str;
    /// Whether the effective multiplier is the negation of the configured one (Nova's
    /// BuildFailureWeigher: a positive multiplier penalizes failures).
    fn negate(&self) -> bool {
        false
    }
    /// A floor that takes part in the normalization minimum (Nova's `minval`).
    fn minval(&self) -> Option<f64> {
        None
    }
    /// The raw value for one host.
    fn raw(&self, host: &dyn HostView, ctx: &FilterContext<'_>) -> f64;

    /// The multiplier for `host`: aggregate override (minimum) or configured, negated when
    /// [`negate`](Self::negate).
    fn multiplier(&self, host: &dyn HostView, ctx: &FilterContext<'_>) -> f64 {
        let m = host.aggregate_number(ctx.aggregates, self.metadata_key()).unwrap_or_else(|| self.configured(ctx));
        if self.negate() { -m } else { m }
    }
}

/// The aggregate metadata keys of every weigher's multiplier (the snapshot reads them once
/// per host class).
pub(crate) const METADATA_KEYS: [&str; 7] = [
    "ram_weight_multiplier",
    "cpu_weight_multiplier",
    "disk_weight_multiplier",
    "io_ops_weight_multiplier",
    "build_failure_weight_multiplier",
    "soft_affinity_weight_multiplier",
    "soft_anti_affinity_weight_multiplier",
];

/// Every weigher, in Nova's order.
pub fn all() -> Vec<Box<dyn HostWeigher>> {
    vec![
        Box::new(RamWeigher),
        Box::new(CpuWeigher),
        Box::new(DiskWeigher),
        Box::new(IoOpsWeigher),
        Box::new(BuildFailureWeigher),
        Box::new(SoftAffinityWeigher),
        Box::new(SoftAntiAffinityWeigher),
    ]
}

/// Nova's `normalize`: min-max to 0..1; when every value is equal, every result is 0.
pub fn normalize(values: &[f64], minval: Option<f64>) -> Vec<f64> {
    normalize_within(values, minval, None)
}

/// [`normalize`] over `values` and, when given, a reference range: the values of hosts
/// not in `values` that a normalization over every host would also see.
pub fn normalize_within(values: &[f64], minval: Option<f64>, reference: Option<(f64, f64)>) -> Vec<f64> {
    if values.is_empty() {
        return Vec::new();
    }
    let mut min = values.iter().copied().fold(f64::INFINITY, f64::min);
    if let Some(floor) = minval {
        min = min.min(floor);
    }
    let mut max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if let Some((lo, hi)) = reference {
        min = min.min(lo);
        max = max.max(hi);
    }
    let range = max - min;
    if range <= 0.0 || !range.is_finite() {
        return vec![0.0; values.len()];
    }
    values.iter().map(|v| (v - min) / range).collect()
}

/// The combined weight of each host (same order as `hosts`).
pub fn weigh(weighers: &[Box<dyn HostWeigher>], hosts: &[&dyn HostView], ctx: &FilterContext<'_>) -> Vec<f64> {
    weigh_within(weighers, hosts, ctx, &|_| None)
}

/// [`weigh`] with a reference range per weigher (by name) for the normalization, for
/// candidate lists that stand for more hosts (see [`normalize_within`]).
pub fn weigh_within(
    weighers: &[Box<dyn HostWeigher>],
    hosts: &[&dyn HostView],
    ctx: &FilterContext<'_>,
    reference: &dyn Fn(&str) -> Option<(f64, f64)>,
) -> Vec<f64> {
    let mut total = vec![0.0; hosts.len()];
    let mut raw = Vec::with_capacity(hosts.len());
    for w in weighers {
        raw.clear();
        raw.extend(hosts.iter().map(|h| w.raw(*h, ctx)));
        for (i, n) in normalize_within(&raw, w.minval(), reference(w.name())).into_iter().enumerate() {
            // A normalized 0 contributes nothing whatever the multiplier: skip the
            // per-host multiplier lookup (aggregate metadata) then.
            if n != 0.0 {
                total[i] += w.multiplier(hosts[i], ctx) * n;
            }
        }
    }
    total
}

/// Free RAM (MEMORY_MB over the tree). Multiplier `ram_weight_multiplier`.
#[derive(Debug, Clone, Copy)]
pub struct RamWeigher;

impl HostWeigher for RamWeigher {
    fn name(&self) -> &'static str {
        "RAMWeigher"
    }
    fn configured(&self, ctx: &FilterContext<'_>) -> f64 {
        ctx.config.ram_weight_multiplier
    }
    fn metadata_key(&self) -> &'static str {
        "ram_weight_multiplier"
    }
    fn minval(&self) -> Option<f64> {
        Some(0.0)
    }
    fn raw(&self, host: &dyn HostView, _: &FilterContext<'_>) -> f64 {
        host.free(&ResourceClass::MemoryMb) as f64
    }
}

/// Free vCPUs (VCPU over the tree). Multiplier `cpu_weight_multiplier`.
#[derive(Debug, Clone, Copy)]
pub struct CpuWeigher;

impl HostWeigher for CpuWeigher {
    fn name(&self) -> &'static str {
        "CPUWeigher"
    }
    fn configured(&self, ctx: &FilterContext<'_>) -> f64 {
        ctx.config.cpu_weight_multiplier
    }
    fn metadata_key(&self) -> &'static str {
        "cpu_weight_multiplier"
    }
    fn minval(&self) -> Option<f64> {
        Some(0.0)
    }
    fn raw(&self, host: &dyn HostView, _: &FilterContext<'_>) -> f64 {
        host.free(&ResourceClass::Vcpu) as f64
    }
}

/// Free disk in MB (DISK_GB over the tree, times 1024). Multiplier `disk_weight_multiplier`.
#[derive(Debug, Clone, Copy)]
pub struct DiskWeigher;

impl HostWeigher for DiskWeigher {
    fn name(&self) -> &'static str {
        "DiskWeigher"
    }
    fn configured(&self, ctx: &FilterContext<'_>) -> f64 {
        ctx.config.disk_weight_multiplier
    }
    fn metadata_key(&self) -> &'static str {
        "disk_weight_multiplier"
    }
    fn minval(&self) -> Option<f64> {
        Some(0.0)
    }
    fn raw(&self, host: &dyn HostView, _: &FilterContext<'_>) -> f64 {
        (host.free(&ResourceClass::DiskGb) * 1024) as f64
    }
}

/// Instances building on the host. Multiplier `io_ops_weight_multiplier` (default -1:
/// prefer idle hosts).
#[derive(Debug, Clone, Copy)]
pub struct IoOpsWeigher;

impl HostWeigher for IoOpsWeigher {
    fn name(&self) -> &'static str {
        "IoOpsWeigher"
    }
    fn configured(&self, ctx: &FilterContext<'_>) -> f64 {
        ctx.config.io_ops_weight_multiplier
    }
    fn metadata_key(&self) -> &'static str {
        "io_ops_weight_multiplier"
    }
    fn raw(&self, host: &dyn HostView, _: &FilterContext<'_>) -> f64 {
        f64::from(host.io_ops())
    }
}

/// Consecutive recent build failures reported by conductors. Multiplier
/// `build_failure_weight_multiplier` (default 1,000,000, negated: one failure outweighs
/// everything else, as in Nova).
#[derive(Debug, Clone, Copy)]
pub struct BuildFailureWeigher;

impl HostWeigher for BuildFailureWeigher {
    fn name(&self) -> &'static str {
        "BuildFailureWeigher"
    }
    fn configured(&self, ctx: &FilterContext<'_>) -> f64 {
        ctx.config.build_failure_weight_multiplier
    }
    fn metadata_key(&self) -> &'static str {
        "build_failure_weight_multiplier"
    }
    fn negate(&self) -> bool {
        true
    }
    fn raw(&self, host: &dyn HostView, _: &FilterContext<'_>) -> f64 {
        f64::from(host.failed_builds())
    }
}

fn members_if(host: &dyn HostView, ctx: &FilterContext<'_>, policy: GroupPolicy) -> f64 {
    match ctx.group {
        Some(g) if g.policy == policy => f64::from(host.group_members(g.id)),
        _ => 0.0,
    }
}

/// Soft affinity: members of the group on the host (more is better). Multiplier
/// `soft_affinity_weight_multiplier`.
#[derive(Debug, Clone, Copy)]
pub struct SoftAffinityWeigher;

impl HostWeigher for SoftAffinityWeigher {
    fn name(&self) -> &'static str {
        "ServerGroupSoftAffinityWeigher"
    }
    fn configured(&self, ctx: &FilterContext<'_>) -> f64 {
        ctx.config.soft_affinity_weight_multiplier
    }
    fn metadata_key(&self) -> &'static str {
        "soft_affinity_weight_multiplier"
    }
    fn raw(&self, host: &dyn HostView, ctx: &FilterContext<'_>) -> f64 {
        members_if(host, ctx, GroupPolicy::SoftAffinity)
    }
}

/// Soft anti-affinity: minus the members of the group on the host. Multiplier
/// `soft_anti_affinity_weight_multiplier`.
#[derive(Debug, Clone, Copy)]
pub struct SoftAntiAffinityWeigher;

impl HostWeigher for SoftAntiAffinityWeigher {
    fn name(&self) -> &'static str {
        "ServerGroupSoftAntiAffinityWeigher"
    }
    fn configured(&self, ctx: &FilterContext<'_>) -> f64 {
        ctx.config.soft_anti_affinity_weight_multiplier
    }
    fn metadata_key(&self) -> &'static str {
        "soft_anti_affinity_weight_multiplier"
    }
    fn raw(&self, host: &dyn HostView, ctx: &FilterContext<'_>) -> f64 {
        -members_if(host, ctx, GroupPolicy::SoftAntiAffinity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Aggregate, AggregateId, Inventory};
    use crate::scheduler::filters::tests::{Env, group, host};
    use crate::scheduler::host_state::HostState;
    use std::collections::BTreeMap;

    #[test]
    fn every_weighers_metadata_key_is_read_per_class() {
        let keys: Vec<&str> = all().iter().map(|w| w.metadata_key()).collect();
        assert_eq!(keys, METADATA_KEYS.to_vec(), "the snapshot precomputes exactly these overrides");
    }

    fn sized(name: &str, class: ResourceClass, total: i64, used: i64) -> HostState {
        let mut h = host(name);
        let n = &mut h.tree.providers[0];
        n.inventories.insert(class.clone(), Inventory::with_total(total));
        if used > 0 {
            n.usages.insert(class, used);
        }
        h
    }

    fn only(w: Box<dyn HostWeigher>) -> Vec<Box<dyn HostWeigher>> {
        vec![w]
    }

    #[test]
    fn normalize_like_nova() {
        assert_eq!(normalize(&[2.0, 4.0, 6.0], None), vec![0.0, 0.5, 1.0]);
        assert_eq!(normalize(&[5.0, 5.0], None), vec![0.0, 0.0]);
        assert_eq!(normalize(&[2.0, 4.0], Some(0.0)), vec![0.5, 1.0]);
        assert_eq!(normalize(&[-2.0, 2.0], Some(0.0)), vec![0.0, 1.0]);
        assert!(normalize(&[], None).is_empty());
    }

    #[test]
    fn ram_spreads_and_packs_by_sign() {
        let mut env = Env::new();
        let a = sized("a", ResourceClass::MemoryMb, 4096, 3072);
        let b = sized("b", ResourceClass::MemoryMb, 4096, 0);
        let w = weigh(&only(Box::new(RamWeigher)), &[&a, &b], &env.ctx());
        assert!(w[1] > w[0], "spread prefers the emptier host: {w:?}");
        assert!((w[0] - 0.25).abs() < 1e-9 && (w[1] - 1.0).abs() < 1e-9);
        env.config.ram_weight_multiplier = -1.0;
        let w = weigh(&only(Box::new(RamWeigher)), &[&a, &b], &env.ctx());
        assert!(w[0] > w[1], "pack prefers the fuller host: {w:?}");
    }

    #[test]
    fn cpu_and_disk_weighers() {
        let env = Env::new();
        let a = sized("a", ResourceClass::Vcpu, 16, 12);
        let b = sized("b", ResourceClass::Vcpu, 16, 4);
        let w = weigh(&only(Box::new(CpuWeigher)), &[&a, &b], &env.ctx());
        assert!(w[1] > w[0]);
        let a = sized("a", ResourceClass::DiskGb, 100, 10);
        let b = sized("b", ResourceClass::DiskGb, 100, 90);
        assert_eq!(DiskWeigher.raw(&a, &env.ctx()), 90.0 * 1024.0);
        let w = weigh(&only(Box::new(DiskWeigher)), &[&a, &b], &env.ctx());
        assert!(w[0] > w[1]);
    }

    #[test]
    fn io_ops_prefers_idle() {
        let env = Env::new();
        let mut a = host("a");
        a.io_ops = 5;
        let b = host("b");
        let w = weigh(&only(Box::new(IoOpsWeigher)), &[&a, &b], &env.ctx());
        assert!(w[1] > w[0], "{w:?}");
    }

    #[test]
    fn build_failures_dominate() {
        let env = Env::new();
        let mut a = sized("a", ResourceClass::MemoryMb, 65536, 0);
        a.failed_builds = 1;
        let b = sized("b", ResourceClass::MemoryMb, 65536, 60000);
        let w = weigh(&all(), &[&a, &b], &env.ctx());
        assert!(w[1] > w[0], "one failure outweighs free RAM: {w:?}");
    }

    #[test]
    fn soft_affinity_and_anti_affinity() {
        let mut env = Env::new();
        let g = group(crate::model::GroupPolicy::SoftAffinity, None);
        let mut a = host("a");
        a.tree.groups.insert(g.id, 2);
        let b = host("b");
        env.group = Some(g.clone());
        let w = weigh(&only(Box::new(SoftAffinityWeigher)), &[&a, &b], &env.ctx());
        assert!(w[0] > w[1]);
        let w = weigh(&only(Box::new(SoftAntiAffinityWeigher)), &[&a, &b], &env.ctx());
        assert_eq!(w, vec![0.0, 0.0], "policy does not match: no effect");
        let mut g2 = g;
        g2.policy = crate::model::GroupPolicy::SoftAntiAffinity;
        env.group = Some(g2);
        let w = weigh(&only(Box::new(SoftAntiAffinityWeigher)), &[&a, &b], &env.ctx());
        assert!(w[1] > w[0]);
    }

    #[test]
    fn aggregate_metadata_overrides_multiplier_minimum_wins() {
        let mut env = Env::new();
        let agg1 = Aggregate {
            id: AggregateId::new_v4(),
            name: "pack".into(),
            availability_zone: None,
            metadata: BTreeMap::from([("ram_weight_multiplier".to_string(), "-2".to_string())]),
        };
        let agg2 = Aggregate {
            id: AggregateId::new_v4(),
            name: "pack-less".into(),
            availability_zone: None,
            metadata: BTreeMap::from([("ram_weight_multiplier".to_string(), "-1".to_string())]),
        };
        env.aggregates.insert(agg1.id, agg1.clone());
        env.aggregates.insert(agg2.id, agg2.clone());
        let mut a = host("a");
        a.tree.providers[0].aggregates.extend([agg1.id, agg2.id]);
        assert_eq!(RamWeigher.multiplier(&a, &env.ctx()), -2.0);
        let b = host("b");
        assert_eq!(RamWeigher.multiplier(&b, &env.ctx()), 1.0);
        assert_eq!(BuildFailureWeigher.multiplier(&b, &env.ctx()), -1_000_000.0);
    }
}
