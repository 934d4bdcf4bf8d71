//! Claims per second through the Redis backend beside the server's own ceiling for the same
//! script, measured in one run on one server.
//!
//! ```text
//! cargo run --release --example redis_claims -- [--url redis://127.0.0.1:6379] [--secs 10]
//!     [--tasks 256] [--trees 200] [--bench-clients 50] [--bench-requests 300000]
//! ```
//!
//! Without `--url` it starts a throwaway `redis-server` (no persistence) on a free loopback
//! port and stops it at the end. It creates `--trees` provider trees under a fresh prefix,
//! then (1) runs `--tasks` concurrent tasks that each claim 1 VCPU + 1 MEMORY_MB for a fresh
//! consumer on a random tree, for `--secs` seconds, through `unicell::store::redis`; then
//! (2) runs `redis-benchmark -c <bench-clients> -n <bench-requests>` sending the very EVALSHA
//! the backend sends for such a claim (same script, same keys; a random consumer per call so
//! every call writes). It prints both rates and their ratio, and purges the prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use unicell::model::*;
use unicell::store::StoreUrl;
use unicell::store::prelude::*;
use unicell::store::redis::RedisStore;

struct Args {
    url: Option<String>,
    secs: u64,
    tasks: usize,
    trees: usize,
    bench_clients: usize,
    bench_requests: usize,
    pool: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a =
        Args { url: None, secs: 10, tasks: 256, trees: 200, bench_clients: 50, bench_requests: 300_000, pool: 4 };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| anyhow::anyhow!("{k} needs a value"))?;
        match k.as_str() {
            "--url" => a.url = Some(v),
            "--secs" => a.secs = v.parse()?,
            "--tasks" => a.tasks = v.parse()?,
            "--trees" => a.trees = v.parse()?,
            "--bench-clients" => a.bench_clients = v.parse()?,
            "--bench-requests" => a.bench_requests = v.parse()?,
            "--pool" => a.pool = v.parse()?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(a)
}

/// A redis-server started here, killed on drop.
struct Throwaway(Child, std::path::PathBuf);

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn start_server() -> anyhow::Result<(String, u16, Throwaway)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!("unicell-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no", "--dir", &dir.display().to_string()])
        .stdout(Stdio::null())
        .spawn()?;
    let guard = Throwaway(child, dir);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((format!("redis://127.0.0.1:{port}"), port, guard));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("redis-server did not start")
}

fn claim(consumer: ConsumerId, root: ProviderId) -> ClaimRequest {
    let mut r = Resources::new();
    r.insert(ResourceClass::Vcpu, 1);
    r.insert(ResourceClass::MemoryMb, 1);
    ClaimRequest {
        consumer,
        project_id: "bench".into(),
        user_id: "bench".into(),
        allocations: AllocationMap::from([(root, r)]),
        group: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let (url, _guard) = match &a.url {
        Some(u) => (u.clone(), None),
        None => {
            let (u, _, g) = start_server()?;
            (u, Some(g))
        }
    };
    let parsed = StoreUrl::parse(&url)?;
    let host = parsed.expose().host_str().unwrap_or("127.0.0.1").to_string();
    let port = parsed.expose().port().unwrap_or(6379);
    let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let sep = if url.contains('?') { '&' } else { '?' };
    let store =
        Arc::new(RedisStore::open(&StoreUrl::parse(&format!("{url}{sep}prefix={prefix}&pool={}", a.pool))?).await?);
    let mut roots = Vec::new();
    for i in 0..a.trees {
        let id = ProviderId::new_v4();
        store
            .create_provider(&NewProvider {
                id,
                name: format!("{prefix}-{i}"),
                parent: None,
                cell: None,
                inventories: BTreeMap::from([
                    (ResourceClass::Vcpu, Inventory::with_total(MAX_AMOUNT)),
                    (ResourceClass::MemoryMb, Inventory::with_total(MAX_AMOUNT)),
                ]),
                traits: BTreeSet::new(),
                aggregates: BTreeSet::new(),
            })
            .await?;
        roots.push(id);
    }
    let roots = Arc::new(roots);

    // (1) through the backend.
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(a.secs);
    let mut tasks = Vec::new();
    for t in 0..a.tasks {
        let (store, roots, done, failed) = (store.clone(), roots.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while Instant::now() < deadline {
                i = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let root = roots[(i >> 33) % roots.len()];
                match store.claim(&claim(ConsumerId::new_v4(), root)).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let backend_rate = done.load(Ordering::Relaxed) as f64 / elapsed;
    println!(
        "backend: {} claims in {elapsed:.2} s = {backend_rate:.0} claims/s ({} failed; {} tasks, pool {})",
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        a.tasks,
        a.pool
    );

    // (2) the server's ceiling for the same script and keys.
    let eval = store.claim_command(&claim(ConsumerId::new_v4(), roots[0])).await?;
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", &host, "-p", &port.to_string()])
        .args(["-c", &a.bench_clients.to_string(), "-n", &a.bench_requests.to_string()])
        .args(["-r", "1000000000", "--csv"])
        .arg("EVALSHA")
        .arg(&eval.sha)
        .arg(eval.keys.len().to_string());
    for (i, k) in eval.keys.iter().enumerate() {
        // The consumer's index key (single node) varies per call like the consumer does.
        if i == 4 {
            cmd.arg(format!("{prefix}:cons:__rand_int__"));
        } else {
            cmd.arg(k);
        }
    }
    for (i, v) in eval.args.iter().enumerate() {
        // ARGV[1] is the consumer: a fresh one per call, so every call writes.
        if i == 0 {
            cmd.arg("c-__rand_int__");
        } else {
            cmd.arg(v);
        }
    }
    let out = cmd.stderr(Stdio::inherit()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ceiling: f64 = text
        .lines()
        .filter_map(|l| l.split("\",\"").nth(1))
        .filter_map(|f| f.trim_matches('"').parse().ok())
        .next_back()
        .ok_or_else(|| anyhow::anyhow!("could not read redis-benchmark output: {text}"))?;
    println!(
        "server ceiling (redis-benchmark -c {} -n {} EVALSHA claim.lua): {ceiling:.0} claims/s",
        a.bench_clients, a.bench_requests
    );
    println!("ratio backend / ceiling: {:.2}", backend_rate / ceiling);
    if let Err(e) = store.purge().await {
        eprintln!("could not purge {prefix}: {e}");
    }
    Ok(())
}
