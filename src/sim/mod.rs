//! The simulation (feature `sim`): everything needed to run the scheduling flow end to end
//! without hypervisors, shared by the demo, the benchmarks, the tests and the servers.
//!
//! * [`cloud`]: one cloud type, [`Cloud`], bound to a store. Tests grow one host at a time
//!   from a [`HostSpec`] ([`Cloud::new`], [`Cloud::add_host`]); the seeded generator
//!   ([`Cloud::generate`] from a [`CloudSpec`]) writes a whole cloud (cells, availability
//!   zones, hosts with NUMA and SR-IOV children, flavors, server groups) with the same
//!   host-building code, so what a test builds and what a benchmark generates cannot drift
//!   apart.
//! * [`requests`]: the seeded request mix ([`RequestMix`], [`requests::generate`]) and the
//!   request spec of a flavor.
//! * [`driver`]: several schedulers, each with its own conductor and snapshot, pulling build
//!   requests from one queue against one store ([`driver::run`]), with a [`BuildReport`].
//! * [`compute`]: [`SimulatedCompute`], a [`ComputeDriver`](crate::compute::ComputeDriver)
//!   with build latency and seeded failure injection.
//! * [`heartbeat`]: simulated nova-compute services reporting in, so that hosts stay up
//!   for the scheduler's ComputeFilter ([`Heartbeat`]).
//! * [`listing`]: the instances of a listing dataset, a pure function of a seed and an index.
//!
//! Long phases report progress through [`Progress`], so the library draws nothing itself:
//! the command line shows bars, tests and servers pass [`Silent`].

use std::sync::Arc;

pub mod cloud;
pub mod compute;
pub mod driver;
pub mod heartbeat;
pub mod listing;
pub mod requests;
mod seeded;

pub use self::cloud::{ChildSpec, Cloud, CloudSpec, HostSpec, SimHost};
pub use self::compute::{BuildBehaviour, ComputeStats, SimulatedCompute};
pub use self::driver::{BuildReport, BuildSetup};
pub use self::heartbeat::{Heartbeat, HeartbeatStats, HeartbeatTask};
pub use self::requests::{BuildRequest, RequestMix};

/// Where library code reports the progress of a long phase (writing a cloud, running the
/// builds). The caller decides how to show it; the simulation only counts.
pub trait Progress: Send + Sync {
    /// A phase named `label` of `total` steps begins (`total` 0: unknown). The returned
    /// counter is advanced from any task; the phase ends when its last clone is dropped.
    fn phase(&self, label: &str, total: u64) -> Arc<dyn Phase>;
}

/// The counter of one phase of [`Progress`].
pub trait Phase: Send + Sync {
    /// `n` more steps are done.
    fn advance(&self, n: u64);
}

/// A [`Progress`] that shows nothing (tests, servers, anything without a terminal).
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn phase(&self, _label: &str, _total: u64) -> Arc<dyn Phase> {
        Arc::new(Silent)
    }
}

impl Phase for Silent {
    fn advance(&self, _n: u64) {}
}
