//! Degraded operation, both designs side by side (issue 14): scheduling before and after
//! losing one node of unicell's store (one master of a three-master Redis Cluster, SIGKILL)
//! and one cell database of the SQL cells baseline (the connection to one of four cell
//! databases cut by killing the TCP proxy in front of it).
//!
//! ```text
//! cargo run --release -p unicell-bench --example degraded -- \
//!     [--hosts 48] [--requests 300] [--mysql mysql://root@127.0.0.1:3306]
//! ```
//!
//! Each design gets a fresh cloud of `--hosts` hosts, one scheduler, and `--requests`
//! one-instance requests before the loss and as many after it (each placed claim is
//! released at once, so capacity stays constant). Printed per phase: requests placed and
//! failed, placements per second, p50 and p99 latency, the scheduler's claim store errors
//! and stale schedules, and how many distinct hosts were used. The Redis Cluster is started
//! from the installed `redis-server` (no replicas: the lost master's shards stay lost) with
//! `cluster-require-full-coverage no`, so that the surviving masters keep serving their
//! slots; the MariaDB server must be reachable at `--mysql`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use unicell::model::*;
use unicell::scheduler::{Scheduler, SchedulerStats};
use unicell::sim::requests::request_spec;
use unicell::sim::{Cloud, CloudSpec, Silent};
use unicell::store::prelude::*;
use unicell::testkit::redis_server::{RedisCluster, raw_command};
use unicell_bench::proxy::DelayProxy;

struct Args {
    hosts: usize,
    requests: usize,
    mysql: String,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args { hosts: 48, requests: 300, mysql: "mysql://root@127.0.0.1:3306".into() };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| anyhow::anyhow!("{k} needs a value"))?;
        match k.as_str() {
            "--hosts" => a.hosts = v.parse()?,
            "--requests" => a.requests = v.parse()?,
            "--mysql" => a.mysql = v,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(a)
}

#[derive(Default)]
struct Phase {
    placed: usize,
    failed: usize,
    first_error: Option<String>,
    latencies_ms: Vec<f64>,
    hosts: HashSet<String>,
    wall: Duration,
}

impl Phase {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }

    fn line(&self, design: &str, phase: &str, before: SchedulerStats, after: SchedulerStats) -> String {
        format!(
            "| {design} | {phase} | {}/{} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} |",
            self.placed,
            self.placed + self.failed,
            self.placed as f64 / self.wall.as_secs_f64().max(1e-9),
            self.pct(0.5),
            self.pct(0.99),
            after.claim_store_errors - before.claim_store_errors,
            after.stale_schedules - before.stale_schedules,
            self.hosts.len(),
            self.first_error.as_deref().map(|e| e.chars().take(90).collect::<String>()).unwrap_or_default(),
        )
    }
}

async fn run_phase(cloud: &Cloud, sched: &Scheduler, n: usize) -> anyhow::Result<Phase> {
    let mut out = Phase::default();
    let flavor =
        cloud.flavors.first().map(|(f, _)| f.clone()).ok_or_else(|| anyhow::anyhow!("the cloud has no flavor"))?;
    let start = Instant::now();
    for _ in 0..n {
        let id = InstanceId::new_v4();
        let spec = request_spec(flavor.clone(), id, 1, "p-degraded", "u");
        let t = Instant::now();
        let r = sched.select_destinations(&spec, &[id], 0).await;
        out.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
        match r {
            Ok(lists) => {
                out.placed += 1;
                out.hosts.insert(lists[0][0].host.clone());
                if let Err(e) = cloud.store.release(ConsumerId::from(id)).await {
                    out.first_error.get_or_insert(format!("release: {e}"));
                }
            }
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert(e.to_string());
            }
        }
    }
    out.wall = start.elapsed();
    Ok(out)
}

async fn redis_cluster(a: &Args) -> anyhow::Result<Vec<String>> {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3)).await??;
    for n in &cluster.nodes {
        raw_command(n.port, "CONFIG SET cluster-require-full-coverage no");
    }
    let url = format!(
        "{}&prefix=degraded-{}&timeout_ms=500&connect_timeout_ms=200&retries=1",
        cluster.url(),
        uuid::Uuid::new_v4().simple()
    );
    let store = unicell::store::open(&url).await?;
    let cloud = Cloud::generate(store, &CloudSpec::new(1, a.hosts, 7), 4, &Silent).await?;
    let sched = cloud.scheduler().await?;
    let s0 = sched.stats();
    let before = run_phase(&cloud, &sched, a.requests).await?;
    let s1 = sched.stats();
    let mut cluster = cluster;
    let lost_port = cluster.nodes[1].port;
    cluster.nodes[1].kill();
    // Let the surviving masters mark it failed (cluster-node-timeout 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = run_phase(&cloud, &sched, a.requests).await?;
    let s2 = sched.stats();
    let design = format!("unicell, Redis Cluster 3 masters (master :{lost_port} SIGKILLed)");
    Ok(vec![before.line(&design, "before", s0, s1), after.line(&design, "one master lost", s1, s2)])
}

async fn sql_cells(a: &Args) -> anyhow::Result<Vec<String>> {
    let base = url::Url::parse(&a.mysql)?;
    let upstream = format!("{}:{}", base.host_str().unwrap_or("127.0.0.1"), base.port().unwrap_or(3306));
    let proxy = DelayProxy::start(&upstream, Duration::ZERO).await?;
    let db = format!("degraded_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut api = base.clone();
    api.set_path(&format!("/{db}"));
    let mut cells = Vec::new();
    for c in 0..4 {
        let mut u = base.clone();
        u.set_path(&format!("/{db}_c{c}"));
        if c == 3 {
            u.set_port(Some(proxy.addr().port())).map_err(|_| anyhow::anyhow!("port"))?;
        }
        cells.push(u.to_string());
    }
    {
        let mut q = api.query_pairs_mut();
        for c in &cells {
            q.append_pair("cell_url", c);
        }
        q.append_pair("cell_timeout", "2s");
    }
    let store = unicell::store::open(api.as_str()).await?;
    let cloud = Cloud::generate(store.clone(), &CloudSpec::new(4, a.hosts, 7), 4, &Silent).await?;
    let sched = cloud.scheduler().await?;
    let s0 = sched.stats();
    let before = run_phase(&cloud, &sched, a.requests).await?;
    let s1 = sched.stats();
    drop(proxy);
    let after = run_phase(&cloud, &sched, a.requests).await?;
    let s2 = sched.stats();
    // A scheduler started after the loss (its first catalog load sees the cell down).
    let fresh = cloud.scheduler().await?;
    let f0 = fresh.stats();
    let restarted = run_phase(&cloud, &fresh, a.requests).await?;
    let f1 = fresh.stats();
    // Drop the databases (cell 3 directly).
    let mut cleanup = api.clone();
    cleanup.set_query(None);
    {
        let mut q = cleanup.query_pairs_mut();
        for (c, u) in cells.iter().enumerate() {
            let mut u = url::Url::parse(u)?;
            if c == 3 {
                u.set_port(base.port()).map_err(|_| anyhow::anyhow!("port"))?;
            }
            q.append_pair("cell_url", u.as_str());
        }
    }
    if let Ok(u) = unicell::store::StoreUrl::parse(cleanup.as_str()) {
        let _ = unicell::store::sql::SqlStore::drop_databases(&u).await;
    }
    let design = "SQL cells baseline, MariaDB, 4 cell databases (cell 3 cut)";
    Ok(vec![
        before.line(design, "before", s0, s1),
        after.line(design, "one cell lost", s1, s2),
        restarted.line(design, "one cell lost, scheduler restarted", f0, f1),
    ])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = parse()?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("hosts {} requests/phase {} load average {}", a.hosts, a.requests, load.trim());
    println!(
        "| design | phase | placed/requests | placements/s | p50 ms | p99 ms | claim store errors | stale schedules | hosts used | first error |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for l in redis_cluster(&a).await? {
        println!("{l}");
    }
    for l in sql_cells(&a).await? {
        println!("{l}");
    }
    Ok(())
}
