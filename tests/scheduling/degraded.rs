//! Degraded operation (issue 14): part of the store down or slow while scheduling and
//! building. The real store of the trial (memory, or each URL of `UNICELL_TEST_STORES`) is
//! wrapped in [`unicell::testkit::faulty::FaultyStore`], which makes chosen trees
//! unreachable (`Unavailable`, as when their shard's node is down), loses the answer of a
//! claim that was made (`Timeout`), or fails the next calls of one operation.
//!
//! Checks: a claim on an unreachable tree is recorded and the request moves on to a host in
//! another shard (one failed attempt per down shard, not one per host); a claim whose answer
//! was lost is released before claiming elsewhere; a failed snapshot refresh schedules on
//! the hosts as last seen and is counted as stale; the conductor rides out a short outage
//! with retries, and after a long one puts the instance in ERROR with a fault and its claim
//! released; writes that landed but whose answers were lost (the create included, which a
//! retry meets as `AlreadyExists`) still end ACTIVE, while a create that meets someone
//! else's record stays the conflict it is; every case ends with a clean audit.

use std::sync::Arc;
use std::time::Duration;

use crate::support::fixtures::{audit, e, flavor, instance, spec};
use unicell::Error;
use unicell::conductor::{Conductor, ConductorConfig};
use unicell::model::*;
use unicell::scheduler::ScheduleError;
use unicell::scheduler::error::ClaimFailureCause;
use unicell::sim::{Cloud, HostSpec, SimulatedCompute};
use unicell::store::conformance::{Case, CaseResult, case, check};
use unicell::store::prelude::*;
use unicell::testkit::faulty::{Faults, FaultyStore};

/// The cases of this file, in order.
pub fn cases() -> Vec<Case> {
    vec![
        case!(claim_on_a_down_shard_moves_on_to_another_shard),
        case!(claim_whose_answer_was_lost_is_released_before_moving_on),
        case!(every_tree_down_is_no_valid_host_naming_the_store),
        case!(failed_refresh_schedules_on_the_last_view),
        case!(conductor_rides_out_a_short_store_outage),
        case!(conductor_store_down_mid_build_ends_in_error_without_claim),
        case!(conductor_writes_whose_answers_were_lost_end_active),
        case!(conductor_create_conflict_is_not_taken_for_a_lost_answer),
    ]
}

type R = CaseResult;

/// A cloud of `n` hosts on `store` wrapped with fresh [`Faults`].
async fn faulty_cloud(store: Arc<dyn Store>, n: usize) -> Result<(Cloud, Arc<Faults>), String> {
    let faults = Faults::new();
    let wrapped: Arc<dyn Store> = FaultyStore::new(store, faults.clone());
    let mut cloud = Cloud::new(wrapped).await.map_err(e)?;
    cloud.add_hosts(n, HostSpec::default()).await.map_err(e)?;
    Ok((cloud, faults))
}

async fn held_roots(store: &Arc<dyn Store>, id: InstanceId) -> Result<Vec<ProviderId>, String> {
    Ok(store.allocations(ConsumerId::from(id)).await.map_err(e)?.into_iter().map(|a| a.root).collect())
}

async fn claim_on_a_down_shard_moves_on_to_another_shard(store: Arc<dyn Store>) -> R {
    let (cloud, faults) = faulty_cloud(store, 4).await?;
    let sched = cloud.scheduler().await.map_err(e)?;
    // Hosts rank by name at equal weights: the first three, in shard 0, are tried first.
    for (k, h) in cloud.hosts.iter().enumerate() {
        faults.assign_shard(h.root, usize::from(k == 3));
    }
    faults.take_down(cloud.hosts[..3].iter().map(|h| h.root));
    let f = flavor(2, 2048, 10);
    let inst = instance(&f);
    let lists = sched.select_destinations(&spec(f), &[inst.uuid], 0).await.map_err(e)?;
    let chosen = &lists[0][0];
    check!(chosen.host == cloud.hosts[3].name, "placed in the healthy shard: {}", chosen.host);
    let stats = sched.stats();
    check!(stats.claim_store_errors == 1, "one attempt per down shard, not per host: {stats:?}");
    check!(held_roots(&cloud.store, inst.uuid).await? == vec![cloud.hosts[3].root], "one allocation");
    faults.bring_up();
    audit(&cloud.store, cloud.cell).await?;
    Ok(())
}

async fn claim_whose_answer_was_lost_is_released_before_moving_on(store: Arc<dyn Store>) -> R {
    let (cloud, faults) = faulty_cloud(store, 3).await?;
    let sched = cloud.scheduler().await.map_err(e)?;
    for (k, h) in cloud.hosts.iter().enumerate() {
        faults.assign_shard(h.root, k);
    }
    faults.lose_acks([cloud.hosts[0].root]);
    let f = flavor(2, 2048, 10);
    let inst = instance(&f);
    let lists = sched.select_destinations(&spec(f), &[inst.uuid], 0).await.map_err(e)?;
    check!(lists[0][0].host == cloud.hosts[1].name, "moved on to the next host: {}", lists[0][0].host);
    check!(faults.injected().get("claim") == Some(&1), "{:?}", faults.injected());
    // The claim made on host 0 (answer lost) was released: one allocation, on host 1.
    check!(held_roots(&cloud.store, inst.uuid).await? == vec![cloud.hosts[1].root], "no ghost allocation");
    let t = cloud.store.provider_tree(cloud.hosts[0].root).await.map_err(e)?;
    check!(t.providers[0].usages.is_empty(), "nothing left on host 0: {:?}", t.providers[0].usages);
    audit(&cloud.store, cloud.cell).await?;
    Ok(())
}

async fn every_tree_down_is_no_valid_host_naming_the_store(store: Arc<dyn Store>) -> R {
    let (cloud, faults) = faulty_cloud(store, 3).await?;
    let sched = cloud.scheduler().await.map_err(e)?;
    for (k, h) in cloud.hosts.iter().enumerate() {
        faults.assign_shard(h.root, k);
    }
    faults.take_down(cloud.hosts.iter().map(|h| h.root));
    let f = flavor(2, 2048, 10);
    let inst = instance(&f);
    match sched.select_destinations(&spec(f), &[inst.uuid], 0).await {
        Err(ScheduleError::NoValidHost { reason }) => {
            check!(reason.claim_failures.len() == 3, "every host tried once: {reason}");
            check!(
                reason.claim_failures.iter().all(|c| matches!(c.cause, ClaimFailureCause::Unavailable(_))),
                "{reason}"
            );
            let text = reason.to_string();
            check!(text.contains("store unreachable"), "the reason says the store was unreachable: {text}");
        }
        other => return Err(format!("expected NoValidHost, got {other:?}").into()),
    }
    faults.bring_up();
    check!(held_roots(&cloud.store, inst.uuid).await?.is_empty(), "nothing held");
    audit(&cloud.store, cloud.cell).await?;
    Ok(())
}

async fn failed_refresh_schedules_on_the_last_view(store: Arc<dyn Store>) -> R {
    let (cloud, faults) = faulty_cloud(store, 2).await?;
    let sched = cloud.scheduler().await.map_err(e)?;
    // The change feed read of the next refresh fails (its shard is down for a moment).
    faults.fail_next("changes_since", 1);
    let f = flavor(2, 2048, 10);
    let inst = instance(&f);
    let lists = sched.select_destinations(&spec(f.clone()), &[inst.uuid], 0).await.map_err(e)?;
    check!(!lists[0].is_empty(), "placed on the view as last seen");
    check!(faults.injected().get("changes_since") == Some(&1), "{:?}", faults.injected());
    check!(sched.stats().stale_schedules == 1, "reported stale: {:?}", sched.stats());
    // Next request: the feed answers again, the view is fresh.
    let second = instance(&f);
    sched.select_destinations(&spec(f), &[second.uuid], 0).await.map_err(e)?;
    check!(sched.stats().stale_schedules == 1, "fresh again: {:?}", sched.stats());
    audit(&cloud.store, cloud.cell).await?;
    Ok(())
}

fn quick_retries() -> ConductorConfig {
    ConductorConfig { store_retries: 3, store_backoff: Duration::from_millis(10), ..ConductorConfig::default() }
}

async fn conductor_rides_out_a_short_store_outage(store: Arc<dyn Store>) -> R {
    let (cloud, faults) = faulty_cloud(store, 2).await?;
    let c = Conductor::new(
        cloud.store.clone(),
        cloud.scheduler().await.map_err(e)?,
        Arc::new(SimulatedCompute::new(7)),
        quick_retries(),
    );
    // The SPAWNING and the ACTIVE writes fail once each, and the release never: retried.
    faults.fail_next("update_instance", 2);
    let f = flavor(2, 2048, 10);
    let inst = instance(&f);
    let out = c.build_instances(spec(f), vec![inst.clone()]).await.map_err(e)?;
    check!(out[0].is_active(), "{out:?}");
    check!(faults.injected().get("update_instance") == Some(&2), "{:?}", faults.injected());
    let rec = cloud.store.get_instance(inst.uuid).await.map_err(e)?;
    check!(rec.vm_state == VmState::Active && rec.task_state.is_none(), "{rec:?}");
    check!(held_roots(&cloud.store, inst.uuid).await?.len() == 1, "one allocation");
    audit(&cloud.store, cloud.cell).await?;
    Ok(())
}

async fn conductor_store_down_mid_build_ends_in_error_without_claim(store: Arc<dyn Store>) -> R {
    let (cloud, faults) = faulty_cloud(store, 2).await?;
    let c = Conductor::new(
        cloud.store.clone(),
        cloud.scheduler().await.map_err(e)?,
        Arc::new(SimulatedCompute::new(8)),
        quick_retries(),
    );
    // The SPAWNING write fails on the first try and all three retries: the build cannot go
    // on. The store answers again for the conductor's clean-up (as after a failover).
    faults.fail_next("update_instance", 4);
    let f = flavor(2, 2048, 10);
    let inst = instance(&f);
    let out = c.build_instances(spec(f), vec![inst.clone()]).await.map_err(e)?;
    check!(!out[0].is_active(), "{out:?}");
    let rec = cloud.store.get_instance(inst.uuid).await.map_err(e)?;
    check!(rec.vm_state == VmState::Error && rec.task_state.is_none(), "ERROR, not BUILDING: {rec:?}");
    let fault = rec.fault.ok_or("fault missing")?;
    check!(fault.code == 500 && fault.message.contains("the store did not answer"), "{fault:?}");
    check!(held_roots(&cloud.store, inst.uuid).await?.is_empty(), "claim released");
    audit(&cloud.store, cloud.cell).await?;
    Ok(())
}

async fn conductor_writes_whose_answers_were_lost_end_active(store: Arc<dyn Store>) -> R {
    let (cloud, faults) = faulty_cloud(store, 2).await?;
    let c = Conductor::new(
        cloud.store.clone(),
        cloud.scheduler().await.map_err(e)?,
        Arc::new(SimulatedCompute::new(9)),
        quick_retries(),
    );
    // Every write of the build lands and then answers with a timeout once (a pool timing
    // out after the commit): the create's retry meets its own record as AlreadyExists.
    faults.lose_next_acks("create_instance", 1);
    faults.lose_next_acks("put_request_spec", 1);
    faults.lose_next_acks("update_instance", 2);
    let f = flavor(2, 2048, 10);
    let mut inst = instance(&f);
    inst.system_metadata.insert("reservation_id".into(), "r-lost-acks".into());
    let out = c.build_instances(spec(f), vec![inst.clone()]).await.map_err(e)?;
    check!(out[0].is_active(), "{out:?}");
    let injected = faults.injected();
    check!(injected.get("create_instance") == Some(&1), "{injected:?}");
    check!(injected.get("put_request_spec") == Some(&1), "{injected:?}");
    check!(injected.get("update_instance") == Some(&2), "{injected:?}");
    let rec = cloud.store.get_instance(inst.uuid).await.map_err(e)?;
    check!(rec.vm_state == VmState::Active && rec.task_state.is_none() && rec.fault.is_none(), "{rec:?}");
    check!(rec.system_metadata == inst.system_metadata, "the record is the one created: {rec:?}");
    cloud.store.get_request_spec(inst.uuid).await.map_err(e)?;
    check!(held_roots(&cloud.store, inst.uuid).await?.len() == 1, "one allocation");
    audit(&cloud.store, cloud.cell).await?;
    Ok(())
}

async fn conductor_create_conflict_is_not_taken_for_a_lost_answer(store: Arc<dyn Store>) -> R {
    let (cloud, faults) = faulty_cloud(store, 2).await?;
    let c = Conductor::new(
        cloud.store.clone(),
        cloud.scheduler().await.map_err(e)?,
        Arc::new(SimulatedCompute::new(10)),
        quick_retries(),
    );
    let f = flavor(2, 2048, 10);
    let theirs = instance(&f);
    cloud.store.create_instance(&theirs).await.map_err(e)?;
    // Same uuid, another record: AlreadyExists at the first attempt is a conflict...
    let mut mine = instance(&f);
    mine.uuid = theirs.uuid;
    mine.name = "someone-else".into();
    match c.build_instances(spec(f.clone()), vec![mine.clone()]).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => return Err(format!("expected AlreadyExists, got {other:?}").into()),
    }
    // ... and after a failed attempt too, when the record read back is not this one.
    faults.fail_next("create_instance", 1);
    match c.build_instances(spec(f), vec![mine]).await {
        Err(Error::AlreadyExists { .. }) => {}
        other => return Err(format!("expected AlreadyExists after a retry, got {other:?}").into()),
    }
    let rec = cloud.store.get_instance(theirs.uuid).await.map_err(e)?;
    check!(
        rec.name == theirs.name && rec.vm_state == theirs.vm_state && rec.fault.is_none(),
        "the other record is untouched: {rec:?}"
    );
    check!(held_roots(&cloud.store, theirs.uuid).await?.is_empty(), "nothing claimed");
    audit(&cloud.store, cloud.cell).await?;
    Ok(())
}
