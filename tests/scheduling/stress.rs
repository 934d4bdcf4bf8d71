//! Stress: several conductors, each with its own scheduler (some with stale snapshots to
//! force claim races), run thousands of build requests concurrently against one store, with
//! simulated build failures, multi-instance requests and anti-affinity groups, until the
//! cloud overflows. Then an audit: every provider's usage equals its allocations and none is
//! over capacity, group counts match, every instance is ACTIVE with exactly its allocation or
//! ERROR with a fault and none, no anti-affinity limit is exceeded.
//!
//! Sizes can be raised with `STRESS_REQUESTS` and `STRESS_HOSTS` (defaults keep a debug
//! run to a few seconds). Figures printed are measurements, never assertions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::fixtures::{audit, e, flavor, instance, spec};
use unicell::conductor::{BuildStatus, Conductor, ConductorConfig};
use unicell::model::*;
use unicell::scheduler::SchedulerConfig;
use unicell::sim::SimulatedCompute;
use unicell::sim::{Cloud, HostSpec};
use unicell::store::conformance::{Case, CaseResult, case, check};
use unicell::store::prelude::*;

/// The cases of this file, in order.
pub fn cases() -> Vec<Case> {
    vec![case!(many_schedulers_thousands_of_requests_then_audit)]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn many_schedulers_thousands_of_requests_then_audit(store: Arc<dyn Store>) -> CaseResult {
    let requests = env_usize("STRESS_REQUESTS", 2000);
    let hosts = env_usize("STRESS_HOSTS", 100);
    let conductors_n = 4;
    let workers_per_conductor = 16;

    let mut cloud = Cloud::new(store.clone()).await.map_err(e)?;
    for i in 0..hosts {
        cloud
            .add_host(if i % 10 == 0 {
                HostSpec::sized(32, 65536, 1000).nested().map_err(e)?
            } else {
                HostSpec::sized(32, 65536, 1000)
            })
            .await
            .map_err(e)?;
    }
    let mut groups = Vec::new();
    for _ in 0..8 {
        groups.push(cloud.group(GroupPolicy::AntiAffinity, Some(2)).await.map_err(e)?);
    }
    let mut flavors = vec![flavor(1, 1024, 10), flavor(2, 4096, 20), flavor(4, 8192, 40)];
    let mut pinned = flavor(2, 2048, 20);
    pinned.id = FlavorId::new("pinned").map_err(e)?;
    pinned.extra_specs.insert("hw:cpu_policy".into(), "dedicated".into());
    pinned.extra_specs.insert("resources1:SRIOV_NET_VF".into(), "1".into());
    pinned.extra_specs.insert("trait1:CUSTOM_PHYSNET_A".into(), "required".into());
    flavors.push(pinned);

    let compute = Arc::new(
        SimulatedCompute::new(99).with_latency(Duration::ZERO, Duration::from_millis(2)).with_failure_rate(0.05, 0.7),
    );
    let mut conductors = Vec::new();
    for k in 0..conductors_n {
        let config = SchedulerConfig {
            host_subset_size: 1 + k,
            min_refresh_interval: if k % 2 == 1 { Duration::from_millis(50) } else { Duration::ZERO },
            seed: Some(k as u64 + 1),
            // Every third scheduler coalesces its claims, so batched and lone claims race.
            claim_batch: if k % 3 == 2 { 16 } else { 0 },
            ..cloud.config()
        };
        let s = cloud.scheduler_with(config).await.map_err(e)?;
        // Every other conductor coalesces its instance writes, so batched and lone writes
        // of concurrent builds interleave.
        let conductor = ConductorConfig { instance_write_batch: if k % 2 == 0 { 16 } else { 0 }, ..Default::default() };
        conductors.push(Arc::new(Conductor::new(store.clone(), s, compute.clone(), conductor)));
    }

    let next = Arc::new(AtomicUsize::new(0));
    let flavors = Arc::new(flavors);
    let groups = Arc::new(groups);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in &conductors {
        for _ in 0..workers_per_conductor {
            let (c, next, flavors, groups) = (c.clone(), next.clone(), flavors.clone(), groups.clone());
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut outcomes = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= requests {
                        break;
                    }
                    let f = flavors[k % flavors.len()].clone();
                    let n = match k % 20 {
                        0 => 3,
                        1 | 2 => 2,
                        _ => 1,
                    };
                    let mut sp = spec(f.clone());
                    if k % 10 == 5 {
                        sp.hints.group = Some(groups[k % groups.len()].id);
                    }
                    let instances: Vec<Instance> = (0..n).map(|_| instance(&f)).collect();
                    ids.extend(instances.iter().map(|i| i.uuid));
                    outcomes.extend(c.build_instances(sp, instances).await.map_err(e)?);
                }
                Ok::<_, String>((ids, outcomes))
            }));
        }
    }
    let mut ids = Vec::new();
    let mut outcomes = Vec::new();
    for t in tasks {
        let (i, o) = t.await.map_err(e)??;
        ids.extend(i);
        outcomes.extend(o);
    }
    let elapsed = started.elapsed();

    // Audit the providers.
    let allocations = audit(&store, cloud.cell).await?;
    // Every instance ACTIVE with exactly its allocation, or ERROR with a fault and none.
    let roots: BTreeMap<String, ProviderId> = cloud.hosts.iter().map(|h| (h.name.clone(), h.root)).collect();
    let (mut active, mut error) = (0usize, 0usize);
    for id in &ids {
        let rec = store.get_instance(*id).await.map_err(e)?;
        let held = store.allocations(ConsumerId::from(*id)).await.map_err(e)?;
        match rec.vm_state {
            VmState::Active => {
                active += 1;
                let host = rec.host.clone().ok_or("active without host")?;
                check!(
                    held.len() == 1 && Some(&held[0].root) == roots.get(&host),
                    "{id} active on {host} but holds {held:?}"
                );
                check!(rec.fault.is_none() && rec.launched_at.is_some(), "{rec:?}");
            }
            VmState::Error => {
                error += 1;
                check!(rec.fault.is_some(), "{id} in ERROR without a fault");
                check!(held.is_empty(), "{id} in ERROR still holds {held:?}");
            }
            other => return Err(format!("{id} left in {other}").into()),
        }
    }
    check!(
        allocations.len() == active,
        "allocations held by {} consumers for {active} active instances",
        allocations.len()
    );
    for g in groups.iter() {
        for h in &cloud.hosts {
            let t = store.provider_tree(h.root).await.map_err(e)?;
            let n = t.groups.get(&g.id).copied().unwrap_or(0);
            check!(n <= 2, "group {} has {n} members on {}", g.id, h.name);
        }
    }
    check!(active > 0 && error > 0, "the run both placed and overflowed: {active} active, {error} error");

    let reschedules: u32 = outcomes.iter().map(|o| o.reschedules).sum();
    let skipped: u32 = outcomes.iter().map(|o| o.alternates_skipped).sum();
    let nvh = outcomes
        .iter()
        .filter(|o| matches!(&o.status, BuildStatus::Failed { message, .. } if message.starts_with("No valid host")))
        .count();
    let mut stats = Vec::new();
    for c in &conductors {
        stats.push(c.scheduler().stats());
    }
    let tried: u64 = stats.iter().map(|s| s.claims_tried).sum();
    let conflicts: u64 = stats.iter().map(|s| s.claim_conflicts).sum();
    eprintln!(
        "stress ({}): {requests} requests, {} instances on {hosts} hosts by {conductors_n} schedulers in {:.2?}: \
         {active} active, {error} error ({nvh} no valid host), {reschedules} reschedules, {skipped} alternates skipped, \
         {tried} claims tried, {conflicts} refused; {:.0} instances/s (debug build, shared machine: not a benchmark)",
        store.backend(),
        ids.len(),
        elapsed,
        ids.len() as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
