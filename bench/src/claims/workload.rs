//! The claim workload shared by `bench claims` and the ceilings it compares against: the
//! same number of operations, from the same number of tasks, over the same number of keys,
//! with the same seeded operation -> tree mapping, so that a backend and its ceiling are
//! measured alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::error::{Context, Result};
use serde::Serialize;
use unicell::Error;

use crate::progress;
use crate::stats::{Latency, Summary};

/// The shape of the workload, identical for a backend and its ceiling.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Workload {
    /// Claims (or ceiling operations) in total.
    pub claims: usize,
    /// Concurrent tasks.
    pub tasks: usize,
    /// Trees (or rows / keys).
    pub trees: usize,
    /// Seed of the claim -> tree mapping.
    pub seed: u64,
}

impl Workload {
    /// The tree claim `k` goes to.
    pub fn tree_of(&self, k: usize) -> usize {
        (mix(self.seed ^ (k as u64).wrapping_mul(0x9E37_79B9)) % self.trees.max(1) as u64) as usize
    }
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Throughput and latency of one measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// What was measured.
    pub what: String,
    /// Operations attempted.
    pub ops: usize,
    /// Succeeded.
    pub ok: usize,
    /// Failed for capacity (should stay 0: trees are sized for the whole run).
    pub capacity_failures: usize,
    /// Generation or other conflicts.
    pub conflicts: usize,
    /// Other errors.
    pub errors: usize,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Wall time of the phase.
    pub seconds: f64,
    /// Successful operations per second.
    pub per_second: f64,
    /// Per-operation latency.
    pub latency: Summary,
}

/// Runs `op(tree)` `w.claims` times from `w.tasks` tasks; operation `k` goes to tree
/// `w.tree_of(k)`.
pub async fn measure<F, Fut>(what: String, w: &Workload, bar: tracing::Span, op: F) -> Result<Outcome>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = unicell::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let op = Arc::new(op);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..w.tasks {
        let (next, op, bar, wl) = (next.clone(), op.clone(), bar.clone(), *w);
        let total = w.claims;
        handles.push(tokio::spawn(async move {
            let mut lat = Latency::new();
            let mut c = Counts::default();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    break;
                }
                let t = Instant::now();
                let r = op(wl.tree_of(k)).await;
                lat.record(t.elapsed());
                c.add(r);
                progress::inc(&bar, 1);
            }
            (lat, c)
        }));
    }
    let mut lat = Latency::new();
    let mut c = Counts::default();
    for h in handles {
        let (l, x) = h.await.context("a claiming task panicked")?;
        lat.merge(&l);
        c.merge(x);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Outcome {
        what,
        ops: w.claims,
        ok: c.ok,
        capacity_failures: c.capacity,
        conflicts: c.conflicts,
        errors: c.errors,
        first_error: c.first_error,
        seconds,
        per_second: c.ok as f64 / seconds.max(1e-9),
        latency: lat.summary(),
    })
}

#[derive(Default)]
struct Counts {
    ok: usize,
    capacity: usize,
    conflicts: usize,
    errors: usize,
    first_error: Option<String>,
}

impl Counts {
    fn add(&mut self, r: unicell::Result<()>) {
        match r {
            Ok(()) => self.ok += 1,
            Err(e) => {
                match &e {
                    Error::Capacity { .. } => self.capacity += 1,
                    Error::Conflict(_) => self.conflicts += 1,
                    _ => self.errors += 1,
                }
                if self.first_error.is_none() {
                    self.first_error = Some(e.to_string());
                }
            }
        }
    }

    fn merge(&mut self, o: Counts) {
        self.ok += o.ok;
        self.capacity += o.capacity;
        self.conflicts += o.conflicts;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}
