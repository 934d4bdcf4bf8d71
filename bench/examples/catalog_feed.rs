//! What the catalog in the change feed costs and buys a scheduler's snapshot.
//!
//! ```text
//! cargo run --release -p unicell-bench --example catalog_feed -- \
//!     [--store memory://] [--hosts 5000] [--trials 20]
//! ```
//!
//! On a fresh cloud of `--hosts` hosts, with one snapshot tailing the feed every 5 ms:
//! * a whole catalog read (hosts, aggregates, cells: what the snapshot did every 10 s
//!   before catalog writes entered the feed, and now does only when one is announced);
//! * a heartbeat read (`host_heartbeats`: what it does every 10 s now);
//! * how long after an operator's `put_host` (through a second store handle, as another
//!   process) the snapshot shows the change: before, up to the 10 s catalog timer.
//!
//! Prints one line per measure with the median and the largest of `--trials`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use unicell::scheduler::{SharedSnapshot, SnapshotConfig};
use unicell::sim::{Cloud, HostSpec};
use unicell::store::prelude::*;

struct Args {
    store: String,
    hosts: usize,
    trials: usize,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args { store: "memory://".into(), hosts: 5000, trials: 20 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--store" => a.store = v,
            "--hosts" => a.hosts = v.parse()?,
            "--trials" => a.trials = v.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(a.hosts > 0 && a.trials > 0, "--hosts and --trials must be positive");
    Ok(a)
}

fn line(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("{what}: median {:.2} ms, max {:.2} ms ({} trials)", ms(v[v.len() / 2]), ms(v[v.len() - 1]), v.len());
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = parse()?;
    let store = unicell::store::open(&a.store).await?;
    // A second handle, as another process has (the memory store lives in this process).
    let other: Arc<dyn Store> =
        if store.backend() == "memory" { store.clone() } else { unicell::store::open(&a.store).await? };
    let mut cloud = Cloud::new(store.clone()).await?;
    cloud.add_hosts(a.hosts, HostSpec::default()).await?;
    let snap = SharedSnapshot::open(
        store.clone(),
        SnapshotConfig::from_scheduler(&cloud.config(), Some(Duration::from_millis(5))),
    )
    .await?;
    println!("{} ({}), {} hosts", store.describe(), store.backend(), a.hosts);

    let mut reads = Vec::new();
    for _ in 0..a.trials {
        let t = Instant::now();
        snap.refresh_catalog().await?;
        reads.push(t.elapsed());
    }
    line("whole catalog read (hosts, aggregates, cells)", reads);

    let mut beats = Vec::new();
    for _ in 0..a.trials {
        let t = Instant::now();
        let b = store.host_heartbeats(Some(cloud.cell)).await?;
        beats.push(t.elapsed());
        anyhow::ensure!(b.len() >= a.hosts, "host_heartbeats gave {} of {} hosts", b.len(), a.hosts);
    }
    line("heartbeat read (host_heartbeats)", beats);

    let mut seen = Vec::new();
    for i in 0..a.trials {
        let name = &cloud.hosts[i % cloud.hosts.len()].name;
        let mut h = other.get_host(name).await?;
        h.enabled = !h.enabled;
        // Past the snapshot's least gap between announced catalog reads (250 ms).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        other.put_host(&h).await?;
        while snap.host_state(name).is_none_or(|s| s.host.enabled != h.enabled) {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(30), "the snapshot never showed {name}'s change");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        seen.push(t.elapsed());
    }
    line("put_host through another handle -> shown by the tailing snapshot", seen);
    let st = snap.stats();
    println!(
        "snapshot: {} catalog reads, {} announcements, {} heartbeat reads, {} feed reads",
        st.catalog_reloads, st.catalog_announcements, st.heartbeat_reads, st.refreshes
    );
    Ok(())
}
