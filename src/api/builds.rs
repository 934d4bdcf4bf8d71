//! Builds started by this replica, and the crash-safety around them.
//!
//! A build request is recorded before the API answers 202 (the servers are visible at
//! once, BUILDING) and then scheduled and built in the background by this replica's
//! conductor. Each instance's build is owned through a lease in the store
//! ([`crate::store::leases`]): created before the instance is recorded, renewed every
//! [`BuildConfig::renew_every`] while the build runs, deleted once it has settled. A reaper
//! in every replica looks for leases that expired (their replica died or hung) and takes
//! them over with a compare-and-set, then finishes the build's story:
//!
//! * the instance is gone, deleted, or already ACTIVE with its claim / in ERROR: release
//!   what it should not hold, delete the lease;
//! * it is still BUILDING: release its claim, then reschedule it through this replica's
//!   conductor (up to [`BuildConfig::max_takeovers`] times), else ERROR with a fault.
//!
//! So a replica killed with SIGKILL leaves no server BUILDING and no claim without its
//! server. On SIGTERM, [`Builds::shutdown`] waits for the builds in flight and hands the
//! leases of those still running back (expired), so that another replica takes them over at
//! once instead of after the TTL.
//!
//! When a build ends, an instance deleted while it ran has its claim released again (the
//! DELETE released it too, but the scheduler may have claimed after that).
//!
//! Limit: a replica that stalls longer than the TTL without dying may see its build taken
//! over while it still runs; it learns so at its next renewal and stops renewing, but a
//! state write it makes afterwards is not fenced. Keep the TTL well above the longest
//! pause (GC-free Rust: scheduling delays on an overloaded host).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

use crate::conductor::Conductor;
use crate::error::Result;
use crate::model::{
    ConsumerId, Fault, Instance, InstanceId, InstancePatch, RequestSpec, TaskState, Timestamp, VmState,
};
use crate::store::Store;
use crate::store::leases::{BuildLease, Leases};

/// How many lease renewals a replica has in flight at once.
const RENEW_WIDTH: usize = 16;

/// Lease timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildConfig {
    /// How long a lease lasts without renewal; a dead replica's builds are taken over
    /// after this (plus up to one reap interval).
    pub lease_ttl: Duration,
    /// How often the leases held are renewed (well under the TTL).
    pub renew_every: Duration,
    /// How often the reaper looks for expired leases.
    pub reap_every: Duration,
    /// How many times a build interrupted by a dead replica is rescheduled before it goes
    /// to ERROR.
    pub max_takeovers: u32,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            lease_ttl: Duration::from_secs(30),
            renew_every: Duration::from_secs(5),
            reap_every: Duration::from_secs(5),
            max_takeovers: 1,
        }
    }
}

/// `(version, attempts)` of each lease this replica holds.
type Held = Arc<Mutex<HashMap<InstanceId, (u64, u32)>>>;

/// The builds of one replica.
#[derive(Debug)]
pub struct Builds {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    conductor: Arc<Conductor>,
    replica: String,
    config: BuildConfig,
    held: Held,
    in_flight: AtomicUsize,
    idle: Notify,
}

fn lock(h: &Held) -> std::sync::MutexGuard<'_, HashMap<InstanceId, (u64, u32)>> {
    h.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Builds {
    pub(crate) fn new(store: Arc<dyn Store>, conductor: Arc<Conductor>, replica: String, config: BuildConfig) -> Self {
        if store.leases().is_none() {
            tracing::warn!(
                target: "unicell::api",
                backend = store.backend(),
                "this store has no build leases: builds of a replica that dies are not taken over"
            );
        }
        let inner = Arc::new(Inner {
            store,
            conductor,
            replica,
            config,
            held: Arc::default(),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        Builds { inner, tasks: Mutex::new(Vec::new()) }
    }

    /// Starts the renewal and reaper loops (needs a Tokio runtime).
    pub(crate) fn start_background(&self) {
        if self.inner.store.leases().is_none() {
            return;
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let renew = self.inner.clone();
        tasks.push(tokio::spawn(async move { renew.renew_loop().await }));
        let reap = self.inner.clone();
        tasks.push(tokio::spawn(async move { reap.reap_loop().await }));
    }

    /// Records the instances of one request under leases held by this replica (visible at
    /// once, BUILDING) and starts their build in the background. `Err` when they could not
    /// be recorded (the instances already written are in ERROR with a fault).
    pub async fn start(&self, spec: RequestSpec, mut instances: Vec<Instance>) -> Result<()> {
        let inner = &self.inner;
        let ids: Vec<InstanceId> = instances.iter().map(|i| i.uuid).collect();
        if let Some(leases) = inner.store.leases() {
            let expires_at = Timestamp::now().plus(inner.config.lease_ttl);
            for id in &ids {
                let lease =
                    BuildLease { instance: *id, owner: inner.replica.clone(), expires_at, version: 1, attempts: 0 };
                leases.create_lease(&lease).await?;
                lock(&inner.held).insert(*id, (1, 0));
            }
        }
        if let Err(e) = inner.conductor.record(&spec, &mut instances).await {
            for id in &ids {
                inner.finish(*id).await;
            }
            return Err(e);
        }
        inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let task = inner.clone();
        tokio::spawn(async move {
            task.build(spec, instances).await;
            task.done();
        });
        Ok(())
    }

    /// Builds running now (requests, including takeovers).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Leases this replica holds now.
    pub fn leases_held(&self) -> usize {
        lock(&self.inner.held).len()
    }

    /// Waits until no build runs or `timeout` passes; returns the builds still running.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.idle.notified();
            if self.in_flight() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight();
            }
        }
    }

    /// Graceful stop: waits up to `timeout` for the builds in flight, stops renewing and
    /// reaping, and hands the leases still held back (expired at once) so that another
    /// replica takes those builds over without waiting for the TTL. Returns how many
    /// were handed back.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        let left = self.drain(timeout).await;
        for t in self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            t.abort();
        }
        let Some(leases) = self.inner.store.leases() else {
            return left;
        };
        let held: Vec<(InstanceId, (u64, u32))> = lock(&self.inner.held).drain().collect();
        let past = Timestamp::now().minus(Duration::from_secs(1));
        let mut handed = 0;
        for (id, (version, attempts)) in held {
            match leases.replace_lease(id, version, &self.inner.replica, past, attempts).await {
                Ok(Some(_)) => handed += 1,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(target: "unicell::api", instance = %id, error = %e, "could not hand a build back")
                }
            }
        }
        if handed > 0 {
            tracing::info!(target: "unicell::api", handed, "builds handed back to the other replicas");
        }
        handed
    }

    /// One pass of the reaper (what the background loop runs every `reap_every`): takes
    /// over every expired lease it wins and settles those builds; returns how many it took.
    pub async fn reap_once(&self) -> Result<usize> {
        self.inner.reap_once().await
    }
}

impl Inner {
    fn done(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    async fn build(&self, spec: RequestSpec, instances: Vec<Instance>) {
        let ids: Vec<_> = instances.iter().map(|i| i.uuid).collect();
        match self.conductor.schedule_and_build(spec, instances).await {
            Ok(outcomes) => {
                let active = outcomes.iter().filter(|o| o.is_active()).count();
                tracing::debug!(target: "unicell::api", active, failed = outcomes.len() - active, "build finished");
            }
            Err(e) => tracing::warn!(target: "unicell::api", error = %e, "build failed in the store"),
        }
        for id in ids {
            match settle(self.store.as_ref(), id).await {
                Ok(Settled::Done) => self.finish(id).await,
                Ok(Settled::StillBuilding) if self.store.leases().is_some() => {
                    // The conductor gave up on this instance without recording an outcome
                    // (the store failed while it wrote one). Deleting the lease now would
                    // leave it BUILDING with nobody responsible; stop renewing instead, so
                    // that the lease expires and a reaper reschedules it or puts it in
                    // ERROR, releasing what it holds.
                    tracing::warn!(
                        target: "unicell::api",
                        instance = %id,
                        "build ended with the instance still BUILDING; its lease is left to expire for a reaper"
                    );
                    lock(&self.held).remove(&id);
                }
                Ok(Settled::StillBuilding) => {
                    // No leases in this store: nobody else will take it over.
                    if let Err(e) = self.interrupted(id, "the build ended without an outcome").await {
                        tracing::warn!(target: "unicell::api", instance = %id, error = %e, "could not put an unfinished build in ERROR");
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "unicell::api", instance = %id, error = %e, "could not settle a build");
                    // Keep the lease: it expires and a reaper settles the instance.
                    lock(&self.held).remove(&id);
                }
            }
        }
    }

    /// Puts a BUILDING instance whose build cannot go on in ERROR with a fault saying
    /// `why`, and releases what it holds.
    async fn interrupted(&self, id: InstanceId, why: &str) -> Result<()> {
        let f = Fault {
            code: 500,
            message: format!("Build of instance {id} was interrupted: {why}."),
            details: format!("settled by {}", self.replica),
            created_at: Timestamp::now(),
        };
        self.store.update_instance(id, &crate::conductor::error_patch(f)).await?;
        settle(self.store.as_ref(), id).await?;
        Ok(())
    }

    /// Deletes the lease of a settled build.
    async fn finish(&self, id: InstanceId) {
        let Some((version, _)) = lock(&self.held).remove(&id) else {
            return;
        };
        if let Some(leases) = self.store.leases()
            && let Err(e) = leases.delete_lease(id, version).await
        {
            tracing::warn!(target: "unicell::api", instance = %id, error = %e, "could not delete a build lease");
        }
    }

    async fn renew_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.renew_every.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(leases) = self.store.leases() else {
                return;
            };
            let held: Vec<(InstanceId, (u64, u32))> = lock(&self.held).iter().map(|(k, v)| (*k, *v)).collect();
            // Renewed RENEW_WIDTH at a time, each lease's expiry taken when its own call is
            // sent. One call after another, a pass over hundreds of leases on a loaded SQL
            // server took seconds (over 4 s in the replicas test), and with the expiry taken
            // once before the pass the last leases of a long pass expired soon after they
            // were renewed: a live replica's builds could be taken over while it ran them.
            futures::stream::iter(held)
                .for_each_concurrent(RENEW_WIDTH, |(id, (version, attempts))| {
                    self.renew_one(leases, id, version, attempts)
                })
                .await;
        }
    }

    async fn renew_one(&self, leases: &dyn Leases, id: InstanceId, version: u64, attempts: u32) {
        let expires_at = Timestamp::now().plus(self.config.lease_ttl);
        match leases.replace_lease(id, version, &self.replica, expires_at, attempts).await {
            Ok(Some(l)) => {
                let mut h = lock(&self.held);
                if let Some(v) = h.get_mut(&id)
                    && v.0 == version
                {
                    v.0 = l.version;
                }
            }
            Ok(None) => {
                // Finished meanwhile (removed from `held`) or taken over.
                let mut h = lock(&self.held);
                if h.get(&id).is_some_and(|v| v.0 == version) {
                    h.remove(&id);
                    tracing::warn!(target: "unicell::api", instance = %id, "build lease lost to another replica");
                }
            }
            Err(e) => {
                tracing::warn!(target: "unicell::api", instance = %id, error = %e, "lease renewal failed")
            }
        }
    }

    async fn reap_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.reap_every.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.reap_once().await {
                tracing::warn!(target: "unicell::api", error = %e, "reaper pass failed");
            }
        }
    }

    async fn reap_once(self: &Arc<Self>) -> Result<usize> {
        let Some(leases) = self.store.leases() else {
            return Ok(0);
        };
        let now = Timestamp::now();
        let mut taken = 0;
        for lease in leases.list_leases().await? {
            if !lease.expired(now) || lock(&self.held).contains_key(&lease.instance) {
                continue;
            }
            let expires_at = Timestamp::now().plus(self.config.lease_ttl);
            let attempts = lease.attempts.saturating_add(1);
            let Some(mine) =
                leases.replace_lease(lease.instance, lease.version, &self.replica, expires_at, attempts).await?
            else {
                continue; // another reaper won, or the owner renewed/finished just now
            };
            taken += 1;
            lock(&self.held).insert(mine.instance, (mine.version, mine.attempts));
            tracing::info!(
                target: "unicell::api",
                instance = %mine.instance,
                previous_owner = %lease.owner,
                "taking over a build whose lease expired"
            );
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let me = self.clone();
            let previous = lease.owner.clone();
            tokio::spawn(async move {
                if let Err(e) = me.take_over(mine.instance, mine.attempts, &previous).await {
                    tracing::warn!(target: "unicell::api", instance = %mine.instance, error = %e, "takeover failed; the lease will expire again");
                    lock(&me.held).remove(&mine.instance);
                }
                me.done();
            });
        }
        Ok(taken)
    }

    /// Settles a build whose replica stopped renewing its lease.
    async fn take_over(&self, id: InstanceId, attempts: u32, previous: &str) -> Result<()> {
        let consumer = ConsumerId::from(id);
        // The dead build may have stopped in the middle of an instance write (SQL cells: a
        // move between databases); nobody else writes this instance now.
        if let Err(e) = self.store.repair_instance(id).await {
            tracing::warn!(target: "unicell::api", instance = %id, error = %e, "could not repair an interrupted build's instance");
        }
        let inst = match self.store.get_instance(id).await {
            Ok(i) => i,
            Err(crate::Error::NotFound { .. }) => {
                // The replica died between the lease and the record: nothing was built.
                self.store.release(consumer).await?;
                self.store.delete_request_spec(id).await?;
                self.finish(id).await;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if inst.deleted || inst.vm_state != VmState::Building {
            settle(self.store.as_ref(), id).await?;
            self.finish(id).await;
            return Ok(());
        }
        // Still building: whatever it holds was claimed by the dead build.
        self.store.release(consumer).await?;
        let spec = match self.store.get_request_spec(id).await {
            Ok(s) => Some(s),
            Err(crate::Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let Some(mut spec) = spec.filter(|_| attempts <= self.config.max_takeovers) else {
            let why = format!(
                "the API replica running it ({previous}) stopped and its lease expired (taken over by {} after {attempts} interruption(s))",
                self.replica
            );
            self.interrupted(id, &why).await?;
            self.finish(id).await;
            return Ok(());
        };
        let patch = InstancePatch {
            task_state: Some(Some(TaskState::Scheduling)),
            cell: Some(None),
            host: Some(None),
            node: Some(None),
            ..Default::default()
        };
        let inst = self.store.update_instance(id, &patch).await?;
        spec.instance_uuid = id;
        spec.num_instances = 1;
        self.build(spec, vec![inst]).await;
        Ok(())
    }
}

/// What [`settle`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// The instance's claims agree with its state; its lease can go.
    Done,
    /// It is still BUILDING (and not deleted): somebody must still finish its build.
    StillBuilding,
}

/// Makes an instance's claims agree with its state after a build: a deleted instance (or
/// one gone for good) holds nothing and reads deleted; an ERROR instance holds nothing; an
/// ACTIVE one without a claim goes to ERROR; a BUILDING one is left as it is and reported.
async fn settle(store: &dyn Store, id: InstanceId) -> Result<Settled> {
    let consumer = ConsumerId::from(id);
    let inst = match store.get_instance(id).await {
        Ok(i) => i,
        Err(crate::Error::NotFound { .. }) => {
            store.release(consumer).await?;
            return Ok(Settled::Done);
        }
        Err(e) => return Err(e),
    };
    if inst.deleted {
        store.release(consumer).await?;
        if inst.vm_state != VmState::Deleted {
            let patch =
                InstancePatch { vm_state: Some(VmState::Deleted), task_state: Some(None), ..Default::default() };
            store.update_instance(id, &patch).await?;
        }
        return Ok(Settled::Done);
    }
    match inst.vm_state {
        VmState::Error => {
            store.release(consumer).await?;
        }
        VmState::Active if store.allocations(consumer).await?.is_empty() => {
            let f = Fault {
                code: 500,
                message: format!("Instance {id} was ACTIVE without its resource claim."),
                details: String::new(),
                created_at: Timestamp::now(),
            };
            let patch = InstancePatch {
                vm_state: Some(VmState::Error),
                task_state: Some(None),
                fault: Some(Some(f)),
                ..Default::default()
            };
            store.update_instance(id, &patch).await?;
        }
        VmState::Building => return Ok(Settled::StillBuilding),
        _ => {}
    }
    Ok(Settled::Done)
}
