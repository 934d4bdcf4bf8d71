//! Fixtures the cases build on: a compute-node tree with NUMA and SR-IOV children, claim
//! requests, instances, and readers that page through listings.

use std::collections::{BTreeMap, BTreeSet};

use super::harness::Failure;
use crate::model::*;
use crate::store::prelude::*;

pub(super) fn rc(s: &str) -> ResourceClass {
    ResourceClass::parse(s).unwrap_or(ResourceClass::Vcpu)
}

pub(super) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A compute-node tree: root with VCPU/MEMORY_MB/DISK_GB and `numa` NUMA children with
/// VCPU and NUMA_MEMORY_MB, plus one SR-IOV child with SRIOV_NET_VF.
pub(super) struct Fixture {
    pub(super) root: ProviderId,
    pub(super) numa: Vec<ProviderId>,
    pub(super) sriov: ProviderId,
}

pub(super) async fn make_tree(
    store: &dyn Store,
    cell: Option<CellId>,
    vcpu: i64,
    mem: i64,
) -> Result<Fixture, Failure> {
    let root = ProviderId::new_v4();
    store
        .create_provider(&NewProvider {
            id: root,
            name: unique("cn"),
            parent: None,
            cell,
            inventories: BTreeMap::from([
                (ResourceClass::Vcpu, Inventory::with_total(vcpu)),
                (ResourceClass::MemoryMb, Inventory { step_size: 256, ..Inventory::with_total(mem) }),
                (ResourceClass::DiskGb, Inventory { reserved: 10, ..Inventory::with_total(110) }),
            ]),
            traits: BTreeSet::from([Trait::new("HW_CPU_X86_AVX2")?]),
            aggregates: BTreeSet::new(),
        })
        .await?;
    let mut numa = Vec::new();
    for n in 0..2 {
        let id = ProviderId::new_v4();
        store
            .create_provider(&NewProvider {
                id,
                name: unique(&format!("numa{n}")),
                parent: Some(root),
                cell,
                inventories: BTreeMap::from([
                    (ResourceClass::Pcpu, Inventory::with_total(4)),
                    (ResourceClass::NumaMemoryMb, Inventory::with_total(1024)),
                ]),
                traits: BTreeSet::new(),
                aggregates: BTreeSet::new(),
            })
            .await?;
        numa.push(id);
    }
    let sriov = ProviderId::new_v4();
    store
        .create_provider(&NewProvider {
            id: sriov,
            name: unique("pf"),
            parent: Some(numa[0]),
            cell,
            inventories: BTreeMap::from([(ResourceClass::SriovNetVf, Inventory::with_total(2))]),
            traits: BTreeSet::from([Trait::new("CUSTOM_PHYSNET_A")?]),
            aggregates: BTreeSet::new(),
        })
        .await?;
    Ok(Fixture { root, numa, sriov })
}

pub(super) fn claim_req(consumer: ConsumerId, allocs: &[(ProviderId, &str, i64)]) -> ClaimRequest {
    let mut allocations = AllocationMap::new();
    for (p, c, a) in allocs {
        allocations.entry(*p).or_default().insert(rc(c), *a);
    }
    ClaimRequest {
        consumer,
        project_id: "p-conformance".into(),
        user_id: "u-conformance".into(),
        allocations,
        group: None,
    }
}

pub(super) fn new_instance(project: &str, name: &str, created_at: Timestamp) -> Instance {
    let mut i = Instance::new_building(
        InstanceId::new_v4(),
        name,
        project,
        "u-conformance",
        FlavorId::new("m1.tiny").unwrap_or_else(|_| FlavorId::new("1").unwrap_or_else(|e| panic!("{e}"))),
    );
    i.created_at = created_at;
    i.updated_at = created_at;
    i
}

pub(super) async fn list_all(
    store: &dyn Store,
    filters: &InstanceFilters,
    limit: u32,
) -> Result<Vec<Instance>, Failure> {
    let mut out = Vec::new();
    let mut marker = None;
    for _ in 0..100_000 {
        let page = store
            .list_instances(&ListQuery { filters: filters.clone(), limit: Some(limit), marker, partial: false })
            .await?;
        out.extend(page.instances);
        match page.next_marker {
            Some(m) => marker = Some(m),
            None => return Ok(out),
        }
    }
    Err(Failure("listing did not end".into()))
}

pub(super) fn uuids(v: &[Instance]) -> Vec<InstanceId> {
    v.iter().map(|i| i.uuid).collect()
}

pub(super) fn usages(tree: &ProviderTree) -> BTreeMap<(ProviderId, ResourceClass), i64> {
    let mut m = BTreeMap::new();
    for p in &tree.providers {
        for (c, n) in &p.usages {
            if *n != 0 {
                m.insert((p.id, c.clone()), *n);
            }
        }
    }
    m
}
