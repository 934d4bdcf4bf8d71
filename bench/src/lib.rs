//! # unicell-bench
//!
//! The benchmarks that compare datastores (and Nova's SQL cells layout) side by side, the
//! demo, and the tools that evaluate a store, as a library the `unicell` command calls.
//!
//! Every benchmark runs each candidate store in the same process run, on the same generated
//! data (seeded), and reports ratios beside absolute figures, because absolute times on a
//! shared machine are noise. Each writes `<name>.json` (parameters, environment, figures,
//! ratios, notes) and `<name>.svg` into its output directory.
//!
//! * [`list`], [`claims`], [`schedule`], [`sites`]: the benchmarks, each a `run(global_store,
//!   options)` with an options struct that mirrors its command-line flags; `failover`
//!   (feature `redis`) kills a master of its own replicated Redis Cluster under load;
//!   `faults` (features `redis` and `sql`) loses a Redis master and a Nova cell's database
//!   server under the same load, side by side;
//!   [`soak`] makes millions of claims and releases, then audits everything.
//! * [`demo`]: the main job end to end on one store.
//! * [`evaluate`]: `unicell evaluate`, conformance then every bench then the report, for
//!   a set of candidate stores (some started through testcontainers).
//! * [`conformance`]: the store conformance suite against any URL, case by case.
//! * [`candidate`]: candidate URLs, throwaway servers (`testkit:redis`, `testkit:cassandra`,
//!   `cell_servers=K`), per-run namespaces on shared servers, cleanup.
//! * [`durability`]: what each candidate keeps on disk, read from its servers.
//! * [`Error`]: what went wrong, by kind (invalid options, a run that found something
//!   wrong, a figure that could not be measured, the environment).
//! * [`page`]: `unicell report DIR`, one self-contained HTML page from every report JSON.
//! * [`proxy`]: a delaying TCP proxy (inter-site latency), [`report`], [`chart`], [`stats`],
//!   [`progress`] (bars drawn by the command's `tracing-indicatif` layer).
//!
//! The cloud generator, the request mix and the build driver the benchmarks run are the
//! library's simulation, `unicell::sim`.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod api_list;
pub mod candidate;
pub mod chart;
pub mod claims;
pub mod conformance;
pub mod demo;
pub mod durability;
pub mod error;
pub mod evaluate;
#[cfg(feature = "redis")]
pub mod failover;
#[cfg(all(feature = "redis", feature = "sql"))]
pub mod faults;
pub mod list;
pub mod page;
pub mod placement;
pub mod progress;
pub mod proxy;
pub mod report;
pub mod schedule;
pub mod sites;
pub mod soak;
pub mod stats;

use std::path::PathBuf;

pub use self::api_list::ApiListOptions;
pub use self::claims::ClaimsOptions;
pub use self::demo::DemoOptions;
pub use self::error::{Error, Result};
pub use self::list::ListOptions;
pub use self::placement::PlacementOptions;
pub use self::schedule::ScheduleOptions;
pub use self::sites::SitesOptions;
pub use self::soak::SoakOptions;

/// Options every benchmark takes.
#[derive(Debug, Clone)]
pub struct Common {
    /// Candidate store URLs (none: the global store). Each candidate gets the same
    /// generated data.
    pub stores: Vec<String>,
    /// Directory for `<bench>.json` and `<bench>.svg` (created if missing).
    pub out: PathBuf,
    /// A small size that finishes in seconds (for CI smoke runs). Explicit knobs still win.
    pub quick: bool,
    /// Seed of the data generator: the same seed gives the same data.
    pub seed: u64,
}

/// Resolves a knob: the explicit value, else the quick or the full default.
pub fn knob<T: Copy>(explicit: Option<T>, quick: bool, quick_default: T, full_default: T) -> T {
    explicit.unwrap_or(if quick { quick_default } else { full_default })
}

/// Resolves a list knob the same way (an empty list is "not given").
pub fn list_knob<T: Clone>(explicit: &[T], quick: bool, quick_default: &[T], full_default: &[T]) -> Vec<T> {
    if !explicit.is_empty() {
        explicit.to_vec()
    } else if quick {
        quick_default.to_vec()
    } else {
        full_default.to_vec()
    }
}
