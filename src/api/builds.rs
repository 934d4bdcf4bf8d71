//! Builds started by this replica: recorded before the API answers 202, then scheduled and
//! built in the background by this replica's conductor.
//!
//! In-flight builds are counted so that a graceful shutdown can wait for them
//! ([`Builds::drain`]). When a build ends, every instance that was deleted while it ran
//! has its claim released again (the DELETE released it too, but a claim made by the
//! scheduler after that release would otherwise stay) and is marked deleted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::conductor::Conductor;
use crate::error::Result;
use crate::model::{ConsumerId, Instance, InstancePatch, RequestSpec, VmState};
use crate::store::Store;

/// The builds of one replica.
#[derive(Debug)]
pub struct Builds {
    store: Arc<dyn Store>,
    conductor: Arc<Conductor>,
    in_flight: Arc<AtomicUsize>,
    idle: Arc<Notify>,
}

impl Builds {
    pub(crate) fn new(store: Arc<dyn Store>, conductor: Arc<Conductor>) -> Self {
        Builds { store, conductor, in_flight: Arc::new(AtomicUsize::new(0)), idle: Arc::new(Notify::new()) }
    }

    /// Records the instances of one request (visible at once, BUILDING) and starts their
    /// build in the background. `Err` when they could not be recorded (the instances
    /// already written are in ERROR with a fault).
    pub async fn start(&self, spec: RequestSpec, mut instances: Vec<Instance>) -> Result<()> {
        self.conductor.record(&spec, &mut instances).await?;
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let store = self.store.clone();
        let conductor = self.conductor.clone();
        let in_flight = self.in_flight.clone();
        let idle = self.idle.clone();
        tokio::spawn(async move {
            let ids: Vec<_> = instances.iter().map(|i| i.uuid).collect();
            match conductor.schedule_and_build(spec, instances).await {
                Ok(outcomes) => {
                    let active = outcomes.iter().filter(|o| o.is_active()).count();
                    tracing::debug!(target: "unicell::api", active, failed = outcomes.len() - active, "build finished");
                }
                Err(e) => tracing::warn!(target: "unicell::api", error = %e, "build failed in the store"),
            }
            for id in ids {
                if let Err(e) = settle_deleted(store.as_ref(), id).await {
                    tracing::warn!(target: "unicell::api", instance = %id, error = %e, "could not settle a deleted build");
                }
            }
            if in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
                idle.notify_waiters();
            }
        });
        Ok(())
    }

    /// Builds running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no build runs, or `timeout` passes; returns the builds still running.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight();
            }
        }
    }
}

/// If `id` was deleted while it was building, release whatever it holds and make its
/// state say so (the conductor may have written ACTIVE after the delete).
async fn settle_deleted(store: &dyn Store, id: crate::model::InstanceId) -> Result<()> {
    let inst = match store.get_instance(id).await {
        Ok(i) => i,
        Err(crate::Error::NotFound { .. }) => {
            store.release(ConsumerId::from(id)).await?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if inst.deleted {
        store.release(ConsumerId::from(id)).await?;
        if inst.vm_state != VmState::Deleted {
            let patch =
                InstancePatch { vm_state: Some(VmState::Deleted), task_state: Some(None), ..Default::default() };
            store.update_instance(id, &patch).await?;
        }
    }
    Ok(())
}
