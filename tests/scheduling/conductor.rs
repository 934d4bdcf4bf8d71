//! Conductor cases: builds to ACTIVE, reschedules over alternates (moving the allocation),
//! exhaustion and non-reschedulable failures to ERROR with a fault and no allocation,
//! NoValidHost buried with its reason, alternates whose claim fails are skipped. Each case
//! runs on the memory store and on every URL in `UNICELL_TEST_STORES`.

use std::sync::Arc;
use std::time::Duration;

use crate::support::fixtures::{audit, e, flavor, instance, spec};
use async_trait::async_trait;
use unicell::compute::{BuildFailure, ComputeDriver};
use unicell::conductor::{BuildStatus, Conductor, ConductorConfig};
use unicell::model::*;
use unicell::sim::SimulatedCompute;
use unicell::sim::{Cloud, HostSpec};
use unicell::store::conformance::{Case, CaseResult, case, check};
use unicell::store::prelude::*;

/// The cases of this file, in order.
pub fn cases() -> Vec<Case> {
    vec![
        case!(builds_to_active),
        case!(reschedule_moves_the_allocation),
        case!(exhausted_alternates_end_in_error_without_allocation),
        case!(non_reschedulable_failure_fails_at_once),
        case!(no_valid_host_is_buried_with_its_reason),
        case!(alternate_whose_claim_fails_is_skipped),
        case!(multi_instance_build_with_anti_affinity),
        case!(simulated_compute_is_seeded_and_timed),
    ]
}

type R = CaseResult;

async fn conductor(cloud: &Cloud, compute: Arc<dyn ComputeDriver>) -> Result<Conductor, String> {
    Ok(Conductor::new(cloud.store.clone(), cloud.scheduler().await.map_err(e)?, compute, ConductorConfig::default()))
}

async fn held(store: &Arc<dyn Store>, id: InstanceId) -> Result<Vec<TreeAllocation>, String> {
    store.allocations(ConsumerId::from(id)).await.map_err(e)
}

async fn builds_to_active(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(3, HostSpec::default()).await.map_err(e)?;
    let c = conductor(&cloud, Arc::new(SimulatedCompute::new(1))).await?;
    let f = flavor(2, 2048, 10);
    let inst = instance(&f);
    let out = c.build_instances(spec(f), vec![inst.clone()]).await.map_err(e)?;
    check!(out.len() == 1 && out[0].is_active() && out[0].reschedules == 0, "{out:?}");
    let BuildStatus::Active { host, node, cell } = &out[0].status else {
        return Err("not active".into());
    };
    let rec = store.get_instance(inst.uuid).await.map_err(e)?;
    check!(rec.vm_state == VmState::Active && rec.task_state.is_none(), "{rec:?}");
    check!(rec.host.as_ref() == Some(host) && rec.node.as_ref() == Some(node), "host/node");
    check!(rec.cell == Some(*cell) && *cell == cloud.cell, "cell");
    check!(rec.launched_at.is_some() && rec.fault.is_none(), "launched_at/fault");
    check!(rec.availability_zone.as_deref() == Some("nova"), "az {:?}", rec.availability_zone);
    let root = cloud.hosts.iter().find(|h| &h.name == host).ok_or("host")?.root;
    let a = held(&store, inst.uuid).await?;
    check!(a.len() == 1 && a[0].root == root, "allocation on the host: {a:?}");
    let rs = store.get_request_spec(inst.uuid).await.map_err(e)?;
    check!(rs.instance_uuid == inst.uuid && rs.num_instances == 1, "request spec stored");
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn reschedule_moves_the_allocation(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(3, HostSpec::default()).await.map_err(e)?;
    // Equal weights: hosts rank by name, so the first host is chosen first.
    let bad = cloud.hosts[0].clone();
    let compute = Arc::new(SimulatedCompute::new(2).failing_host(bad.name.clone(), true));
    let c = conductor(&cloud, compute.clone()).await?;
    let f = flavor(2, 2048, 10);
    let inst = instance(&f);
    let out = c.build_instances(spec(f), vec![inst.clone()]).await.map_err(e)?;
    let o = &out[0];
    check!(o.is_active() && o.reschedules == 1, "{o:?}");
    check!(o.hosts_tried.len() == 2 && o.hosts_tried[0] == bad.name, "{o:?}");
    let rec = store.get_instance(inst.uuid).await.map_err(e)?;
    check!(rec.host.as_deref() == Some(o.hosts_tried[1].as_str()), "instance on the alternate");
    let a = held(&store, inst.uuid).await?;
    let good = cloud.host(&o.hosts_tried[1]).ok_or("host")?;
    check!(a.len() == 1 && a[0].root == good.root, "allocation moved: {a:?}");
    let t = store.provider_tree(bad.root).await.map_err(e)?;
    check!(t.providers[0].usages.is_empty(), "nothing left on the failed host: {:?}", t.providers[0].usages);
    check!(compute.stats().reschedulable_failures == 1, "{:?}", compute.stats());
    // The conductor told its scheduler: the failing host now ranks last.
    let hs = c.scheduler().host_state(&bad.name).ok_or("state")?;
    check!(hs.failed_builds == 1, "build failure recorded");
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn exhausted_alternates_end_in_error_without_allocation(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(4, HostSpec::default()).await.map_err(e)?;
    let compute = Arc::new(SimulatedCompute::new(3).with_failure_rate(1.0, 1.0));
    let c = conductor(&cloud, compute).await?;
    let f = flavor(2, 2048, 10);
    let inst = instance(&f);
    let out = c.build_instances(spec(f), vec![inst.clone()]).await.map_err(e)?;
    let o = &out[0];
    check!(!o.is_active() && o.hosts_tried.len() == 3 && o.reschedules == 2, "1 + 2 alternates: {o:?}");
    let rec = store.get_instance(inst.uuid).await.map_err(e)?;
    check!(rec.vm_state == VmState::Error && rec.task_state.is_none(), "{rec:?}");
    check!(rec.host.is_none() && rec.node.is_none(), "no host left");
    let fault = rec.fault.ok_or("fault missing")?;
    check!(fault.code == 500 && fault.message.contains("Exceeded maximum number of retries"), "{fault:?}");
    for h in &o.hosts_tried {
        check!(fault.details.contains(h.as_str()), "details name {h}: {}", fault.details);
    }
    check!(held(&store, inst.uuid).await?.is_empty(), "zero allocations");
    audit(&store, cloud.cell).await?;
    for h in &cloud.hosts {
        let t = store.provider_tree(h.root).await.map_err(e)?;
        check!(t.providers[0].usages.is_empty(), "usage left on {}", h.name);
    }
    Ok(())
}

async fn non_reschedulable_failure_fails_at_once(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(3, HostSpec::default()).await.map_err(e)?;
    let compute = Arc::new(SimulatedCompute::new(4).with_failure_rate(1.0, 0.0));
    let c = conductor(&cloud, compute.clone()).await?;
    let f = flavor(2, 2048, 10);
    let inst = instance(&f);
    let out = c.build_instances(spec(f), vec![inst.clone()]).await.map_err(e)?;
    let o = &out[0];
    check!(o.hosts_tried.len() == 1 && o.reschedules == 0, "{o:?}");
    check!(compute.stats().builds == 1 && compute.stats().fatal_failures == 1, "{:?}", compute.stats());
    let rec = store.get_instance(inst.uuid).await.map_err(e)?;
    let fault = rec.fault.clone().ok_or("fault")?;
    check!(rec.vm_state == VmState::Error && fault.message.contains("aborted"), "{rec:?}");
    check!(held(&store, inst.uuid).await?.is_empty(), "zero allocations");
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn no_valid_host_is_buried_with_its_reason(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(2, HostSpec::sized(2, 4096, 40)).await.map_err(e)?;
    let c = conductor(&cloud, Arc::new(SimulatedCompute::new(5))).await?;
    let f = flavor(2, 2048, 10);
    let instances: Vec<Instance> = (0..3).map(|_| instance(&f)).collect();
    let out = c.build_instances(spec(f), instances.clone()).await.map_err(e)?;
    check!(out.iter().all(|o| !o.is_active()), "all or nothing: {out:?}");
    for i in &instances {
        let rec = store.get_instance(i.uuid).await.map_err(e)?;
        let fault = rec.fault.clone().ok_or("fault")?;
        check!(rec.vm_state == VmState::Error && rec.cell.is_none(), "{rec:?}");
        check!(fault.code == 500 && fault.message.starts_with("No valid host was found."), "{fault:?}");
        check!(
            fault.details.contains("not enough free VCPU") && fault.details.contains("released 2 claim(s)"),
            "details: {}",
            fault.details
        );
        check!(held(&store, i.uuid).await?.is_empty(), "zero allocations");
    }
    audit(&store, cloud.cell).await?;
    Ok(())
}

/// A compute whose first build fills the next host with someone else's claim, then fails
/// reschedulably: the conductor's claim on that alternate is refused.
#[derive(Debug)]
struct Saboteur {
    store: Arc<dyn Store>,
    victim: ProviderId,
    fail_on: String,
}

#[async_trait]
impl ComputeDriver for Saboteur {
    async fn build(&self, host: &Selection, _: &Instance) -> Result<(), BuildFailure> {
        if host.host != self.fail_on {
            return Ok(());
        }
        let tree = self
            .store
            .provider_tree(self.victim)
            .await
            .map_err(|err| BuildFailure { reschedulable: false, message: err.to_string() })?;
        let free = tree.providers[0].free(&ResourceClass::Vcpu).unwrap_or(0);
        self.store
            .claim(&ClaimRequest {
                consumer: ConsumerId::new_v4(),
                project_id: "other".into(),
                user_id: "other".into(),
                allocations: std::collections::BTreeMap::from([(
                    self.victim,
                    std::collections::BTreeMap::from([(ResourceClass::Vcpu, free)]),
                )]),
                group: None,
            })
            .await
            .map_err(|err| BuildFailure { reschedulable: false, message: err.to_string() })?;
        Err(BuildFailure { reschedulable: true, message: "spawn failed".into() })
    }
}

async fn alternate_whose_claim_fails_is_skipped(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(3, HostSpec::default()).await.map_err(e)?;
    let (h0, h1, h2) = (cloud.hosts[0].clone(), cloud.hosts[1].clone(), cloud.hosts[2].clone());
    let compute = Arc::new(Saboteur { store: store.clone(), victim: h1.root, fail_on: h0.name.clone() });
    let c = conductor(&cloud, compute).await?;
    let f = flavor(2, 2048, 10);
    let inst = instance(&f);
    let out = c.build_instances(spec(f), vec![inst.clone()]).await.map_err(e)?;
    let o = &out[0];
    check!(o.is_active() && o.alternates_skipped == 1 && o.reschedules == 1, "{o:?}");
    check!(o.hosts_tried == vec![h0.name.clone(), h2.name.clone()], "{o:?}");
    let a = held(&store, inst.uuid).await?;
    check!(a.len() == 1 && a[0].root == h2.root, "{a:?}");
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn multi_instance_build_with_anti_affinity(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(4, HostSpec::default()).await.map_err(e)?;
    let g = cloud.group(GroupPolicy::AntiAffinity, None).await.map_err(e)?;
    // The first host fails every build: its instance moves to an alternate, and the
    // alternate's claim still carries the group limit.
    let compute = Arc::new(SimulatedCompute::new(6).failing_host(cloud.hosts[0].name.clone(), true));
    let c = conductor(&cloud, compute).await?;
    let f = flavor(1, 1024, 10);
    let mut sp = spec(f.clone());
    sp.hints.group = Some(g.id);
    let instances: Vec<Instance> = (0..3).map(|_| instance(&f)).collect();
    let out = c.build_instances(sp, instances).await.map_err(e)?;
    let hosts: Vec<String> = out
        .iter()
        .filter_map(|o| match &o.status {
            BuildStatus::Active { host, .. } => Some(host.clone()),
            _ => None,
        })
        .collect();
    let distinct: std::collections::BTreeSet<_> = hosts.iter().collect();
    check!(hosts.len() == 3 && distinct.len() == 3, "{out:?}");
    check!(!hosts.contains(&cloud.hosts[0].name), "the failing host holds nothing");
    for h in &cloud.hosts {
        let t = store.provider_tree(h.root).await.map_err(e)?;
        check!(t.groups.get(&g.id).copied().unwrap_or(0) <= 1, "{}: {:?}", h.name, t.groups);
    }
    audit(&store, cloud.cell).await?;
    Ok(())
}

async fn simulated_compute_is_seeded_and_timed(store: Arc<dyn Store>) -> R {
    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    cloud.add_hosts(2, HostSpec::default()).await.map_err(e)?;
    let f = flavor(1, 512, 1);
    let sel = Selection {
        host: cloud.hosts[0].name.clone(),
        node: "n".into(),
        provider: cloud.hosts[0].root,
        cell: cloud.cell,
        allocation: Default::default(),
        availability_zone: None,
    };
    let instances: Vec<Instance> = (0..200).map(|_| instance(&f)).collect();
    let a = SimulatedCompute::new(42).with_failure_rate(0.3, 0.5);
    let b = SimulatedCompute::new(42).with_failure_rate(0.3, 0.5);
    let mut failures = 0;
    for i in &instances {
        let (x, y) = (a.build(&sel, i).await, b.build(&sel, i).await);
        check!(x == y, "same seed, same outcome");
        failures += usize::from(x.is_err());
    }
    check!((30..=90).contains(&failures), "about 30% of 200 fail: {failures}");
    let slow = SimulatedCompute::new(1).with_latency(Duration::from_millis(30), Duration::ZERO);
    let t = std::time::Instant::now();
    slow.build(&sel, &instances[0]).await.map_err(|f| f.message)?;
    check!(t.elapsed() >= Duration::from_millis(30), "latency applied");
    Ok(())
}
