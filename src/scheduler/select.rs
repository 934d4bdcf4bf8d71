//! `select_destinations`: rank, claim, alternates (DESIGN.md section 6).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use tracing::Instrument;

use crate::error::{Conflict, Error};
use crate::model::{
    CellId, ClaimRequest, ConsumerId, GroupClaim, InstanceId, ProviderId, RequestSpec, Selection, ServerGroup,
    Timestamp, Trait,
};
use crate::scheduler::candidates::{CandidateRequest, allocation_candidate, fits_request};
use crate::scheduler::error::{
    ClaimFailure, ClaimFailureCause, NoValidHostReason, Rejection, ScheduleError, StageCount,
};
use crate::scheduler::filters::FilterContext;
use crate::scheduler::host_state::{HostState, Snapshot};
use crate::scheduler::{Scheduler, bump, lock, weighers};

/// What a request needs, prepared once.
struct Plan {
    cand: CandidateRequest,
    group: Option<ServerGroup>,
    same_host: Option<BTreeSet<String>>,
    different_host: BTreeSet<String>,
    forced: bool,
}

/// A host that passed every stage (names and allocation are resolved only for the hosts
/// actually tried, against the snapshot of that moment: ranking a thousand hosts then
/// allocates nothing per host).
#[derive(Clone, Copy, Debug)]
struct Ranked {
    root: ProviderId,
    cell: CellId,
    weight: f64,
}

/// A ranked host resolved against the current snapshot: what a claim or an alternate needs.
fn resolve(snap: &Snapshot, root: ProviderId, cand: &CandidateRequest, default_az: &str) -> Option<Selection> {
    let h = snap.hosts.get(&root)?;
    let allocation = allocation_candidate(&h.tree, cand).ok()?;
    Some(Selection {
        host: h.host.name.clone(),
        node: h.host.node.clone(),
        provider: root,
        cell: h.host.cell,
        allocation,
        availability_zone: Some(h.availability_zone(&snap.aggregates, default_az)),
    })
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

fn classify(e: Error) -> Result<ClaimFailureCause, Error> {
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

impl Scheduler {
    /// Places `instance_uuids` (one instance each, all with `spec`) and returns, for each in
    /// order, the claimed host first, then up to `num_alternates` unclaimed alternates from
    /// the same cell.
    ///
    /// For each instance the scheduler ranks hosts from its snapshot (candidates, filters,
    /// weighers, `host_subset_size`), then walks them claiming in the store (the instance
    /// uuid is the consumer; with a server group the claim carries the group's per-host
    /// limit). A refused claim re-reads that tree and moves on; a success updates the
    /// snapshot at once so later instances of the request see the consumption. All or
    /// nothing: if an instance cannot be placed, every claim made for the request is
    /// released and [`ScheduleError::NoValidHost`] says why. A store failure also releases
    /// every claim (best effort) and returns [`ScheduleError::Store`].
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
        let mut cand = CandidateRequest::new(request, isolate, self.config.candidate_search_budget);
        if cand.is_empty() {
            return Err(ScheduleError::InvalidRequest(Error::invalid(
                "flavor",
                "the request asks for no resources, nothing can be claimed",
            )));
        }
        if let Some(d) = &spec.requested_destination {
            cand.member_of =
                d.aggregates.iter().filter(|g| !g.is_empty()).map(|g| g.iter().copied().collect()).collect();
            cand.forbidden_aggregates = d.forbidden_aggregates.iter().copied().collect();
        }
        let group = match spec.hints.group {
            Some(g) => Some(self.store.get_server_group(g).await.map_err(|e| match e {
                Error::NotFound { .. } => ScheduleError::InvalidRequest(e),
                e => ScheduleError::Store(e),
            })?),
            None => None,
        };
        let mut same_host = None;
        if !spec.hints.same_host.is_empty() {
            same_host = Some(self.hosts_of(&spec.hints.same_host).await?);
        }
        let different_host = self.hosts_of(&spec.hints.different_host).await?;
        Ok(Plan { cand, group, same_host, different_host, forced: !spec.force_hosts.is_empty() })
    }

    /// Hosts currently running these instances (unknown or unplaced ones are skipped).
    async fn hosts_of(&self, ids: &[InstanceId]) -> Result<BTreeSet<String>, ScheduleError> {
        let mut out = BTreeSet::new();
        for id in ids {
            match self.store.get_instance(*id).await {
                Ok(i) => out.extend(i.host),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(ScheduleError::Store(e)),
            }
        }
        Ok(out)
    }

    /// Scope, candidates, filters and weighers over the snapshot, for one instance.
    fn rank(&self, snap: &Snapshot, spec: &RequestSpec, plan: &Plan) -> Ranking {
        let now = Timestamp::now();
        let dest = spec.requested_destination.as_ref();
        let mut message = None;
        if let Some(d) = dest
            && (d.host.is_some() || d.node.is_some())
        {
            let exists = snap.hosts.values().any(|h| {
                d.host.as_ref().is_none_or(|n| &h.host.name == n) && d.node.as_ref().is_none_or(|n| &h.host.node == n)
            });
            if !exists {
                message = Some(format!(
                    "No such host - host: {} node: {}",
                    d.host.as_deref().unwrap_or("-"),
                    d.node.as_deref().unwrap_or("-")
                ));
            }
        }
        if plan.forced && !spec.force_hosts.iter().any(|f| snap.hosts.values().any(|h| &h.host.name == f)) {
            message = Some(format!("No such host - host: {}", spec.force_hosts.join(", ")));
        }

        // Stage 1: scope.
        let mut scope_why: BTreeMap<Rejection, usize> = BTreeMap::new();
        let mut in_scope: Vec<&HostState> = Vec::with_capacity(snap.hosts.len());
        for h in snap.hosts.values() {
            let rej = if dest.and_then(|d| d.cell).is_some_and(|c| c != h.host.cell) {
                Some(Rejection::OtherCell)
            } else if snap.cells.get(&h.host.cell).is_some_and(|c| c.disabled) {
                Some(Rejection::CellDisabled)
            } else if dest.is_some_and(|d| {
                d.host.as_ref().is_some_and(|n| n != &h.host.name) || d.node.as_ref().is_some_and(|n| n != &h.host.node)
            }) {
                Some(Rejection::NotRequestedHost)
            } else if spec.ignore_hosts.iter().any(|n| n == &h.host.name) {
                Some(Rejection::Ignored)
            } else if plan.forced && !spec.force_hosts.iter().any(|n| n == &h.host.name) {
                Some(Rejection::NotForced)
            } else {
                None
            };
            match rej {
                Some(r) => *scope_why.entry(r).or_insert(0) += 1,
                None => in_scope.push(h),
            }
        }
        let known = snap.hosts.len();
        let mut stages =
            vec![StageCount { stage: "scope".into(), before: known, removed: known - in_scope.len(), why: scope_why }];

        // Stage 2: resources, traits, aggregates (Placement's part).
        let mut res_why: BTreeMap<Rejection, usize> = BTreeMap::new();
        let mut fitting: Vec<&HostState> = Vec::with_capacity(in_scope.len());
        for h in &in_scope {
            match fits_request(&h.tree, &plan.cand) {
                Ok(()) => fitting.push(h),
                Err(r) => *res_why.entry(r).or_insert(0) += 1,
            }
        }
        stages.push(StageCount {
            stage: "resources".into(),
            before: in_scope.len(),
            removed: in_scope.len() - fitting.len(),
            why: res_why,
        });

        // Stage 3: filters (skipped for forced hosts, as in Nova).
        let group_hosts: BTreeSet<String> = match &plan.group {
            Some(g) => snap.hosts.values().filter(|h| h.group_members(g.id) > 0).map(|h| h.host.name.clone()).collect(),
            None => BTreeSet::new(),
        };
        let ctx = FilterContext {
            spec,
            config: &self.config,
            now,
            group: plan.group.as_ref(),
            group_hosts: &group_hosts,
            same_host: plan.same_host.as_ref(),
            different_host: &plan.different_host,
            aggregates: &snap.aggregates,
        };
        if !plan.forced {
            for f in &self.filters {
                let before = fitting.len();
                fitting.retain(|h| f.host_passes(h, &ctx));
                stages.push(StageCount {
                    stage: f.name().to_string(),
                    before,
                    removed: before - fitting.len(),
                    why: BTreeMap::new(),
                });
                tracing::trace!(filter = f.name(), before, after = fitting.len(), "filter");
            }
        }

        // Stage 4: weighers, then host_subset_size.
        let weights = weighers::weigh(&self.weighers, &fitting, &ctx);
        let mut order: Vec<(f64, &HostState)> = weights.into_iter().zip(fitting).collect();
        order.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.host.name.cmp(&b.1.host.name)));
        let mut hosts: Vec<Ranked> =
            order.into_iter().map(|(weight, h)| Ranked { root: h.root(), cell: h.host.cell, weight }).collect();
        if !hosts.is_empty() {
            let mut rng = lock(&self.rng);
            if self.config.shuffle_best_same_weighed_hosts {
                let best = hosts[0].weight;
                let tied = hosts.iter().take_while(|h| h.weight == best).count();
                for i in (1..tied).rev() {
                    let j = rng.below(i + 1);
                    hosts.swap(i, j);
                }
            }
            let subset = self.config.host_subset_size.min(hosts.len());
            if subset > 1 {
                let pick = rng.below(subset);
                let chosen = hosts.remove(pick);
                hosts.insert(0, chosen);
            }
        }
        Ranking { hosts, stages, known, message }
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
        match self.store.claim(&req).await {
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
            match self.store.release(ConsumerId::from(*i)).await {
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
        if let Ok(trees) = self.read_trees(roots).await {
            self.apply_trees(trees);
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
        self.maybe_refresh().await?;

        let span = tracing::Span::current();
        let mut placed: Vec<(InstanceId, Selection, Vec<Ranked>)> = Vec::new();
        let mut failed_roots: HashSet<ProviderId> = HashSet::new();
        let mut failures: Vec<ClaimFailure> = Vec::new();
        let mut claims_tried = 0usize;

        for (index, &instance) in instance_uuids.iter().enumerate() {
            let ranking = {
                let snap = self.read_snapshot();
                self.rank(&snap, spec, &plan)
            };
            tracing::debug!(
                instance = %instance,
                index,
                hosts_known = ranking.known,
                passed = ranking.hosts.len(),
                stages = ?ranking
                    .stages
                    .iter()
                    .map(|s| (s.stage.as_str(), s.removed))
                    .collect::<Vec<_>>(),
                "ranked"
            );
            let mut chosen = None;
            let mut attempts = 0usize;
            let mut budget_exhausted = false;
            for r in &ranking.hosts {
                if failed_roots.contains(&r.root) {
                    continue;
                }
                if self.config.max_claim_attempts.is_some_and(|m| attempts >= m) {
                    budget_exhausted = true;
                    break;
                }
                // Resolve against the snapshot now: earlier instances of this request (and
                // refused claims) may have changed the tree since ranking.
                let resolved = {
                    let snap = self.read_snapshot();
                    resolve(&snap, r.root, &plan.cand, &self.config.default_availability_zone)
                };
                let Some(sel) = resolved else {
                    continue;
                };
                attempts += 1;
                claims_tried += 1;
                let outcome = match self.try_claim(spec, &plan, instance, &sel).await {
                    Ok(o) => o,
                    Err(e) => {
                        // Unknown outcome (timeout) or store down: release this instance too.
                        let mut all: Vec<_> = placed.iter().map(|(i, s, _)| (*i, s.provider)).collect();
                        all.push((instance, r.root));
                        let _ = self.release_all(&all).await;
                        return Err(ScheduleError::Store(e));
                    }
                };
                match outcome {
                    ClaimOutcome::Claimed { replayed, generation } => {
                        if !replayed {
                            self.write_snapshot().apply_claim(
                                r.root,
                                &sel.allocation,
                                plan.group.as_ref().map(|g| g.id),
                                generation,
                            );
                        }
                        chosen = Some(sel);
                        break;
                    }
                    ClaimOutcome::Refused(cause) => {
                        tracing::debug!(host = %sel.host, %cause, "claim refused");
                        failures.push(ClaimFailure { instance, host: sel.host, root: r.root, cause });
                        failed_roots.insert(r.root);
                        if let Err(e) = self.refresh_tree(r.root).await {
                            let all: Vec<_> = placed.iter().map(|(i, s, _)| (*i, s.provider)).collect();
                            let _ = self.release_all(&all).await;
                            return Err(ScheduleError::Store(e));
                        }
                    }
                }
            }
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
            let snap = self.read_snapshot();
            let now = Timestamp::now();
            let group_hosts: BTreeSet<String> = match &plan.group {
                Some(g) => {
                    snap.hosts.values().filter(|h| h.group_members(g.id) > 0).map(|h| h.host.name.clone()).collect()
                }
                None => BTreeSet::new(),
            };
            let ctx = FilterContext {
                spec,
                config: &self.config,
                now,
                group: plan.group.as_ref(),
                group_hosts: &group_hosts,
                same_host: plan.same_host.as_ref(),
                different_host: &plan.different_host,
                aggregates: &snap.aggregates,
            };
            let default_az = &self.config.default_availability_zone;
            for (_, chosen, ranked) in &placed {
                let mut list = vec![chosen.clone()];
                for r in ranked {
                    if list.len() > num_alternates {
                        break;
                    }
                    if r.cell != chosen.cell || chosen_roots.contains(&r.root) || failed_roots.contains(&r.root) {
                        continue;
                    }
                    let Some(h) = snap.hosts.get(&r.root) else {
                        continue;
                    };
                    if !plan.forced && !self.filters.iter().all(|f| f.host_passes(h, &ctx)) {
                        continue;
                    }
                    if let Some(alt) = resolve(&snap, r.root, &plan.cand, default_az) {
                        list.push(alt);
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
}
