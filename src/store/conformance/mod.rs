//! The conformance suite: the store contract as executable checks.
//!
//! Each case is a plain async function over an `Arc<dyn Store>` (an `Arc` because the race
//! cases spawn tasks). Cases only create objects with fresh random ids and names, and check
//! only what they created, so they may run concurrently against one shared store (a shared
//! Redis server, database or keyspace) as well as against a fresh store each.
//!
//! A backend's test binary turns [`cases`] into named trials, one per case, so that the
//! output lists every contract line by name for every backend:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use unicell::store::{Store, conformance, memory::MemoryStore};
//! for case in conformance::cases() {
//!     let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//!     (case.run)(store).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! One file per group of cases, named as the cases are (`claims.rs` holds `claims::*`):
//! `model`, `providers`, `claims`, `inventory`, `changes`, `race`, `catalog`,
//! `instances`; the harness ([`Case`], [`Failure`], [`check!`](crate::store::conformance::check),
//! [`case!`](crate::store::conformance::case)) in `harness.rs`, the fixtures in
//! `fixtures.rs`, and the [`differential`] checker that compares any store with the memory
//! store operation by operation.

use std::sync::Arc;

use crate::store::prelude::*;

mod catalog;
mod changes;
mod claims;
pub mod differential;
mod fixtures;
mod harness;
mod instances;
mod inventory;
mod leases;
mod model;
mod placement;
mod providers;
mod race;

pub use self::harness::{Case, CaseResult, Failure};
pub use self::race::RACE_WORKERS;

/// `check!(condition, "format", args...)`: when `condition` is false, returns from the
/// enclosing function with a [`Failure`] carrying the message and the source location.
/// Works in any function whose error type converts from [`Failure`] (the conformance cases,
/// and the cases of the crate's test binaries).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return ::std::result::Result::Err(::std::convert::From::from($crate::store::conformance::Failure(
                format!("{} (at {}:{})", format!($($fmt)+), file!(), line!()),
            )));
        }
    };
}

/// `case!("group::name", function)` (or `case!(function)`, named after the function):
/// a [`Case`] running an `async fn(Arc<dyn Store>) -> CaseResult`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_case {
    ($name:expr, $f:path) => {
        $crate::store::conformance::Case { name: $name, run: |s| ::std::boxed::Box::pin($f(s)) }
    };
    ($f:ident) => {
        $crate::store::conformance::Case { name: stringify!($f), run: |s| ::std::boxed::Box::pin($f(s)) }
    };
}

#[doc(inline)]
pub use crate::__conformance_case as case;
#[doc(inline)]
pub use crate::__conformance_check as check;

/// Every case of the suite, in a stable order.
pub fn cases() -> Vec<Case> {
    [
        model::cases(),
        providers::cases(),
        claims::cases(),
        inventory::cases(),
        changes::cases(),
        race::cases(),
        catalog::cases(),
        instances::cases(),
        leases::cases(),
    ]
    .concat()
}

/// The [`PlacementStore`](crate::store::placement::PlacementStore) cases, for the backends
/// whose [`Store::placement`] is `Some` (they fail on the others, naming the backend).
pub fn placement_cases() -> Vec<Case> {
    placement::cases()
}

/// Runs every case in order and returns the failures by case name; empty means the store
/// conforms. For quick checks outside a test harness.
pub async fn run_all(store: Arc<dyn Store>) -> Vec<(&'static str, Failure)> {
    let mut failures = Vec::new();
    for case in cases() {
        if let Err(f) = (case.run)(store.clone()).await {
            failures.push((case.name, f));
        }
    }
    failures
}
