//! The listing dataset: cells and instances that are a pure function of a seed and an index,
//! so that every candidate store of the list benchmarks gets exactly the same instances
//! without anyone keeping a million of them in memory.

use std::collections::{BTreeMap, BTreeSet};

use super::seeded::{mix, uuid_of};
use crate::model::*;

/// The cells of a listing dataset: `n` cells (at least one) with ids derived from `seed`.
pub fn list_cells(seed: u64, n: usize) -> Vec<Cell> {
    (0..n.max(1))
        .map(|i| {
            let a = mix(seed ^ 0xCE11 ^ (i as u64).wrapping_mul(0x1000_0001));
            let b = mix(a);
            Cell { id: CellId(uuid_of(a, b)), name: format!("cell{i}"), disabled: false }
        })
        .collect()
}
/// Instance `i` of a listing dataset, a pure function of `(seed, i, cells)`, so that every
/// candidate gets exactly the same instances without keeping them all in memory. Every
/// four consecutive instances share a `created_at`, so the uuid tie-break of the listing
/// order is exercised; instances are spread over the cells by a hash, so every page needs
/// rows from every cell. For the filtered listings: 50 projects, 500 hosts per cell, and
/// vm states 5% ERROR, 10% STOPPED, the rest ACTIVE (all by hash).
pub fn list_instance(seed: u64, i: u64, cells: &[Cell], flavor: &FlavorId) -> Instance {
    let a = mix(seed ^ i.wrapping_mul(0xA24B_AED4_963E_E407));
    let b = mix(a ^ 0x5851_F42D_4C95_7F2D);
    let uuid = uuid_of(a, b);
    let cell = &cells[(a % cells.len().max(1) as u64) as usize];
    // 2026-01-01T00:00:00Z plus one millisecond per group of four.
    let created = Timestamp::from_micros(1_767_225_600_000_000 + (i / 4) as i64 * 1000);
    let host = format!("{}-host{:05}", cell.name, b % 500);
    Instance {
        uuid: InstanceId(uuid),
        name: format!("vm-{i}"),
        project_id: format!("project{}", b % 50),
        user_id: format!("user{}", a % 200),
        cell: Some(cell.id),
        host: Some(host.clone()),
        node: Some(host),
        flavor: flavor.clone(),
        vm_state: match (a >> 20) % 20 {
            0 => VmState::Error,
            1 | 2 => VmState::Stopped,
            _ => VmState::Active,
        },
        task_state: None,
        created_at: created,
        updated_at: created,
        launched_at: Some(created),
        deleted: false,
        availability_zone: Some(format!("az{}", a % 3)),
        metadata: BTreeMap::new(),
        tags: BTreeSet::new(),
        fault: None,
        system_metadata: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_a_pure_function_of_seed_and_index() {
        let cells = list_cells(7, 4);
        assert_eq!(cells, list_cells(7, 4));
        let flavor = FlavorId::new("m1.small").unwrap();
        let a = list_instance(7, 12, &cells, &flavor);
        assert_eq!(a, list_instance(7, 12, &cells, &flavor));
        assert_ne!(a.uuid, list_instance(7, 13, &cells, &flavor).uuid);
        assert_eq!(a.created_at, list_instance(7, 13, &cells, &flavor).created_at, "four share a created_at");
        assert!(cells.iter().any(|c| Some(c.id) == a.cell));
    }
}
