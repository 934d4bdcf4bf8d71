//! proptest strategies for operation sequences (see `conformance::differential`).
#![allow(dead_code)]

use proptest::prelude::*;
use unicell::model::ResourceClass;
use unicell::store::conformance::differential::Op;

fn class() -> impl Strategy<Value = ResourceClass> {
    prop_oneof![
        4 => Just(ResourceClass::Vcpu),
        3 => Just(ResourceClass::MemoryMb),
        3 => Just(ResourceClass::Pcpu),
        2 => Just(ResourceClass::SriovNetVf),
        1 => Just(ResourceClass::DiskGb),
    ]
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 1i64..=4, 2 => Just(256i64), 2 => Just(512i64), 1 => Just(300i64), 1 => -1i64..=0]
}

/// One operation: mostly claims, some releases, a few inventory writes.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (
            0u8..10,
            prop::collection::vec((0u8..2, 0u8..4, class(), amount()), 1..4),
            prop_oneof![6 => Just(None), 2 => Just(Some(Some(1u32))), 1 => Just(Some(Some(2u32))), 1 => Just(Some(None))],
        )
            .prop_map(|(consumer, mut parts, group_max)| {
                // Most claims stay on one tree; some span two on purpose.
                if parts.len() > 1 && parts[0].0 != parts[1].0 && parts[0].1 % 2 == 0 {
                    let t = parts[0].0;
                    for p in parts.iter_mut() {
                        p.0 = t;
                    }
                }
                Op::Claim { consumer, parts, group_max }
            }),
        3 => (0u8..10).prop_map(|consumer| Op::Release { consumer }),
        1 => (0u8..2, 0u8..4, class(), 0i64..10, prop::bool::weighted(0.2))
            .prop_map(|(tree, provider, class, total, stale)| Op::SetTotal { tree, provider, class, total, stale }),
    ]
}

/// A sequence of operations.
pub fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..max)
}
