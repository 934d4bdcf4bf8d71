//! The Nova-faithful scheduler: how Nova schedules, on the SQL baseline, so that benchmarks
//! can compare the two designs on one store and not only the stores.
//!
//! Per request, as Nova's `FilterScheduler._schedule` does:
//! 1. **Placement's `GET /allocation_candidates`** as SQL on the API database
//!    ([`CandidateQueries::allocation_candidates`], `LIMIT max_placement_results`, lifted
//!    as Nova lifts it for groups, hints and named hosts; a requested availability zone
//!    becomes a `member_of` of the aggregates defining it, as Nova's
//!    `map_az_to_placement_aggregate` request filter does). What part of Placement's query
//!    is reproduced (resources on the root provider only, no nested or sharing providers,
//!    no numbered groups) is written in [`crate::store::candidates`]; a request with
//!    numbered groups is refused with `InvalidRequest`.
//! 2. **Host states for the candidates only**, read from the cell databases
//!    ([`CandidateQueries::hosts_by_root`], Nova's HostManager reading compute nodes by
//!    uuid) and joined with the candidates' provider summaries; aggregates and cells come
//!    from a cache re-read every `catalog_refresh_interval` (Nova's HostManager keeps them
//!    in memory too).
//! 3. Per instance, **the same filters and weighers as unicell's scheduler**
//!    ([`filters`](crate::scheduler::filters), [`weighers`](crate::scheduler::weighers),
//!    one implementation of each) over those host states, sorted by the same rule
//!    (`host_subset_size`, `shuffle_best_same_weighed_hosts`).
//! 4. **The claim as Placement's `PUT /allocations`**: the weighed hosts in order, each a
//!    [`Claims::claim`](crate::store::Claims::claim) of the flavor's amounts on the root.
//!    On the SQL baseline that is Placement's `_set_allocations` transaction: it reads the
//!    providers' generations, checks capacity and writes with `WHERE generation = ?`,
//!    retried on a generation conflict up to `claim_retries` times (the URL option,
//!    Placement's `allocation_conflict_retry_count`, 10). Nova's PUT carries no provider
//!    generation (only the consumer's), so, as in Placement, the generation checked is the
//!    one read in the claim's own transaction, not the one of step 1. A refused claim
//!    (capacity gone, group limit, conflicts beyond the retries) moves on to the next
//!    weighed host; the claimed host's state is consumed locally
//!    (`consume_from_request`) for the next instance of the request.
//! 5. All or nothing: an instance that cannot be placed releases every claim of the
//!    request (`_cleanup_allocations`) and answers NoValidHost.
//! 6. **Alternates as Nova returns them** (`_get_alternate_hosts`): the weighed hosts of
//!    the instance in the chosen host's cell, not selected for any instance of the request,
//!    in weight order; Nova does not skip a host whose claim failed and neither does this.
//!
//! What Nova does that this does not: no RPC, no instance info sync (server-group member
//! counts come from the candidate trees, the hosts of an affinity group from
//! [`CandidateQueries::group_roots`]); the IoOps weigher and filter see 0 building
//! instances plus this request's own claims; BuildFailureWeigher sees no failures.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::model::{
    Aggregate, AggregateId, CellId, ClaimRequest, ConsumerId, GroupClaim, GroupPolicy, InstanceId, ProviderId,
    RequestSpec, Selection, Timestamp,
};
use crate::scheduler::filters::{self, FilterContext, HostFilter};
use crate::scheduler::host_state::{HostState, HostView};
use crate::scheduler::select::{HostPlace, Plan, classify, scope_rejection, sort_weighed};
use crate::scheduler::weighers::{self, HostWeigher};
use crate::scheduler::{
    ClaimFailure, NoValidHostReason, ScheduleError, Scheduler, SchedulerConfig, SplitMix64, StageCount, bump, lock,
};
use crate::store::Store;
use crate::store::candidates::{CandidateQueries, CandidateQuery};

/// Counters of one [`NovaScheduler`] since it was created (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NovaStats {
    /// `select_destinations` calls.
    pub requests: u64,
    /// Instances placed (claimed).
    pub instances_placed: u64,
    /// Requests that ended in NoValidHost.
    pub no_valid_host: u64,
    /// Allocation candidates returned by the store, summed over requests.
    pub candidates_returned: u64,
    /// Claims sent (`PUT /allocations`).
    pub claims_tried: u64,
    /// Claims refused (capacity gone, group limit, conflicts beyond the retries).
    pub claim_conflicts: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    instances_placed: AtomicU64,
    no_valid_host: AtomicU64,
    candidates_returned: AtomicU64,
    claims_tried: AtomicU64,
    claim_conflicts: AtomicU64,
}

/// Aggregates and disabled cells, as Nova's HostManager caches them.
struct Catalog {
    read_at: Instant,
    aggregates: HashMap<AggregateId, Aggregate>,
    disabled_cells: HashSet<CellId>,
}

/// Nova's scheduler over a store with Placement's tables (see the module docs).
pub struct NovaScheduler {
    store: Arc<dyn Store>,
    config: SchedulerConfig,
    filters: Vec<Box<dyn HostFilter>>,
    weighers: Vec<Box<dyn HostWeigher>>,
    rng: Mutex<SplitMix64>,
    counters: Counters,
    catalog: Mutex<Option<Arc<Catalog>>>,
}

impl std::fmt::Debug for NovaScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NovaScheduler").field("store", &self.store.describe()).finish_non_exhaustive()
    }
}

impl NovaScheduler {
    /// A Nova-faithful scheduler on `store`. Fails with `InvalidInput` when the store has no
    /// Placement tables to query (every backend but the SQL baseline) or the configuration
    /// is bad (the same checks as [`Scheduler::new`]).
    pub fn new(store: Arc<dyn Store>, config: SchedulerConfig) -> Result<NovaScheduler> {
        if store.candidate_queries().is_none() {
            return Err(Error::invalid(
                "design",
                format!(
                    "the Nova-faithful scheduler needs Placement's tables, which only the SQL baseline \
                     (mysql://, mariadb://, postgres://) keeps; {} has none",
                    store.backend()
                ),
            ));
        }
        Scheduler::check(&config)?;
        let seed = config.seed.unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
        Ok(NovaScheduler {
            filters: config.enabled_filters.iter().filter_map(|n| filters::by_name(n)).collect(),
            weighers: weighers::all(),
            rng: Mutex::new(SplitMix64::new(seed)),
            counters: Counters::default(),
            catalog: Mutex::new(None),
            store,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Counters since creation.
    pub fn stats(&self) -> NovaStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NovaStats {
            requests: g(&c.requests),
            instances_placed: g(&c.instances_placed),
            no_valid_host: g(&c.no_valid_host),
            candidates_returned: g(&c.candidates_returned),
            claims_tried: g(&c.claims_tried),
            claim_conflicts: g(&c.claim_conflicts),
        }
    }

    fn queries(&self) -> Result<&dyn CandidateQueries> {
        self.store.candidate_queries().ok_or_else(|| Error::invalid("design", "the store lost its candidate queries"))
    }

    /// The cached aggregates and disabled cells, re-read when older than
    /// `catalog_refresh_interval`.
    async fn catalog(&self) -> Result<Arc<Catalog>> {
        if let Some(c) = lock(&self.catalog).as_ref()
            && c.read_at.elapsed() < self.config.catalog_refresh_interval
        {
            return Ok(c.clone());
        }
        let aggregates = self.store.list_aggregates().await?.into_iter().map(|a| (a.id, a)).collect();
        let disabled_cells = self.store.list_cells().await?.into_iter().filter(|c| c.disabled).map(|c| c.id).collect();
        let c = Arc::new(Catalog { read_at: Instant::now(), aggregates, disabled_cells });
        *lock(&self.catalog) = Some(c.clone());
        Ok(c)
    }

    /// Placement's query for a plan: the unsuffixed group's amounts, traits and the
    /// destination's aggregates; `InvalidRequest` for numbered groups.
    fn query(plan: &Plan) -> Result<CandidateQuery, ScheduleError> {
        let group = match plan.cand.groups.as_slice() {
            [g] if g.suffix.is_none() => g,
            _ => {
                return Err(ScheduleError::InvalidRequest(Error::invalid(
                    "flavor.extra_specs",
                    "the Nova-faithful scheduler reproduces Placement's query for one unnumbered request \
                     group on the root provider; numbered groups (resourcesN:, traitN:) are not supported",
                )));
            }
        };
        Ok(CandidateQuery {
            resources: group.resources.clone(),
            required: group.required.clone(),
            forbidden: group.forbidden.clone(),
            member_of: plan.cand.member_of.clone(),
            forbidden_aggregates: plan.cand.forbidden_aggregates.clone(),
            limit: plan.limit,
        })
    }

    /// Places `instance_uuids` (one instance each, all with `spec`) the way Nova does (module
    /// docs) and returns, for each in order, the claimed host first, then up to
    /// `num_alternates` unclaimed alternates from its cell. All or nothing, as
    /// [`Scheduler::select_destinations`].
    pub async fn select_destinations(
        &self,
        spec: &RequestSpec,
        instance_uuids: &[InstanceId],
        num_alternates: usize,
    ) -> Result<Vec<Vec<Selection>>, ScheduleError> {
        bump(&self.counters.requests, 1);
        let r = self.select_inner(spec, instance_uuids, num_alternates).await;
        if matches!(r, Err(ScheduleError::NoValidHost { .. })) {
            bump(&self.counters.no_valid_host, 1);
        }
        r
    }

    async fn select_inner(
        &self,
        spec: &RequestSpec,
        instance_uuids: &[InstanceId],
        num_alternates: usize,
    ) -> Result<Vec<Vec<Selection>>, ScheduleError> {
        let plan = Plan::new(&self.store, &self.config, spec).await?;
        let mut query = Self::query(&plan)?;
        let q = self.queries()?;
        let catalog = self.catalog().await?;
        // Nova's map_az_to_placement_aggregate request filter
        // (`query_placement_for_availability_zone`, on by default since Xena): a requested
        // zone becomes a member_of of the aggregates that define it, when any does.
        if let Some(az) = &spec.availability_zone {
            let zone: BTreeSet<AggregateId> = catalog
                .aggregates
                .values()
                .filter(|a| a.availability_zone.as_deref() == Some(az.as_str()))
                .map(|a| a.id)
                .collect();
            if !zone.is_empty() {
                query.member_of.push(zone);
            }
        }
        // 1. GET /allocation_candidates.
        let trees = q.allocation_candidates(&query).await?;
        bump(&self.counters.candidates_returned, trees.len() as u64);
        // 2. Host states of the candidates (and the hosts of an affinity group's members).
        let mut roots: Vec<(ProviderId, Option<CellId>)> = trees.iter().map(|t| (t.root, t.cell)).collect();
        let group_roots: Vec<ProviderId> = match &plan.group {
            Some(g) if g.policy == GroupPolicy::Affinity => {
                let gr = q.group_roots(g.id).await?;
                let ids = gr.iter().map(|(r, _)| *r).collect();
                roots.extend(gr);
                ids
            }
            _ => Vec::new(),
        };
        roots.sort();
        roots.dedup();
        let mut hosts: HashMap<ProviderId, _> =
            q.hosts_by_root(&roots).await?.into_iter().map(|h| (h.root_provider, h)).collect();
        let mut group_hosts: BTreeSet<String> =
            group_roots.iter().filter_map(|r| hosts.get(r)).map(|h| h.name.clone()).collect();
        let known = trees.len();
        let mut states: Vec<HostState> =
            trees.into_iter().filter_map(|t| hosts.remove(&t.root).map(|h| HostState::new(h, t))).collect();
        let mut scope_why = BTreeMap::new();
        states.retain(|h| {
            let place = HostPlace {
                name: &h.host.name,
                node: &h.host.node,
                cell: h.host.cell,
                cell_disabled: catalog.disabled_cells.contains(&h.host.cell),
            };
            match scope_rejection(spec, &plan, place) {
                Some(why) => {
                    *scope_why.entry(why).or_insert(0) += 1;
                    false
                }
                None => true,
            }
        });
        let scope_stage =
            StageCount { stage: "scope".into(), before: known, removed: known - states.len(), why: scope_why };

        // 3-4. Per instance: filters, weighers, claims in weight order.
        let mut placed: Vec<(InstanceId, Selection, Vec<usize>)> = Vec::with_capacity(instance_uuids.len());
        let mut claims_tried = 0usize;
        let mut failures: Vec<ClaimFailure> = Vec::new();
        for (index, &instance) in instance_uuids.iter().enumerate() {
            let ctx = FilterContext {
                spec,
                config: &self.config,
                now: Timestamp::now(),
                group: plan.group.as_ref(),
                group_hosts: &group_hosts,
                same_host: plan.same_host.as_ref(),
                different_host: &plan.different_host,
                aggregates: &catalog.aggregates,
            };
            let mut passing: Vec<usize> = (0..states.len()).collect();
            let mut stages = vec![scope_stage.clone()];
            if !plan.forced {
                for f in &self.filters {
                    let before = passing.len();
                    passing.retain(|i| f.host_passes(&states[*i], &ctx));
                    stages.push(StageCount {
                        stage: f.name().to_string(),
                        before,
                        removed: before - passing.len(),
                        why: BTreeMap::new(),
                    });
                }
            }
            let weights = {
                // Not held across an await (`dyn HostView` is not `Sync`).
                let views: Vec<&dyn HostView> = passing.iter().map(|i| &states[*i] as &dyn HostView).collect();
                weighers::weigh(&self.weighers, &views, &ctx)
            };
            let sorted: Vec<usize> =
                sort_weighed(&self.config, &self.rng, weights.into_iter().zip(passing).collect(), |i| {
                    states[*i].name()
                })
                .into_iter()
                .map(|(_, i)| i)
                .collect();
            let mut chosen = None;
            let mut budget_exhausted = false;
            for (attempt, &i) in sorted.iter().enumerate() {
                if self.config.max_claim_attempts.is_some_and(|m| attempt >= m) {
                    budget_exhausted = true;
                    break;
                }
                let sel = self.selection(&states[i], &query, &catalog.aggregates);
                let req = ClaimRequest {
                    consumer: ConsumerId::from(instance),
                    project_id: spec.project_id.clone(),
                    user_id: spec.user_id.clone(),
                    allocations: sel.allocation.clone(),
                    group: plan.group.as_ref().map(|g| GroupClaim { group: g.id, max_per_host: g.claim_limit() }),
                };
                claims_tried += 1;
                bump(&self.counters.claims_tried, 1);
                match self.store.claim(&req).await {
                    Ok(_) => {
                        chosen = Some((i, sel));
                        break;
                    }
                    Err(e) => match classify(e) {
                        Ok(cause) => {
                            bump(&self.counters.claim_conflicts, 1);
                            tracing::debug!(host = %sel.host, %cause, "claim refused; trying the next weighed host");
                            failures.push(ClaimFailure { instance, host: sel.host, root: sel.provider, cause });
                        }
                        Err(e) => {
                            self.release(&placed).await;
                            // The claim's outcome may be unknown (a timeout): release it too.
                            let _ = self.store.release(ConsumerId::from(instance)).await;
                            return Err(ScheduleError::Store(e));
                        }
                    },
                }
            }
            let Some((i, sel)) = chosen else {
                let released = self.release(&placed).await;
                let reason = NoValidHostReason {
                    instance: Some(instance),
                    instance_index: index,
                    num_instances: instance_uuids.len(),
                    message: None,
                    hosts_known: known,
                    hosts_passed: sorted.len(),
                    stages,
                    claims_tried,
                    claim_failures: failures,
                    claim_budget_exhausted: budget_exhausted,
                    released_claims: released,
                    member_of: spec.requested_destination.as_ref().map(|d| d.aggregates.clone()).unwrap_or_default(),
                };
                tracing::info!(reason = %reason, "no valid host (Nova-faithful scheduler)");
                return Err(ScheduleError::NoValidHost { reason: Box::new(reason) });
            };
            // consume_from_request: the next instance of the request sees this claim.
            let st = &mut states[i];
            if let Some(root) = st.tree.providers.iter_mut().find(|p| p.id == st.tree.root) {
                for (c, a) in &query.resources {
                    *root.usages.entry(c.clone()).or_insert(0) += a;
                }
            }
            st.io_ops += 1;
            if let Some(g) = &plan.group {
                *st.tree.groups.entry(g.id).or_insert(0) += 1;
                group_hosts.insert(st.host.name.clone());
            }
            bump(&self.counters.instances_placed, 1);
            placed.push((instance, sel, sorted));
        }

        // 6. Alternates, as Nova's _get_alternate_hosts.
        let selected: HashSet<ProviderId> = placed.iter().map(|(_, s, _)| s.provider).collect();
        Ok(placed
            .into_iter()
            .map(|(_, chosen, sorted)| {
                let alternates: Vec<Selection> = sorted
                    .iter()
                    .map(|i| &states[*i])
                    .filter(|h| h.host.cell == chosen.cell && !selected.contains(&h.root()))
                    .take(num_alternates)
                    .map(|h| self.selection(h, &query, &catalog.aggregates))
                    .collect();
                std::iter::once(chosen).chain(alternates).collect()
            })
            .collect())
    }

    /// The selection (and allocation request: the amounts on the root) for one host.
    fn selection(
        &self,
        h: &HostState,
        query: &CandidateQuery,
        aggregates: &HashMap<AggregateId, Aggregate>,
    ) -> Selection {
        Selection {
            host: h.host.name.clone(),
            node: h.host.node.clone(),
            provider: h.root(),
            cell: h.host.cell,
            allocation: BTreeMap::from([(h.root(), query.resources.clone())]),
            availability_zone: Some(h.availability_zone(aggregates, &self.config.default_availability_zone)),
        }
    }

    /// Releases the claims of a request that failed (best effort; errors are logged);
    /// returns how many were released.
    async fn release(&self, placed: &[(InstanceId, Selection, Vec<usize>)]) -> usize {
        let mut n = 0;
        for (i, _, _) in placed {
            match self.store.release(ConsumerId::from(*i)).await {
                Ok(_) => n += 1,
                Err(e) => tracing::error!(instance = %i, error = %e, "could not release a claim"),
            }
        }
        n
    }
}
