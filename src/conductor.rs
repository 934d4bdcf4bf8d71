//! The conductor: builds instances end to end, retrying over the alternates the scheduler
//! returned (Nova's `schedule_and_build_instances` plus the cell
//! conductor's reschedule loop).
//!
//! For each request it records the instances in the store (BUILDING, task SCHEDULING, no
//! cell yet), asks the scheduler (which returns hosts already claimed), casts each instance
//! to its host's compute and writes every state transition. On a reschedulable failure it
//! releases the claim on that host, claims the next alternate (skipping alternates whose
//! claim fails: someone else took the room) and casts again; when the list is exhausted
//! the instance goes to ERROR with a fault and no allocation. A non-reschedulable failure
//! goes to ERROR at once. Unlike Nova's cell conductor, a reschedule never needs an upcall:
//! the alternates travel with the request and the claim is a store call.
//!
//! Many conductors may run against one store; they share nothing but the store (and, if
//! the caller wishes, a scheduler).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::compute::ComputeDriver;
use crate::error::{Error, Result};
use crate::model::{
    CellId, ClaimRequest, ConsumerId, Fault, GroupClaim, Instance, InstanceId, InstancePatch, RequestSpec, Selection,
    TaskState, Timestamp, VmState,
};
use crate::scheduler::{ScheduleError, Scheduler};

/// Conductor configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConductorConfig {
    /// Alternates asked of the scheduler per instance (Nova's `max_attempts - 1`; 2).
    pub num_alternates: usize,
    /// Retries of a store call that fails with a retryable error (`Unavailable`,
    /// `Timeout`) during a build, after the first attempt (default 4). When they run out,
    /// the instance goes to ERROR with a fault and its claim is released.
    pub store_retries: u32,
    /// Wait before the first retry; doubled after each, at most 2 s (default 100 ms: with
    /// 4 retries a build rides out about 1.5 s of store outage, a Redis failover's order).
    pub store_backoff: Duration,
    /// Instance writes (state changes during builds) of concurrent builds coalesced into
    /// one store call ([`Instances::update_instances`](crate::store::Instances::update_instances),
    /// one pipeline on Redis); 0 or 1: each write alone (default). Each write is still
    /// atomic on its instance and gets its own answer.
    pub instance_write_batch: usize,
}

impl Default for ConductorConfig {
    fn default() -> Self {
        ConductorConfig {
            num_alternates: 2,
            store_retries: 4,
            store_backoff: Duration::from_millis(100),
            instance_write_batch: 0,
        }
    }
}

impl ConductorConfig {
    /// Nova's defaults with `num_alternates` alternates.
    pub fn with_alternates(num_alternates: usize) -> Self {
        ConductorConfig { num_alternates, ..ConductorConfig::default() }
    }
}

/// How one instance's build ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildStatus {
    /// ACTIVE on this host.
    Active {
        /// Service host.
        host: String,
        /// Node.
        node: String,
        /// Cell.
        cell: CellId,
    },
    /// ERROR with this fault code and message.
    Failed {
        /// Fault code (500 as Nova for NoValidHost and build failures, 400 for an invalid
        /// request).
        code: u16,
        /// The fault message.
        message: String,
    },
}

/// The outcome of one instance of a build request, for summaries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOutcome {
    /// The instance.
    pub instance: crate::model::InstanceId,
    /// Active or failed.
    pub status: BuildStatus,
    /// Builds retried on an alternate after a reschedulable failure.
    pub reschedules: u32,
    /// Alternates skipped because their claim failed.
    pub alternates_skipped: u32,
    /// Hosts a build was attempted on, in order.
    pub hosts_tried: Vec<String>,
}

impl BuildOutcome {
    /// True when the instance is ACTIVE.
    pub fn is_active(&self) -> bool {
        matches!(self.status, BuildStatus::Active { .. })
    }
}

/// Builds instances: scheduler, compute, reschedules, state transitions.
#[derive(Debug)]
pub struct Conductor {
    store: Arc<dyn crate::store::Store>,
    scheduler: Arc<Scheduler>,
    compute: Arc<dyn ComputeDriver>,
    config: ConductorConfig,
    /// The instance-write coalescer when `instance_write_batch` is on.
    writer: Option<crate::scheduler::batch::InstanceWriteBatcher>,
}

/// Batches of instance writes outstanding at once when `instance_write_batch` is on.
const WRITE_BATCHES_IN_FLIGHT: usize = 4;

fn fault(code: u16, message: impl Into<String>, details: impl Into<String>) -> Fault {
    Fault { code, message: message.into(), details: details.into(), created_at: Timestamp::now() }
}

/// Whether `stored` is the record `wanted` was created as, in what a build sets once and
/// nobody else does: owner, name, flavor, creation time, metadata, tags and the boot
/// request's attributes (`system_metadata` carries the request's `reservation_id`). State
/// fields are not compared: another writer (a reaper) may have moved it on since.
fn same_record(stored: &Instance, wanted: &Instance) -> bool {
    stored.uuid == wanted.uuid
        && stored.project_id == wanted.project_id
        && stored.user_id == wanted.user_id
        && stored.name == wanted.name
        && stored.flavor == wanted.flavor
        && stored.created_at == wanted.created_at
        && stored.metadata == wanted.metadata
        && stored.tags == wanted.tags
        && stored.system_metadata == wanted.system_metadata
}

/// The patch that puts an instance in ERROR with fault `f`, off any host.
pub(crate) fn error_patch(f: Fault) -> InstancePatch {
    InstancePatch {
        vm_state: Some(VmState::Error),
        task_state: Some(None),
        host: Some(None),
        node: Some(None),
        fault: Some(Some(f)),
        ..Default::default()
    }
}

impl Conductor {
    /// Runs the store call `op`, retrying a retryable failure (`Unavailable`, `Timeout`)
    /// up to `store_retries` times with exponential backoff. For idempotent writes only (a
    /// patch, a release, an upsert), where repeating one whose outcome is unknown is safe;
    /// a create goes through [`create_instance`](Self::create_instance).
    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut wait = self.config.store_backoff;
        let mut attempt = 0u32;
        loop {
            match op().await {
                Err(e) if e.is_retryable() && attempt < self.config.store_retries => {
                    attempt += 1;
                    tracing::warn!(%what, attempt, error = %e, "store call failed; retrying after {wait:?}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// Creates `instance` with the retries of [`retry`](Self::retry). A create is not
    /// idempotent: when an attempt fails with its outcome unknown (a pool or network
    /// timeout after the server committed the INSERT) the next attempt meets the record
    /// that attempt made, as `AlreadyExists` ("Duplicate entry" on MariaDB). So after a
    /// failed attempt, `AlreadyExists` is read back: if the stored record is this one (see
    /// [`same_record`]) the create succeeded; anything else is the conflict it says.
    /// `AlreadyExists` on the first attempt is always a conflict.
    async fn create_instance(&self, instance: &Instance) -> Result<()> {
        let mut wait = self.config.store_backoff;
        let mut attempt = 0u32;
        loop {
            match self.store.create_instance(instance).await {
                Ok(()) => return Ok(()),
                Err(e @ Error::AlreadyExists { .. }) if attempt > 0 => {
                    let stored = self.retry("get_instance", || self.store.get_instance(instance.uuid)).await?;
                    if same_record(&stored, instance) {
                        tracing::info!(
                            instance = %instance.uuid,
                            attempt,
                            "an earlier attempt of the create had landed; taking it as done"
                        );
                        return Ok(());
                    }
                    return Err(e);
                }
                Err(e) if e.is_retryable() && attempt < self.config.store_retries => {
                    attempt += 1;
                    tracing::warn!(
                        instance = %instance.uuid,
                        attempt,
                        error = %e,
                        "create_instance failed; retrying after {wait:?}"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A build could not go on because the store failed (after retries): puts the
    /// instance in ERROR with a fault saying so and releases its claim, each with retries,
    /// so that no BUILDING instance holds a claim with nobody responsible for it. Returns
    /// the failed outcome, or the store's error if it could not be told (then the instance
    /// is left to whoever owns the build: `unicell serve`'s lease reaper takes over
    /// builds whose lease was not settled).
    async fn abandon(&self, mut outcome: BuildOutcome, error: &Error, history: &[String]) -> Result<BuildOutcome> {
        let id = outcome.instance;
        tracing::error!(instance = %id, %error, "build abandoned: the store failed mid-build");
        // The failed call may have been an instance write stopped half way (SQL cells: a
        // move between databases); this build is the instance's only writer.
        if let Err(e) = self.store.repair_instance(id).await {
            tracing::warn!(instance = %id, error = %e, "could not repair the instance of an abandoned build");
        }
        let released = self.retry("release", || self.store.release(ConsumerId::from(id))).await;
        let message = format!("Build of instance {id} failed: the store did not answer ({error})");
        let f = fault(500, &message, history.join("\n"));
        let patch = error_patch(f);
        let recorded = self.retry("update_instance", || self.write_instance(id, &patch)).await;
        match (released, recorded) {
            (Ok(_), Ok(_)) => {
                outcome.status = BuildStatus::Failed { code: 500, message };
                Ok(outcome)
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(instance = %id, error = %e, "could not settle an abandoned build; its owner's lease reaper must");
                Err(e)
            }
        }
    }

    /// A conductor over `store`, asking `scheduler` and casting to `compute`.
    pub fn new(
        store: Arc<dyn crate::store::Store>,
        scheduler: Arc<Scheduler>,
        compute: Arc<dyn ComputeDriver>,
        config: ConductorConfig,
    ) -> Self {
        let writer = (config.instance_write_batch > 1).then(|| {
            crate::scheduler::batch::InstanceWriteBatcher::instance_writes(
                store.clone(),
                config.instance_write_batch,
                WRITE_BATCHES_IN_FLIGHT,
            )
        });
        Conductor { store, scheduler, compute, config, writer }
    }

    /// Writes an instance's new state, through the coalescer when it is on.
    async fn write_instance(&self, id: InstanceId, patch: &InstancePatch) -> Result<Instance> {
        match &self.writer {
            Some(w) => w.call((id, patch.clone())).await,
            None => self.store.update_instance(id, patch).await,
        }
    }

    /// The scheduler this conductor asks.
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// Builds `instances` (one request: `spec.num_instances` is taken from their number).
    /// Every instance ends ACTIVE on a claimed host, or in ERROR with a fault and no
    /// allocation; the outcomes come back in the order of `instances`. `Err` only when the
    /// store fails in a way that leaves that promise unkept (the error says what).
    pub async fn build_instances(&self, mut spec: RequestSpec, instances: Vec<Instance>) -> Result<Vec<BuildOutcome>> {
        let Some(first) = instances.first() else {
            return Ok(Vec::new());
        };
        spec.instance_uuid = first.uuid;
        spec.num_instances = u32::try_from(instances.len()).unwrap_or(u32::MAX);
        let span = tracing::info_span!(
            "build_instances",
            request = %spec.instance_uuid,
            instances = instances.len(),
            active = tracing::field::Empty,
            failed = tracing::field::Empty,
            reschedules = tracing::field::Empty,
        );
        let outcomes = self.build_inner(spec, instances).instrument(span.clone()).await?;
        span.record("active", outcomes.iter().filter(|o| o.is_active()).count());
        span.record("failed", outcomes.iter().filter(|o| !o.is_active()).count());
        span.record("reschedules", outcomes.iter().map(|o| o.reschedules).sum::<u32>());
        Ok(outcomes)
    }

    async fn build_inner(&self, spec: RequestSpec, mut instances: Vec<Instance>) -> Result<Vec<BuildOutcome>> {
        self.record(&spec, &mut instances).await?;
        self.schedule_and_build(spec, instances).await
    }

    /// The first half of [`build_instances`](Self::build_instances): records `instances`
    /// in the store (BUILDING, task SCHEDULING, no host) with one request spec each
    /// (`spec` with its own uuid). If a write fails, the instances already recorded go to
    /// ERROR with a fault and the error is returned. The API calls this before answering
    /// 202, so that the servers are visible at once, then runs
    /// [`schedule_and_build`](Self::schedule_and_build) in the background.
    pub async fn record(&self, spec: &RequestSpec, instances: &mut [Instance]) -> Result<()> {
        let ids: Vec<_> = instances.iter().map(|i| i.uuid).collect();
        let now = Timestamp::now();
        for (k, inst) in instances.iter_mut().enumerate() {
            inst.vm_state = VmState::Building;
            inst.task_state = Some(TaskState::Scheduling);
            inst.cell = None;
            inst.host = None;
            inst.node = None;
            inst.launched_at = None;
            inst.fault = None;
            inst.deleted = false;
            inst.updated_at = inst.updated_at.max(now);
            let mut own = spec.clone();
            own.instance_uuid = inst.uuid;
            let recorded = match self.create_instance(inst).await {
                Ok(()) => self.retry("put_request_spec", || self.store.put_request_spec(&own)).await,
                Err(err) => Err(err),
            };
            if let Err(err) = recorded {
                // Do not leave the instances already recorded BUILDING forever: the earlier
                // ones, and this one unless the store said it was someone else's (its
                // create may have landed with the answer lost).
                let f = fault(500, format!("Build request could not be recorded: {err}"), "");
                let settled = if matches!(err, Error::AlreadyExists { .. }) { k } else { k + 1 };
                for earlier in &ids[..settled] {
                    match self.write_instance(*earlier, &error_patch(f.clone())).await {
                        Ok(_) | Err(Error::NotFound { .. }) => {}
                        Err(e) => {
                            tracing::warn!(instance = %earlier, error = %e, "could not put an unrecorded build in ERROR")
                        }
                    }
                }
                return Err(err);
            }
        }
        Ok(())
    }

    /// The second half of [`build_instances`](Self::build_instances), for instances
    /// already [`record`](Self::record)ed: schedule (claiming), cast, reschedule over the
    /// alternates, and write every transition. Same promise and errors as
    /// `build_instances`; `spec.num_instances` must be the number of `instances`.
    pub async fn schedule_and_build(&self, spec: RequestSpec, instances: Vec<Instance>) -> Result<Vec<BuildOutcome>> {
        let uuids: Vec<_> = instances.iter().map(|i| i.uuid).collect();
        let lists = match self.scheduler.select_destinations(&spec, &uuids, self.config.num_alternates).await {
            Ok(lists) => lists,
            Err(e) => return self.bury(instances, e).await,
        };
        let group = match spec.hints.group {
            Some(g) => match self.retry("get_server_group", || self.store.get_server_group(g)).await {
                Ok(g) => Some(g),
                Err(e) => {
                    // Claimed but not buildable: ERROR and released, each instance.
                    let mut out = Vec::with_capacity(instances.len());
                    for i in &instances {
                        let o = BuildOutcome {
                            instance: i.uuid,
                            status: BuildStatus::Failed { code: 500, message: String::new() },
                            reschedules: 0,
                            alternates_skipped: 0,
                            hosts_tried: Vec::new(),
                        };
                        out.push(self.abandon(o, &e, &[]).await?);
                    }
                    return Ok(out);
                }
            },
            None => None,
        };
        let group_claim = group.map(|g| GroupClaim { group: g.id, max_per_host: g.claim_limit() });
        let builds = instances.into_iter().zip(lists).map(|(inst, list)| {
            let span = tracing::info_span!(
                "build_instance",
                instance = %inst.uuid,
                host = tracing::field::Empty,
                reschedules = tracing::field::Empty,
            );
            self.build_one(&spec, inst, list, group_claim).instrument(span)
        });
        let results = futures::future::join_all(builds).await;
        let mut outcomes = Vec::with_capacity(results.len());
        let mut first_err = None;
        for r in results {
            match r {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(outcomes),
        }
    }

    /// The scheduler failed: every instance goes to ERROR with a fault (Nova buries them
    /// in cell0; here the instance simply has no cell).
    async fn bury(&self, instances: Vec<Instance>, e: ScheduleError) -> Result<Vec<BuildOutcome>> {
        let (code, message, details) = match &e {
            ScheduleError::NoValidHost { reason } => {
                (500, format!("No valid host was found. {}", reason.summary()), reason.to_string())
            }
            ScheduleError::InvalidRequest(inner) => (400, format!("Invalid build request: {inner}"), String::new()),
            ScheduleError::Store(inner) => {
                // The scheduler released what it could; make sure nothing stays claimed.
                for i in &instances {
                    self.retry("release", || self.store.release(ConsumerId::from(i.uuid))).await?;
                }
                (500, format!("Scheduling failed: {inner}"), String::new())
            }
        };
        tracing::info!(%message, "build request failed at scheduling");
        let mut out = Vec::with_capacity(instances.len());
        for i in instances {
            let f = fault(code, &message, &details);
            let patch = error_patch(f);
            self.retry("update_instance", || self.write_instance(i.uuid, &patch)).await?;
            out.push(BuildOutcome {
                instance: i.uuid,
                status: BuildStatus::Failed { code, message: message.clone() },
                reschedules: 0,
                alternates_skipped: 0,
                hosts_tried: Vec::new(),
            });
        }
        Ok(out)
    }

    /// Builds one instance over its host list. A store call that still fails after the
    /// retries ends the build: the instance goes to ERROR with a fault and its claim is
    /// released ([`abandon`](Self::abandon)), never left BUILDING with a claim.
    async fn build_one(
        &self,
        spec: &RequestSpec,
        instance: Instance,
        list: Vec<Selection>,
        group: Option<GroupClaim>,
    ) -> Result<BuildOutcome> {
        let id = instance.uuid;
        match self.build_one_inner(spec, instance, list, group).await {
            Ok(o) => Ok(o),
            Err(e) => {
                let outcome = BuildOutcome {
                    instance: id,
                    status: BuildStatus::Failed { code: 500, message: String::new() },
                    reschedules: 0,
                    alternates_skipped: 0,
                    hosts_tried: Vec::new(),
                };
                self.abandon(outcome, &e, &[]).await
            }
        }
    }

    async fn build_one_inner(
        &self,
        spec: &RequestSpec,
        instance: Instance,
        list: Vec<Selection>,
        group: Option<GroupClaim>,
    ) -> Result<BuildOutcome> {
        let span = tracing::Span::current();
        let consumer = ConsumerId::from(instance.uuid);
        let mut queue: VecDeque<Selection> = list.into();
        let mut outcome = BuildOutcome {
            instance: instance.uuid,
            status: BuildStatus::Failed { code: 500, message: String::new() },
            reschedules: 0,
            alternates_skipped: 0,
            hosts_tried: Vec::new(),
        };
        let mut history: Vec<String> = Vec::new();
        let Some(mut current) = queue.pop_front() else {
            return Err(Error::invalid("selection", format!("the scheduler returned no host for {}", instance.uuid)));
        };
        loop {
            // `current` is claimed for this instance.
            span.record("host", current.host.as_str());
            outcome.hosts_tried.push(current.host.clone());
            let spawning = InstancePatch {
                cell: Some(Some(current.cell)),
                host: Some(Some(current.host.clone())),
                node: Some(Some(current.node.clone())),
                task_state: Some(Some(TaskState::Spawning)),
                availability_zone: Some(current.availability_zone.clone()),
                ..Default::default()
            };
            let inst = self.retry("update_instance", || self.write_instance(instance.uuid, &spawning)).await?;
            let failure = match self.compute.build(&current, &inst).await {
                Ok(()) => {
                    self.scheduler.report_build(&current.host, true);
                    let active = InstancePatch {
                        vm_state: Some(VmState::Active),
                        task_state: Some(None),
                        launched_at: Some(Some(Timestamp::now())),
                        ..Default::default()
                    };
                    self.retry("update_instance", || self.write_instance(instance.uuid, &active)).await?;
                    outcome.status = BuildStatus::Active {
                        host: current.host.clone(),
                        node: current.node.clone(),
                        cell: current.cell,
                    };
                    span.record("reschedules", outcome.reschedules);
                    return Ok(outcome);
                }
                Err(f) => f,
            };
            tracing::info!(host = %current.host, reschedulable = failure.reschedulable, message = %failure.message, "build failed");
            self.scheduler.report_build(&current.host, false);
            history.push(format!("{}: {}", current.host, failure.message));
            // Nova force-deletes the allocations on any failed build.
            self.retry("release", || self.store.release(consumer)).await?;
            if !failure.reschedulable {
                let message = format!("Build of instance {} aborted: {}", instance.uuid, failure.message);
                return self.fail(outcome, 500, message, &history).await;
            }
            let rescheduling = InstancePatch {
                task_state: Some(Some(TaskState::Scheduling)),
                host: Some(None),
                node: Some(None),
                ..Default::default()
            };
            self.retry("update_instance", || self.write_instance(instance.uuid, &rescheduling)).await?;
            // Claim the next alternate that still has room.
            let next = loop {
                let Some(alt) = queue.pop_front() else {
                    break None;
                };
                let req = ClaimRequest {
                    consumer,
                    project_id: spec.project_id.clone(),
                    user_id: spec.user_id.clone(),
                    allocations: alt.allocation.clone(),
                    group,
                };
                match self.store.claim(&req).await {
                    Ok(_) => break Some(alt),
                    Err(
                        e @ (Error::Capacity { .. }
                        | Error::Conflict(_)
                        | Error::NotFound { .. }
                        | Error::InvalidInput { .. }),
                    ) => {
                        tracing::debug!(host = %alt.host, error = %e, "alternate claim refused");
                        outcome.alternates_skipped += 1;
                        history.push(format!("{}: alternate skipped, claim refused: {e}", alt.host));
                    }
                    Err(e) if e.is_retryable() => {
                        // That alternate's part of the store is down or slow: make sure
                        // nothing stays claimed there (a timed-out claim may have been
                        // made), then try the next one.
                        self.retry("release", || self.store.release(consumer)).await?;
                        tracing::warn!(host = %alt.host, error = %e, "alternate claim failed in the store");
                        outcome.alternates_skipped += 1;
                        history.push(format!("{}: alternate skipped, store error: {e}", alt.host));
                    }
                    Err(e) => {
                        // Unknown outcome: make sure nothing stays claimed, then give up.
                        let _ = self.store.release(consumer).await;
                        return Err(e);
                    }
                }
            };
            match next {
                Some(alt) => {
                    outcome.reschedules += 1;
                    current = alt;
                }
                None => {
                    let message = format!(
                        "Exceeded maximum number of retries. Exhausted all hosts available for retrying build failures for instance {}.",
                        instance.uuid
                    );
                    span.record("reschedules", outcome.reschedules);
                    return self.fail(outcome, 500, message, &history).await;
                }
            }
        }
    }

    async fn fail(
        &self,
        mut outcome: BuildOutcome,
        code: u16,
        message: String,
        history: &[String],
    ) -> Result<BuildOutcome> {
        let f = fault(code, &message, history.join("\n"));
        let patch = error_patch(f);
        self.retry("update_instance", || self.write_instance(outcome.instance, &patch)).await?;
        outcome.status = BuildStatus::Failed { code, message };
        Ok(outcome)
    }
}
