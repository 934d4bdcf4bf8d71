//! Placements per second with several concurrent schedulers against one store.
//!
//! ```text
//! cargo run --release --example schedule_throughput -- \
//!     [--store memory://] [--hosts 1000] [--requests 10000] [--schedulers 4] \
//!     [--concurrency 8] [--subset 1] [--stale-ms 0] [--alternates 2] [--mode select|build] \
//!     [--max-placement-results 1000 (0: no limit)]
//! ```
//!
//! `select` measures `select_destinations` alone (claim included, one instance per request,
//! nothing released, so the cloud fills up); `build` runs the whole conductor flow with an
//! instant simulated compute. Each scheduler has its own snapshot and its own store handle
//! (as separate processes; one handle on the in-process memory store); they share only the
//! store. Prints one line per run with placements/s, claims tried and refused.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use unicell::conductor::{Conductor, ConductorConfig};
use unicell::model::*;
use unicell::scheduler::{ScheduleError, Scheduler, SchedulerConfig};
use unicell::sim::requests::request_spec;
use unicell::sim::{ChildSpec, Cloud, HostSpec, SimulatedCompute};
use unicell::store::prelude::*;

struct Args {
    store: String,
    hosts: usize,
    requests: usize,
    schedulers: usize,
    concurrency: usize,
    subset: usize,
    stale_ms: u64,
    alternates: usize,
    mode: String,
    max_placement_results: usize,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        store: "memory://".into(),
        hosts: 1000,
        requests: 10_000,
        schedulers: 4,
        concurrency: 8,
        subset: 1,
        stale_ms: 0,
        alternates: 2,
        mode: "select".into(),
        max_placement_results: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--store" => a.store = v,
            "--hosts" => a.hosts = v.parse()?,
            "--requests" => a.requests = v.parse()?,
            "--schedulers" => a.schedulers = v.parse()?,
            "--concurrency" => a.concurrency = v.parse()?,
            "--subset" => a.subset = v.parse()?,
            "--stale-ms" => a.stale_ms = v.parse()?,
            "--alternates" => a.alternates = v.parse()?,
            "--max-placement-results" => a.max_placement_results = v.parse()?,
            "--mode" => a.mode = v,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn flavor() -> anyhow::Result<Flavor> {
    Ok(Flavor {
        id: FlavorId::new("bench.small")?,
        name: "bench.small".into(),
        vcpus: 2,
        memory_mb: 4096,
        root_gb: 20,
        ephemeral_gb: 0,
        swap_mb: 0,
        extra_specs: BTreeMap::new(),
    })
}

/// `hosts` hosts of 32 VCPU (ratio 4), 64 GiB and 1 TB in one fresh cell; every tenth has
/// two NUMA children with 8 PCPU each. Heartbeats an hour ahead keep them up for the run.
async fn make_cloud(store: &Arc<dyn Store>, hosts: usize) -> anyhow::Result<Cloud> {
    let mut cloud = Cloud::new(store.clone()).await?;
    let plain = HostSpec { vcpu_allocation_ratio: 4.0, ..HostSpec::sized(32, 65536, 1000) };
    let numa = |n: usize| ChildSpec {
        suffix: format!("-numa{n}"),
        parent: None,
        inventories: BTreeMap::from([(ResourceClass::Pcpu, Inventory::with_total(8))]),
        traits: Default::default(),
    };
    let nested = HostSpec { children: vec![numa(0), numa(1)], ..plain.clone() };
    for i in 0..hosts {
        cloud.add_host(if i % 10 == 0 { nested.clone() } else { plain.clone() }).await?;
    }
    for h in &cloud.hosts {
        let mut host = h.host.clone();
        host.last_heartbeat = Timestamp::now().plus(Duration::from_secs(3600));
        store.put_host(&host).await?;
    }
    Ok(cloud)
}

fn new_spec(f: &Flavor) -> RequestSpec {
    request_spec(f.clone(), InstanceId::new_v4(), 1, "bench", "bench")
}

fn new_instance(f: &Flavor, id: InstanceId) -> Instance {
    Instance::new_building(id, "bench", "bench", "bench", f.id.clone())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = parse()?;
    let store = unicell::store::open(&a.store).await?;
    let t = Instant::now();
    let cloud = make_cloud(&store, a.hosts).await?;
    let setup = t.elapsed();
    let config = SchedulerConfig {
        cells: vec![cloud.cell],
        host_subset_size: a.subset,
        min_refresh_interval: Duration::from_millis(a.stale_ms),
        max_placement_results: (a.max_placement_results > 0).then_some(a.max_placement_results),
        ..Default::default()
    };
    let mut schedulers = Vec::new();
    for k in 0..a.schedulers {
        // Each scheduler on its own handle, as separate processes would be (the memory store
        // lives in this process: one handle).
        let handle = if store.backend() == "memory" { store.clone() } else { unicell::store::open(&a.store).await? };
        schedulers
            .push(Arc::new(Scheduler::new(handle, SchedulerConfig { seed: Some(k as u64), ..config.clone() }).await?));
    }
    let compute = Arc::new(SimulatedCompute::new(1));
    let next = Arc::new(AtomicUsize::new(0));
    let placed = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let f = flavor()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in &schedulers {
        let conductor = Arc::new(Conductor::new(
            store.clone(),
            s.clone(),
            compute.clone(),
            ConductorConfig::with_alternates(a.alternates),
        ));
        for _ in 0..a.concurrency {
            let (s, conductor, next, placed, failed, f) =
                (s.clone(), conductor.clone(), next.clone(), placed.clone(), failed.clone(), f.clone());
            let (requests, alternates, build) = (a.requests, a.alternates, a.mode == "build");
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let id = InstanceId::new_v4();
                    if build {
                        let out = conductor.build_instances(new_spec(&f), vec![new_instance(&f, id)]).await?;
                        if out.iter().all(|o| o.is_active()) {
                            placed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        match s.select_destinations(&new_spec(&f), &[id], alternates).await {
                            Ok(_) => {
                                placed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(ScheduleError::NoValidHost { .. }) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => return Err(anyhow::anyhow!(e)),
                        }
                    }
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    let (mut tried, mut refused, mut reread, mut from_feed) = (0, 0, 0, 0);
    for s in &schedulers {
        let st = s.stats();
        tried += st.claims_tried;
        refused += st.claim_conflicts;
        reread += st.trees_reread;
        from_feed += st.trees_from_feed;
    }
    let placed = placed.load(Ordering::Relaxed);
    println!(
        "store={} mode={} hosts={} schedulers={} concurrency={} subset={} stale_ms={} max_placement_results={}: \
         {placed} placed, {} no valid host in {:.2?} => {:.0} placements/s; \
         claims tried {tried}, refused {refused} ({:.1}%), trees re-read {reread}, from the feed's usage {from_feed}; setup {:.2?}",
        store.backend(),
        a.mode,
        a.hosts,
        a.schedulers,
        a.concurrency,
        a.subset,
        a.stale_ms,
        a.max_placement_results,
        failed.load(Ordering::Relaxed),
        elapsed,
        placed as f64 / elapsed.as_secs_f64(),
        100.0 * refused as f64 / (tried.max(1) as f64),
        setup
    );
    Ok(())
}
