//! `unicell bench placement`: Placement's `GET /allocation_candidates` at scale.
//!
//! For each candidate store and each size N: a fresh namespace gets a generated cloud of N
//! compute trees ([`unicell::sim::cloud::CloudSpec`]: each root with VCPU, MEMORY_MB and
//! DISK_GB, two NUMA children with PCPU and one SR-IOV physical function with
//! SRIOV_NET_VF), a `unicell serve`-equivalent Placement listener is started in process on a
//! loopback port over that store, and one client sends the same request again and again over
//! HTTP/1.1 (a new connection each time, as a plain client does):
//!
//! `GET /allocation_candidates?resources=VCPU:1,MEMORY_MB:512,DISK_GB:10&limit=1000`
//!
//! at microversion 1.39 as admin. Every answer is checked (200, `min(N, 1000)` allocation
//! requests, a provider summary for each tree named), so a fast wrong answer cannot count.
//! Figures: p50/p99/max latency of the whole request (the server reads the trees from the
//! store on every request, computes the candidates and serializes the JSON), per store and N.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use unicell::api::{ApiConfig, ApiState, Server};
use unicell::sim::cloud::{Cloud, CloudSpec};
use unicell::store::Store;

use crate::candidate::{self, candidates, check_store_url, run_tag, run_url};
use crate::error::{Context, Result, bail};
use crate::report::{self, Report};
use crate::stats::{Latency, Summary, Table, fmt_ms};
use crate::{Common, knob, list_knob};

/// The request every sample sends.
pub const QUERY: &str = "/allocation_candidates?resources=VCPU:1,MEMORY_MB:512,DISK_GB:10&limit=1000";

/// Options of `unicell bench placement`.
#[derive(Debug, Clone)]
pub struct PlacementOptions {
    /// Common options.
    pub common: Common,
    /// Compute trees per run [default: 1000,10000; quick: 100].
    pub trees: Vec<usize>,
    /// Timed requests per run [default: 30; quick: 5].
    pub requests: Option<usize>,
    /// Untimed requests first [default: 2; quick: 1].
    pub warmup: Option<usize>,
    /// Concurrent writers while loading the trees.
    pub load_concurrency: usize,
}

#[derive(Debug, Serialize)]
struct Params {
    trees: Vec<usize>,
    requests: usize,
    warmup: usize,
    query: &'static str,
    microversion: &'static str,
    seed: u64,
    quick: bool,
    candidates: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Run {
    candidate: String,
    trees: usize,
    providers: usize,
    load_seconds: f64,
    candidates_returned: usize,
    response_bytes: usize,
    latency: Summary,
}

/// Runs the benchmark.
pub async fn run(global_store: &str, a: PlacementOptions) -> Result<()> {
    let quick = a.common.quick;
    let sizes = list_knob(&a.trees, quick, &[100], &[1_000, 10_000]);
    let requests = knob(a.requests, quick, 5, 30);
    let warmup = knob(a.warmup, quick, 1, 2);
    if sizes.contains(&0) || requests == 0 {
        bail!(Invalid, "--trees values and --requests must be at least 1");
    }
    let all = candidates(global_store, &a.common)?;
    // Only some backends keep Placement's state: the others are left out with the reason
    // (before any tree is loaded), so one candidate list can serve every bench.
    let (cands, left_out): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|c| unicell::store::placement::keeps_placement_state(c.scheme));
    let skipped: Vec<String> = left_out
        .iter()
        .map(|c| format!("{}: skipped: the {} backend does not keep Placement's state", c.label, c.scheme.backend()))
        .collect();
    for s in &skipped {
        println!("{s}");
    }
    if cands.is_empty() {
        bail!(Invalid, "no candidate keeps Placement's state (memory://, redis://, mysql://, postgres://)");
    }
    let env = report::Environment::capture();
    let load_at_start = loadavg();
    let tag = run_tag();
    println!("bench placement: GET {QUERY}, trees {sizes:?}, {requests} requests, {} candidate(s)", cands.len());
    for line in candidate::durability_lines(&cands) {
        println!("  durability: {line}");
    }
    let mut runs = Vec::new();
    for &n in &sizes {
        for (i, cand) in cands.iter().enumerate() {
            let url = run_url(cand, &format!("{tag}_p{n}_{i}"), None)?;
            let result = one_run(&url, n, &a, requests, warmup).await;
            candidate::cleanup(cand, &url).await;
            let (providers, load_seconds, lat, returned, bytes) =
                result.with_context(|| format!("{} with {n} trees", cand.label))?;
            let latency = lat.summary();
            println!(
                "  {:<40} {n:>6} trees: load {load_seconds:.1}s, p50 {} p99 {} ({returned} candidates, {} KiB)",
                cand.label,
                fmt_ms(latency.p50_ms),
                fmt_ms(latency.p99_ms),
                bytes / 1024
            );
            runs.push(Run {
                candidate: cand.label.clone(),
                trees: n,
                providers,
                load_seconds,
                candidates_returned: returned,
                response_bytes: bytes,
                latency,
            });
        }
    }
    let mut table = Table::new(["store", "trees", "providers", "candidates", "p50", "p99", "max", "load"]);
    for r in &runs {
        table.row([
            r.candidate.clone(),
            r.trees.to_string(),
            r.providers.to_string(),
            r.candidates_returned.to_string(),
            fmt_ms(r.latency.p50_ms),
            fmt_ms(r.latency.p99_ms),
            fmt_ms(r.latency.max_ms),
            format!("{:.1}s", r.load_seconds),
        ]);
    }
    println!("\n{}", table.render());
    let report = Report {
        durability: candidate::durabilities(&cands),
        bench: "placement",
        parameters: Params {
            trees: sizes,
            requests,
            warmup,
            query: QUERY,
            microversion: "1.39",
            seed: a.common.seed,
            quick,
            candidates: cands.iter().map(|c| c.label.clone()).collect(),
        },
        environment: env,
        results: runs,
        notes: std::iter::once(format!("load average at start: {load_at_start}")).chain(skipped).collect(),
    };
    let json = report::write_json(&a.common.out, "placement", &report)?;
    println!("\nwrote {}", json.display());
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

async fn one_run(
    url: &str,
    n: usize,
    a: &PlacementOptions,
    requests: usize,
    warmup: usize,
) -> Result<(usize, f64, Latency, usize, usize)> {
    check_store_url(url)?;
    let store = unicell::store::placement::open(url).await?;
    let plain: Arc<dyn Store> = store.clone();
    let started = Instant::now();
    let spec = CloudSpec { server_groups: 0, ..CloudSpec::new(1, n, a.common.seed) };
    let cloud = Cloud::generate(plain, &spec, a.load_concurrency, &crate::progress::Bars).await?;
    let load_seconds = started.elapsed().as_secs_f64();
    let providers = cloud.hosts.len() * (spec.numa_per_host + 2);
    let config = ApiConfig {
        nova_listen: ([127, 0, 0, 1], 0).into(),
        placement_listen: Some(([127, 0, 0, 1], 0).into()),
        ..ApiConfig::default()
    };
    let state = ApiState::with_placement(store, config, None).await.context("cannot start the API state")?;
    let server = Server::bind(state).await.context("cannot bind the Placement listener")?;
    let addr = server.placement_addr().ok_or_else(|| crate::Error::Failed("no Placement listener".into()))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let want = n.min(1000);
    let mut lat = Latency::new();
    let mut last = (0, 0);
    for i in 0..warmup + requests {
        let t = Instant::now();
        let body = get(addr, QUERY).await?;
        let d = t.elapsed();
        let v: serde_json::Value = serde_json::from_slice(&body).context("candidates answer is not JSON")?;
        let got = v["allocation_requests"].as_array().map_or(0, |x| x.len());
        let summaries = v["provider_summaries"].as_object().map_or(0, |x| x.len());
        if got != want || summaries < want {
            bail!(Failed, "{got} allocation requests and {summaries} provider summaries for {n} trees (want {want})");
        }
        last = (got, body.len());
        if i >= warmup {
            lat.record(d);
        }
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;
    Ok((providers, load_seconds, lat, last.0, last.1))
}

/// One HTTP/1.1 GET on a new connection; the body of a 200 answer.
async fn get(addr: std::net::SocketAddr, path: &str) -> Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(addr).await.context("cannot connect to the Placement listener")?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nX-Auth-Token: admin\r\n\
         OpenStack-API-Version: placement 1.39\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.context("cannot send the request")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.context("cannot read the answer")?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| crate::Error::Failed("answer without a header end".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    if !head.starts_with("HTTP/1.1 200") {
        bail!(Failed, "GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    let body = &raw[split + 4..];
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(dechunk(body));
    }
    Ok(body.to_vec())
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}
