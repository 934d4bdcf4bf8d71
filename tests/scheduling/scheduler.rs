//! Scheduler integration cases (claims at selection, alternates, all-or-nothing, groups,
//! traits/aggregates/destinations, nested providers, NoValidHost reasons, the snapshot's
//! change-feed refresh). Each case runs on the memory store and on every URL in
//! `UNICELL_TEST_STORES`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::support::fixtures::{audit, e, flavor, spec};
use unicell::model::*;
use unicell::scheduler::{ClaimFailureCause, Rejection, ScheduleError, SchedulerConfig};
use unicell::sim::{Cloud, HostSpec};
use unicell::store::conformance::{Case, CaseResult, case, check};
use unicell::store::prelude::*;

/// The cases of this file, in order.
pub fn cases() -> Vec<Case> {
    vec![
        case!(places_and_claims_with_alternates),
        case!(last_slot_race_one_host),
        case!(last_slot_race_loser_gets_another_host),
        case!(refused_claim_host_is_never_an_alternate),
        case!(multi_instance_all_or_nothing),
        case!(multi_instance_later_instances_see_consumption),
        case!(anti_affinity_concurrent_separate_requests),
        case!(anti_affinity_max_per_host_in_one_request),
        case!(affinity_keeps_members_together),
        case!(traits_aggregates_and_destinations),
        case!(force_hosts_skip_filters),
        case!(nested_providers_and_numbered_groups),
        case!(no_valid_host_reason_counts_each_stage),
        case!(snapshot_follows_the_change_feed),
        case!(same_and_different_host_hints),
        case!(image_properties_in_the_pipeline),
        case!(pack_or_spread_by_multiplier_sign),
        case!(build_failures_push_a_host_down),
        case!(invalid_requests_are_rejected),
        case!(io_ops_counted_from_building_instances),
        case!(tracing_spans_describe_each_request),
        case!(max_placement_results_samples_and_is_lifted_for_hints),
    ]
}

type R = CaseResult;

fn nvh(r: Result<Vec<Vec<Selection>>, ScheduleError>) -> Result<unicell::scheduler::NoValidHostReason, String> {
    match r {
        Err(ScheduleError::NoValidHost { reason }) => Ok(*reason),
        Err(other) => Err(format!("expected NoValidHost, got {other}")),
        Ok(s) => Err(format!("expected NoValidHost, got {s:?}")),
    }
}

async fn usage(store: &Arc<dyn Store>, root: ProviderId, class: ResourceClass) -> Result<i64, String> {
    let t = store.provider_tree(root).await.map_err(e)?;
    Ok(t.node(root).map(|n| n.used(&class)).unwrap_or(0))
}

async fn places_and_claims_with_alternates(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(4, HostSpec::default()).await.map_err(e)?;
    let s = cloud.scheduler().await.map_err(e)?;
    let sp = spec(flavor(2, 2048, 10));
    let id = InstanceId::new_v4();
    let out = s.select_destinations(&sp, &[id], 2).await.map_err(e)?;
    check!(out.len() == 1 && out[0].len() == 3, "one list of 3: {out:?}");
    let chosen = &out[0][0];
    check!(chosen.cell == cloud.cell, "cell");
    let held = store.allocations(ConsumerId::from(id)).await.map_err(e)?;
    check!(
        held.len() == 1 && held[0].root == chosen.provider && held[0].allocations == chosen.allocation,
        "the first selection is claimed: {held:?} vs {chosen:?}"
    );
    let expected: Resources =
        BTreeMap::from([(ResourceClass::Vcpu, 2), (ResourceClass::MemoryMb, 2048), (ResourceClass::DiskGb, 10)]);
    check!(chosen.allocation.get(&chosen.provider) == Some(&expected), "amounts {:?}", chosen.allocation);
    let mut seen = BTreeSet::from([chosen.host.clone()]);
    for alt in &out[0][1..] {
        check!(alt.cell == chosen.cell, "alternate from another cell");
        check!(seen.insert(alt.host.clone()), "duplicate host {}", alt.host);
        check!(usage(&store, alt.provider, ResourceClass::Vcpu).await? == 0, "alternates are not claimed");
    }
    check!(s.stats().instances_placed == 1 && s.stats().claims_tried == 1, "{:?}", s.stats());
    // The scheduler's own claim is in its snapshot at once.
    let hs = s.host_state(&chosen.host).ok_or("host state")?;
    check!(hs.free(&ResourceClass::Vcpu) == 14, "snapshot consumed: {}", hs.free(&ResourceClass::Vcpu));
    // num_alternates = 0 gives only the claimed host.
    let out = s.select_destinations(&sp, &[InstanceId::new_v4()], 0).await.map_err(e)?;
    check!(out[0].len() == 1, "no alternates asked");
    audit(&store, cloud.cell).await?;
    Ok(())
}

/// Two schedulers (separate snapshots) place one instance each, in parallel tasks.
async fn race(
    s1: &Arc<unicell::scheduler::Scheduler>,
    s2: &Arc<unicell::scheduler::Scheduler>,
    sp: &RequestSpec,
    a: InstanceId,
    b: InstanceId,
) -> Result<(Result<Vec<Vec<Selection>>, ScheduleError>, Result<Vec<Vec<Selection>>, ScheduleError>), String> {
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let spawn = |s: Arc<unicell::scheduler::Scheduler>, id: InstanceId| {
        let sp = sp.clone();
        let barrier = barrier.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            s.select_destinations(&sp, &[id], 1).await
        })
    };
    let t1 = spawn(s1.clone(), a);
    let t2 = spawn(s2.clone(), b);
    Ok((t1.await.map_err(e)?, t2.await.map_err(e)?))
}

async fn last_slot_race_one_host(store: Arc<dyn Store>) -> R {
    for round in 0..10 {
        let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
        let h = cloud.add_host(HostSpec::sized(2, 4096, 40)).await.map_err(e)?;
        // Both schedulers load their snapshot before either claims.
        let s1 = cloud.scheduler().await.map_err(e)?;
        let s2 = cloud.scheduler().await.map_err(e)?;
        let sp = spec(flavor(2, 2048, 10));
        let (a, b) = (InstanceId::new_v4(), InstanceId::new_v4());
        let (r1, r2) = race(&s1, &s2, &sp, a, b).await?;
        let oks = [r1.is_ok(), r2.is_ok()];
        check!(oks.iter().filter(|x| **x).count() == 1, "round {round}: exactly one wins: {oks:?}");
        let loser = if r1.is_ok() { r2 } else { r1 };
        let reason = nvh(loser)?;
        // Either the loser's claim was refused by the store (capacity), or its refresh
        // already showed the host full.
        let refused = reason.claim_failures.iter().all(|c| matches!(c.cause, ClaimFailureCause::Capacity { .. }));
        check!(refused, "round {round}: {reason}");
        check!(usage(&store, h.root, ResourceClass::Vcpu).await? == 2, "no overcommit");
        audit(&store, cloud.cell).await?;
    }
    Ok(())
}

async fn last_slot_race_loser_gets_another_host(store: Arc<dyn Store>) -> R {
    let mut conflicts = 0;
    for round in 0..10 {
        let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
        // The first host weighs best (more free RAM) but has room for one instance only.
        let best = cloud.add_host(HostSpec::sized(2, 65536, 400)).await.map_err(e)?;
        cloud.add_host(HostSpec::sized(2, 8192, 40)).await.map_err(e)?;
        // Snapshots that do not refresh before each request: both schedulers see the best
        // host free and try it first; the store lets exactly one claim through.
        let stale = SchedulerConfig { min_refresh_interval: std::time::Duration::from_secs(3600), ..cloud.config() };
        let s1 = cloud.scheduler_with(stale.clone()).await.map_err(e)?;
        let s2 = cloud.scheduler_with(stale).await.map_err(e)?;
        let sp = spec(flavor(2, 2048, 10));
        let (a, b) = (InstanceId::new_v4(), InstanceId::new_v4());
        let (r1, r2) = race(&s1, &s2, &sp, a, b).await?;
        let (r1, r2) = (r1.map_err(e)?, r2.map_err(e)?);
        check!(r1[0][0].host != r2[0][0].host, "round {round}: both got {}", r1[0][0].host);
        check!(r1[0][0].host == best.name || r2[0][0].host == best.name, "round {round}: someone gets the best host");
        for r in [&r1, &r2] {
            for alt in &r[0][1..] {
                check!(alt.host != r[0][0].host, "alternate equals chosen");
            }
        }
        check!(usage(&store, best.root, ResourceClass::Vcpu).await? == 2, "no overcommit");
        conflicts += s1.stats().claim_conflicts + s2.stats().claim_conflicts;
        audit(&store, cloud.cell).await?;
    }
    check!(conflicts == 10, "one refused claim per round, got {conflicts}");
    Ok(())
}

async fn refused_claim_host_is_never_an_alternate(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(3, HostSpec::default()).await.map_err(e)?;
    let g = cloud.group(GroupPolicy::AntiAffinity, None).await.map_err(e)?;
    // Without the anti-affinity filter the scheduler only learns of the group limit from
    // the refused claim; the refreshed tree still fits the resources.
    let s = cloud
        .scheduler_with(SchedulerConfig {
            enabled_filters: vec!["ComputeFilter".into()],
            min_refresh_interval: std::time::Duration::from_secs(3600),
            ..cloud.config()
        })
        .await
        .map_err(e)?;
    let first = cloud.hosts[0].clone();
    store
        .claim(&ClaimRequest {
            consumer: ConsumerId::new_v4(),
            project_id: "proj".into(),
            user_id: "user".into(),
            allocations: BTreeMap::from([(first.root, BTreeMap::from([(ResourceClass::Vcpu, 1)]))]),
            group: Some(GroupClaim { group: g.id, max_per_host: g.claim_limit() }),
        })
        .await
        .map_err(e)?;
    let mut sp = spec(flavor(1, 512, 1));
    sp.hints.group = Some(g.id);
    let out = s.select_destinations(&sp, &[InstanceId::new_v4()], 5).await.map_err(e)?;
    check!(s.stats().claim_conflicts == 1, "the first claim is refused: {:?}", s.stats());
    check!(out[0][0].host != first.name, "placed elsewhere");
    check!(out[0].len() == 2, "one alternate: {:?}", out[0]);
    for sel in &out[0] {
        check!(sel.host != first.name, "the host whose claim failed came back: {:?}", out[0]);
    }
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn multi_instance_all_or_nothing(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(2, HostSpec::sized(2, 4096, 40)).await.map_err(e)?;
    let s = cloud.scheduler().await.map_err(e)?;
    let sp = spec(flavor(2, 2048, 10));
    let ids: Vec<InstanceId> = (0..3).map(|_| InstanceId::new_v4()).collect();
    let reason = nvh(s.select_destinations(&sp, &ids, 2).await)?;
    check!(reason.instance_index == 2 && reason.num_instances == 3, "{reason}");
    check!(reason.released_claims == 2, "released {}", reason.released_claims);
    for id in &ids {
        let held = store.allocations(ConsumerId::from(*id)).await.map_err(e)?;
        check!(held.is_empty(), "{id} still holds {held:?}");
    }
    for h in &cloud.hosts {
        check!(usage(&store, h.root, ResourceClass::Vcpu).await? == 0, "usage left on {}", h.name);
        let hs = s.host_state(&h.name).ok_or("host state")?;
        check!(hs.free(&ResourceClass::Vcpu) == 2, "snapshot not restored on {}", h.name);
    }
    check!(s.stats().claims_released == 2, "{:?}", s.stats());
    // With room for all, the same request succeeds.
    let ids: Vec<InstanceId> = (0..2).map(|_| InstanceId::new_v4()).collect();
    let out = s.select_destinations(&sp, &ids, 2).await.map_err(e)?;
    check!(out[0][0].host != out[1][0].host, "two hosts");
    for l in &out {
        check!(l.len() == 1, "no alternate left: chosen hosts are never alternates: {l:?}");
    }
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn multi_instance_later_instances_see_consumption(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    let big = cloud.add_host(HostSpec::sized(6, 65536, 100)).await.map_err(e)?;
    cloud.add_host(HostSpec::sized(2, 4096, 100)).await.map_err(e)?;
    let s = cloud.scheduler().await.map_err(e)?;
    let sp = spec(flavor(2, 2048, 10));
    let ids: Vec<InstanceId> = (0..4).map(|_| InstanceId::new_v4()).collect();
    let out = s.select_destinations(&sp, &ids, 1).await.map_err(e)?;
    let on_big = out.iter().filter(|l| l[0].host == big.name).count();
    check!(on_big == 3, "three fit on the big host, the fourth elsewhere: {on_big}");
    check!(usage(&store, big.root, ResourceClass::Vcpu).await? == 6, "usage");
    check!(s.stats().claim_conflicts == 0, "no refused claim: the snapshot saw each consumption");
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn anti_affinity_concurrent_separate_requests(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(4, HostSpec::default()).await.map_err(e)?;
    let g = cloud.group(GroupPolicy::AntiAffinity, None).await.map_err(e)?;
    // Stale snapshots (no refresh before each request): every scheduler believes every
    // host is free of members, so only the store's atomic group limit keeps them apart.
    let stale = SchedulerConfig { min_refresh_interval: std::time::Duration::from_secs(3600), ..cloud.config() };
    let mut schedulers = Vec::new();
    for _ in 0..6 {
        schedulers.push(cloud.scheduler_with(stale.clone()).await.map_err(e)?);
    }
    let mut sp = spec(flavor(1, 512, 1));
    sp.hints.group = Some(g.id);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let s = schedulers[i % schedulers.len()].clone();
        let sp = sp.clone();
        tasks.push(tokio::spawn(async move { s.select_destinations(&sp, &[InstanceId::new_v4()], 2).await }));
    }
    let mut hosts = Vec::new();
    let mut refusals = 0;
    for t in tasks {
        match t.await.map_err(e)? {
            Ok(l) => hosts.push(l[0][0].host.clone()),
            Err(ScheduleError::NoValidHost { reason }) => {
                refusals += reason
                    .claim_failures
                    .iter()
                    .filter(|c| matches!(c.cause, ClaimFailureCause::GroupLimit { .. }))
                    .count();
            }
            Err(other) => return Err(e(other).into()),
        }
    }
    let distinct: BTreeSet<_> = hosts.iter().collect();
    check!(distinct.len() == hosts.len(), "anti-affinity violated: {hosts:?}");
    check!(hosts.len() == 4, "every host gets exactly one member: {hosts:?}");
    for h in &cloud.hosts {
        let t = store.provider_tree(h.root).await.map_err(e)?;
        check!(t.groups.get(&g.id).copied().unwrap_or(0) == 1, "{} has {:?}", h.name, t.groups);
    }
    check!(refusals > 0, "the store's group limit refused the racing claims");
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn anti_affinity_max_per_host_in_one_request(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(2, HostSpec::default()).await.map_err(e)?;
    let g = cloud.group(GroupPolicy::AntiAffinity, Some(2)).await.map_err(e)?;
    let s = cloud.scheduler().await.map_err(e)?;
    let mut sp = spec(flavor(1, 512, 1));
    sp.hints.group = Some(g.id);
    let ids: Vec<InstanceId> = (0..5).map(|_| InstanceId::new_v4()).collect();
    let reason = nvh(s.select_destinations(&sp, &ids, 0).await)?;
    let stage = reason.stages.iter().find(|st| st.stage == "ServerGroupAntiAffinityFilter").ok_or("stage missing")?;
    check!(stage.removed == 2 && reason.instance_index == 4, "{reason}");
    let out = s.select_destinations(&sp, &ids[..4], 0).await.map_err(e)?;
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for l in &out {
        *per_host.entry(l[0].host.clone()).or_insert(0) += 1;
    }
    check!(per_host.values().all(|n| *n == 2), "{per_host:?}");
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn affinity_keeps_members_together(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(3, HostSpec::default()).await.map_err(e)?;
    let g = cloud.group(GroupPolicy::Affinity, None).await.map_err(e)?;
    let s = cloud.scheduler().await.map_err(e)?;
    let mut sp = spec(flavor(2, 2048, 10));
    sp.hints.group = Some(g.id);
    let first = s.select_destinations(&sp, &[InstanceId::new_v4()], 2).await.map_err(e)?;
    let host = first[0][0].host.clone();
    check!(first[0].len() == 1, "no alternate can satisfy affinity elsewhere: {:?}", first[0]);
    let ids: Vec<InstanceId> = (0..3).map(|_| InstanceId::new_v4()).collect();
    let more = s.select_destinations(&sp, &ids, 0).await.map_err(e)?;
    check!(more.iter().all(|l| l[0].host == host), "affinity broken");
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn traits_aggregates_and_destinations(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    let agg = AggregateId::new_v4();
    let gold = cloud.add_host(HostSpec::default().with_trait("CUSTOM_GOLD").map_err(e)?).await.map_err(e)?;
    let in_agg = cloud.add_host(HostSpec { aggregates: vec![agg], ..Default::default() }).await.map_err(e)?;
    let plain = cloud.add_host(HostSpec::default()).await.map_err(e)?;
    let s = cloud.scheduler().await.map_err(e)?;
    let place = |sp: RequestSpec| {
        let s = s.clone();
        async move { s.select_destinations(&sp, &[InstanceId::new_v4()], 0).await }
    };
    let mut f = flavor(1, 512, 1);
    f.extra_specs.insert("trait:CUSTOM_GOLD".into(), "required".into());
    let out = place(spec(f.clone())).await.map_err(e)?;
    check!(out[0][0].host == gold.name, "required trait");
    f.extra_specs.insert("trait:CUSTOM_GOLD".into(), "forbidden".into());
    for _ in 0..3 {
        let out = place(spec(f.clone())).await.map_err(e)?;
        check!(out[0][0].host != gold.name, "forbidden trait");
    }
    let mut sp = spec(flavor(1, 512, 1));
    sp.image_properties.insert("traits_required".into(), "CUSTOM_GOLD".into());
    check!(place(sp).await.map_err(e)?[0][0].host == gold.name, "image traits_required");
    let mut sp = spec(flavor(1, 512, 1));
    sp.requested_destination =
        Some(Destination { aggregates: vec![vec![agg, AggregateId::new_v4()]], ..Default::default() });
    check!(place(sp.clone()).await.map_err(e)?[0][0].host == in_agg.name, "member_of");
    sp.requested_destination = Some(Destination { forbidden_aggregates: vec![agg], ..Default::default() });
    check!(place(sp.clone()).await.map_err(e)?[0][0].host != in_agg.name, "forbidden aggregate");
    sp.requested_destination = Some(Destination { host: Some(plain.name.clone()), ..Default::default() });
    check!(place(sp.clone()).await.map_err(e)?[0][0].host == plain.name, "requested host");
    sp.requested_destination = Some(Destination { node: Some(format!("{}.node", gold.name)), ..Default::default() });
    check!(place(sp.clone()).await.map_err(e)?[0][0].host == gold.name, "requested node");
    sp.requested_destination = Some(Destination { host: Some("no-such-host".into()), ..Default::default() });
    let reason = nvh(place(sp.clone()).await)?;
    check!(reason.message.as_deref().is_some_and(|m| m.contains("No such host")), "{reason}");
    sp.requested_destination = Some(Destination { cell: Some(CellId::new_v4()), ..Default::default() });
    let reason = nvh(place(sp.clone()).await)?;
    check!(reason.stages[0].why.get(&Rejection::OtherCell) == Some(&3), "{reason}");
    sp.requested_destination = None;
    sp.ignore_hosts = vec![gold.name.clone(), in_agg.name.clone()];
    check!(place(sp.clone()).await.map_err(e)?[0][0].host == plain.name, "ignore_hosts");
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn force_hosts_skip_filters(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_host(HostSpec::default()).await.map_err(e)?;
    let disabled = cloud.add_host(HostSpec { enabled: false, ..Default::default() }).await.map_err(e)?;
    let s = cloud.scheduler().await.map_err(e)?;
    let mut sp = spec(flavor(1, 512, 1));
    sp.requested_destination = Some(Destination { host: Some(disabled.name.clone()), ..Default::default() });
    let reason = nvh(s.select_destinations(&sp, &[InstanceId::new_v4()], 0).await)?;
    check!(
        reason.stages.iter().any(|st| st.stage == "ComputeFilter" && st.removed == 1),
        "a requested host still runs the filters: {reason}"
    );
    sp.requested_destination = None;
    sp.force_hosts = vec![disabled.name.clone()];
    let out = s.select_destinations(&sp, &[InstanceId::new_v4()], 2).await.map_err(e)?;
    check!(out[0][0].host == disabled.name && out[0].len() == 1, "forced host, no alternates: {out:?}");
    sp.force_hosts = vec!["nope".into()];
    let reason = nvh(s.select_destinations(&sp, &[InstanceId::new_v4()], 0).await)?;
    check!(reason.summary().contains("No such host"), "{reason}");
    Ok(())
}

async fn nested_providers_and_numbered_groups(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_host(HostSpec::default()).await.map_err(e)?;
    let nested = cloud.add_host(HostSpec::default().nested().map_err(e)?).await.map_err(e)?;
    let s = cloud.scheduler().await.map_err(e)?;
    let mut f = flavor(4, 2048, 10);
    f.extra_specs.insert("hw:cpu_policy".into(), "dedicated".into());
    f.extra_specs.insert("resources1:SRIOV_NET_VF".into(), "1".into());
    f.extra_specs.insert("trait1:CUSTOM_PHYSNET_A".into(), "required".into());
    let id = InstanceId::new_v4();
    let out = s.select_destinations(&spec(f.clone()), &[id], 0).await.map_err(e)?;
    let sel = &out[0][0];
    check!(sel.host == nested.name, "only the nested host has PCPU and VFs");
    let pf = nested.provider("-pf0").ok_or("pf")?;
    let numa0 = nested.provider("-numa0").ok_or("numa0")?;
    check!(
        sel.allocation.get(&pf).and_then(|r| r.get(&ResourceClass::SriovNetVf)) == Some(&1),
        "VF from the PF: {:?}",
        sel.allocation
    );
    check!(
        sel.allocation.get(&numa0).and_then(|r| r.get(&ResourceClass::Pcpu)) == Some(&4),
        "PCPU from a NUMA child: {:?}",
        sel.allocation
    );
    check!(
        sel.allocation.get(&nested.root).and_then(|r| r.get(&ResourceClass::MemoryMb)) == Some(&2048),
        "RAM from the root"
    );
    // 2 + 2 more fill NUMA 0's PCPU (8) and then NUMA 1 serves; VFs run out after 4.
    for _ in 0..3 {
        s.select_destinations(&spec(f.clone()), &[InstanceId::new_v4()], 0).await.map_err(e)?;
    }
    let reason = nvh(s.select_destinations(&spec(f), &[InstanceId::new_v4()], 0).await)?;
    check!(
        reason.stages[1].why.keys().any(|r| matches!(r, Rejection::NumberedGroup(_) | Rejection::NoInventory(_))),
        "{reason}"
    );
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn no_valid_host_reason_counts_each_stage(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_host(HostSpec { enabled: false, ..Default::default() }).await.map_err(e)?;
    cloud.add_host(HostSpec { heartbeat_age_s: 3600, ..Default::default() }).await.map_err(e)?;
    cloud.add_host(HostSpec::sized(1, 512, 10)).await.map_err(e)?;
    cloud.add_host(HostSpec { az: Some("az2".into()), ..Default::default() }).await.map_err(e)?;
    let s = cloud.scheduler().await.map_err(e)?;
    let mut sp = spec(flavor(2, 2048, 20));
    sp.availability_zone = Some("nova".into());
    let r = s.select_destinations(&sp, &[InstanceId::new_v4()], 0).await;
    let reason = nvh(r)?;
    let get = |name: &str| reason.stages.iter().find(|s| s.stage == name).cloned();
    let res = get("resources").ok_or("resources stage")?;
    check!(res.removed == 1 && res.why.contains_key(&Rejection::NotEnough(ResourceClass::Vcpu)), "{reason}");
    check!(get("ComputeFilter").is_some_and(|s| s.removed == 2), "{reason}");
    check!(get("AvailabilityZoneFilter").is_some_and(|s| s.removed == 1), "{reason}");
    check!(reason.hosts_known == 4 && reason.hosts_passed == 0, "{reason}");
    let text = reason.to_string();
    check!(text.contains("ComputeFilter: 3 -> 1 (removed 2)"), "readable: {text}");
    check!(text.contains("not enough free VCPU: 1"), "readable: {text}");
    check!(s.stats().no_valid_host == 1, "{:?}", s.stats());
    Ok(())
}

async fn snapshot_follows_the_change_feed(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(3, HostSpec::sized(4, 8192, 100)).await.map_err(e)?;
    let watcher = cloud.scheduler().await.map_err(e)?;
    let other = cloud.scheduler().await.map_err(e)?;
    let sp = spec(flavor(2, 2048, 10));
    let placed = InstanceId::new_v4();
    let out = other.select_destinations(&sp, &[placed], 0).await.map_err(e)?;
    let before = watcher.stats();
    watcher.refresh().await.map_err(e)?;
    let after = watcher.stats();
    let hs = watcher.host_state(&out[0][0].host).ok_or("host")?;
    check!(hs.free(&ResourceClass::Vcpu) == 2, "another scheduler's claim is visible after refresh");
    check!(after.full_reloads == 1 && after.refreshes == before.refreshes + 1, "{after:?}");
    check!(
        after.trees_reread - before.trees_reread <= 1,
        "refresh re-read only the changed tree: {before:?} -> {after:?}"
    );
    // The memory store carries the claim's usage in the feed: the watcher applies it
    // without reading the tree, and then holds exactly what the store holds. (Redis gives
    // it only to another store handle than the claim's, checked in tests/shared_snapshot.rs;
    // both schedulers here share one handle.)
    let carries_usage = store.backend() == "memory";
    if carries_usage {
        check!(
            after.trees_from_feed == before.trees_from_feed + 1 && after.trees_reread == before.trees_reread,
            "another scheduler's claim applied from the feed's usage, no tree read: {before:?} -> {after:?}"
        );
    }
    let root = cloud.hosts.iter().find(|h| h.name == out[0][0].host).ok_or("chosen host")?.root;
    let tree = store.provider_tree(root).await.map_err(e)?;
    check!(
        hs.tree.generation == tree.generation,
        "watcher at {} but the store at {}",
        hs.tree.generation,
        tree.generation
    );
    // A release made outside any scheduler (another process's conductor) comes back too.
    store.release(ConsumerId::from(placed)).await.map_err(e)?;
    let before = watcher.stats();
    watcher.refresh().await.map_err(e)?;
    let after = watcher.stats();
    let hs = watcher.host_state(&out[0][0].host).ok_or("host")?;
    check!(hs.free(&ResourceClass::Vcpu) == 4, "a release by another process is visible after refresh");
    if carries_usage {
        check!(
            after.trees_from_feed == before.trees_from_feed + 1 && after.trees_reread == before.trees_reread,
            "a release applied from the feed's usage: {before:?} -> {after:?}"
        );
    }
    // A new host shows up (its tree is in the feed; its unknown root triggers a catalog read).
    let newcomer = cloud.add_host(HostSpec::default()).await.map_err(e)?;
    watcher.refresh().await.map_err(e)?;
    check!(watcher.known_hosts() == 4, "new host known: {}", watcher.known_hosts());
    check!(watcher.host_state(&newcomer.name).is_some(), "new host state");
    // A deleted tree disappears.
    store.delete_provider(newcomer.root).await.map_err(e)?;
    watcher.refresh().await.map_err(e)?;
    check!(watcher.known_hosts() == 3, "deleted host forgotten: {}", watcher.known_hosts());
    // A host disabled by an operator is seen at the next catalog refresh.
    let mut h = store.get_host(&cloud.hosts[0].name).await.map_err(e)?;
    h.enabled = false;
    store.put_host(&h).await.map_err(e)?;
    watcher.refresh_catalog().await.map_err(e)?;
    check!(watcher.host_state(&h.name).is_some_and(|s| !s.host.enabled), "catalog refresh");
    Ok(())
}

async fn same_and_different_host_hints(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(3, HostSpec::default()).await.map_err(e)?;
    let s = cloud.scheduler().await.map_err(e)?;
    let f = flavor(1, 512, 1);
    let mut anchor = crate::support::fixtures::instance(&f);
    anchor.host = Some(cloud.hosts[2].name.clone());
    anchor.cell = Some(cloud.cell);
    store.create_instance(&anchor).await.map_err(e)?;
    let mut sp = spec(f.clone());
    sp.hints.same_host = vec![anchor.uuid];
    let out = s.select_destinations(&sp, &[InstanceId::new_v4()], 2).await.map_err(e)?;
    check!(out[0][0].host == cloud.hosts[2].name && out[0].len() == 1, "same_host: {out:?}");
    let mut sp = spec(f);
    sp.hints.different_host = vec![anchor.uuid];
    for _ in 0..4 {
        let out = s.select_destinations(&sp, &[InstanceId::new_v4()], 2).await.map_err(e)?;
        for sel in &out[0] {
            check!(sel.host != cloud.hosts[2].name, "different_host: {out:?}");
        }
    }
    Ok(())
}

async fn image_properties_in_the_pipeline(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud
        .add_host(
            HostSpec::default().with_capability("architecture", "x86_64").with_capability("hypervisor_type", "qemu"),
        )
        .await
        .map_err(e)?;
    let arm = cloud
        .add_host(
            HostSpec::default().with_capability("architecture", "aarch64").with_capability("hypervisor_type", "qemu"),
        )
        .await
        .map_err(e)?;
    let s = cloud.scheduler().await.map_err(e)?;
    let mut sp = spec(flavor(1, 512, 1));
    sp.image_properties.insert("hw_architecture".into(), "arm64".into());
    let out = s.select_destinations(&sp, &[InstanceId::new_v4()], 2).await.map_err(e)?;
    check!(out[0][0].host == arm.name && out[0].len() == 1, "{out:?}");
    sp.image_properties.insert("img_hv_type".into(), "xen".into());
    let reason = nvh(s.select_destinations(&sp, &[InstanceId::new_v4()], 0).await)?;
    check!(reason.stages.iter().any(|s| s.stage == "ImagePropertiesFilter" && s.removed == 2), "{reason}");
    Ok(())
}

async fn pack_or_spread_by_multiplier_sign(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(2, HostSpec::default()).await.map_err(e)?;
    let fuller = cloud.hosts[1].clone();
    // Make the second host fuller with a claim of another consumer.
    store
        .claim(&ClaimRequest {
            consumer: ConsumerId::new_v4(),
            project_id: "proj".into(),
            user_id: "user".into(),
            allocations: BTreeMap::from([(
                fuller.root,
                BTreeMap::from([
                    (ResourceClass::Vcpu, 8),
                    (ResourceClass::MemoryMb, 16384),
                    (ResourceClass::DiskGb, 250),
                ]),
            )]),
            group: None,
        })
        .await
        .map_err(e)?;
    let spread = cloud.scheduler().await.map_err(e)?;
    let sp = spec(flavor(1, 512, 1));
    let out = spread.select_destinations(&sp, &[InstanceId::new_v4()], 0).await.map_err(e)?;
    check!(out[0][0].host != fuller.name, "spread");
    let pack = cloud
        .scheduler_with(SchedulerConfig {
            ram_weight_multiplier: -1.0,
            cpu_weight_multiplier: -1.0,
            disk_weight_multiplier: -1.0,
            ..cloud.config()
        })
        .await
        .map_err(e)?;
    let out = pack.select_destinations(&sp, &[InstanceId::new_v4()], 0).await.map_err(e)?;
    check!(out[0][0].host == fuller.name, "pack");
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn build_failures_push_a_host_down(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(2, HostSpec::default()).await.map_err(e)?;
    let s = cloud.scheduler().await.map_err(e)?;
    let sp = spec(flavor(1, 512, 1));
    let first = s.select_destinations(&sp, &[InstanceId::new_v4()], 0).await.map_err(e)?[0][0].host.clone();
    s.report_build(&first, false);
    for _ in 0..3 {
        let out = s.select_destinations(&sp, &[InstanceId::new_v4()], 0).await.map_err(e)?;
        check!(out[0][0].host != first, "a failing host is avoided");
    }
    s.report_build(&first, true);
    check!(s.host_state(&first).is_some_and(|h| h.failed_builds == 0), "success resets");
    Ok(())
}

async fn invalid_requests_are_rejected(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_host(HostSpec::default()).await.map_err(e)?;
    let s = cloud.scheduler().await.map_err(e)?;
    let sp = spec(flavor(1, 512, 1));
    let r = s.select_destinations(&sp, &[], 0).await;
    check!(matches!(r, Err(ScheduleError::InvalidRequest(_))), "no instances");
    let id = InstanceId::new_v4();
    let r = s.select_destinations(&sp, &[id, id], 0).await;
    check!(matches!(r, Err(ScheduleError::InvalidRequest(_))), "duplicate uuids");
    let mut bad = sp.clone();
    bad.flavor.extra_specs.insert("resources:CUSTOM_lower".into(), "1".into());
    let r = s.select_destinations(&bad, &[InstanceId::new_v4()], 0).await;
    check!(matches!(r, Err(ScheduleError::InvalidRequest(_))), "bad extra spec");
    let mut bad = sp.clone();
    bad.hints.group = Some(GroupId::new_v4());
    let r = s.select_destinations(&bad, &[InstanceId::new_v4()], 0).await;
    check!(matches!(r, Err(ScheduleError::InvalidRequest(_))), "unknown group");
    check!(
        unicell::scheduler::Scheduler::new(
            store.clone(),
            SchedulerConfig { enabled_filters: vec!["NoSuchFilter".into()], ..cloud.config() }
        )
        .await
        .is_err(),
        "unknown filter"
    );
    Ok(())
}

async fn io_ops_counted_from_building_instances(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(2, HostSpec::default()).await.map_err(e)?;
    let busy = cloud.hosts[0].name.clone();
    let f = flavor(1, 512, 1);
    for _ in 0..3 {
        let mut i = crate::support::fixtures::instance(&f);
        i.host = Some(busy.clone());
        i.cell = Some(cloud.cell);
        store.create_instance(&i).await.map_err(e)?;
    }
    let mut done = crate::support::fixtures::instance(&f);
    done.host = Some(busy.clone());
    done.cell = Some(cloud.cell);
    done.vm_state = VmState::Active;
    store.create_instance(&done).await.map_err(e)?;
    let s = cloud
        .scheduler_with(SchedulerConfig {
            count_building_from_store: true,
            enabled_filters: vec!["ComputeFilter".into(), "IoOpsFilter".into()],
            max_io_ops_per_host: 3,
            ..cloud.config()
        })
        .await
        .map_err(e)?;
    let hs = s.host_state(&busy).ok_or("host")?;
    check!(hs.io_ops == 3, "three building instances, the active one not counted: {}", hs.io_ops);
    let out = s.select_destinations(&spec(f.clone()), &[InstanceId::new_v4()], 1).await.map_err(e)?;
    check!(out[0][0].host != busy && out[0].len() == 1, "IoOpsFilter: {out:?}");
    // Without the store count, io_ops counts this scheduler's own claims.
    let local = cloud.scheduler().await.map_err(e)?;
    let out = local.select_destinations(&spec(f), &[InstanceId::new_v4()], 0).await.map_err(e)?;
    let hs = local.host_state(&out[0][0].host).ok_or("host")?;
    check!(hs.io_ops == 1, "own claim counted: {}", hs.io_ops);
    Ok(())
}

type Spans = Arc<std::sync::Mutex<Vec<(String, BTreeMap<String, String>)>>>;

/// A tracing layer that keeps every closed span with its fields.
struct Capture(Spans);

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

impl<S> tracing_subscriber::Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(f);
        }
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(span) = ctx.span(id)
            && let Some(f) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(f);
        }
    }
    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            let fields = span.extensions_mut().remove::<Fields>().unwrap_or_default();
            if let Ok(mut v) = self.0.lock() {
                v.push((span.name().to_string(), fields.0));
            }
        }
    }
}

fn captured_spans() -> Spans {
    static SPANS: std::sync::OnceLock<Spans> = std::sync::OnceLock::new();
    SPANS
        .get_or_init(|| {
            use tracing_subscriber::layer::SubscriberExt;
            let spans = Spans::default();
            let subscriber = tracing_subscriber::registry().with(Capture(spans.clone()));
            // Only this test binary's process: other cases running meanwhile are captured
            // too, so the case looks only at its own request ids.
            let _ = tracing::subscriber::set_global_default(subscriber);
            spans
        })
        .clone()
}

async fn tracing_spans_describe_each_request(store: Arc<dyn Store>) -> R {
    let spans = captured_spans();
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(3, HostSpec::sized(2, 4096, 40)).await.map_err(e)?;
    let s = cloud.scheduler().await.map_err(e)?;
    let ok = spec(flavor(2, 2048, 10));
    s.select_destinations(&ok, &[InstanceId::new_v4()], 2).await.map_err(e)?;
    let too_big = spec(flavor(4, 2048, 10));
    let _ = s.select_destinations(&too_big, &[InstanceId::new_v4()], 2).await;
    let find = |id: InstanceId| -> Option<BTreeMap<String, String>> {
        let v = spans.lock().ok()?;
        v.iter()
            .find(|(name, f)| name == "select_destinations" && f.get("request") == Some(&id.to_string()))
            .map(|(_, f)| f.clone())
    };
    let placed = find(ok.instance_uuid).ok_or("no span for the placed request")?;
    check!(placed.get("outcome").map(String::as_str) == Some("placed"), "{placed:?}");
    check!(placed.get("claims_tried").map(String::as_str) == Some("1"), "{placed:?}");
    check!(placed.get("alternates").map(String::as_str) == Some("2"), "{placed:?}");
    let failed = find(too_big.instance_uuid).ok_or("no span for the failed request")?;
    check!(failed.get("outcome").map(String::as_str) == Some("no_valid_host"), "{failed:?}");
    Ok(())
}

async fn max_placement_results_samples_and_is_lifted_for_hints(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(12, HostSpec::default()).await.map_err(e)?;
    let s =
        cloud.scheduler_with(SchedulerConfig { max_placement_results: Some(1), ..cloud.config() }).await.map_err(e)?;
    let f = flavor(1, 512, 1);
    // Plain requests: one random fitting host is ranked, so no alternate, and the samples
    // differ from request to request.
    let mut chosen = BTreeSet::new();
    for _ in 0..8 {
        let out = s.select_destinations(&spec(f.clone()), &[InstanceId::new_v4()], 3).await.map_err(e)?;
        check!(out[0].len() == 1, "limit 1 leaves no alternate: {out:?}");
        chosen.insert(out[0][0].host.clone());
    }
    check!(chosen.len() > 1, "the sample is random, not always the same host: {chosen:?}");
    // same_host: the limit is lifted, so the anchor's host is always found (a sample of 1
    // of 12 would miss it most of the time).
    let mut anchor = crate::support::fixtures::instance(&f);
    anchor.host = Some(cloud.hosts[5].name.clone());
    anchor.cell = Some(cloud.cell);
    store.create_instance(&anchor).await.map_err(e)?;
    for _ in 0..4 {
        let mut sp = spec(f.clone());
        sp.hints.same_host = vec![anchor.uuid];
        let out = s.select_destinations(&sp, &[InstanceId::new_v4()], 2).await.map_err(e)?;
        check!(out[0][0].host == cloud.hosts[5].name, "same_host with the limit lifted: {out:?}");
    }
    // different_host: lifted too, so alternates come from the whole cloud again.
    let mut sp = spec(f.clone());
    sp.hints.different_host = vec![anchor.uuid];
    let out = s.select_destinations(&sp, &[InstanceId::new_v4()], 3).await.map_err(e)?;
    check!(out[0].len() == 4, "different_host lifts the limit: {out:?}");
    check!(out[0].iter().all(|sel| sel.host != cloud.hosts[5].name), "different_host: {out:?}");
    Ok(())
}
