//! [`SimulatedCompute`]: a [`ComputeDriver`] with configurable build latency and seeded
//! failure injection, so the whole scheduling flow runs without hypervisors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::seeded::{SplitMix64, fnv1a};
use crate::compute::{BuildFailure, ComputeDriver};
use crate::model::{Instance, Selection};

/// How builds behave on a host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BuildBehaviour {
    /// Base build time.
    pub latency: Duration,
    /// Up to this much extra, uniformly.
    pub jitter: Duration,
    /// Probability that a build fails (0..=1).
    pub failure_rate: f64,
    /// Probability that a failure is reschedulable (0..=1); the rest abort.
    pub reschedulable_rate: f64,
}

impl Default for BuildBehaviour {
    /// Instant builds that always succeed.
    fn default() -> Self {
        BuildBehaviour { latency: Duration::ZERO, jitter: Duration::ZERO, failure_rate: 0.0, reschedulable_rate: 1.0 }
    }
}

/// Counters of a [`SimulatedCompute`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ComputeStats {
    /// Builds attempted.
    pub builds: u64,
    /// Builds that failed and could be rescheduled.
    pub reschedulable_failures: u64,
    /// Builds that failed for good.
    pub fatal_failures: u64,
}

/// A simulated hypervisor fleet: every host builds with the global [`BuildBehaviour`]
/// unless it has its own.
///
/// Outcomes are seedable and independent of timing: whether the build of instance `i` on
/// host `h` fails is a pure function of `(seed, i, h)`, so a test or benchmark replays the
/// same failures whatever the interleaving of concurrent builds.
#[derive(Debug)]
pub struct SimulatedCompute {
    seed: u64,
    default: BuildBehaviour,
    hosts: HashMap<String, BuildBehaviour>,
    builds: AtomicU64,
    reschedulable: AtomicU64,
    fatal: AtomicU64,
}

impl SimulatedCompute {
    /// A fleet where every build succeeds at once.
    pub fn new(seed: u64) -> Self {
        SimulatedCompute {
            seed,
            default: BuildBehaviour::default(),
            hosts: HashMap::new(),
            builds: AtomicU64::new(0),
            reschedulable: AtomicU64::new(0),
            fatal: AtomicU64::new(0),
        }
    }

    /// Sets the global build time.
    pub fn with_latency(mut self, latency: Duration, jitter: Duration) -> Self {
        self.default.latency = latency;
        self.default.jitter = jitter;
        self
    }

    /// Sets the global failure rate and the share of failures that are reschedulable.
    pub fn with_failure_rate(mut self, failure_rate: f64, reschedulable_rate: f64) -> Self {
        self.default.failure_rate = failure_rate.clamp(0.0, 1.0);
        self.default.reschedulable_rate = reschedulable_rate.clamp(0.0, 1.0);
        self
    }

    /// Gives one host its own behaviour.
    pub fn with_host(mut self, host: impl Into<String>, behaviour: BuildBehaviour) -> Self {
        self.hosts.insert(host.into(), behaviour);
        self
    }

    /// Makes every build on `host` fail (reschedulable or not).
    pub fn failing_host(self, host: impl Into<String>, reschedulable: bool) -> Self {
        let b = BuildBehaviour {
            failure_rate: 1.0,
            reschedulable_rate: if reschedulable { 1.0 } else { 0.0 },
            ..self.default
        };
        self.with_host(host, b)
    }

    /// Counters so far.
    pub fn stats(&self) -> ComputeStats {
        ComputeStats {
            builds: self.builds.load(Ordering::Relaxed),
            reschedulable_failures: self.reschedulable.load(Ordering::Relaxed),
            fatal_failures: self.fatal.load(Ordering::Relaxed),
        }
    }

    fn rolls(&self, host: &str, instance: &Instance) -> SplitMix64 {
        // The host name's hash mixed with the seed and the instance uuid.
        let (a, b) = instance.uuid.uuid().as_u64_pair();
        SplitMix64::new(self.seed ^ fnv1a(host) ^ a.rotate_left(17) ^ b.rotate_left(41))
    }
}

#[async_trait]
impl ComputeDriver for SimulatedCompute {
    async fn build(&self, host: &Selection, instance: &Instance) -> Result<(), BuildFailure> {
        self.builds.fetch_add(1, Ordering::Relaxed);
        let b = self.hosts.get(&host.host).copied().unwrap_or(self.default);
        let mut rng = self.rolls(&host.host, instance);
        let extra = if b.jitter.is_zero() { Duration::ZERO } else { b.jitter.mul_f64(rng.unit()) };
        let wait = b.latency + extra;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if rng.unit() < b.failure_rate {
            let reschedulable = rng.unit() < b.reschedulable_rate;
            let counter = if reschedulable { &self.reschedulable } else { &self.fatal };
            counter.fetch_add(1, Ordering::Relaxed);
            return Err(BuildFailure {
                reschedulable,
                message: format!(
                    "simulated {} failure spawning {} on {}",
                    if reschedulable { "transient" } else { "fatal" },
                    instance.uuid,
                    host.host
                ),
            });
        }
        Ok(())
    }
}
