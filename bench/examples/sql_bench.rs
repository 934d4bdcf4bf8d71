//! Measures the SQL baseline: claims per second (cells mode, concurrent tasks) and the page
//! latency of listing N instances over C cells with limit 1000, in cells mode (concurrent
//! and Nova's sequential strategy) and single mode.
//!
//! ```text
//! cargo run --release --example sql_bench -- [mysql|postgres] [instances] [cells] [claim_seconds] [tasks]
//! ```
//!
//! Server: `MYSQL_URL` / `DATABASE_URL` (no database path) or the local default. Creates its
//! own uniquely named databases and drops them at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use unicell::error::Error;
use unicell::model::*;
use unicell::store::StoreUrl;
use unicell::store::prelude::*;
use unicell::store::sql::SqlStore;
use unicell_bench::stats::Latency;

async fn claims(base: &str, run: &str, seconds: u64, tasks: usize) -> anyhow::Result<()> {
    let url = StoreUrl::parse(&format!("{base}/{run}_claims?cells=4"))?;
    let store = Arc::new(SqlStore::open(&url).await?);
    let hosts = 200;
    let mut roots = Vec::new();
    for h in 0..hosts {
        let id = ProviderId::new_v4();
        store
            .create_provider(&NewProvider {
                id,
                name: format!("{run}-cn{h}"),
                parent: None,
                cell: None,
                inventories: BTreeMap::from([
                    (ResourceClass::Vcpu, Inventory::with_total(1_000_000)),
                    (ResourceClass::MemoryMb, Inventory::with_total(1_000_000_000)),
                    (ResourceClass::DiskGb, Inventory::with_total(1_000_000_000)),
                ]),
                traits: Default::default(),
                aggregates: Default::default(),
            })
            .await?;
        roots.push(id);
    }
    let roots = Arc::new(roots);
    let ok = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (store, roots, ok, conflicts) = (store.clone(), roots.clone(), ok.clone(), conflicts.clone());
        handles.push(tokio::spawn(async move {
            let mut n = t;
            while Instant::now() < deadline {
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let root = roots[(n >> 33) % roots.len()];
                let req = ClaimRequest {
                    consumer: ConsumerId::new_v4(),
                    project_id: "bench".into(),
                    user_id: "bench".into(),
                    allocations: BTreeMap::from([(
                        root,
                        BTreeMap::from([
                            (ResourceClass::Vcpu, 1),
                            (ResourceClass::MemoryMb, 512),
                            (ResourceClass::DiskGb, 10),
                        ]),
                    )]),
                    group: None,
                };
                match store.claim(&req).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::Conflict(_)) => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = ok.load(Ordering::Relaxed);
    println!(
        "claims: {} tasks, {} hosts, {:.1} s: {} claims ok ({:.0}/s), {} gave up on conflicts",
        tasks,
        hosts,
        secs,
        n,
        n as f64 / secs,
        conflicts.load(Ordering::Relaxed)
    );
    store.close().await;
    SqlStore::drop_databases(&url).await?;
    Ok(())
}

async fn listing(base: &str, run: &str, n: usize, cells: usize) -> anyhow::Result<()> {
    let cell_ids: Vec<CellId> = (0..cells).map(|_| CellId::new_v4()).collect();
    let t0 = 1_790_000_000_000_000i64;
    let mut instances = Vec::with_capacity(n);
    for k in 0..n {
        let mut i = Instance::new_building(
            InstanceId::new_v4(),
            &format!("vm-{k}"),
            &format!("project-{}", k % 50),
            "user",
            FlavorId::new("m1.small")?,
        );
        // Created over time, round-robin over cells (as a scheduler spreading builds would).
        i.created_at = Timestamp::from_micros(t0 + (k as i64) * 1000);
        i.updated_at = i.created_at;
        i.cell = Some(cell_ids[k % cells]);
        i.vm_state = VmState::Active;
        i.task_state = None;
        instances.push(i);
    }
    for (label, query) in [("cells", format!("cells={cells}")), ("single", "mode=single".to_string())] {
        let url = StoreUrl::parse(&format!("{base}/{run}_list_{label}?{query}"))?;
        let store = SqlStore::open(&url).await?;
        for (k, c) in cell_ids.iter().enumerate() {
            store.put_cell(&Cell { id: *c, name: format!("cell{k}"), disabled: false }).await?;
        }
        let t = Instant::now();
        store.bulk_create_instances(&instances).await?;
        println!("list[{label}]: loaded {n} instances in {:.1} s", t.elapsed().as_secs_f64());
        store.close().await;
        let strategies: &[&str] = if label == "cells" { &["concurrent", "sequential"] } else { &["concurrent"] };
        for strategy in strategies {
            let u =
                StoreUrl::parse(&format!("{base}/{run}_list_{label}?{query}&create=false&list_strategy={strategy}"))?;
            let store = SqlStore::open(&u).await?;
            // One warm-up pass, then the measured pass.
            for pass in 0..2 {
                let mut lat = Latency::new();
                let mut marker = None;
                let mut total = 0;
                loop {
                    let t = Instant::now();
                    let page = store
                        .list_instances(&ListQuery {
                            filters: InstanceFilters::default(),
                            limit: Some(1000),
                            marker,
                            partial: false,
                        })
                        .await?;
                    lat.record(t.elapsed());
                    total += page.instances.len();
                    match page.next_marker {
                        Some(m) => marker = Some(m),
                        None => break,
                    }
                }
                if pass == 1 {
                    let lat = lat.summary();
                    let shape = if label == "cells" {
                        format!("{cells} cell databases, {strategy}")
                    } else {
                        format!("one database, {cells} cell ids")
                    };
                    println!(
                        "list[{label}, {shape}]: {total} instances in {} pages of 1000: \
                         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                        lat.count, lat.p50_ms, lat.p99_ms, lat.max_ms
                    );
                }
            }
            store.close().await;
        }
        SqlStore::drop_databases(&url).await?;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("mysql");
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let cells: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    let seconds: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
    let tasks: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(16);
    let base = match which {
        "postgres" => std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
        _ => std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into()),
    };
    let run = format!("ucb_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    println!("server {which} ({}), run {run}", StoreUrl::parse(&base)?);
    claims(&base, &run, seconds, tasks).await?;
    listing(&base, &run, n, cells).await?;
    Ok(())
}
