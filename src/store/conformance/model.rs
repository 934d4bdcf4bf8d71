//! Model cases: names and identifiers the store must refuse.

use std::sync::Arc;

use super::harness::*;
use super::{case, check};
use crate::error::Error;
use crate::model::*;
use crate::store::prelude::*;

/// The cases of this group, in the suite's order.
pub(super) fn cases() -> Vec<Case> {
    vec![case!("model::bad_names_rejected", bad_names_rejected)]
}

async fn bad_names_rejected(_store: Arc<dyn Store>) -> CaseResult {
    for bad in ["vcpu", "CUSTOM_", "CUSTOM_lower", "MEMORY", "CUSTOM_A B", ""] {
        check!(
            matches!(ResourceClass::parse(bad), Err(Error::InvalidInput { .. })),
            "resource class {bad:?} must be rejected"
        );
    }
    for bad in ["GOLD", "CUSTOM_", "hw_cpu_x86_avx", "HW_", "CUSTOM_a"] {
        check!(matches!(Trait::new(bad), Err(Error::InvalidInput { .. })), "trait {bad:?} must be rejected");
    }
    // Names arriving as data (JSON) go through the same validation.
    let json = r#"{"consumer":"6f0c8d9e-2a43-4c36-9d6b-7b0c7f1e2a11","project_id":"p","user_id":"u",
        "allocations":{"6f0c8d9e-2a43-4c36-9d6b-7b0c7f1e2a12":{"CUSTOM_bad":1}}}"#;
    check!(serde_json::from_str::<ClaimRequest>(json).is_err(), "a claim naming CUSTOM_bad must not deserialize");
    Ok(())
}
