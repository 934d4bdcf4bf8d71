//! Small fixtures of the scheduling cases: flavors, request specs, instance records and
//! the audit of one cell. The test cloud itself is the library's simulated cloud
//! (`unicell::sim::Cloud`, grown host by host from `HostSpec`s).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use unicell::model::*;
use unicell::store::audit::AuditScope;
use unicell::store::prelude::*;

/// Turns errors into case failures.
pub fn e<E: std::fmt::Display>(err: E) -> String {
    format!("unexpected error: {err}")
}

/// A flavor.
pub fn flavor(vcpus: i64, memory_mb: i64, root_gb: i64) -> Flavor {
    Flavor {
        id: FlavorId::new(format!("f{vcpus}-{memory_mb}-{root_gb}"))
            .unwrap_or_else(|_| FlavorId::new("f").expect("static flavor id is valid")),
        name: format!("f{vcpus}"),
        vcpus,
        memory_mb,
        root_gb,
        ephemeral_gb: 0,
        swap_mb: 0,
        extra_specs: BTreeMap::new(),
    }
}

/// A request spec for one instance of `flavor`.
pub fn spec(flavor: Flavor) -> RequestSpec {
    unicell::sim::requests::request_spec(flavor, InstanceId::new_v4(), 1, "proj", "user")
}

/// A new instance record for `flavor` (the conductor sets the states).
pub fn instance(flavor: &Flavor) -> Instance {
    let now = Timestamp::now();
    let uuid = InstanceId::new_v4();
    Instance {
        uuid,
        name: format!("vm-{}", &uuid.to_string()[..8]),
        project_id: "proj".into(),
        user_id: "user".into(),
        cell: None,
        host: None,
        node: None,
        flavor: flavor.id.clone(),
        vm_state: VmState::Building,
        task_state: None,
        created_at: now,
        updated_at: now,
        launched_at: None,
        deleted: false,
        availability_zone: None,
        metadata: BTreeMap::new(),
        tags: BTreeSet::new(),
        fault: None,
        system_metadata: Default::default(),
    }
}

/// Audits every tree of `cell` with the store's audit (usage equals the sum of its
/// allocations, none over capacity, group member counts equal the allocations naming the
/// group), checks that no consumer holds allocations on two trees, and returns the
/// allocations by consumer.
pub async fn audit(store: &Arc<dyn Store>, cell: CellId) -> Result<BTreeMap<ConsumerId, TreeAllocation>, String> {
    let report = unicell::store::audit::audit(&**store, &AuditScope::cell(cell)).await.map_err(e)?;
    if !report.is_clean() {
        let v: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
        return Err(format!("audit found violations: {}", v.join("; ")));
    }
    let mut by_consumer = BTreeMap::new();
    for tree in store.list_provider_trees(Some(cell)).await.map_err(e)? {
        for a in store.tree_allocations(tree.root).await.map_err(e)? {
            let consumer = a.consumer;
            if by_consumer.insert(consumer, a).is_some() {
                return Err(format!("consumer {consumer} holds allocations on two trees"));
            }
        }
    }
    Ok(by_consumer)
}
