//! `unicell demo`: the main job end to end on one store.
//!
//! Generates a cloud (cells, availability zones, hosts whose provider trees have NUMA and
//! SR-IOV children, flavors with extra specs, server groups), builds many instances with
//! several concurrent schedulers and injected build failures, prints a summary (placed,
//! rescheduled, failed with their reasons, claim conflicts, placements per second), pages
//! through the global instance list, audits the store, and writes a report and a chart.

use std::path::PathBuf;
use std::time::Instant;

use crate::error::{Result, bail};
use serde::Serialize;
use unicell::model::{InstanceId, ListQuery};
use unicell::sim::{BuildSetup, Cloud, CloudSpec, RequestMix, driver, requests};
use unicell::store::audit::{AuditReport, AuditScope, audit};

use crate::candidate::open_store;
use crate::chart::{self, Panel, Series};
use crate::progress::{self, Bars};
use crate::report;
use crate::schedule::BuildFigures;
use crate::stats::{Latency, Summary, fmt_ms};

/// Options of `unicell demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Directory for the report (`demo.json`, `demo.svg`).
    pub out: PathBuf,
    /// Cells.
    pub cells: usize,
    /// Compute hosts in total (each with 2 NUMA cells and an SR-IOV NIC).
    pub hosts: usize,
    /// Instances to build.
    pub instances: usize,
    /// Concurrent schedulers (each with its own conductor).
    pub schedulers: usize,
    /// Probability that the simulated compute fails a build.
    pub failure_rate: f64,
    /// Builds each scheduler's conductor runs at once.
    pub builds_per_scheduler: usize,
    /// Alternates asked for per instance.
    pub alternates: u32,
    /// Seed of the cloud and request generator.
    pub seed: u64,
}

#[derive(Debug, Serialize)]
struct Listing {
    instances: usize,
    pages: usize,
    limit: u32,
    page_latency: Summary,
    seconds: f64,
}

#[derive(Debug, Serialize)]
struct Results<'a> {
    store: String,
    cloud_load_seconds: f64,
    providers: usize,
    build: &'a BuildFigures,
    listing: Listing,
    audit: &'a AuditReport,
}

#[derive(Debug, Serialize)]
struct Params {
    cloud: CloudSpec,
    mix: RequestMix,
    setup: BuildSetup,
}

/// Runs the demo against the store at `store_url`. `Ok(false)` when it ran but found
/// something wrong (the audit failed or the list did not return every instance): the
/// summary says what.
pub async fn run(store_url: &str, a: DemoOptions) -> Result<bool> {
    if a.cells == 0 || a.hosts == 0 || a.instances == 0 || a.schedulers == 0 {
        bail!(Invalid, "--cells, --hosts, --instances and --schedulers must each be at least 1");
    }
    if !(0.0..=1.0).contains(&a.failure_rate) {
        bail!(Invalid, "--failure-rate must be between 0 and 1, got {}", a.failure_rate);
    }
    let store = open_store(store_url).await?;
    let durability = crate::durability::read(store_url, &[], None).await;
    let env = report::Environment::capture();
    let mut spec = CloudSpec::new(a.cells, a.hosts, a.seed);
    spec.oversized_flavor = true;
    println!("unicell demo on {}", store.describe());
    let t = Instant::now();
    let cloud = Cloud::generate(store.clone(), &spec, 16, &Bars).await?;
    let cloud_load_seconds = t.elapsed().as_secs_f64();
    let providers = cloud.providers();
    println!(
        "cloud: {} cells, {} availability zones, {} hosts ({} providers: each host a compute \
         node with {} NUMA cells and an SR-IOV NIC), {} flavors, {} server groups",
        cloud.cells.len(),
        cloud.aggregates.len(),
        cloud.hosts.len(),
        providers,
        spec.numa_per_host,
        cloud.flavors.len(),
        cloud.groups.len()
    );

    // Requests: mostly single instances, some of 2 or 3 (all or nothing), some in server
    // groups or availability zones; sized so that the requests hold about `instances`.
    let requests = (a.instances as f64 / 1.1).ceil() as usize;
    let mix = RequestMix { requests, multi_share: 0.05, group_share: 0.05, az_share: 0.2, seed: a.seed };
    let reqs = requests::generate(&cloud, &mix)?;
    let setup = BuildSetup {
        schedulers: a.schedulers,
        builds_per_scheduler: a.builds_per_scheduler,
        alternates: a.alternates,
        failure_rate: a.failure_rate,
        reschedulable_share: 0.8,
        host_subset_size: 4,
        seed: a.seed,
    };
    let n_instances: usize = reqs.iter().map(|r| r.instances.len()).sum();
    println!(
        "building {n_instances} instances ({} requests) with {} concurrent schedulers, {} \
         alternates each, build failure rate {:.0}% ({:.0}% of failures reschedulable)",
        reqs.len(),
        a.schedulers,
        a.alternates,
        a.failure_rate * 100.0,
        setup.reschedulable_share * 100.0
    );
    let b = BuildFigures::from(driver::run(&store, reqs, &setup, "instances", &Bars).await?);
    println!(
        "\nplaced      {:>7} ACTIVE ({:.0} placements/s over {:.2} s; schedulers started in {:.2} s)",
        b.report.active, b.report.placements_per_second, b.report.seconds, b.report.scheduler_start_seconds
    );
    println!("rescheduled {:>7} builds retried on an alternate after an injected failure", b.report.reschedules);
    println!("failed      {:>7} ERROR, by reason:", b.report.failed);
    for (reason, n) in &b.report.failure_reasons {
        println!("            {n:>7}  {reason}");
    }
    println!(
        "claims      {:>7} tried, {} conflicts (another scheduler claimed first), {} \
         alternates skipped",
        b.report.claims_tried, b.report.claim_conflicts, b.report.alternates_skipped
    );
    println!(
        "requests    p50 {} ms, p99 {} ms (schedule + claim + build + state writes)",
        fmt_ms(b.request_latency.p50_ms),
        fmt_ms(b.request_latency.p99_ms)
    );

    // The global list: every instance of every cell, newest first, one query per page.
    let limit = 1000;
    let bar = progress::bar("global list", 0);
    let mut lat = Latency::new();
    let mut pages = Vec::new();
    let mut marker: Option<InstanceId> = None;
    let mut listed = 0usize;
    let t = Instant::now();
    loop {
        let t1 = Instant::now();
        let page = store.list_instances(&ListQuery { limit: Some(limit), marker, ..Default::default() }).await?;
        let d = t1.elapsed();
        lat.record(d);
        pages.push(d.as_secs_f64() * 1e3);
        listed += page.instances.len();
        progress::inc(&bar, 1);
        match page.next_marker {
            Some(m) => marker = Some(m),
            None => break,
        }
    }
    drop(bar);
    let listing = Listing {
        instances: listed,
        pages: pages.len(),
        limit,
        page_latency: lat.summary(),
        seconds: t.elapsed().as_secs_f64(),
    };
    println!(
        "global list {:>7} instances across {} cells in {} pages of {limit}: page p50 {} ms, \
         p99 {} ms",
        listed,
        cloud.cells.len(),
        listing.pages,
        fmt_ms(listing.page_latency.p50_ms),
        fmt_ms(listing.page_latency.p99_ms)
    );
    // Every tree, and every instance against its claim: ACTIVE ones hold one, ERROR ones none.
    let au = audit(&*store, &AuditScope::everything()).await?;
    println!("{au}");
    let mut ok = au.is_clean();
    if listed != n_instances {
        println!("LIST MISMATCH: listed {listed} instances, built {n_instances}");
        ok = false;
    }

    let rep = report::Report {
        bench: "demo",
        parameters: Params { cloud: spec, mix, setup },
        environment: env,
        durability: vec![crate::candidate::CandidateDurability {
            candidate: store.describe(),
            durability: durability.clone(),
            servers_started: 0,
            cell_servers: 0,
        }],
        results: Results { store: store.describe(), cloud_load_seconds, providers, build: &b, listing, audit: &au },
        notes: Vec::new(),
    };
    let json = report::write_json(&a.out, "demo", &rep)?;
    let svg = chart::lines(
        &a.out,
        "demo",
        &format!("unicell demo: {n_instances} instances, {} schedulers, {} hosts", a.schedulers, a.hosts),
        &[
            Panel {
                title: "instances ACTIVE over time".into(),
                x_label: "seconds".into(),
                y_label: "instances".into(),
                log_y: false,
                series: vec![Series {
                    name: "ACTIVE".into(),
                    points: b.report.timeline.iter().map(|(t, n)| (*t, *n as f64)).collect(),
                    color: 0,
                    dashed: false,
                }],
            },
            Panel {
                title: format!("global list, limit {limit}"),
                x_label: "page".into(),
                y_label: "ms per page".into(),
                log_y: false,
                series: vec![Series {
                    name: "page latency".into(),
                    points: pages.iter().enumerate().map(|(i, ms)| ((i + 1) as f64, *ms)).collect(),
                    color: 1,
                    dashed: false,
                }],
            },
        ],
    )?;
    chart::footer(&svg, &[format!("{}: {}", store.describe(), durability.summary)])?;
    println!("\nreport: {} and {}", json.display(), svg.display());
    Ok(ok)
}
