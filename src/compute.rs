//! The compute side of a build: the [`ComputeDriver`] trait the conductor casts to (Nova's
//! `build_and_run_instance` cast to nova-compute) and the [`BuildFailure`] it reports. The
//! simulated driver that runs the whole flow without hypervisors is in `sim::compute`
//! (feature `sim`).

use async_trait::async_trait;

use crate::model::{Instance, Selection};

/// A failed build, as the compute reports it to the conductor.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("build failed ({}): {message}", if *.reschedulable { "reschedulable" } else { "not reschedulable" })]
pub struct BuildFailure {
    /// Nova's `RescheduledException` (true: try an alternate) versus
    /// `BuildAbortException` (false: the instance goes to ERROR at once).
    pub reschedulable: bool,
    /// What went wrong, for the fault.
    pub message: String,
}

/// A compute service that builds instances on a claimed host (Nova's
/// `build_and_run_instance`). The claim is already made when `build` is called; the
/// conductor releases it on failure.
#[async_trait]
pub trait ComputeDriver: Send + Sync + std::fmt::Debug {
    /// Builds `instance` on `host` (the selection the conductor claimed).
    async fn build(&self, host: &Selection, instance: &Instance) -> Result<(), BuildFailure>;
}
