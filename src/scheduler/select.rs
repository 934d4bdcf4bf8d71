//! `select_destinations`: rank, claim, alternates.
//!
//! Two rankings over the same snapshot, chosen by
//! [`SchedulerConfig::ranking`](crate::scheduler::SchedulerConfig::ranking):
//! * **Indexed** (the default): hosts are read best-first from the snapshot's score index
//!   (or, for a request only a few classes can serve, from those classes' host lists; for
//!   requested, forced or same-host hosts and hard affinity, by name or from the group
//!   index), each checked with its class's compiled template (integer compares) and the
//!   per-host filters, until `indexed_candidates` pass; class-level filters (zone, image
//!   properties) and scope are decided once per class. Only those hosts are weighed, with
//!   Nova's weighers and normalization. The cost follows the candidates, not the cloud.
//! * **Exhaustive**: every host of the scope through every stage, as Nova's filter
//!   scheduler does (with `max_placement_results`); the yardstick of placement quality,
//!   and what explains a NoValidHost (per-stage counts and reasons).
//!
//! An indexed ranking that finds nothing, or whose every host refuses the claim, falls
//! back to the exhaustive one before answering NoValidHost, so the indexed ranking never
//! fails a request the exhaustive one would place.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use tracing::Instrument;

use crate::error::{Conflict, Error};
use crate::model::{
    CellId, ClaimRequest, ConsumerId, GroupClaim, GroupPolicy, InstanceId, ProviderId, RequestSpec, Selection,
    ServerGroup, Timestamp, Trait,
};
use crate::scheduler::candidates::CandidateRequest;
use crate::scheduler::error::{
    ClaimFailure, ClaimFailureCause, NoValidHostReason, Rejection, ScheduleError, StageCount,
};
use crate::scheduler::filters::FilterContext;
use crate::scheduler::host_state::HostView;
use crate::scheduler::snapshot::{Cursors, HostRec, Members, Reservation, Verdicts, View, unordered};
use crate::scheduler::template::Template;
use crate::scheduler::{RankingMode, Scheduler, SchedulerConfig, SplitMix64, bump, lock, weighers};
use crate::store::Store;

/// What a request needs, prepared once (by both designs: this module's and
/// [`nova`](crate::scheduler::nova)'s).
pub(crate) struct Plan {
    /// The resource request with traits and aggregates.
    pub(crate) cand: CandidateRequest,
    /// The request's server group.
    pub(crate) group: Option<ServerGroup>,
    /// `same_host`: hosts of the hinted instances.
    pub(crate) same_host: Option<BTreeSet<String>>,
    /// `different_host`: hosts of the hinted instances.
    pub(crate) different_host: BTreeSet<String>,
    /// `force_hosts` given.
    pub(crate) forced: bool,
    /// `max_placement_results` for this request (`None`: lifted or unlimited).
    pub(crate) limit: Option<usize>,
    /// The compiled request for the last view it was ranked on (the view is held, so its
    /// identity cannot be taken by another): a request ranks and resolves several times,
    /// and looking its verdicts up in the view's shared cache each time costs a hash and a
    /// lock every scheduler of the process contends on.
    verdicts: Mutex<Option<OnView>>,
}

/// What a request compiled for one view: its verdicts and, once ranked, which classes may
/// serve it (both depend on the request and the view only).
struct OnView {
    view: Arc<View>,
    verdicts: Arc<Verdicts>,
    eligible: Option<Vec<bool>>,
}

impl Plan {
    /// Translates `spec` (flavor, image traits, group policy, destination aggregates,
    /// group, hints) for a scheduler configured with `config`.
    pub(crate) async fn new(
        store: &Arc<dyn Store>,
        config: &SchedulerConfig,
        spec: &RequestSpec,
    ) -> Result<Plan, ScheduleError> {
        let cand = candidate_request(spec, config.candidate_search_budget)?;
        let group = match spec.hints.group {
            Some(g) => Some(store.get_server_group(g).await.map_err(|e| match e {
                Error::NotFound { .. } => ScheduleError::InvalidRequest(e),
                e => ScheduleError::Store(e),
            })?),
            None => None,
        };
        let mut same_host = None;
        if !spec.hints.same_host.is_empty() {
            same_host = Some(Self::hosts_of(store, &spec.hints.same_host).await?);
        }
        let different_host = Self::hosts_of(store, &spec.hints.different_host).await?;
        let forced = !spec.force_hosts.is_empty();
        let limit = placement_limit(config.max_placement_results, spec);
        Ok(Plan { cand, group, same_host, different_host, forced, limit, verdicts: Mutex::new(None) })
    }

    /// The compiled request for `view`.
    fn verdicts_on(&self, view: &Arc<View>) -> Arc<Verdicts> {
        let mut cached = lock(&self.verdicts);
        if let Some(c) = cached.as_ref()
            && Arc::ptr_eq(&c.view, view)
        {
            return c.verdicts.clone();
        }
        let verdicts = view.verdicts(&self.cand);
        *cached = Some(OnView { view: view.clone(), verdicts: verdicts.clone(), eligible: None });
        verdicts
    }

    /// The classes that may serve the request on `view`, computed by `compute` once per view.
    fn eligible_on(&self, view: &Arc<View>, compute: impl FnOnce() -> Vec<bool>) -> Vec<bool> {
        if let Some(c) = lock(&self.verdicts).as_ref()
            && Arc::ptr_eq(&c.view, view)
            && let Some(e) = &c.eligible
        {
            return e.clone();
        }
        let e = compute();
        if let Some(c) = lock(&self.verdicts).as_mut()
            && Arc::ptr_eq(&c.view, view)
        {
            c.eligible = Some(e.clone());
        }
        e
    }

    /// Hosts currently running these instances (unknown or unplaced ones are skipped).
    async fn hosts_of(store: &Arc<dyn Store>, ids: &[InstanceId]) -> Result<BTreeSet<String>, ScheduleError> {
        let mut out = BTreeSet::new();
        for id in ids {
            match store.get_instance(*id).await {
                Ok(i) => out.extend(i.host),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(ScheduleError::Store(e)),
            }
        }
        Ok(out)
    }
}

/// A host that passed every stage.
#[derive(Clone, Copy, Debug)]
struct Ranked {
    slot: u32,
    root: ProviderId,
}

/// The request's `max_placement_results`, lifted as Nova lifts it
/// (`nova/scheduler/utils.py → resources_from_request_spec`): for server groups,
/// `same_host`/`different_host` hints, and forced or requested hosts and nodes, where a
/// truncated candidate list gave false NoValidHosts (bugs 1777591, 1827628).
fn placement_limit(configured: Option<usize>, spec: &RequestSpec) -> Option<usize> {
    let requested_host = spec.requested_destination.as_ref().is_some_and(|d| d.host.is_some() || d.node.is_some());
    let lifted = spec.hints.group.is_some()
        || !spec.hints.same_host.is_empty()
        || !spec.hints.different_host.is_empty()
        || !spec.force_hosts.is_empty()
        || requested_host;
    if lifted { None } else { configured }
}

/// Keeps a uniform random sample of `k` items of `v` (partial Fisher-Yates), in place.
fn sample_in_place<T>(v: &mut Vec<T>, k: usize, rng: &mut SplitMix64) {
    let n = v.len();
    if k >= n {
        return;
    }
    for i in 0..k {
        let j = i + rng.below(n - i);
        v.swap(i, j);
    }
    v.truncate(k);
}

/// Where a host is, as the request's scope sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HostPlace<'a> {
    /// Service host name.
    pub(crate) name: &'a str,
    /// Node name.
    pub(crate) node: &'a str,
    /// Its cell.
    pub(crate) cell: CellId,
    /// Whether that cell is disabled.
    pub(crate) cell_disabled: bool,
}

/// Why a host is out of the request's scope (requested cell, disabled cell, requested
/// host or node, ignored hosts, forced hosts), `None` when in scope: Nova's HostManager
/// and `requested_destination` handling, before any filter.
pub(crate) fn scope_rejection(spec: &RequestSpec, plan: &Plan, host: HostPlace<'_>) -> Option<Rejection> {
    let dest = spec.requested_destination.as_ref();
    if dest.and_then(|d| d.cell).is_some_and(|c| c != host.cell) {
        Some(Rejection::OtherCell)
    } else if host.cell_disabled {
        Some(Rejection::CellDisabled)
    } else if dest.is_some_and(|d| {
        d.host.as_ref().is_some_and(|n| n != host.name) || d.node.as_ref().is_some_and(|n| n != host.node)
    }) {
        Some(Rejection::NotRequestedHost)
    } else if spec.ignore_hosts.iter().any(|n| n == host.name) {
        Some(Rejection::Ignored)
    } else if plan.forced && !spec.force_hosts.iter().any(|n| n == host.name) {
        Some(Rejection::NotForced)
    } else {
        None
    }
}

/// Sorts weighed hosts best first (ties by name), then applies
/// `shuffle_best_same_weighed_hosts` and `host_subset_size` (Nova's `_get_sorted_hosts`).
pub(crate) fn sort_weighed<'a, T>(
    config: &SchedulerConfig,
    rng: &Mutex<SplitMix64>,
    mut weighed: Vec<(f64, T)>,
    name: impl Fn(&T) -> &'a str,
) -> Vec<(f64, T)> {
    weighed.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then_with(|| name(&a.1).cmp(name(&b.1))));
    if !weighed.is_empty() {
        let mut rng = lock(rng);
        if config.shuffle_best_same_weighed_hosts {
            let best = weighed[0].0;
            let tied = weighed.iter().take_while(|h| h.0 == best).count();
            for i in (1..tied).rev() {
                let j = rng.below(i + 1);
                weighed.swap(i, j);
            }
        }
        let subset = config.host_subset_size.min(weighed.len());
        if subset > 1 {
            let pick = rng.below(subset);
            let chosen = weighed.remove(pick);
            weighed.insert(0, chosen);
        }
    }
    weighed
}

struct Ranking {
    hosts: Vec<Ranked>,
    stages: Vec<StageCount>,
    known: usize,
    message: Option<String>,
}

enum ClaimOutcome {
    Claimed { replayed: bool, generation: u64 },
    Refused(ClaimFailureCause),
}

/// How many claims of one request may fail with a retryable store error (a shard or node
/// down, a timeout) before the request fails with the store error: each one moves the
/// request on to a host in another part of the store.
const MAX_STORE_ERRORS_PER_REQUEST: usize = 8;

pub(crate) fn classify(e: Error) -> Result<ClaimFailureCause, Error> {
    Ok(match e {
        Error::Capacity { provider, class, requested, used, capacity } => {
            ClaimFailureCause::Capacity { provider, class, requested, used, capacity }
        }
        Error::Conflict(Conflict::GroupLimit { group, max_per_host, .. }) => {
            ClaimFailureCause::GroupLimit { group, max_per_host }
        }
        Error::Conflict(Conflict::ConsumerMismatch { .. }) => ClaimFailureCause::ConsumerMismatch,
        Error::Conflict(c) => ClaimFailureCause::Other(c.to_string()),
        e @ Error::NotFound { .. } => ClaimFailureCause::Gone(e.to_string()),
        e @ Error::InvalidInput { .. } => ClaimFailureCause::Invalid(e.to_string()),
        other => return Err(other),
    })
}

/// Reads the score index best-first for one scheduler: the io_ops levels are merged with
/// the io_ops weigher's contribution (the scheduler's multiplier times io_ops normalized
/// over the range seen), batch by batch. Over the whole cloud, or over a few classes'
/// sets (each read from its own cursors and merged the same way).
struct Walk<'a> {
    snap: &'a crate::scheduler::SharedSnapshot,
    descending: bool,
    io_step: f64,
    /// What is read: `None` the whole-cloud sets, `Some(class)` that class's; with the
    /// cursors of each level and whether it is exhausted.
    sources: Vec<(Option<u32>, Cursors, bool)>,
    batch: Vec<(u32, u64, u32)>,
}

impl Walk<'_> {
    /// The approximate weight of a place under this scheduler's multipliers.
    fn value(&self, level: u32, key: u64) -> f64 {
        let score = unordered(key);
        (if self.descending { score } else { -score }) + self.io_step * f64::from(level)
    }

    /// The next slots, best first (about `k` per io_ops level); `None` when exhausted.
    fn next(&mut self, k: usize) -> Option<Vec<u32>> {
        self.batch.clear();
        let per_level =
            k.div_ceil(2).div_ceil(self.sources.len().max(1)).max(if self.sources.len() > 1 { 2 } else { 4 });
        let mut any = false;
        for (class, cursors, done) in &mut self.sources {
            if *done {
                continue;
            }
            let index = &self.snap.index;
            let got = match class {
                None => index.next_batch(cursors, per_level, self.descending, &mut self.batch),
                Some(c) => index.next_batch_of(*c, cursors, per_level, self.descending, &mut self.batch),
            };
            *done = !got;
            any |= got;
        }
        if !any {
            return None;
        }
        let mut scored: Vec<(f64, u32)> =
            self.batch.iter().map(|(l, key, slot)| (self.value(*l, *key), *slot)).collect();
        scored.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        Some(scored.into_iter().map(|(_, s)| s).collect())
    }

    /// Offers hosts best first to `take` (which says whether it kept one) until `want`
    /// were kept or the walk is exhausted. True when every host was offered (the kept ones
    /// are then all the hosts that `take` would keep).
    fn take(&mut self, view: &View, k: usize, want: usize, mut take: impl FnMut(&Arc<HostRec>) -> bool) -> bool {
        let mut kept = 0;
        while kept < want {
            let Some(batch) = self.next(k) else {
                return true;
            };
            let mut offered = 0;
            for slot in &batch {
                if kept >= want {
                    break;
                }
                offered += 1;
                if let Some(rec) = view.rec(*slot)
                    && take(rec)
                {
                    kept += 1;
                }
            }
            if offered < batch.len() {
                return false;
            }
        }
        // `want` reached at the end of a batch: whether more remain is not known.
        false
    }
}

/// The classes of `eligible` (those with a template) when they hold few of the view's hosts
/// (under an eighth): walking their own index sets then beats walking the whole cloud's
/// and skipping most of it. `None`: walk the whole cloud.
fn few_classes(view: &View, eligible: &[Option<&Template>]) -> Option<Vec<u32>> {
    let classes: Vec<u32> = eligible.iter().enumerate().filter(|(_, t)| t.is_some()).map(|(c, _)| c as u32).collect();
    let hosts: usize = classes.iter().map(|c| view.class_hosts[*c as usize].len()).sum();
    (hosts * 8 < view.live).then_some(classes)
}

/// A host resolved against the snapshot now: what a claim or an alternate needs.
struct Resolved {
    sel: Selection,
    parts: Vec<(u16, i64)>,
    rec: Arc<HostRec>,
}

/// Everything one ranking reads, taken once.
struct Round<'a> {
    view: &'a Arc<View>,
    config: &'a crate::scheduler::SchedulerConfig,
    spec: &'a RequestSpec,
    plan: &'a Plan,
    verdicts: Arc<Verdicts>,
    /// The request's group members by slot, and (for an affinity group, the only policy
    /// whose filter asks by name) the names of their hosts.
    members: Option<(crate::model::GroupId, Members)>,
    group_hosts: BTreeSet<String>,
    /// Nothing narrows the scope but disabled cells: no requested cell, host or node, no
    /// ignored or forced hosts. Most requests; their scope check reads no name.
    plain_scope: bool,
    now: Timestamp,
}

impl Round<'_> {
    fn ctx(&self) -> FilterContext<'_> {
        FilterContext {
            spec: self.spec,
            config: self.config,
            now: self.now,
            group: self.plan.group.as_ref(),
            group_hosts: &self.group_hosts,
            same_host: self.plan.same_host.as_ref(),
            different_host: &self.plan.different_host,
            aggregates: &self.view.aggregates,
        }
    }
}

impl Round<'_> {
    fn members_of(&self) -> Option<(crate::model::GroupId, &Members)> {
        self.members.as_ref().map(|(g, m)| (*g, m))
    }

    /// Scope by name and cell for one host (the old stage 1), `None` when in scope.
    fn scope_rejection(&self, rec: &HostRec) -> Option<Rejection> {
        if self.plain_scope {
            return self.view.class_catalog[rec.class as usize].cell_disabled.then_some(Rejection::CellDisabled);
        }
        let class = &self.view.classes[rec.class as usize];
        scope_rejection(
            self.spec,
            self.plan,
            HostPlace {
                name: rec.name(),
                node: rec.node(),
                cell: class.cell,
                cell_disabled: self.view.class_catalog[rec.class as usize].cell_disabled,
            },
        )
    }

    fn template(&self, class: u32) -> Option<&Template> {
        self.view.template(&self.verdicts, &self.plan.cand, class)
    }
}

impl Scheduler {
    /// Places `instance_uuids` (one instance each, all with `spec`) and returns, for each in
    /// order, the claimed host first, then up to `num_alternates` unclaimed alternates from
    /// the same cell.
    ///
    /// For each instance the scheduler ranks hosts from the snapshot (candidates, filters,
    /// weighers, `host_subset_size`), then walks them claiming in the store (the instance
    /// uuid is the consumer; with a server group the claim carries the group's per-host
    /// limit). A claim counts in the snapshot as soon as it is sent (so concurrent requests
    /// of the process see it); a refused claim is taken back, that tree is re-read and the
    /// next host is tried. All or nothing: if an instance cannot be placed, every claim
    /// made for the request is released and [`ScheduleError::NoValidHost`] says why. A
    /// store failure also releases every claim (best effort) and returns
    /// [`ScheduleError::Store`].
    pub async fn select_destinations(
        &self,
        spec: &RequestSpec,
        instance_uuids: &[InstanceId],
        num_alternates: usize,
    ) -> Result<Vec<Vec<Selection>>, ScheduleError> {
        let span = tracing::info_span!(
            "select_destinations",
            request = %spec.instance_uuid,
            instances = instance_uuids.len(),
            num_alternates,
            claims_tried = tracing::field::Empty,
            claims_failed = tracing::field::Empty,
            alternates = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        bump(&self.counters.requests, 1);
        let result = self.select_inner(spec, instance_uuids, num_alternates).instrument(span.clone()).await;
        match &result {
            Ok(_) => span.record("outcome", "placed"),
            Err(ScheduleError::NoValidHost { .. }) => {
                bump(&self.counters.no_valid_host, 1);
                span.record("outcome", "no_valid_host")
            }
            Err(_) => span.record("outcome", "error"),
        };
        result
    }

    async fn plan(&self, spec: &RequestSpec) -> Result<Plan, ScheduleError> {
        Plan::new(self.store(), &self.config, spec).await
    }

    fn round<'a>(&'a self, view: &'a Arc<View>, spec: &'a RequestSpec, plan: &'a Plan) -> Round<'a> {
        let members = plan.group.as_ref().map(|g| (g.id, self.snapshot.group_members(g.id)));
        let affinity = plan.group.as_ref().is_some_and(|g| g.policy == GroupPolicy::Affinity);
        let group_hosts: BTreeSet<String> = match &members {
            Some((_, m)) if affinity => m
                .iter()
                .filter(|(_, n)| **n > 0)
                .filter_map(|(slot, _)| view.rec(*slot))
                .map(|r| r.name().to_string())
                .collect(),
            _ => BTreeSet::new(),
        };
        let plain_scope = spec
            .requested_destination
            .as_ref()
            .is_none_or(|d| d.cell.is_none() && d.host.is_none() && d.node.is_none())
            && spec.ignore_hosts.is_empty()
            && !plan.forced;
        Round {
            view,
            config: &self.config,
            spec,
            plan,
            verdicts: plan.verdicts_on(view),
            members,
            group_hosts,
            plain_scope,
            now: Timestamp::now(),
        }
    }

    fn in_my_cells(&self, cell: CellId) -> bool {
        self.config.cells.is_empty() || self.config.cells.contains(&cell)
    }

    /// The "No such host" message of a request naming hosts that do not exist.
    fn missing_host_message(&self, view: &View, spec: &RequestSpec, plan: &Plan) -> Option<String> {
        let mut message = None;
        if let Some(d) = &spec.requested_destination
            && (d.host.is_some() || d.node.is_some())
        {
            let matches = |r: &HostRec| {
                d.host.as_ref().is_none_or(|n| r.name() == n) && d.node.as_ref().is_none_or(|n| r.node() == n)
            };
            let exists = match &d.host {
                Some(h) => {
                    view.by_name(h).is_some_and(|r| matches(r) && self.in_my_cells(view.classes[r.class as usize].cell))
                }
                None => view
                    .hosts
                    .iter()
                    .flatten()
                    .any(|r| matches(r) && self.in_my_cells(view.classes[r.class as usize].cell)),
            };
            if !exists {
                message = Some(format!(
                    "No such host - host: {} node: {}",
                    d.host.as_deref().unwrap_or("-"),
                    d.node.as_deref().unwrap_or("-")
                ));
            }
        }
        if plan.forced
            && !spec
                .force_hosts
                .iter()
                .any(|f| view.by_name(f).is_some_and(|r| self.in_my_cells(view.classes[r.class as usize].cell)))
        {
            message = Some(format!("No such host - host: {}", spec.force_hosts.join(", ")));
        }
        message
    }

    /// Weighs `hosts`, sorts them best first (ties by name) and applies
    /// `shuffle_best_same_weighed_hosts` and `host_subset_size`. An indexed candidate list
    /// that stands for more hosts (`sample`) has the io_ops weigher normalize over the
    /// range of io_ops of the whole snapshot (its range moves with every claim, and a
    /// handful of candidates would magnify it); a list that holds every passing host is
    /// normalized over itself, as the exhaustive ranking normalizes (otherwise a request
    /// only a few hosts can serve weighs their io_ops against hosts it cannot use).
    fn order(&self, round: &Round<'_>, hosts: &[Arc<HostRec>], sample: bool) -> Vec<Ranked> {
        let ctx = round.ctx();
        let views: Vec<_> = hosts.iter().map(|r| round.view.compact(r, round.members_of())).collect();
        let dyns: Vec<&dyn HostView> = views.iter().map(|v| v as &dyn HostView).collect();
        let io_max = f64::from(self.snapshot.io_max());
        let reference = |name: &str| (sample && name == "IoOpsWeigher").then_some((0.0, io_max));
        let weights = weighers::weigh_within(&self.weighers, &dyns, &ctx, &reference);
        let order: Vec<(f64, &Arc<HostRec>)> = weights.into_iter().zip(hosts).collect();
        sort_weighed(&self.config, &self.rng, order, |r| r.name())
            .into_iter()
            .map(|(_, r)| Ranked { slot: r.slot, root: r.root })
            .collect()
    }

    /// Nova's pipeline over every host of the scope, with per-stage counts and reasons.
    fn rank_exhaustive(&self, round: &Round<'_>, skip: &HashSet<ProviderId>) -> Ranking {
        let (hosts, stages, known, message) = self.passing_exhaustive(round, skip, round.plan.limit);
        let hosts = self.order(round, &hosts, false);
        Ranking { hosts, stages, known, message }
    }

    /// The hosts that pass every stage of Nova's pipeline (sampled to `limit`), with the
    /// per-stage counts.
    fn passing_exhaustive(
        &self,
        round: &Round<'_>,
        skip: &HashSet<ProviderId>,
        limit: Option<usize>,
    ) -> (Vec<Arc<HostRec>>, Vec<StageCount>, usize, Option<String>) {
        let view = round.view;
        let message = self.missing_host_message(view, round.spec, round.plan);
        let mine: Vec<&Arc<HostRec>> =
            view.hosts.iter().flatten().filter(|r| self.in_my_cells(view.classes[r.class as usize].cell)).collect();
        let known = mine.len();

        // Stage 1: scope.
        let mut scope_why: BTreeMap<Rejection, usize> = BTreeMap::new();
        let mut in_scope: Vec<&Arc<HostRec>> = Vec::with_capacity(known);
        for r in mine {
            match round.scope_rejection(r) {
                Some(rej) => *scope_why.entry(rej).or_insert(0) += 1,
                None => in_scope.push(r),
            }
        }
        let mut stages =
            vec![StageCount { stage: "scope".into(), before: known, removed: known - in_scope.len(), why: scope_why }];

        // Stage 2: resources, traits, aggregates (Placement's part).
        let mut res_why: BTreeMap<Rejection, usize> = BTreeMap::new();
        let mut fitting: Vec<&Arc<HostRec>> = Vec::with_capacity(in_scope.len());
        for r in &in_scope {
            let t = round.template(r.class);
            if t.is_some_and(|t| t.fits(&***r)) {
                fitting.push(r);
            } else {
                let why = t.and_then(|t| t.evaluate(&***r).err()).unwrap_or(Rejection::NoCombination);
                *res_why.entry(why).or_insert(0) += 1;
            }
        }
        stages.push(StageCount {
            stage: "resources".into(),
            before: in_scope.len(),
            removed: in_scope.len() - fitting.len(),
            why: res_why,
        });

        // Stage 2b: max_placement_results, a seeded random sample (Placement's
        // randomize_allocation_candidates) of the fitting hosts.
        if let Some(limit) = limit
            && fitting.len() > limit
        {
            let before = fitting.len();
            fitting.sort_unstable_by_key(|r| r.root);
            sample_in_place(&mut fitting, limit, &mut lock(&self.rng));
            stages.push(StageCount {
                stage: "max_placement_results".into(),
                before,
                removed: before - limit,
                why: BTreeMap::new(),
            });
        }

        // Stage 3: filters (skipped for forced hosts, as in Nova).
        if !round.plan.forced {
            let ctx = round.ctx();
            for f in &self.filters {
                let before = fitting.len();
                fitting.retain(|r| f.host_passes(&view.compact(r, round.members_of()), &ctx));
                stages.push(StageCount {
                    stage: f.name().to_string(),
                    before,
                    removed: before - fitting.len(),
                    why: BTreeMap::new(),
                });
                tracing::trace!(filter = f.name(), before, after = fitting.len(), "filter");
            }
        }
        fitting.retain(|r| !skip.contains(&r.root));
        (fitting.into_iter().cloned().collect(), stages, known, message)
    }

    /// Placement quality of choosing `slot`: its weight against the best and worst of every
    /// host that passes every stage (exhaustive, no sampling, weights normalized over all
    /// of them, as Nova would with an unlimited candidate list): `(q, rank percentile)`,
    /// where q = (w - worst) / (best - worst) (1 when all weigh the same) and the
    /// percentile is the share of passing hosts weighing no more than the chosen one.
    fn quality_of(&self, round: &Round<'_>, slot: u32) -> Option<(f64, f64)> {
        let (hosts, _, _, _) = self.passing_exhaustive(round, &HashSet::new(), None);
        let ctx = round.ctx();
        let views: Vec<_> = hosts.iter().map(|r| round.view.compact(r, round.members_of())).collect();
        let dyns: Vec<&dyn HostView> = views.iter().map(|v| v as &dyn HostView).collect();
        let weights = weighers::weigh(&self.weighers, &dyns, &ctx);
        let i = hosts.iter().position(|r| r.slot == slot)?;
        let w = weights[i];
        let best = weights.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let worst = weights.iter().copied().fold(f64::INFINITY, f64::min);
        let q = if best - worst > 1e-12 { (w - worst) / (best - worst) } else { 1.0 };
        let pct = weights.iter().filter(|x| **x <= w + 1e-12).count() as f64 / weights.len() as f64;
        Some((q, pct))
    }

    /// Which classes may serve the request, with their templates (`None`: not this one).
    fn eligible_classes<'r>(&self, round: &'r Round<'_>) -> Vec<Option<&'r Template>> {
        let mask = round.plan.eligible_on(round.view, || self.eligible_mask(round));
        mask.iter().enumerate().map(|(c, ok)| if *ok { round.template(c as u32) } else { None }).collect()
    }

    /// Per class of the view: whether it may serve the request (in this scheduler's cells
    /// and the requested one, cell enabled, a template that can fit, the class-level filters
    /// passed by its first host).
    fn eligible_mask(&self, round: &Round<'_>) -> Vec<bool> {
        let view = round.view;
        let ctx = round.ctx();
        let class_filters: Vec<_> =
            if round.plan.forced { Vec::new() } else { self.filters.iter().filter(|f| f.class_level()).collect() };
        let dest_cell = round.spec.requested_destination.as_ref().and_then(|d| d.cell);
        (0..view.classes.len())
            .map(|c| {
                let class = &view.classes[c];
                let Some(first) = view.class_hosts[c].first().and_then(|s| view.rec(*s)) else {
                    return false;
                };
                if !self.in_my_cells(class.cell)
                    || dest_cell.is_some_and(|d| d != class.cell)
                    || view.class_catalog[c].cell_disabled
                {
                    return false;
                }
                if round.template(c as u32).is_none_or(Template::impossible) {
                    return false;
                }
                let host = view.compact(first, round.members_of());
                class_filters.iter().all(|f| f.host_passes(&host, &ctx))
            })
            .collect()
    }

    /// The per-host part of the indexed ranking: scope by name, fit, host-level filters.
    fn passes(
        &self,
        round: &Round<'_>,
        ctx: &FilterContext<'_>,
        eligible: &[Option<&Template>],
        rec: &HostRec,
        skip: &HashSet<ProviderId>,
    ) -> bool {
        let Some(Some(t)) = eligible.get(rec.class as usize) else {
            return false;
        };
        if skip.contains(&rec.root) || round.scope_rejection(rec).is_some() || !t.fits(rec) {
            return false;
        }
        if round.plan.forced {
            return true;
        }
        let host = round.view.compact(rec, round.members_of());
        self.filters.iter().filter(|f| !f.class_level()).all(|f| f.host_passes(&host, ctx))
    }

    /// The indexed ranking: up to `indexed_candidates` hosts that pass everything, best
    /// first by the snapshot's score index, then weighed exactly.
    fn rank_indexed(&self, round: &Round<'_>, skip: &HashSet<ProviderId>) -> Ranking {
        let view = round.view;
        let eligible = self.eligible_classes(round);
        let ctx = round.ctx();
        let k = match round.plan.limit {
            Some(l) => l.min(self.config.indexed_candidates),
            None => self.config.indexed_candidates,
        }
        .max(1);
        let mut chosen: Vec<Arc<HostRec>> = Vec::new();
        let consider = |rec: &Arc<HostRec>, chosen: &mut Vec<Arc<HostRec>>| {
            if self.passes(round, &ctx, &eligible, rec, skip) && !chosen.iter().any(|c| c.slot == rec.slot) {
                chosen.push(rec.clone());
            }
        };
        let named: Option<Vec<&str>> = {
            let dest_host = round.spec.requested_destination.as_ref().and_then(|d| d.host.as_deref());
            if round.plan.forced {
                Some(round.spec.force_hosts.iter().map(String::as_str).collect())
            } else if let Some(h) = dest_host {
                Some(vec![h])
            } else {
                round.plan.same_host.as_ref().map(|s| s.iter().map(String::as_str).collect())
            }
        };
        let affinity = round.plan.group.as_ref().is_some_and(|g| g.policy == GroupPolicy::Affinity)
            && !round.group_hosts.is_empty();
        // Whether the candidates are every host that passes (named hosts, an affinity
        // group's, or a walk that ran out): they are then weighed among themselves, as the
        // exhaustive ranking would weigh them. Otherwise they stand for more hosts.
        let mut complete = true;
        if let Some(names) = named {
            for n in names {
                if let Some(rec) = view.by_name(n) {
                    consider(rec, &mut chosen);
                }
            }
        } else if affinity {
            if let Some((_, m)) = &round.members {
                for slot in m.keys() {
                    if let Some(rec) = view.rec(*slot) {
                        consider(rec, &mut chosen);
                    }
                }
            }
        } else {
            // Soft affinity: the group's hosts weigh best, so they are candidates too.
            if let (Some(g), Some((_, m))) = (&round.plan.group, &round.members)
                && g.policy == GroupPolicy::SoftAffinity
            {
                for slot in m.keys() {
                    if let Some(rec) = view.rec(*slot) {
                        consider(rec, &mut chosen);
                    }
                }
            }
            let mut walk = self.walk(few_classes(view, &eligible));
            complete = walk.take(view, k, k, |rec| {
                let before = chosen.len();
                consider(rec, &mut chosen);
                chosen.len() > before
            });
        }
        let hosts = self.order(round, &chosen, !complete);
        Ranking { hosts, stages: Vec::new(), known: view.live, message: None }
    }

    /// A best-first walk of the snapshot's index for this scheduler's weights: over the
    /// whole cloud, or over the sets of `classes` when given.
    fn walk(&self, classes: Option<Vec<u32>>) -> Walk<'_> {
        let w = self.snapshot.config().index_weights;
        let c = &self.config;
        // The index orders by the snapshot's resource weights; a scheduler whose weights
        // point the other way (pack on a spread index) reads it from the other end.
        let descending =
            w.ram * c.ram_weight_multiplier + w.cpu * c.cpu_weight_multiplier + w.disk * c.disk_weight_multiplier
                >= 0.0;
        let io_max = f64::from(self.snapshot.io_max().max(1));
        let sources = match classes {
            None => vec![(None, Default::default(), false)],
            Some(cs) => cs.into_iter().map(|c| (Some(c), Default::default(), false)).collect(),
        };
        Walk {
            snap: &self.snapshot,
            descending,
            io_step: c.io_ops_weight_multiplier / io_max,
            sources,
            batch: Vec::new(),
        }
    }

    /// A ranked host resolved against the snapshot now.
    fn resolve(&self, view: &View, round: &Round<'_>, slot: u32) -> Option<Resolved> {
        let rec = view.rec(slot)?.clone();
        let t = round.template(rec.class)?;
        let parts = t.parts(&*rec).ok()?;
        let class = &view.classes[rec.class as usize];
        let allocation = t.to_allocation(&parts, &rec.providers);
        let zone = view.class_catalog[rec.class as usize]
            .zone
            .clone()
            .unwrap_or_else(|| self.config.default_availability_zone.clone());
        let sel = Selection {
            host: rec.name().to_string(),
            node: rec.node().to_string(),
            provider: rec.root,
            cell: class.cell,
            allocation,
            availability_zone: Some(zone),
        };
        Some(Resolved { sel, parts, rec })
    }

    async fn try_claim(
        &self,
        spec: &RequestSpec,
        plan: &Plan,
        instance: InstanceId,
        sel: &Selection,
    ) -> Result<ClaimOutcome, Error> {
        let req = ClaimRequest {
            consumer: ConsumerId::from(instance),
            project_id: spec.project_id.clone(),
            user_id: spec.user_id.clone(),
            allocations: sel.allocation.clone(),
            group: plan.group.as_ref().map(|g| GroupClaim { group: g.id, max_per_host: g.claim_limit() }),
        };
        bump(&self.counters.claims_tried, 1);
        let claimed = match &self.batcher {
            Some(batcher) => batcher.claim(req).await,
            None => self.snapshot.store().claim(&req).await,
        };
        match claimed {
            Ok(c) => Ok(ClaimOutcome::Claimed { replayed: c.replayed, generation: c.generation }),
            Err(e) => {
                let cause = classify(e)?;
                bump(&self.counters.claim_conflicts, 1);
                Ok(ClaimOutcome::Refused(cause))
            }
        }
    }

    /// Releases the claims of `instances` and re-reads their trees. Returns how many were
    /// released, or the first store error.
    async fn release_all(&self, instances: &[(InstanceId, ProviderId)]) -> Result<usize, Error> {
        let mut first_err = None;
        let mut roots = Vec::new();
        for (i, root) in instances {
            match self.snapshot.store().release(ConsumerId::from(*i)).await {
                Ok(r) => roots.extend(r.roots),
                Err(e) => {
                    tracing::error!(instance = %i, error = %e, "could not release claim");
                    first_err.get_or_insert(e);
                }
            }
            roots.push(*root);
        }
        roots.sort();
        roots.dedup();
        bump(&self.counters.claims_released, instances.len() as u64);
        if let Err(e) = self.snapshot.refresh_trees(roots).await {
            tracing::warn!(error = %e, "could not re-read trees after releasing claims");
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(instances.len()),
        }
    }

    async fn select_inner(
        &self,
        spec: &RequestSpec,
        instance_uuids: &[InstanceId],
        num_alternates: usize,
    ) -> Result<Vec<Vec<Selection>>, ScheduleError> {
        if instance_uuids.is_empty() {
            return Err(ScheduleError::InvalidRequest(Error::invalid(
                "instance_uuids",
                "at least one instance is needed",
            )));
        }
        let distinct: HashSet<_> = instance_uuids.iter().collect();
        if distinct.len() != instance_uuids.len() {
            return Err(ScheduleError::InvalidRequest(Error::invalid(
                "instance_uuids",
                "instance uuids must be distinct",
            )));
        }
        let plan = self.plan(spec).await?;
        if let Err(e) = self.snapshot.maybe_refresh(self.config.min_refresh_interval).await {
            // Part of the store did not answer the change feed or a tree read: schedule on
            // the hosts as last seen (every claim re-checks against the store) and report
            // that the view is stale; a non-retryable error still fails the request.
            if !e.is_retryable() {
                return Err(e.into());
            }
            bump(&self.counters.stale_schedules, 1);
            tracing::warn!(error = %e, "snapshot refresh failed; scheduling on the hosts as last seen (stale view)");
        }

        let span = tracing::Span::current();
        let mut placed: Vec<(InstanceId, Selection, Vec<Ranked>)> = Vec::new();
        let mut failed_roots: HashSet<ProviderId> = HashSet::new();
        let mut failures: Vec<ClaimFailure> = Vec::new();
        let mut claims_tried = 0usize;
        // Parts of the store (tree shards, when the backend has them) where a claim failed
        // with a retryable error during this request: hosts there are skipped, so that one
        // unreachable shard or node costs one attempt, not one per host on it.
        let mut down_shards: HashSet<usize> = HashSet::new();
        let mut store_errors = 0usize;
        let exhaustive_only = self.config.ranking == RankingMode::Exhaustive
            || spec.requested_destination.as_ref().is_some_and(|d| d.node.is_some() && d.host.is_none());

        for (index, &instance) in instance_uuids.iter().enumerate() {
            let mut chosen = None;
            let mut attempts = 0usize;
            let mut budget_exhausted = false;
            let mut exhaustive = exhaustive_only;
            let mut indexed_rounds = 0;
            let ranking = loop {
                let view = self.snapshot.view();
                let ranking = {
                    let round = self.round(&view, spec, &plan);
                    if exhaustive {
                        self.rank_exhaustive(&round, &HashSet::new())
                    } else {
                        self.rank_indexed(&round, &failed_roots)
                    }
                };
                tracing::debug!(
                    instance = %instance,
                    index,
                    exhaustive,
                    hosts_known = ranking.known,
                    passed = ranking.hosts.len(),
                    stages = ?ranking.stages.iter().map(|s| (s.stage.as_str(), s.removed)).collect::<Vec<_>>(),
                    "ranked"
                );
                if self.config.measure_quality
                    && let Some(first) = ranking.hosts.iter().find(|r| !failed_roots.contains(&r.root))
                {
                    let round = self.round(&view, spec, &plan);
                    if let Some((q, pct)) = self.quality_of(&round, first.slot) {
                        self.quality.record(q, pct);
                    }
                }
                let mut tried_any = false;
                for r in &ranking.hosts {
                    if failed_roots.contains(&r.root) {
                        continue;
                    }
                    if !down_shards.is_empty()
                        && self.snapshot.store().tree_shard(r.root).is_some_and(|s| down_shards.contains(&s))
                    {
                        continue;
                    }
                    if self.config.max_claim_attempts.is_some_and(|m| attempts >= m) {
                        budget_exhausted = true;
                        break;
                    }
                    // Resolve against the snapshot now: earlier instances of this request
                    // (and refused claims) may have changed the tree since ranking.
                    let view = self.snapshot.view();
                    let round = self.round(&view, spec, &plan);
                    let Some(res) = self.resolve(&view, &round, r.slot) else {
                        continue;
                    };
                    drop(round);
                    tried_any = true;
                    attempts += 1;
                    claims_tried += 1;
                    let reservation: Reservation =
                        self.snapshot.reserve(&view, &res.rec, &res.parts, plan.group.as_ref().map(|g| g.id));
                    let outcome = match self.try_claim(spec, &plan, instance, &res.sel).await {
                        Ok(o) => o,
                        Err(e) if e.is_retryable() && store_errors < MAX_STORE_ERRORS_PER_REQUEST => {
                            // This tree's part of the store is down or slow: record it and
                            // move on to a host elsewhere instead of failing the request.
                            store_errors += 1;
                            bump(&self.counters.claim_store_errors, 1);
                            self.snapshot.cancel(&reservation);
                            tracing::warn!(host = %res.sel.host, error = %e,
                                "claim failed with a retryable store error; trying a host in another part of the store");
                            // A timed-out claim may have been made: release what this
                            // instance may hold before it claims elsewhere. If that fails
                            // too, the allocation (if any) stays with the instance's
                            // consumer, and goes when the instance is deleted or the build
                            // fails (both release the consumer everywhere).
                            if matches!(e, Error::Timeout { .. })
                                && let Err(re) = self.snapshot.store().release(ConsumerId::from(instance)).await
                            {
                                tracing::warn!(instance = %instance, error = %re,
                                    "could not release a claim of unknown outcome; it stays with the instance");
                            }
                            if let Some(s) = self.snapshot.store().tree_shard(r.root) {
                                down_shards.insert(s);
                            }
                            failures.push(ClaimFailure {
                                instance,
                                host: res.sel.host,
                                root: r.root,
                                cause: ClaimFailureCause::Unavailable(e.to_string()),
                            });
                            failed_roots.insert(r.root);
                            continue;
                        }
                        Err(e) => {
                            // Unknown outcome (timeout) or store down: release this instance too.
                            self.snapshot.cancel(&reservation);
                            let mut all: Vec<_> = placed.iter().map(|(i, s, _)| (*i, s.provider)).collect();
                            all.push((instance, r.root));
                            let _ = self.release_all(&all).await;
                            return Err(ScheduleError::Store(e));
                        }
                    };
                    match outcome {
                        ClaimOutcome::Claimed { replayed, generation } => {
                            if replayed {
                                self.snapshot.cancel(&reservation);
                            } else {
                                self.snapshot.confirm(&reservation, generation);
                            }
                            chosen = Some(res.sel);
                            break;
                        }
                        ClaimOutcome::Refused(cause) => {
                            self.snapshot.cancel(&reservation);
                            tracing::debug!(host = %res.sel.host, %cause, "claim refused");
                            failures.push(ClaimFailure { instance, host: res.sel.host, root: r.root, cause });
                            failed_roots.insert(r.root);
                            if let Err(e) = self.snapshot.refresh_trees(vec![r.root]).await {
                                if e.is_retryable() {
                                    // The tree is skipped for this request anyway.
                                    tracing::warn!(root = %r.root, error = %e,
                                        "could not re-read a tree after a refused claim");
                                    continue;
                                }
                                let all: Vec<_> = placed.iter().map(|(i, s, _)| (*i, s.provider)).collect();
                                let _ = self.release_all(&all).await;
                                return Err(ScheduleError::Store(e));
                            }
                        }
                    }
                }
                if chosen.is_some() || budget_exhausted || exhaustive {
                    break ranking;
                }
                // Indexed: rank again without the hosts whose claim failed while that finds
                // new hosts; then the exhaustive ranking decides.
                indexed_rounds += 1;
                if !tried_any || indexed_rounds >= 3 {
                    exhaustive = true;
                }
            };
            match chosen {
                Some(c) => {
                    bump(&self.counters.instances_placed, 1);
                    placed.push((instance, c, ranking.hosts));
                }
                None => {
                    let all: Vec<_> = placed.iter().map(|(i, s, _)| (*i, s.provider)).collect();
                    let released =
                        if all.is_empty() { 0 } else { self.release_all(&all).await.map_err(ScheduleError::Store)? };
                    span.record("claims_tried", claims_tried);
                    span.record("claims_failed", failures.len());
                    let reason = NoValidHostReason {
                        instance: Some(instance),
                        instance_index: index,
                        num_instances: instance_uuids.len(),
                        message: ranking.message,
                        hosts_known: ranking.known,
                        hosts_passed: ranking.hosts.len(),
                        stages: ranking.stages,
                        claims_tried,
                        claim_failures: failures,
                        claim_budget_exhausted: budget_exhausted,
                        released_claims: released,
                        member_of: spec
                            .requested_destination
                            .as_ref()
                            .map(|d| d.aggregates.clone())
                            .unwrap_or_default(),
                    };
                    tracing::info!(reason = %reason, "no valid host");
                    return Err(ScheduleError::NoValidHost { reason: Box::new(reason) });
                }
            }
        }

        // Alternates: same cell as the claimed host, not chosen for any instance, not a
        // host whose claim failed, still fitting and passing the filters now.
        let chosen_roots: HashSet<ProviderId> = placed.iter().map(|(_, s, _)| s.provider).collect();
        let mut out = Vec::with_capacity(placed.len());
        let mut alternates_total = 0usize;
        {
            let view = self.snapshot.view();
            let round = self.round(&view, spec, &plan);
            let ctx = round.ctx();
            let eligible = if num_alternates > 0 { self.eligible_classes(&round) } else { Vec::new() };
            let mut skip: HashSet<ProviderId> = failed_roots.clone();
            skip.extend(chosen_roots.iter().copied());
            for (_, chosen, ranked) in &placed {
                let mut list = vec![chosen.clone()];
                let mut taken: HashSet<ProviderId> = HashSet::new();
                let mut push = |slot: u32, list: &mut Vec<Selection>| {
                    let Some(rec) = view.rec(slot) else {
                        return;
                    };
                    if view.classes[rec.class as usize].cell != chosen.cell || !taken.insert(rec.root) {
                        return;
                    }
                    if !self.passes(&round, &ctx, &eligible, rec, &skip) {
                        return;
                    }
                    if let Some(alt) = self.resolve(&view, &round, slot) {
                        list.push(alt.sel);
                    }
                };
                for r in ranked {
                    if list.len() > num_alternates {
                        break;
                    }
                    push(r.slot, &mut list);
                }
                // The indexed ranking keeps few hosts: top up from the chosen cell, within
                // max_placement_results when it applies (Nova's alternates come from the
                // limited candidate list).
                let room = plan.limit.map_or(usize::MAX, |l| l.saturating_sub(ranked.len()));
                if list.len() <= num_alternates
                    && room > 0
                    && !exhaustive_only
                    && !plan.forced
                    && plan.same_host.is_none()
                {
                    let want = (2 * num_alternates + 2).min(room);
                    let extra = self.cell_candidates(&round, &eligible, chosen.cell, &skip, want);
                    for slot in extra {
                        if list.len() > num_alternates {
                            break;
                        }
                        push(slot, &mut list);
                    }
                }
                alternates_total += list.len() - 1;
                out.push(list);
            }
        }
        bump(&self.counters.alternates_returned, alternates_total as u64);
        span.record("claims_tried", claims_tried);
        span.record("claims_failed", failures.len());
        span.record("alternates", alternates_total);
        tracing::debug!(
            placed = placed.len(),
            hosts = ?placed.iter().map(|(_, s, _)| s.host.as_str()).collect::<Vec<_>>(),
            "placed"
        );
        Ok(out)
    }

    /// Up to `n` hosts of `cell` that pass, best key first (alternates).
    fn cell_candidates(
        &self,
        round: &Round<'_>,
        eligible: &[Option<&Template>],
        cell: CellId,
        skip: &HashSet<ProviderId>,
        n: usize,
    ) -> Vec<u32> {
        let view = round.view;
        let ctx = round.ctx();
        let mine: Vec<Option<&Template>> =
            eligible.iter().enumerate().map(|(c, t)| t.filter(|_| view.classes[c].cell == cell)).collect();
        let mut out = Vec::new();
        let mut walk = self.walk(few_classes(view, &mine));
        walk.take(view, n, n, |rec| {
            let ok = self.passes(round, &ctx, &mine, rec, skip);
            if ok {
                out.push(rec.slot);
            }
            ok
        });
        out
    }
}

/// The part of a request's plan that reads nothing but the spec: the flavor's resource
/// request (root disk dropped for boot from volume), the image's `traits_required`, the
/// flavor's `group_policy` and the requested destination's aggregates, as one
/// [`CandidateRequest`] searched with `budget`. Anything wrong in the spec is
/// [`ScheduleError::InvalidRequest`] naming the field. Pure and visible to the crate so that
/// the fuzzing checks (`testkit::fuzzing`) drive exactly what `select_destinations` does
/// with a spec.
pub(crate) fn candidate_request(spec: &RequestSpec, budget: usize) -> Result<CandidateRequest, ScheduleError> {
    let mut request = spec.flavor.resource_request(spec.is_bfv).map_err(ScheduleError::InvalidRequest)?;
    if let Some(list) = spec.image_properties.get("traits_required") {
        let traits: Vec<Trait> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Trait::new)
            .collect::<Result<_, _>>()
            .map_err(ScheduleError::InvalidRequest)?;
        if request.groups.first().is_none_or(|g| g.suffix.is_some()) {
            request.groups.insert(0, Default::default());
        }
        if let Some(g) = request.groups.first_mut() {
            if let Some(t) = traits.iter().find(|t| g.forbidden.contains(*t)) {
                return Err(ScheduleError::InvalidRequest(Error::invalid(
                    "image_properties[traits_required]",
                    format!("trait {t} is required by the image but forbidden by the flavor"),
                )));
            }
            g.required.extend(traits);
        }
    }
    let isolate = match spec.flavor.extra_specs.get("group_policy").map(String::as_str) {
        None | Some("none") => false,
        Some("isolate") => true,
        Some(other) => {
            return Err(ScheduleError::InvalidRequest(Error::invalid(
                "flavor.extra_specs[group_policy]",
                format!("{other:?} must be none or isolate"),
            )));
        }
    };
    let mut cand = CandidateRequest::new(request, isolate, budget);
    if cand.is_empty() {
        return Err(ScheduleError::InvalidRequest(Error::invalid(
            "flavor",
            "the request asks for no resources, nothing can be claimed",
        )));
    }
    if let Some(d) = &spec.requested_destination {
        cand.member_of = d.aggregates.iter().filter(|g| !g.is_empty()).map(|g| g.iter().copied().collect()).collect();
        cand.forbidden_aggregates = d.forbidden_aggregates.iter().copied().collect();
    }
    Ok(cand)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Destination, GroupId};
    use crate::scheduler::filters::tests::spec;

    #[test]
    fn placement_limit_applies_to_plain_requests() {
        assert_eq!(placement_limit(Some(1000), &spec()), Some(1000));
        assert_eq!(placement_limit(None, &spec()), None);
        // A cell or aggregates alone do not lift it (Nova keeps the limit for them).
        let mut s = spec();
        s.requested_destination = Some(Destination { cell: Some(CellId::new_v4()), ..Default::default() });
        assert_eq!(placement_limit(Some(10), &s), Some(10));
    }

    #[test]
    fn placement_limit_is_lifted_for_group_hints_and_forced_or_requested_hosts() {
        let mut s = spec();
        s.hints.group = Some(GroupId::new_v4());
        assert_eq!(placement_limit(Some(1000), &s), None, "server group");
        let mut s = spec();
        s.hints.same_host = vec![InstanceId::new_v4()];
        assert_eq!(placement_limit(Some(1000), &s), None, "same_host");
        let mut s = spec();
        s.hints.different_host = vec![InstanceId::new_v4()];
        assert_eq!(placement_limit(Some(1000), &s), None, "different_host");
        let mut s = spec();
        s.force_hosts = vec!["h1".into()];
        assert_eq!(placement_limit(Some(1000), &s), None, "forced host");
        let mut s = spec();
        s.requested_destination = Some(Destination { host: Some("h1".into()), ..Default::default() });
        assert_eq!(placement_limit(Some(1000), &s), None, "requested host");
        let mut s = spec();
        s.requested_destination = Some(Destination { node: Some("n1".into()), ..Default::default() });
        assert_eq!(placement_limit(Some(1000), &s), None, "requested node");
    }

    fn sample(seed: u64, n: usize, k: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        sample_in_place(&mut v, k, &mut SplitMix64::new(seed));
        v
    }

    #[test]
    fn sample_is_seeded_distinct_and_random() {
        let a = sample(42, 5000, 1000);
        assert_eq!(a.len(), 1000);
        let distinct: HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 1000, "no host twice");
        assert_eq!(a, sample(42, 5000, 1000), "same seed, same sample");
        assert_ne!(a, sample(43, 5000, 1000), "another seed, another sample");
        // Random, not the first N: many sampled items come from beyond the first 1000,
        // and every region of the input is represented.
        assert!(a.iter().filter(|&&i| i >= 1000).count() > 600);
        for region in 0..5 {
            let hits = a.iter().filter(|&&i| i / 1000 == region).count();
            assert!(hits > 100, "region {region} got {hits} of 1000");
        }
        // A limit at or above the length keeps everything, in order.
        assert_eq!(sample(1, 10, 10), (0..10).collect::<Vec<_>>());
        assert_eq!(sample(1, 10, 50), (0..10).collect::<Vec<_>>());
    }
}
