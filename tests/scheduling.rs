//! The scheduling binary: the scheduler (claims at selection, alternates, all-or-nothing,
//! groups, traits/aggregates/destinations, nested providers, NoValidHost reasons, the
//! snapshot's change-feed refresh), the conductor (builds, reschedules over alternates,
//! ERROR with a fault and no allocation) and a stress run of many schedulers and
//! conductors, in `tests/scheduling/`.
//!
//! Every case is a plain async fn over `Arc<dyn Store>` and only looks at what it created
//! (a fresh cell per case, schedulers scoped to it), so each runs on the memory store
//! (always, a fresh store per case, trials `memory::<case>`) and on every store URL listed
//! in `UNICELL_TEST_STORES` (comma-separated; trials `<scheme>::<case>`). A store whose
//! server cannot be reached is IGNORED with the reason; one that fails to open otherwise
//! is a FAILURE.

mod support;

/// The cases, one file per component.
mod scheduling {
    pub mod conductor;
    pub mod degraded;
    pub mod nova;
    pub mod scheduler;
    pub mod stress;
}

use std::sync::Arc;

use support::{Backend, stores, trial};

fn main() {
    let mut backends: Vec<Arc<dyn Backend>> = vec![stores::memory()];
    backends.extend(stores::from_env());
    let cases = [
        scheduling::scheduler::cases(),
        scheduling::conductor::cases(),
        scheduling::degraded::cases(),
        scheduling::stress::cases(),
    ]
    .concat();
    let mut trials = Vec::new();
    for case in cases {
        for b in &backends {
            trials.push(trial(format!("{}::{}", b.name(), case.name), b, case.run));
        }
    }
    // The Nova-faithful scheduler needs Placement's tables: every SQL configuration, found
    // as the conformance binary finds them (ignored with the reason when no server answers).
    for sql in support::sql::all() {
        let b: Arc<dyn Backend> = sql;
        for case in scheduling::nova::sql_cases() {
            trials.push(trial(format!("nova::{}::{}", b.name(), case.name), &b, case.run));
        }
        backends.push(b);
    }
    for case in scheduling::nova::other_cases() {
        trials.push(trial(format!("nova::memory::{}", case.name), &backends[0], case.run));
    }
    support::run(trials, backends);
}
