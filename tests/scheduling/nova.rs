//! The Nova-faithful scheduler (`unicell::scheduler::nova`) on the SQL baseline: its
//! candidate query agrees with the scheduler's in-memory candidate search, it places
//! correctly (no overcommit, the claim is the selection) with several schedulers at once
//! until NoValidHost, multi-instance requests and server groups, and stores without
//! Placement's tables are refused. The SQL cases run on every SQL configuration
//! (`nova::<config>::<case>`), ignored with the reason when no server answers; the refusal
//! runs on memory.
//!
//! Cases share their configuration's databases with each other: each builds its hosts in
//! a cell of its own and scopes its requests to that cell (Placement's query itself sees
//! every tree, as in Nova).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::support::fixtures::{audit, e, flavor, spec};
use unicell::model::*;
use unicell::scheduler::candidates::{CandidateRequest, fits_request};
use unicell::scheduler::nova::NovaScheduler;
use unicell::scheduler::{ScheduleError, SchedulerConfig};
use unicell::sim::{Cloud, HostSpec};
use unicell::store::candidates::CandidateQuery;
use unicell::store::conformance::{Case, CaseResult, case, check};
use unicell::store::prelude::*;

/// The cases that need a store with Placement's tables.
pub fn sql_cases() -> Vec<Case> {
    vec![
        case!(candidate_query_agrees_with_the_candidate_search),
        case!(concurrent_schedulers_fill_the_cloud_without_overcommit),
        case!(multi_instance_groups_and_refusals),
    ]
}

/// The cases for stores without them (memory).
pub fn other_cases() -> Vec<Case> {
    vec![case!(stores_without_placement_tables_are_refused)]
}

type R = CaseResult;

/// A small deterministic generator (the cases must not depend on luck).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

fn config(cloud: &Cloud, seed: u64) -> SchedulerConfig {
    SchedulerConfig { seed: Some(seed), ..cloud.config() }
}

/// `spec` scoped to `cell` (the other cases' hosts are in the same databases).
fn in_cell(mut sp: RequestSpec, cell: CellId) -> RequestSpec {
    sp.requested_destination = Some(Destination { cell: Some(cell), ..Default::default() });
    sp
}

async fn candidate_query_agrees_with_the_candidate_search(store: Arc<dyn Store>) -> R {
    let q = store.candidate_queries().ok_or("the SQL store must answer candidate queries")?;
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    let (agg1, agg2) = (AggregateId::new_v4(), AggregateId::new_v4());
    let mut rng = Lcg(42);
    let mut roots = Vec::new();
    for i in 0..24 {
        let mut hs =
            HostSpec::sized(4 + rng.below(13) as i64, 4096 * (1 + rng.below(4) as i64), 50 + 50 * rng.below(4) as i64);
        hs.vcpu_allocation_ratio = [1.0, 1.5, 4.0][rng.below(3) as usize];
        hs.reserved_mem_mb = [0, 512][rng.below(2) as usize];
        for t in ["CUSTOM_A", "CUSTOM_B"] {
            if rng.below(2) == 0 {
                hs = hs.with_trait(t).map_err(e)?;
            }
        }
        for a in [agg1, agg2] {
            if rng.below(2) == 0 {
                hs.aggregates.push(a);
            }
        }
        if i % 4 == 0 {
            // Nested trees (NUMA, SR-IOV children) whose roots hold VCPU, RAM and disk.
            hs = hs.nested().map_err(e)?;
        }
        roots.push(cloud.add_host(hs).await.map_err(e)?.root);
    }
    // Units Placement checks: step_size, min_unit, max_unit on some roots.
    for (i, root) in roots.iter().enumerate().filter(|(i, _)| i % 3 == 1) {
        let tree = store.provider_tree(*root).await.map_err(e)?;
        let mut inv = tree.node(*root).ok_or("root")?.inventories.clone();
        if let Some(v) = inv.get_mut(&ResourceClass::Vcpu) {
            match i % 9 {
                1 => v.step_size = 2,
                4 => v.min_unit = 2,
                _ => v.max_unit = 2,
            }
        }
        store.set_inventories(*root, tree.generation, &inv).await.map_err(e)?;
    }
    // Usage: some roots partly or fully used.
    for (i, root) in roots.iter().enumerate() {
        let n = rng.below(4);
        for _ in 0..n {
            let c = ClaimRequest {
                consumer: ConsumerId::new_v4(),
                project_id: "p".into(),
                user_id: "u".into(),
                allocations: BTreeMap::from([(
                    *root,
                    BTreeMap::from([(ResourceClass::Vcpu, 2), (ResourceClass::MemoryMb, 2048 + 1024 * (i as i64 % 2))]),
                )]),
                group: None,
            };
            // Refusals (a full root) are part of the shape.
            let _ = store.claim(&c).await;
        }
    }
    let trees = store.list_provider_trees(Some(cloud.cell)).await.map_err(e)?;
    let trait_a = Trait::new("CUSTOM_A").map_err(e)?;
    let trait_b = Trait::new("CUSTOM_B").map_err(e)?;
    let mut exercised = (0, 0);
    for (v, m, d) in [(1, 512, 10), (2, 2048, 50), (3, 4096, 100), (4, 8192, 150), (8, 1024, 10), (16, 16384, 200)] {
        for variant in 0..6 {
            let resources: Resources =
                BTreeMap::from([(ResourceClass::Vcpu, v), (ResourceClass::MemoryMb, m), (ResourceClass::DiskGb, d)]);
            let mut query = CandidateQuery { resources: resources.clone(), ..Default::default() };
            match variant {
                1 => {
                    query.required.insert(trait_a.clone());
                }
                2 => {
                    query.forbidden.insert(trait_b.clone());
                }
                3 => query.member_of = vec![BTreeSet::from([agg1])],
                4 => query.member_of = vec![BTreeSet::from([agg1, agg2])],
                5 => {
                    query.forbidden_aggregates.insert(agg2);
                }
                _ => {}
            }
            let group = RequestGroup {
                suffix: None,
                resources,
                required: query.required.clone(),
                forbidden: query.forbidden.clone(),
            };
            let mut creq = CandidateRequest::new(ResourceRequest { groups: vec![group] }, false, 10_000);
            creq.member_of = query.member_of.clone();
            creq.forbidden_aggregates = query.forbidden_aggregates.clone();
            let expected: BTreeSet<ProviderId> =
                trees.iter().filter(|t| fits_request(t, &creq).is_ok()).map(|t| t.root).collect();
            let got = q.allocation_candidates(&query).await.map_err(e)?;
            let mine: BTreeSet<ProviderId> =
                got.iter().filter(|t| t.cell == Some(cloud.cell)).map(|t| t.root).collect();
            check!(mine == expected, "{query:?}: SQL {mine:?} vs candidate search {expected:?}");
            // The provider summaries are the trees as the store reads them.
            for t in got.iter().filter(|t| t.cell == Some(cloud.cell)) {
                let direct = trees.iter().find(|x| x.root == t.root).ok_or("tree")?;
                check!(t == direct, "summary of {} differs from its tree: {t:?} vs {direct:?}", t.root);
            }
            if expected.is_empty() {
                exercised.0 += 1
            } else {
                exercised.1 += 1
            }
            // The limit: at most that many, each one fitting.
            query.limit = Some(2);
            let limited = q.allocation_candidates(&query).await.map_err(e)?;
            check!(limited.len() <= 2, "LIMIT 2 gave {}", limited.len());
            for t in &limited {
                check!(fits_request(t, &creq).is_ok(), "limited candidate {} does not fit", t.root);
            }
        }
    }
    check!(exercised.0 > 3 && exercised.1 > 10, "both outcomes exercised: {exercised:?}");
    Ok(())
}

async fn concurrent_schedulers_fill_the_cloud_without_overcommit(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    // 6 hosts, each holding exactly 4 of the flavor (by VCPU, by RAM, and 5 by disk).
    cloud.add_hosts(6, HostSpec::sized(4, 8192, 100)).await.map_err(e)?;
    let f = flavor(1, 2048, 20);
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let s = Arc::new(
            NovaScheduler::new(store.clone(), SchedulerConfig { host_subset_size: 1, ..config(&cloud, t) })
                .map_err(e)?,
        );
        let sp = in_cell(spec(f.clone()), cloud.cell);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let id = InstanceId::new_v4();
                match s.select_destinations(&sp, &[id], 2).await {
                    Ok(mut lists) => out.push((id, lists.remove(0))),
                    Err(ScheduleError::NoValidHost { .. }) => return Ok((out, s.stats())),
                    Err(other) => return Err(format!("scheduler {t}: {other}")),
                }
            }
        }));
    }
    let mut placed = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let (out, stats) = t.await.map_err(e)??;
        conflicts += stats.claim_conflicts;
        placed.extend(out);
    }
    check!(placed.len() == 24, "the 6 hosts hold 24 and every one is used: {} placed", placed.len());
    let held = audit(&store, cloud.cell).await?;
    for (id, list) in &placed {
        let chosen = &list[0];
        let a = held.get(&ConsumerId::from(*id)).ok_or_else(|| format!("{id} holds nothing"))?;
        check!(
            a.root == chosen.provider && a.allocations == chosen.allocation,
            "claim is the selection: {a:?} vs {chosen:?}"
        );
        let amounts = chosen.allocation.get(&chosen.provider).ok_or("allocation on the chosen root")?;
        check!(
            amounts
                == &BTreeMap::from([
                    (ResourceClass::Vcpu, 1),
                    (ResourceClass::MemoryMb, 2048),
                    (ResourceClass::DiskGb, 20)
                ]),
            "amounts {amounts:?}"
        );
        for alt in &list[1..] {
            check!(alt.cell == chosen.cell && alt.provider != chosen.provider, "alternate {alt:?} of {chosen:?}");
        }
    }
    // This cloud's cell only: the store is shared with the other scheduling tests, whose
    // claims commit while an audit of everything reads (CI once saw another test's tree
    // between its usage and allocation reads).
    let report =
        unicell::store::audit::audit(&*store, &unicell::store::audit::AuditScope::cell(cloud.cell)).await.map_err(e)?;
    check!(report.is_clean(), "audit of the test's cell: {report}");
    for t in store.list_provider_trees(Some(cloud.cell)).await.map_err(e)? {
        for p in &t.providers {
            for (c, inv) in &p.inventories {
                check!(p.used(c) <= inv.capacity(), "{} {c} over capacity", p.name);
            }
        }
        let root = t.node(t.root).ok_or("root")?;
        check!(root.used(&ResourceClass::Vcpu) == 4, "{} is full: {:?}", root.name, root.usages);
    }
    tracing::debug!(conflicts, "refused claims while filling");
    Ok(())
}

async fn multi_instance_groups_and_refusals(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(3, HostSpec::sized(4, 8192, 100)).await.map_err(e)?;
    let s = NovaScheduler::new(store.clone(), config(&cloud, 3)).map_err(e)?;
    let g = cloud.group(GroupPolicy::AntiAffinity, None).await.map_err(e)?;
    let mut sp = in_cell(spec(flavor(1, 1024, 10)), cloud.cell);
    sp.hints.group = Some(g.id);
    let ids: Vec<InstanceId> = (0..3).map(|_| InstanceId::new_v4()).collect();
    let out = s.select_destinations(&sp, &ids, 1).await.map_err(e)?;
    let hosts: BTreeSet<&str> = out.iter().map(|l| l[0].host.as_str()).collect();
    check!(out.len() == 3 && hosts.len() == 3, "anti-affinity spreads the three: {hosts:?}");
    for l in &out {
        check!(l[1..].iter().all(|a| !hosts.contains(a.host.as_str())), "alternates are never selected hosts: {l:?}");
    }
    // A fourth member has nowhere to go; a request of two fails whole.
    let more: Vec<InstanceId> = (0..2).map(|_| InstanceId::new_v4()).collect();
    match s.select_destinations(&sp, &more, 0).await {
        Err(ScheduleError::NoValidHost { reason }) => {
            check!(
                reason.stages.iter().any(|st| st.stage == "ServerGroupAntiAffinityFilter" && st.removed == 3),
                "{reason}"
            );
        }
        other => return Err(format!("expected NoValidHost, got {other:?}").into()),
    }
    for id in &more {
        check!(store.allocations(ConsumerId::from(*id)).await.map_err(e)?.is_empty(), "nothing held by {id}");
    }
    // Two instances of a plain request: the second sees the first's consumption.
    let big = in_cell(spec(flavor(3, 1024, 10)), cloud.cell);
    let two: Vec<InstanceId> = (0..2).map(|_| InstanceId::new_v4()).collect();
    let tried = s.stats().claims_tried;
    let out = s.select_destinations(&big, &two, 0).await.map_err(e)?;
    check!(out[0][0].provider != out[1][0].provider, "3 + 3 VCPU do not fit on one 4-VCPU host (1 used)");
    // consume_from_request: the first claim weighs its host down for the second instance,
    // so no claim is wasted on it.
    check!(s.stats().claims_tried - tried == 2, "claims: {:?}", s.stats());
    // Numbered groups are outside the reproduced query: a clear refusal.
    let mut numbered = flavor(1, 512, 1);
    numbered.extra_specs.insert("resources1:SRIOV_NET_VF".into(), "1".into());
    match s.select_destinations(&in_cell(spec(numbered), cloud.cell), &[InstanceId::new_v4()], 0).await {
        Err(ScheduleError::InvalidRequest(err)) => check!(err.to_string().contains("numbered"), "{err}"),
        other => return Err(format!("expected InvalidRequest, got {other:?}").into()),
    }
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn stores_without_placement_tables_are_refused(store: Arc<dyn Store>) -> R {
    match NovaScheduler::new(store.clone(), SchedulerConfig::default()) {
        Err(err) => {
            check!(err.to_string().contains("SQL baseline"), "the error says what is needed: {err}");
            Ok(())
        }
        Ok(_) => Err(format!("{} has no Placement tables, yet the Nova scheduler accepted it", store.backend()).into()),
    }
}
