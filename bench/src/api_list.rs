//! `unicell bench api-list`: `GET /servers/detail?limit=L` paged through the Nova API over
//! each store, against the store call it makes.
//!
//! For each candidate: a fresh store gets N generated instances (the same as `bench list`;
//! the SQL baseline in cells mode gets `--cells` cell databases), then a Nova API server is
//! started in this process on a loopback port over that store, and the whole listing is
//! paged through over HTTP/1.1 (`GET /v2.1/servers/detail?all_tenants=1&limit=L&marker=...`,
//! token `admin`, microversion 2.1, keep-alive connection), newest first. For every page
//! the store call the API makes for it (`list_instances` with the same marker and limit) is
//! timed right next to it, the order alternating page by page so that neither gets the
//! warmer cache every time. Every run checks that the API listed exactly N distinct servers.
//!
//! Figures: p50/p99 per page over HTTP and of the store call, overall and per depth bucket;
//! the API's overhead per page (HTTP time minus the store time of the same page: routing,
//! auth, query parsing, the JSON view of every server, serialization and the loopback
//! round trip), p50 and p99.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use unicell::api::{ApiConfig, ApiState, Server};
use unicell::model::{FlavorId, InstanceId, ListQuery, MAX_LIMIT};
use unicell::sim::listing;
use unicell::store::prelude::*;

use crate::candidate::{self, candidates, open_store, run_tag, run_url};
use crate::error::{Context, Result, bail};
use crate::report;
use crate::stats::{Latency, Summary, Table, fmt_ms};
use crate::{Common, knob, progress};

/// Options of `unicell bench api-list` (`None`: the quick or the full default).
#[derive(Debug, Clone)]
pub struct ApiListOptions {
    /// Common options.
    pub common: Common,
    /// Instances to load into each candidate [default: 1000000; quick: 2000].
    pub instances: Option<usize>,
    /// Cell databases of the SQL baseline in cells mode [default: 4].
    pub cells: usize,
    /// Page size [default: 1000; quick: 100].
    pub limit: Option<u32>,
    /// Concurrent writers while loading.
    pub load_concurrency: usize,
    /// Number of page-depth buckets in the report.
    pub depth_buckets: usize,
}

#[derive(Debug, Serialize)]
struct Params {
    instances: usize,
    sql_cells: usize,
    limit: u32,
    microversion: &'static str,
    load_concurrency: usize,
    depth_buckets: usize,
    warmup_pages: usize,
    seed: u64,
    quick: bool,
    candidates: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct DepthBucket {
    first_page: usize,
    last_page: usize,
    http: Summary,
    store: Summary,
    overhead: Summary,
}

#[derive(Debug, Clone, Serialize)]
struct Run {
    candidate: String,
    load_seconds: f64,
    pages: usize,
    listed: usize,
    /// Bytes of JSON per full page (median).
    page_bytes_p50: usize,
    http: Summary,
    store: Summary,
    /// HTTP minus store, page by page.
    overhead: Summary,
    by_depth: Vec<DepthBucket>,
}

#[derive(Debug, Serialize)]
struct Results {
    runs: Vec<Run>,
}

const WARMUP_PAGES: usize = 3;

/// One page as measured.
#[derive(Clone, Copy)]
struct Page {
    http: Duration,
    store: Duration,
    bytes: usize,
}

/// Runs the benchmark.
pub async fn run(global_store: &str, a: ApiListOptions) -> Result<()> {
    let quick = a.common.quick;
    let n = knob(a.instances, quick, 2_000, 1_000_000);
    let limit = knob(a.limit, quick, 100, 1000);
    if n == 0 {
        bail!(Invalid, "--instances must be at least 1");
    }
    if limit == 0 || limit > MAX_LIMIT {
        bail!(Invalid, "--limit must be between 1 and {MAX_LIMIT} (Nova's max_limit), got {limit}");
    }
    if a.depth_buckets == 0 || a.cells == 0 {
        bail!(Invalid, "--depth-buckets and --cells must be at least 1");
    }
    let cands = candidates(global_store, &a.common)?;
    let env = report::Environment::capture();
    let tag = run_tag();
    println!("bench api-list: {n} instances, limit {limit}, {} candidate(s), {} build", cands.len(), env.build);
    for line in candidate::durability_lines(&cands) {
        println!("  durability: {line}");
    }
    let flavor = FlavorId::new("m1.small")?;
    let mut runs = Vec::new();
    for (i, cand) in cands.iter().enumerate() {
        let url = run_url(cand, &format!("{tag}_a{i}"), Some(a.cells))?;
        let cells = listing::list_cells(a.common.seed, if cand.is_sql_cells() { a.cells } else { 1 });
        let result = async {
            let store = open_store(&url).await?;
            let load_seconds =
                crate::list::load(&store, cand, &cells, n, a.common.seed, &flavor, a.load_concurrency).await?;
            let pages = measure(store, n, limit).await?;
            Ok::<_, crate::Error>((load_seconds, pages))
        }
        .await;
        candidate::cleanup(cand, &url).await;
        let (load_seconds, pages) = result.with_context(|| format!("candidate {}", cand.label))?;
        let summary = |f: fn(&Page) -> Duration, slice: &[Page]| {
            let mut l = Latency::new();
            for p in slice {
                l.record(f(p));
            }
            l.summary()
        };
        let http = |p: &Page| p.http;
        let store = |p: &Page| p.store;
        let overhead = |p: &Page| p.http.saturating_sub(p.store);
        let buckets = a.depth_buckets.min(pages.len()).max(1);
        let by_depth = (0..buckets)
            .map(|b| {
                let from = b * pages.len() / buckets;
                let to = ((b + 1) * pages.len() / buckets).max(from + 1).min(pages.len());
                let slice = &pages[from..to];
                DepthBucket {
                    first_page: from + 1 + WARMUP_PAGES,
                    last_page: to + WARMUP_PAGES,
                    http: summary(http, slice),
                    store: summary(store, slice),
                    overhead: summary(overhead, slice),
                }
            })
            .collect();
        let mut sizes: Vec<usize> = pages.iter().map(|p| p.bytes).collect();
        sizes.sort_unstable();
        let r = Run {
            candidate: cand.label.clone(),
            load_seconds,
            pages: pages.len(),
            listed: n,
            page_bytes_p50: sizes.get(sizes.len() / 2).copied().unwrap_or(0),
            http: summary(http, &pages),
            store: summary(store, &pages),
            overhead: summary(overhead, &pages),
            by_depth,
        };
        println!(
            "  {:<40} loaded {n} in {:.1} s; {} pages: HTTP p50 {} ms p99 {} ms, store p50 {} ms p99 {} ms, \
             API overhead p50 {} ms p99 {} ms",
            r.candidate,
            r.load_seconds,
            r.pages,
            fmt_ms(r.http.p50_ms),
            fmt_ms(r.http.p99_ms),
            fmt_ms(r.store.p50_ms),
            fmt_ms(r.store.p99_ms),
            fmt_ms(r.overhead.p50_ms),
            fmt_ms(r.overhead.p99_ms)
        );
        runs.push(r);
    }

    let mut t =
        Table::new(["candidate", "pages", "HTTP p50", "HTTP p99", "store p50", "store p99", "API p50", "API p99"]);
    for r in &runs {
        t.row([
            r.candidate.clone(),
            r.pages.to_string(),
            fmt_ms(r.http.p50_ms),
            fmt_ms(r.http.p99_ms),
            fmt_ms(r.store.p50_ms),
            fmt_ms(r.store.p99_ms),
            fmt_ms(r.overhead.p50_ms),
            fmt_ms(r.overhead.p99_ms),
        ]);
    }
    println!("\nper page of {limit} (ms; API = HTTP minus store, page by page):\n{}", t.render());
    let mut d = Table::new(["candidate", "pages", "HTTP p50", "HTTP p99", "store p50", "API p50"]);
    for r in &runs {
        for b in &r.by_depth {
            d.row([
                r.candidate.clone(),
                format!("{}-{}", b.first_page, b.last_page),
                fmt_ms(b.http.p50_ms),
                fmt_ms(b.http.p99_ms),
                fmt_ms(b.store.p50_ms),
                fmt_ms(b.overhead.p50_ms),
            ]);
        }
    }
    println!("by depth:\n{}", d.render());

    let rep = report::Report {
        durability: candidate::durabilities(&cands),
        bench: "api-list",
        parameters: Params {
            instances: n,
            sql_cells: a.cells,
            limit,
            microversion: "2.1",
            load_concurrency: a.load_concurrency,
            depth_buckets: a.depth_buckets,
            warmup_pages: WARMUP_PAGES,
            seed: a.common.seed,
            quick,
            candidates: cands.iter().map(|c| c.label.clone()).collect(),
        },
        environment: env,
        results: Results { runs },
        notes: vec![
            "The API server runs in this process on a loopback port; the client is a blocking \
             HTTP/1.1 client on its own thread with one keep-alive connection."
                .to_string(),
        ],
    };
    let json = report::write_json(&a.common.out, "api-list", &rep)?;
    println!("\nwrote {} (no chart: the page latencies are in the JSON and the tables above)", json.display());
    Ok(())
}

/// Serves the Nova API over `store` on a loopback port and pages through every server over
/// HTTP, timing each page and the store call behind it.
async fn measure(store: Arc<dyn Store>, n: usize, limit: u32) -> Result<Vec<Page>> {
    let config = ApiConfig { nova_listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..ApiConfig::default() };
    let state = ApiState::new(store.clone(), config, None).await.context("starting the Nova API")?;
    let server = Server::bind(state).await.context("binding the Nova API")?;
    let addr = server.nova_addr().ok_or_else(|| crate::Error::Failed("the Nova API has no address".into()))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let handle = tokio::runtime::Handle::current();
    let bar = progress::bar("api-list pages", n.div_ceil(limit as usize) as u64);
    let paged = tokio::task::spawn_blocking(move || page_through(&handle, &store, addr, n, limit, &bar))
        .await
        .map_err(|e| crate::Error::Failed(format!("the paging thread: {e}")))?;
    let _ = stop.send(());
    let _ = serving.await;
    paged
}

fn page_through(
    handle: &tokio::runtime::Handle,
    store: &Arc<dyn Store>,
    addr: SocketAddr,
    n: usize,
    limit: u32,
    bar: &tracing::Span,
) -> Result<Vec<Page>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut marker: Option<String> = None;
    let mut seen: HashSet<String> = HashSet::with_capacity(n);
    let mut pages = Vec::new();
    let mut index = 0usize;
    loop {
        let url = match &marker {
            None => format!("http://{addr}/v2.1/servers/detail?all_tenants=1&limit={limit}"),
            Some(m) => format!("http://{addr}/v2.1/servers/detail?all_tenants=1&limit={limit}&marker={m}"),
        };
        let query = ListQuery {
            limit: Some(limit),
            marker: match &marker {
                None => None,
                Some(m) => Some(
                    m.parse::<InstanceId>()
                        .map_err(|e| crate::Error::Failed(format!("marker {m} is not a uuid: {e}")))?,
                ),
            },
            ..Default::default()
        };
        let time_store = || -> Result<Duration> {
            let t = Instant::now();
            handle.block_on(store.list_instances(&query))?;
            Ok(t.elapsed())
        };
        let time_http = || -> Result<(Duration, String)> {
            let t = Instant::now();
            let mut resp = agent
                .get(&url)
                .header("X-Auth-Token", "admin")
                .call()
                .map_err(|e| crate::Error::Failed(format!("GET {url}: {e}")))?;
            let status = resp.status().as_u16();
            let body = resp
                .body_mut()
                .with_config()
                .limit(256 << 20)
                .read_to_string()
                .map_err(|e| crate::Error::Failed(format!("reading {url}: {e}")))?;
            let took = t.elapsed();
            if status != 200 {
                bail!(Failed, "GET {url}: {status}: {}", body.chars().take(300).collect::<String>());
            }
            Ok((took, body))
        };
        let (http, body, store_took) = if index.is_multiple_of(2) {
            let (h, b) = time_http()?;
            (h, b, time_store()?)
        } else {
            let s = time_store()?;
            let (h, b) = time_http()?;
            (h, b, s)
        };
        let doc: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| crate::Error::Failed(format!("page is not JSON: {e}")))?;
        let servers = doc["servers"].as_array().cloned().unwrap_or_default();
        for s in &servers {
            let id = s["id"].as_str().unwrap_or_default().to_string();
            if !seen.insert(id.clone()) {
                bail!(Failed, "server {id} was listed twice");
            }
        }
        if index >= WARMUP_PAGES {
            pages.push(Page { http, store: store_took, bytes: body.len() });
        }
        index += 1;
        progress::inc(bar, 1);
        let next = doc["servers_links"].as_array().and_then(|l| l.first()).and_then(|l| l["href"].as_str());
        match (next, servers.last()) {
            (Some(_), Some(last)) => marker = last["id"].as_str().map(str::to_string),
            _ => break,
        }
    }
    if seen.len() != n {
        bail!(Failed, "the API listed {} servers but {n} were loaded", seen.len());
    }
    Ok(pages)
}
