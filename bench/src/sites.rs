//! `unicell bench sites`: how each design degrades as sites and inter-site latency grow.
//!
//! Model: S sites; the store's endpoint (Redis, or the SQL baseline's API database) sits in
//! site 0, the SQL baseline's cell database i in site i % S (each cell database gets its own
//! `cell_url=`), and clients (API workers, schedulers) are spread evenly over the S sites. An
//! endpoint in the client's own site is reached directly; any other goes through a
//! [`DelayProxy`] adding the one-way delay d in each direction (every round trip costs 2d
//! more). For each (S, d) the benchmark measures,
//! from a client in each site in turn, `pages` list pages (limit L, from the top) and
//! `claims` claims; the samples of all sites are merged (the experience of a random client).
//! A design that needs more sequential round trips per operation (a SQL cells list queries
//! the instance mappings, then every cell) degrades faster than one answering in one.
//!
//! The data (cells, instances, provider trees) is loaded once per candidate, directly.
//! `memory://` has no network and is skipped with a message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Context, Result, bail};
use futures::StreamExt;
use serde::Serialize;
use unicell::model::*;
use unicell::sim::listing;
use unicell::store::prelude::*;
use unicell::store::{Scheme, StoreUrl};

use crate::candidate::{self, Candidate, candidates, open_store, run_tag, run_url};
use crate::chart::{self, Panel, Series};
use crate::proxy::DelayProxy;
use crate::report::{self, print_outputs};
use crate::stats::{Latency, Summary, Table, fmt_ms, fmt_ratio, ratio};
use crate::{Common, knob, list_knob, progress};

/// Options of `unicell bench sites` (`None` or empty: the quick or the full default).
#[derive(Debug, Clone)]
pub struct SitesOptions {
    /// Common options.
    pub common: Common,
    /// Site counts to run [default: 1,2,4; quick: 1,2].
    pub sites: Vec<usize>,
    /// One-way delays between sites in milliseconds [default: 0,1,5,20; quick: 0,2].
    pub delays_ms: Vec<f64>,
    /// Cells (spread round-robin over the sites) [default: 8; quick: 4].
    pub cells: Option<usize>,
    /// Instances loaded once per candidate [default: 20000; quick: 1000].
    pub instances: Option<usize>,
    /// Page size [default: 1000; quick: 100].
    pub limit: Option<u32>,
    /// List pages measured per point [default: 10; quick: 3].
    pub pages: Option<usize>,
    /// Claims measured per point [default: 50; quick: 10].
    pub claims: Option<usize>,
}

#[derive(Debug, Serialize)]
struct Params {
    sites: Vec<usize>,
    delays_ms: Vec<f64>,
    cells: usize,
    instances: usize,
    limit: u32,
    pages_per_client: usize,
    claims_per_client: usize,
    seed: u64,
    quick: bool,
    candidates: Vec<String>,
    model: &'static str,
}

#[derive(Debug, Clone, Serialize)]
struct Point {
    candidate: String,
    sites: usize,
    delay_ms: f64,
    /// List page latency, all client sites' samples merged (a random client's view).
    list_page: Summary,
    /// Claim latency, all client sites' samples merged.
    claim: Summary,
    /// List page latency of each client site (index = site).
    list_page_by_site: Vec<Summary>,
    /// Claim latency of each client site.
    claim_by_site: Vec<Summary>,
    /// The highest per-site list p50: what the worst-placed client sees.
    list_p50_worst_site: f64,
    /// The highest per-site claim p50.
    claim_p50_worst_site: f64,
    /// list_p50_worst_site / this candidate's at the first point (fewest sites, smallest
    /// delay).
    list_worst_vs_base: Option<f64>,
    /// claim_p50_worst_site / this candidate's at the first point.
    claim_worst_vs_base: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Results {
    points: Vec<Point>,
    skipped: Vec<String>,
}

const MODEL: &str = "the store's endpoint (Redis; the SQL API database) is in site 0 and the SQL \
                     baseline's cell database i in site i % S; clients are spread evenly over \
                     the sites; an endpoint outside the client's site is reached through a \
                     delaying TCP proxy (the one-way delay in each direction)";
const TREES: usize = 16;

/// Runs the benchmark.
pub async fn run(global_store: &str, a: SitesOptions) -> Result<()> {
    let quick = a.common.quick;
    let sites = list_knob(&a.sites, quick, &[1, 2], &[1, 2, 4]);
    let delays = list_knob(&a.delays_ms, quick, &[0.0, 2.0], &[0.0, 1.0, 5.0, 20.0]);
    let cells = knob(a.cells, quick, 4, 8);
    let n = knob(a.instances, quick, 1_000, 20_000);
    let limit = knob(a.limit, quick, 100, 1000);
    let pages = knob(a.pages, quick, 3, 10);
    let claims = knob(a.claims, quick, 10, 50);
    if sites.contains(&0) || cells == 0 || n == 0 || pages == 0 || claims == 0 {
        bail!(Invalid, "--sites values, --cells, --instances, --pages and --claims must be at least 1");
    }
    if delays.iter().any(|d| !d.is_finite() || *d < 0.0 || *d > 10_000.0) {
        bail!(Invalid, "--delays-ms values must be between 0 and 10000, got {delays:?}");
    }
    if limit == 0 || limit > MAX_LIMIT {
        bail!(Invalid, "--limit must be between 1 and {MAX_LIMIT}, got {limit}");
    }
    let explicit = !a.common.stores.is_empty();
    let all = candidates(global_store, &a.common)?;
    let env = report::Environment::capture();
    let mut notes = vec![format!("model: {MODEL}")];
    let mut skipped = Vec::new();
    let mut cands: Vec<Candidate> = Vec::new();
    for c in all {
        if c.is_networked() {
            cands.push(c);
        } else {
            let msg = format!(
                "{}: skipped: an in-process store has no network to put latency on; pass a \
                 networked store URL (redis://, mysql://, ...) with --stores",
                c.label
            );
            println!("{msg}");
            skipped.push(msg);
        }
    }
    if cands.is_empty()
        && quick
        && !explicit
        && let Some(c) = local_redis().await
    {
        let msg = format!("--quick without networked stores: using the local Redis at {} (own key prefix)", c.label);
        println!("{msg}");
        notes.push(msg);
        cands.push(c);
    }
    let params = Params {
        sites: sites.clone(),
        delays_ms: delays.clone(),
        cells,
        instances: n,
        limit,
        pages_per_client: pages,
        claims_per_client: claims,
        seed: a.common.seed,
        quick,
        candidates: cands.iter().map(|c| c.label.clone()).collect(),
        model: MODEL,
    };
    if cands.is_empty() {
        let msg = "bench sites: nothing to measure: no networked candidate (and no local Redis \
                   answering on 127.0.0.1:6379 for --quick); wrote an empty report";
        println!("{msg}");
        notes.push(msg.to_string());
        let rep = report::Report {
            bench: "sites",
            parameters: params,
            environment: env,
            durability: crate::candidate::durabilities(&cands),
            results: Results { points: Vec::new(), skipped },
            notes,
        };
        let json = report::write_json(&a.common.out, "sites", &rep)?;
        let svg = chart::lines(&a.common.out, "sites", "bench sites: skipped (no networked store)", &[])?;
        print_outputs(&json, &svg);
        return Ok(());
    }
    println!(
        "bench sites: sites {sites:?}, one-way delays {delays:?} ms, {cells} cells, {n} \
         instances, limit {limit}, {} candidate(s), {} build",
        cands.len(),
        env.build
    );
    let tag = run_tag();
    let total_claims = sites.iter().sum::<usize>() * delays.len() * claims;
    let mut points = Vec::new();
    for (i, cand) in cands.iter().enumerate() {
        let url = run_url(cand, &format!("{tag}_n{i}"), Some(cells))?;
        let endpoint = endpoint_of(&url).with_context(|| format!("cannot put a proxy in front of {}", cand.label))?;
        let url = if cand.is_sql_cells() {
            // Name every cell database explicitly so that each can be routed on its own.
            explicit_cells(&url, cells, |_| None)?
        } else {
            url
        };
        let trees = {
            let store = open_store(&url).await?;
            load(&store, cand, a.common.seed, cells, n, total_claims)
                .await
                .with_context(|| format!("loading {}", cand.label))?
        };
        let first = points.len();
        let bar = progress::bar(&format!("sites {}", cand.scheme), (sites.iter().sum::<usize>() * delays.len()) as u64);
        for &s in &sites {
            for &d in &delays {
                let mut list = Latency::new();
                let mut claim = Latency::new();
                let (mut list_by_site, mut claim_by_site) = (Vec::new(), Vec::new());
                for client_site in 0..s {
                    let delay = if client_site == 0 { Duration::ZERO } else { Duration::from_secs_f64(d / 1000.0) };
                    let proxy = DelayProxy::start(&endpoint, delay).await?;
                    let purl = site_url(cand, &url, cells, s, client_site, proxy.addr())?;
                    let store = open_store(&purl).await?;
                    let (mut l, mut c) = (Latency::new(), Latency::new());
                    measure(&store, limit, pages, claims, &trees, &mut l, &mut c).await.with_context(|| {
                        format!("{} with {s} sites, {d} ms, client in site {client_site}", cand.label)
                    })?;
                    list.merge(&l);
                    claim.merge(&c);
                    list_by_site.push(l.summary());
                    claim_by_site.push(c.summary());
                    drop(store);
                    drop(proxy);
                    progress::inc(&bar, 1);
                }
                let (l, c) = (list.summary(), claim.summary());
                let worst = |v: &[Summary]| v.iter().map(|s| s.p50_ms).fold(0.0, f64::max);
                let (lw, cw) = (worst(&list_by_site), worst(&claim_by_site));
                println!(
                    "  {:<40} sites={s} delay={d:>5} ms  list p50 worst site {} ms (all {} ms)  claim p50 worst \
                     site {} ms (all {} ms)",
                    cand.label,
                    fmt_ms(lw),
                    fmt_ms(l.p50_ms),
                    fmt_ms(cw),
                    fmt_ms(c.p50_ms)
                );
                points.push(Point {
                    candidate: cand.label.clone(),
                    sites: s,
                    delay_ms: d,
                    list_page: l,
                    claim: c,
                    list_page_by_site: list_by_site,
                    claim_by_site,
                    list_p50_worst_site: lw,
                    claim_p50_worst_site: cw,
                    list_worst_vs_base: None,
                    claim_worst_vs_base: None,
                });
            }
        }
        drop(bar);
        candidate::cleanup(cand, &url).await;
        let (bl, bc) = (points[first].list_p50_worst_site, points[first].claim_p50_worst_site);
        for p in &mut points[first..] {
            p.list_worst_vs_base = ratio(p.list_p50_worst_site, bl);
            p.claim_worst_vs_base = ratio(p.claim_p50_worst_site, bc);
        }
    }

    let mut t = Table::new([
        "candidate",
        "sites",
        "delay ms",
        "list p50 worst",
        "list mean all",
        "claim p50 worst",
        "claim mean all",
        "list/base",
        "claim/base",
    ]);
    for p in &points {
        t.row([
            p.candidate.clone(),
            p.sites.to_string(),
            format!("{}", p.delay_ms),
            fmt_ms(p.list_p50_worst_site),
            fmt_ms(p.list_page.mean_ms),
            fmt_ms(p.claim_p50_worst_site),
            fmt_ms(p.claim.mean_ms),
            fmt_ratio(p.list_worst_vs_base),
            fmt_ratio(p.claim_worst_vs_base),
        ]);
    }
    println!(
        "\nlatency in ms: \"worst\" = p50 of the worst-placed client site, \"mean all\" = mean over every \
         client site's samples; ratios = worst-site p50 / the same candidate's at the first point (fewest \
         sites, smallest delay)\n{}",
        t.render()
    );

    let max_s = sites.iter().copied().max().unwrap_or(1);
    let mut list_series = Vec::new();
    let mut claim_series = Vec::new();
    for (ci, cand) in cands.iter().enumerate() {
        for &s in &sites {
            let pts = |f: fn(&Point) -> f64| -> Vec<(f64, f64)> {
                points
                    .iter()
                    .filter(|p| p.candidate == cand.label && p.sites == s)
                    .map(|p| (p.delay_ms, f(p)))
                    .collect()
            };
            let name = format!("{} S={s}", cand.scheme);
            list_series.push(Series {
                name: name.clone(),
                points: pts(|p| p.list_p50_worst_site),
                color: ci,
                dashed: s != max_s,
            });
            claim_series.push(Series { name, points: pts(|p| p.claim_p50_worst_site), color: ci, dashed: s != max_s });
        }
    }
    let rep = report::Report {
        bench: "sites",
        parameters: params,
        environment: env,
        durability: crate::candidate::durabilities(&cands),
        results: Results { points: points.clone(), skipped },
        notes,
    };
    let json = report::write_json(&a.common.out, "sites", &rep)?;
    let svg = chart::lines(
        &a.common.out,
        "sites",
        &format!("bench sites: worst-placed client p50 vs one-way delay (solid: {max_s} sites)"),
        &[
            Panel {
                title: format!("list page (limit {limit})"),
                x_label: "one-way delay between sites (ms)".into(),
                y_label: "ms (log)".into(),
                log_y: true,
                series: list_series,
            },
            Panel {
                title: "claim".into(),
                x_label: "one-way delay between sites (ms)".into(),
                y_label: "ms (log)".into(),
                log_y: true,
                series: claim_series,
            },
        ],
    )?;
    chart::footer(&svg, &crate::candidate::durability_lines(&cands))?;
    print_outputs(&json, &svg);
    Ok(())
}

/// `redis://127.0.0.1:6379` when this build knows Redis and something answers there.
async fn local_redis() -> Option<Candidate> {
    if !Scheme::Redis.is_enabled() {
        return None;
    }
    let reachable = tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect("127.0.0.1:6379"))
        .await
        .is_ok_and(|r| r.is_ok());
    if !reachable {
        return None;
    }
    let url = "redis://127.0.0.1:6379";
    let durability = crate::durability::read(url, &[], None).await;
    Some(Candidate::new(url.into(), url.into(), Scheme::Redis, durability))
}

/// `host:port` of a single-endpoint store URL (default ports per scheme).
fn endpoint_of(url: &str) -> Result<String> {
    let u = StoreUrl::parse(url)?;
    let e = u.expose();
    let host =
        e.host_str().filter(|h| !h.is_empty()).ok_or_else(|| crate::Error::Invalid(format!("{u} names no host")))?;
    let port = e.port().or(u.scheme().default_port());
    let port = port.ok_or_else(|| crate::Error::Invalid(format!("{u} names no port")))?;
    Ok(format!("{host}:{port}"))
}

/// `url` pointed at `addr` instead of its own host and port.
fn proxied(url: &str, addr: std::net::SocketAddr) -> Result<String> {
    let mut u = StoreUrl::parse(url)?.expose().clone();
    u.set_host(Some(&addr.ip().to_string()))
        .map_err(|e| crate::Error::Invalid(format!("cannot rewrite the store URL's host: {e}")))?;
    u.set_port(Some(addr.port())).map_err(|_| crate::Error::Invalid("cannot rewrite the store URL's port".into()))?;
    Ok(u.to_string())
}

/// The URL a client in `client_site` uses: endpoints in its own site directly, the others
/// through `proxy`. The store's single endpoint (Redis, the SQL API database) is in site 0;
/// the SQL baseline's cell database `i` is in site `i % sites`.
fn site_url(
    cand: &Candidate,
    url: &str,
    cells: usize,
    sites: usize,
    client_site: usize,
    proxy: std::net::SocketAddr,
) -> Result<String> {
    let main = if client_site == 0 { url.to_string() } else { proxied(url, proxy)? };
    if !cand.is_sql_cells() {
        return Ok(main);
    }
    explicit_cells(&main, cells, |i| (i % sites.max(1) != client_site).then_some(proxy))
}

/// A SQL cells-mode URL with one explicit `cell_url=` per cell (database `<api db>_cell<i>`,
/// the names the backend gives with `cells=N`), each pointed at `route(i)` when that is set.
/// Existing `cell_url`s are kept as they are.
fn explicit_cells(url: &str, cells: usize, route: impl Fn(usize) -> Option<std::net::SocketAddr>) -> Result<String> {
    let parsed = StoreUrl::parse(url)?;
    if parsed.param("cell_url").is_some() {
        return Ok(url.to_string());
    }
    let base = parsed.expose().clone();
    let db = base.path().trim_matches('/').to_string();
    let mut out = base.clone();
    out.set_query(None);
    {
        let mut q = out.query_pairs_mut();
        for (k, v) in base.query_pairs() {
            if k != "cells" {
                q.append_pair(&k, &v);
            }
        }
        for i in 0..cells {
            let mut cell = base.clone();
            cell.set_query(None);
            cell.set_path(&format!("/{db}_cell{i}"));
            let cell = match route(i) {
                Some(addr) => proxied(cell.as_str(), addr)?,
                None => cell.to_string(),
            };
            q.append_pair("cell_url", &cell);
        }
    }
    Ok(out.to_string())
}

/// Loads cells, instances and the claim trees; returns the trees' roots.
async fn load(
    store: &Arc<dyn Store>,
    cand: &Candidate,
    seed: u64,
    cells: usize,
    n: usize,
    total_claims: usize,
) -> Result<Vec<ProviderId>> {
    let cell_list = listing::list_cells(seed, cells);
    for c in &cell_list {
        store.put_cell(c).await.context("put_cell")?;
    }
    let flavor = FlavorId::new("m1.small")?;
    let bar = progress::bar(&format!("load {}", cand.scheme), n as u64);
    let mut stream = futures::stream::iter((0..n).map(|i| {
        let (store, bar, cell_list, flavor) = (store, &bar, &cell_list, &flavor);
        async move {
            store.create_instance(&listing::list_instance(seed, i as u64, cell_list, flavor)).await?;
            progress::inc(bar, 1);
            Ok::<_, crate::Error>(())
        }
    }))
    .buffer_unordered(32);
    while let Some(r) = stream.next().await {
        r?;
    }
    let per_tree = (total_claims / TREES + 2) as i64 * 2;
    let mut roots = Vec::new();
    let tag = run_tag();
    for t in 0..TREES {
        let id = ProviderId::new_v4();
        store
            .create_provider(&NewProvider {
                id,
                name: format!("sites-{tag}-{t}"),
                parent: None,
                cell: Some(cell_list[t % cell_list.len()].id),
                inventories: BTreeMap::from([
                    (ResourceClass::Vcpu, Inventory::with_total(per_tree)),
                    (ResourceClass::MemoryMb, Inventory::with_total(per_tree * 64)),
                ]),
                traits: Default::default(),
                aggregates: Default::default(),
            })
            .await
            .context("create_provider")?;
        roots.push(id);
    }
    Ok(roots)
}

/// Reads `pages` pages from the top and makes `claims` claims, recording latencies.
async fn measure(
    store: &Arc<dyn Store>,
    limit: u32,
    pages: usize,
    claims: usize,
    trees: &[ProviderId],
    list: &mut Latency,
    claim: &mut Latency,
) -> Result<()> {
    let mut marker = None;
    for _ in 0..pages {
        let t = Instant::now();
        let page = store.list_instances(&ListQuery { limit: Some(limit), marker, ..Default::default() }).await?;
        list.record(t.elapsed());
        marker = page.next_marker;
        if marker.is_none() {
            break;
        }
    }
    for k in 0..claims {
        let req = ClaimRequest {
            consumer: ConsumerId::new_v4(),
            project_id: "bench".into(),
            user_id: "bench".into(),
            allocations: BTreeMap::from([(
                trees[k % trees.len()],
                BTreeMap::from([(ResourceClass::Vcpu, 1), (ResourceClass::MemoryMb, 64)]),
            )]),
            group: None,
        };
        let t = Instant::now();
        store.claim(&req).await?;
        claim.record(t.elapsed());
    }
    Ok(())
}
