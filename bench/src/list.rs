//! `unicell bench list`: the instance list, paged, at scale, unfiltered and filtered.
//!
//! For each cell count C and each candidate: a fresh store (namespace) gets the same N
//! generated instances spread over C cells (loaded concurrently with bulk loads of
//! [`LOAD_BATCH`] instances, with a progress bar); then, for each workload, the whole
//! listing of every candidate is paged through with limit L, newest first, timing every
//! page, the candidates taking turns page by page so that the shared machine's noise falls
//! on all of them alike. A few warm-up pages are read first and not recorded. Every run
//! checks that paging returned exactly the instances the workload's filter selects from the
//! generated data (computed independently), so a fast but wrong store cannot win.
//!
//! Workloads ([`Workload`]): `all` (the admin's unfiltered list), `project` (a member
//! listing their own project's servers, one project of 50), `status` (vm_state ERROR, 5%),
//! `host` (one compute host's servers, as `nova list --host`), `changes-since` (instances
//! changed since the median creation time: the newer half).
//!
//! Figures: p50/p99 page latency overall, per page-depth bucket (is a deep page as cheap as
//! the first?), and per C (does the cell count matter?); ratios of each candidate's p50 to
//! the best single store's p50 at the same C, deepest/first bucket p50, and largest/smallest
//! C p50.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Context, Result, bail};
use futures::StreamExt;
use serde::Serialize;
use unicell::model::{FlavorId, InstanceFilters, InstanceId, ListQuery, MAX_LIMIT, Timestamp, VmState};
use unicell::sim::listing;
use unicell::store::prelude::*;

use crate::candidate::{self, Candidate, candidates, open_store, run_tag, run_url};
use crate::chart::{self, Panel, Series};
use crate::report::{self, print_outputs};
use crate::stats::{Latency, Summary, Table, fmt_ms, fmt_ratio, ratio};
use crate::{Common, knob, list_knob, progress};

/// Options of `unicell bench list` (`None` or empty: the quick or the full default).
#[derive(Debug, Clone)]
pub struct ListOptions {
    /// Common options.
    pub common: Common,
    /// Instances to load into each candidate [default: 100000; quick: 3000].
    pub instances: Option<usize>,
    /// Cell counts to run [default: 1,4,16,64; quick: 1,4].
    pub cells: Vec<usize>,
    /// Page size [default: 1000; quick: 100].
    pub limit: Option<u32>,
    /// Concurrent writers while loading.
    pub load_concurrency: usize,
    /// Number of page-depth buckets in the report.
    pub depth_buckets: usize,
    /// Workloads to run [default: all of them].
    pub workloads: Vec<Workload>,
}

/// Instances per bulk-load call ([`Instances::create_instances`]).
pub const LOAD_BATCH: usize = 1000;

/// A listing workload: which filter the pages carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// No filter (an admin listing everything).
    All,
    /// One project's servers (a member's own listing).
    Project,
    /// vm_state ERROR.
    Status,
    /// One compute host's servers.
    Host,
    /// Changed since the median creation time.
    ChangesSince,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 5] =
        [Workload::All, Workload::Project, Workload::Status, Workload::Host, Workload::ChangesSince];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::All => "all",
            Workload::Project => "project",
            Workload::Status => "status",
            Workload::Host => "host",
            Workload::ChangesSince => "changes-since",
        }
    }

    /// Parses [`name`](Self::name).
    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }

    /// The filter of this workload over `n` generated instances in `cells`.
    fn filters(self, n: usize, cells: &[unicell::model::Cell]) -> InstanceFilters {
        let mut f = InstanceFilters::default();
        match self {
            Workload::All => {}
            Workload::Project => f.project_id = Some("project7".into()),
            Workload::Status => f.vm_states = vec![VmState::Error],
            Workload::Host => f.host = Some(format!("{}-host00007", cells[0].name)),
            Workload::ChangesSince => {
                // The generator's clock: 2026-01-01 plus 1 ms per group of four.
                f.changes_since = Some(Timestamp::from_micros(1_767_225_600_000_000 + (n / 2 / 4) as i64 * 1000));
            }
        }
        f
    }
}

/// Parameters as reported.
#[derive(Debug, Serialize)]
struct Params {
    instances: usize,
    cells: Vec<usize>,
    limit: u32,
    load_concurrency: usize,
    depth_buckets: usize,
    workloads: Vec<Workload>,
    load_batch: usize,
    warmup_pages: usize,
    seed: u64,
    quick: bool,
    candidates: Vec<String>,
}

/// One depth bucket of one run.
#[derive(Debug, Clone, Serialize)]
struct DepthBucket {
    first_page: usize,
    last_page: usize,
    latency: Summary,
}

/// One (candidate, C) run.
#[derive(Debug, Clone, Serialize)]
struct Run {
    candidate: String,
    workload: Workload,
    /// The workload's filter, as text.
    filter: String,
    cells: usize,
    load_seconds: f64,
    loads_per_second: f64,
    pages: usize,
    listed: usize,
    latency: Summary,
    by_depth: Vec<DepthBucket>,
    /// p50 of the deepest bucket / p50 of the first bucket.
    deep_over_first_p50: Option<f64>,
}

#[derive(Debug, Serialize)]
struct RatioRow {
    candidate: String,
    workload: Workload,
    cells: usize,
    /// This candidate's overall p50 / the reference's overall p50 at the same C.
    p50_over_reference: Option<f64>,
    /// The same for p99.
    p99_over_reference: Option<f64>,
    reference: String,
    /// This candidate's p50 / the best networked single store's (Redis, CQL, SQL single
    /// mode: not the in-process memory store) at the same C, when there is one.
    p50_over_networked: Option<f64>,
    networked_reference: Option<String>,
}

#[derive(Debug, Serialize)]
struct CellScaling {
    candidate: String,
    workload: Workload,
    from_cells: usize,
    to_cells: usize,
    /// p50 at the largest C / p50 at the smallest C.
    p50_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Results {
    runs: Vec<Run>,
    ratios_vs_best_single_store: Vec<RatioRow>,
    cell_scaling: Vec<CellScaling>,
}

const WARMUP_PAGES: usize = 3;

/// Runs the benchmark.
pub async fn run(global_store: &str, a: ListOptions) -> Result<()> {
    let quick = a.common.quick;
    let n = knob(a.instances, quick, 3_000, 100_000);
    let cells = list_knob(&a.cells, quick, &[1, 4], &[1, 4, 16, 64]);
    let limit = knob(a.limit, quick, 100, 1000);
    if n == 0 {
        bail!(Invalid, "--instances must be at least 1");
    }
    if cells.contains(&0) {
        bail!(Invalid, "--cells values must be at least 1 (got {cells:?})");
    }
    if limit == 0 || limit > MAX_LIMIT {
        bail!(Invalid, "--limit must be between 1 and {MAX_LIMIT} (the store contract's cap), got {limit}");
    }
    if a.depth_buckets == 0 {
        bail!(Invalid, "--depth-buckets must be at least 1");
    }
    let workloads = if a.workloads.is_empty() { Workload::ALL.to_vec() } else { a.workloads.clone() };
    let cands = candidates(global_store, &a.common)?;
    let env = report::Environment::capture();
    let tag = run_tag();
    println!(
        "bench list: {n} instances, cells {cells:?}, limit {limit}, workloads {}, {} candidate(s), {} build",
        workloads.iter().map(|w| w.name()).collect::<Vec<_>>().join(","),
        cands.len(),
        env.build
    );
    for c in &cands {
        println!("  {}: durability {}", c.label, c.durability.summary);
    }
    let flavor = FlavorId::new("m1.small")?;
    let mut runs = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for &c in &cells {
        let cell_list = listing::list_cells(a.common.seed, c);
        // Load every candidate first, then page through all of them in turn, one page each,
        // so that the machine's noise (it is shared) falls on every candidate alike.
        let mut loaded_stores = Vec::new();
        for (i, cand) in cands.iter().enumerate() {
            let url = run_url(cand, &format!("{tag}_l{c}_{i}"), Some(c))?;
            tracing::info!(candidate = %cand.label, cells = c, "loading {n} instances");
            // A candidate that fails to load is reported and left out of this cell count;
            // the others still run (their figures are still comparable with each other).
            let loaded = async {
                let store = open_store(&url).await?;
                let load_seconds =
                    load(&store, cand, &cell_list, n, a.common.seed, &flavor, a.load_concurrency).await?;
                Ok::<_, crate::Error>((load_seconds, store))
            }
            .await;
            match loaded {
                Ok((load_seconds, store)) => {
                    println!(
                        "  {:<40} C={c:<3} loaded {n} in {load_seconds:.1} s ({:.0}/s)",
                        cand.label,
                        n as f64 / load_seconds.max(1e-9)
                    );
                    loaded_stores.push((cand, url, load_seconds, store));
                }
                Err(e) => {
                    let msg =
                        format!("{} with {c} cells: FAILED to load, left out: {}", cand.label, crate::error::chain(&e));
                    println!("  {msg}");
                    failures.push(msg);
                    candidate::cleanup(cand, &url).await;
                }
            }
        }
        for &wl in &workloads {
            let filters = wl.filters(n, &cell_list);
            let expected = expected_count(&filters, n, a.common.seed, &cell_list, &flavor);
            let mut pagers = Vec::new();
            for (cand, _, load_seconds, store) in &loaded_stores {
                let mut pager = Pager::new(Arc::clone(store), limit, filters.clone());
                match pager.warm_up().await {
                    Ok(()) => pagers.push((*cand, *load_seconds, pager)),
                    Err(e) => {
                        let msg = format!(
                            "{} with {c} cells, workload {}: FAILED: {}",
                            cand.label,
                            wl.name(),
                            crate::error::chain(&e)
                        );
                        println!("  {msg}");
                        failures.push(msg);
                    }
                }
            }
            let bar = progress::bar(
                &format!("page {} C={c}", wl.name()),
                (pagers.len() * expected.div_ceil(limit as usize).max(1)) as u64,
            );
            loop {
                let mut stepped = false;
                for (cand, _, pager) in pagers.iter_mut().filter(|p| !p.2.done) {
                    pager
                        .step()
                        .await
                        .with_context(|| format!("paging {} with {c} cells, workload {}", cand.label, wl.name()))?;
                    progress::inc(&bar, 1);
                    stepped = true;
                }
                if !stepped {
                    break;
                }
            }
            drop(bar);
            for (cand, load_seconds, pager) in pagers {
                let listed = pager.seen.len();
                if listed != expected {
                    bail!(
                        Failed,
                        "{} listed {listed} instances with {c} cells for workload {} but the filter selects \
                         {expected} of the {n} loaded: the store skipped, repeated or misfiltered instances \
                         (or the namespace was not empty)",
                        cand.label,
                        wl.name()
                    );
                }
                let pages = pager.lat;
                let mut all = Latency::new();
                for p in &pages {
                    all.record(*p);
                }
                let by_depth = buckets(&pages, a.depth_buckets);
                let deep_over_first = match (by_depth.first(), by_depth.last()) {
                    (Some(f), Some(l)) if by_depth.len() > 1 => ratio(l.latency.p50_ms, f.latency.p50_ms),
                    _ => None,
                };
                let r = Run {
                    candidate: cand.label.clone(),
                    workload: wl,
                    filter: describe(&filters),
                    cells: c,
                    load_seconds,
                    loads_per_second: n as f64 / load_seconds.max(1e-9),
                    pages: pages.len(),
                    listed,
                    latency: all.summary(),
                    by_depth,
                    deep_over_first_p50: deep_over_first,
                };
                println!(
                    "  {:<40} C={c:<3} {:<13} {listed} listed in {} pages p50 {} ms p99 {} ms",
                    r.candidate,
                    wl.name(),
                    r.pages,
                    fmt_ms(r.latency.p50_ms),
                    fmt_ms(r.latency.p99_ms)
                );
                runs.push(r);
            }
        }
        for (cand, url, _, store) in loaded_stores {
            drop(store);
            candidate::cleanup(cand, &url).await;
        }
    }

    // Reference at each C: the best (lowest p50) candidate that is not the SQL cells layout.
    let mut ratio_rows = Vec::new();
    for (&c, &wl) in cells.iter().flat_map(|c| workloads.iter().map(move |w| (c, w))) {
        let at_c: Vec<&Run> = runs.iter().filter(|r| r.cells == c && r.workload == wl).collect();
        let single: Vec<&Run> = at_c
            .iter()
            .copied()
            .filter(|r| cands.iter().find(|x| x.label == r.candidate).is_some_and(|x| !x.is_sql_cells()))
            .collect();
        let pool = if single.is_empty() { &at_c } else { &single };
        let Some(best) = pool.iter().min_by(|x, y| x.latency.p50_ms.total_cmp(&y.latency.p50_ms)) else {
            continue;
        };
        let networked = single
            .iter()
            .filter(|r| cands.iter().find(|x| x.label == r.candidate).is_some_and(Candidate::is_networked))
            .min_by(|x, y| x.latency.p50_ms.total_cmp(&y.latency.p50_ms));
        for r in &at_c {
            ratio_rows.push(RatioRow {
                candidate: r.candidate.clone(),
                workload: wl,
                cells: c,
                p50_over_reference: ratio(r.latency.p50_ms, best.latency.p50_ms),
                p99_over_reference: ratio(r.latency.p99_ms, best.latency.p99_ms),
                reference: best.candidate.clone(),
                p50_over_networked: networked.and_then(|n| ratio(r.latency.p50_ms, n.latency.p50_ms)),
                networked_reference: networked.map(|n| n.candidate.clone()),
            });
        }
    }
    let mut scaling = Vec::new();
    if let (Some(&lo), Some(&hi)) = (cells.iter().min(), cells.iter().max())
        && lo != hi
    {
        for (cand, &wl) in cands.iter().flat_map(|c| workloads.iter().map(move |w| (c, w))) {
            let p = |c| {
                runs.iter()
                    .find(|r| r.candidate == cand.label && r.cells == c && r.workload == wl)
                    .map(|r| r.latency.p50_ms)
            };
            if let (Some(a), Some(b)) = (p(lo), p(hi)) {
                scaling.push(CellScaling {
                    candidate: cand.label.clone(),
                    workload: wl,
                    from_cells: lo,
                    to_cells: hi,
                    p50_ratio: ratio(b, a),
                });
            }
        }
    }

    print_tables(&runs, &ratio_rows, &scaling);

    let params = Params {
        instances: n,
        cells: cells.clone(),
        limit,
        load_concurrency: a.load_concurrency,
        depth_buckets: a.depth_buckets,
        workloads: workloads.clone(),
        load_batch: LOAD_BATCH,
        warmup_pages: WARMUP_PAGES,
        seed: a.common.seed,
        quick,
        candidates: cands.iter().map(|c| c.label.clone()).collect(),
    };
    let mut notes = vec![
        "Latencies are per page (one list_instances call), in milliseconds, measured after \
         a few unrecorded warm-up pages. Each (candidate, cells) run uses a fresh store or \
         namespace loaded with the same seeded instances; every workload pages the same store."
            .to_string(),
        format!(
            "Workloads: {}. Loading uses create_instances in batches of {LOAD_BATCH} (multi-row INSERTs \
             on the SQL baseline, one create per instance elsewhere), so load rates are not comparable \
             across backends.",
            workloads
                .iter()
                .map(|w| format!("{} = {}", w.name(), describe(&w.filters(n, &listing::list_cells(a.common.seed, 1)))))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    ];
    notes.extend(failures.iter().cloned());
    if cands.iter().any(Candidate::is_sql) {
        notes.push(
            "SQL baseline URLs got cells=<C> appended unless they set it; mode=single selects \
             its single-database mode."
                .to_string(),
        );
    }
    let rep = report::Report {
        bench: "list",
        parameters: params,
        environment: env,
        durability: candidate::durabilities(&cands),
        results: Results { runs: runs.clone(), ratios_vs_best_single_store: ratio_rows, cell_scaling: scaling },
        notes,
    };
    let json = report::write_json(&a.common.out, "list", &rep)?;
    let svg = chart_runs(&a.common.out, &runs, &cells, &workloads, n, limit)?;
    chart::footer(&svg, &candidate::durability_lines(&cands))?;
    print_outputs(&json, &svg);
    if !failures.is_empty() {
        bail!(Failed, "{} candidate run(s) failed (recorded in the report): {}", failures.len(), failures.join("; "));
    }
    Ok(())
}

/// Loads instances `0..n` into `store` with `concurrency` writers; returns seconds taken.
pub(crate) async fn load(
    store: &Arc<dyn Store>,
    cand: &Candidate,
    cells: &[unicell::model::Cell],
    n: usize,
    seed: u64,
    flavor: &FlavorId,
    concurrency: usize,
) -> Result<f64> {
    for c in cells {
        store.put_cell(c).await.context("put_cell")?;
    }
    let bar = progress::bar(&format!("load {} C={}", short(&cand.label), cells.len()), n as u64);
    let started = Instant::now();
    // Writers take interleaved batches so that inserts arrive in a mixed order, as they
    // would from many API workers.
    let workers = concurrency.max(1);
    let batches = n.div_ceil(LOAD_BATCH);
    let mut tasks = futures::stream::iter((0..workers).map(|w| {
        let store = Arc::clone(store);
        let bar = bar.clone();
        async move {
            let mut b = w;
            while b < batches {
                let from = b * LOAD_BATCH;
                let to = (from + LOAD_BATCH).min(n);
                let batch: Vec<_> = (from..to).map(|i| listing::list_instance(seed, i as u64, cells, flavor)).collect();
                store.create_instances(&batch).await.with_context(|| format!("create_instances #{from}..{to}"))?;
                progress::inc(&bar, (to - from) as u64);
                b += workers;
            }
            Ok::<_, crate::Error>(())
        }
    }))
    .buffer_unordered(workers);
    while let Some(r) = tasks.next().await {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Pages through one store's whole listing, one page per [`Pager::step`], checking that no
/// instance comes twice.
struct Pager {
    store: Arc<dyn Store>,
    limit: u32,
    filters: InstanceFilters,
    marker: Option<InstanceId>,
    seen: HashSet<InstanceId>,
    lat: Vec<Duration>,
    done: bool,
}

impl Pager {
    fn new(store: Arc<dyn Store>, limit: u32, filters: InstanceFilters) -> Self {
        Pager { store, limit, filters, marker: None, seen: HashSet::new(), lat: Vec::new(), done: false }
    }

    fn query(&self, marker: Option<InstanceId>) -> ListQuery {
        ListQuery { filters: self.filters.clone(), limit: Some(self.limit), marker, partial: false }
    }

    /// Reads the first few pages without recording them (connections, caches).
    async fn warm_up(&mut self) -> Result<()> {
        let mut marker = None;
        for _ in 0..WARMUP_PAGES {
            let page = self.store.list_instances(&self.query(marker)).await?;
            marker = page.next_marker;
            if marker.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// Reads and times the next page.
    async fn step(&mut self) -> Result<()> {
        let q = self.query(self.marker);
        let t = Instant::now();
        let page = self.store.list_instances(&q).await?;
        self.lat.push(t.elapsed());
        for i in &page.instances {
            if !self.filters.matches(i) {
                bail!(Failed, "instance {} does not match the page's filter", i.uuid);
            }
            if !self.seen.insert(i.uuid) {
                bail!(Failed, "instance {} was listed twice", i.uuid);
            }
        }
        match page.next_marker {
            Some(_) if page.instances.is_empty() => bail!(Failed, "an empty page came with a next marker"),
            Some(m) => self.marker = Some(m),
            None => self.done = true,
        }
        Ok(())
    }
}

/// How many of the `n` generated instances `filters` selects (computed from the generator,
/// independently of any store).
fn expected_count(
    filters: &InstanceFilters,
    n: usize,
    seed: u64,
    cells: &[unicell::model::Cell],
    flavor: &FlavorId,
) -> usize {
    if *filters == InstanceFilters::default() {
        return n;
    }
    (0..n).filter(|&i| filters.matches(&listing::list_instance(seed, i as u64, cells, flavor))).count()
}

/// The filter as text for reports.
fn describe(f: &InstanceFilters) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &f.project_id {
        parts.push(format!("project_id={p}"));
    }
    if !f.vm_states.is_empty() {
        parts.push(format!("vm_state in {:?}", f.vm_states));
    }
    if let Some(h) = &f.host {
        parts.push(format!("host={h}"));
    }
    if let Some(t) = f.changes_since {
        parts.push(format!("changes-since={t}"));
    }
    if parts.is_empty() { "none".into() } else { parts.join(", ") }
}

fn short(label: &str) -> String {
    let s: String = label.chars().take(24).collect();
    s
}

/// Splits the pages (in depth order) into `k` buckets of consecutive pages.
fn buckets(pages: &[Duration], k: usize) -> Vec<DepthBucket> {
    let k = k.min(pages.len()).max(1);
    let mut out = Vec::new();
    for b in 0..k {
        let from = b * pages.len() / k;
        let to = (b + 1) * pages.len() / k;
        if from >= to {
            continue;
        }
        let mut l = Latency::new();
        for p in &pages[from..to] {
            l.record(*p);
        }
        out.push(DepthBucket { first_page: from + 1, last_page: to, latency: l.summary() });
    }
    out
}

fn print_tables(runs: &[Run], ratios: &[RatioRow], scaling: &[CellScaling]) {
    let mut t = Table::new([
        "candidate",
        "workload",
        "cells",
        "listed",
        "pages",
        "p50 ms",
        "p99 ms",
        "first p50",
        "deepest p50",
        "deep/first",
        "load/s",
    ]);
    for r in runs {
        t.row([
            r.candidate.clone(),
            r.workload.name().to_string(),
            r.cells.to_string(),
            r.listed.to_string(),
            r.pages.to_string(),
            fmt_ms(r.latency.p50_ms),
            fmt_ms(r.latency.p99_ms),
            r.by_depth.first().map_or("-".into(), |b| fmt_ms(b.latency.p50_ms)),
            r.by_depth.last().map_or("-".into(), |b| fmt_ms(b.latency.p50_ms)),
            fmt_ratio(r.deep_over_first_p50),
            format!("{:.0}", r.loads_per_second),
        ]);
    }
    println!("\npage latency (one list_instances call per page)\n{}", t.render());
    if !scaling.is_empty() {
        let mut t = Table::new(["candidate", "workload", "cells", "p50 ratio"]);
        for s in scaling {
            t.row([
                s.candidate.clone(),
                s.workload.name().to_string(),
                format!("{} -> {}", s.from_cells, s.to_cells),
                fmt_ratio(s.p50_ratio),
            ]);
        }
        println!("\np50 against cell count\n{}", t.render());
    }
    let networked = ratios.iter().any(|r| r.networked_reference.is_some());
    let mut header = vec!["candidate", "workload", "cells", "p50 / best", "p99 / best", "best single store"];
    if networked {
        header.extend(["p50 / best networked", "best networked single store"]);
    }
    let mut t = Table::new(header);
    for r in ratios {
        let mut row = vec![
            r.candidate.clone(),
            r.workload.name().to_string(),
            r.cells.to_string(),
            fmt_ratio(r.p50_over_reference),
            fmt_ratio(r.p99_over_reference),
            r.reference.clone(),
        ];
        if networked {
            row.push(fmt_ratio(r.p50_over_networked));
            row.push(r.networked_reference.clone().unwrap_or_default());
        }
        t.row(row);
    }
    println!(
        "\nratios (page latency / the best single store's at the same cell count; single store = any \
         candidate but the SQL cells layout)\n{}",
        t.render()
    );
}

fn chart_runs(
    dir: &std::path::Path,
    runs: &[Run],
    cells: &[usize],
    workloads: &[Workload],
    n: usize,
    limit: u32,
) -> Result<std::path::PathBuf> {
    let max_c = cells.iter().copied().max().unwrap_or(1);
    let names: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for r in runs {
            if !v.contains(&r.candidate) {
                v.push(r.candidate.clone());
            }
        }
        v
    };
    let mid = |b: &DepthBucket| (b.first_page + b.last_page) as f64 / 2.0;
    let mut panels = Vec::new();
    // One depth panel per workload at the largest cell count, then p50 against cells for
    // the unfiltered listing.
    for &wl in workloads {
        let mut depth = Vec::new();
        for (ci, name) in names.iter().enumerate() {
            if let Some(r) = runs.iter().find(|r| &r.candidate == name && r.cells == max_c && r.workload == wl) {
                depth.push(Series {
                    name: format!("{name} p50"),
                    points: r.by_depth.iter().map(|b| (mid(b), b.latency.p50_ms)).collect(),
                    color: ci,
                    dashed: false,
                });
                depth.push(Series {
                    name: format!("{name} p99"),
                    points: r.by_depth.iter().map(|b| (mid(b), b.latency.p99_ms)).collect(),
                    color: ci,
                    dashed: true,
                });
            }
        }
        panels.push(Panel {
            title: format!("{}: page latency vs depth ({max_c} cells)", wl.name()),
            x_label: "page number".into(),
            y_label: "ms per page (log)".into(),
            log_y: true,
            series: depth,
        });
    }
    let mut by_c = Vec::new();
    let wl0 = workloads.first().copied().unwrap_or(Workload::All);
    for (ci, name) in names.iter().enumerate() {
        let pts = |f: fn(&Summary) -> f64| -> Vec<(f64, f64)> {
            runs.iter()
                .filter(|r| &r.candidate == name && r.workload == wl0)
                .map(|r| (r.cells as f64, f(&r.latency)))
                .collect()
        };
        by_c.push(Series { name: format!("{name} p50"), points: pts(|s| s.p50_ms), color: ci, dashed: false });
        by_c.push(Series { name: format!("{name} p99"), points: pts(|s| s.p99_ms), color: ci, dashed: true });
    }
    panels.push(Panel {
        title: format!("{}: page latency vs cell count", wl0.name()),
        x_label: "cells".into(),
        y_label: "ms per page (log)".into(),
        log_y: true,
        series: by_c,
    });
    chart::lines(dir, "list", &format!("bench list: {n} instances, limit {limit}"), &panels)
}
