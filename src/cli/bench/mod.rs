//! The benchmarks. Each runs every candidate store in the same process run, on the same
//! generated data (seeded), and reports ratios, because absolute times on a shared machine
//! are noise.

pub mod claims;
pub mod list;
#[cfg(feature = "redis")]
mod redis_ceiling;
pub mod schedule;
pub mod sites;
#[cfg(feature = "sql")]
mod sql_ceiling;

use anyhow::{Result, bail};
use unicell::store::{Scheme, StoreUrl};

use super::args::BenchCommon;
use super::check_store_url;

/// One candidate store.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The URL as given (may hold a password: never print it).
    pub url: String,
    /// The URL with its password masked: what tables, logs and reports show.
    pub label: String,
    /// The scheme.
    pub scheme: Scheme,
}

impl Candidate {
    /// Whether this candidate talks to a server over TCP (everything but `memory://`).
    pub fn is_networked(&self) -> bool {
        self.scheme != Scheme::Memory
    }

    /// Whether this is the SQL baseline (Nova's cells v2 layout or its single-database mode).
    pub fn is_sql(&self) -> bool {
        self.scheme.backend() == "sql"
    }

    /// Whether this is the SQL baseline in cells mode (one database per cell), the layout
    /// the single-store designs are compared against, as opposed to its single mode.
    pub fn is_sql_cells(&self) -> bool {
        self.is_sql() && StoreUrl::parse(&self.url).ok().and_then(|u| u.param("mode")).is_none_or(|m| m != "single")
    }
}

/// The candidates of a bench: `--stores`, or the global `--store` when none are given.
/// Every URL is checked before anything runs, so a typo fails fast with its name.
pub fn candidates(global: &str, common: &BenchCommon) -> Result<Vec<Candidate>> {
    let urls: Vec<String> = if common.stores.is_empty() {
        vec![global.to_string()]
    } else {
        common.stores.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    };
    if urls.is_empty() {
        bail!("--stores is empty: give at least one store URL");
    }
    let mut out: Vec<Candidate> = Vec::new();
    for url in urls {
        let parsed = check_store_url(&url)?;
        let mut label = parsed.to_string();
        let same = out.iter().filter(|c| c.label == label).count();
        if same > 0 {
            label = format!("{label} #{}", same + 1);
        }
        out.push(Candidate { scheme: parsed.scheme(), url, label });
    }
    Ok(out)
}

/// `url` with query parameter `key=value` added unless the URL already sets `key`.
pub fn with_param(url: &str, key: &str, value: &str) -> Result<String> {
    let parsed = StoreUrl::parse(url)?;
    if parsed.param(key).is_some() {
        return Ok(url.to_string());
    }
    let mut u = parsed.expose().clone();
    u.query_pairs_mut().append_pair(key, value);
    Ok(u.to_string())
}

/// The URL a run uses for `candidate`, so that each run starts empty and only ever sees
/// its own data on a shared server:
/// * Redis: `prefix=unicell-bench-<tag>` unless the URL sets a prefix;
/// * SQL baseline: the database named in the path (default `unicell`) becomes
///   `<name>_<tag>` (its cell databases `<name>_<tag>_cellN`), unless the URL lists explicit
///   `cell_url=`s; and `cells=<cells>` is added unless the URL sets `cells` (the cells mode
///   needs to know how many cell databases to use; `mode=single` ignores it), and in cells
///   mode `cell_pool_size=min(4, 96 / cells)` unless set, so that 64 cells stay under
///   MariaDB's default connection limit.
///
/// `tag` must be unique per run and candidate; it is reduced to `[a-z0-9_]`.
pub fn run_url(candidate: &Candidate, tag: &str, cells: Option<usize>) -> Result<String> {
    let tag: String =
        tag.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    let mut url = candidate.url.clone();
    if candidate.scheme.backend() == "redis" {
        url = with_param(&url, "prefix", &format!("unicell-bench-{tag}"))?;
    }
    if candidate.is_sql() {
        let parsed = StoreUrl::parse(&url)?;
        if parsed.param("cell_url").is_none() {
            let mut u = parsed.expose().clone();
            let db = u.path().trim_matches('/').to_string();
            let db = if db.is_empty() { "unicell".to_string() } else { db };
            u.set_path(&format!("/{db}_{tag}"));
            url = u.to_string();
        }
        if let Some(c) = cells {
            url = with_param(&url, "cells", &c.to_string())?;
            // One pool per cell database: keep the total under MariaDB's default
            // max_connections (151) at 64 cells, leaving room for other clients.
            if candidate.is_sql_cells() {
                let per_cell = (96 / c.max(1)).clamp(1, 4);
                url = with_param(&url, "cell_pool_size", &per_cell.to_string())?;
            }
        }
    }
    Ok(url)
}

/// Removes what a run left on a shared server: the Redis prefix (single node) or the SQL
/// baseline's databases. Best effort: a failure is logged, not returned, because the
/// figures are already measured.
pub async fn cleanup(candidate: &Candidate, url: &str) {
    #[cfg(feature = "redis")]
    if candidate.scheme == Scheme::Redis
        && let Err(e) = redis_ceiling::purge(url).await
    {
        tracing::warn!("could not remove the run's Redis keys: {e:#}");
    }
    #[cfg(feature = "sql")]
    if candidate.is_sql() {
        let dropped = match unicell::store::StoreUrl::parse(url) {
            Ok(u) => unicell::store::sql::SqlStore::drop_databases(&u).await,
            Err(e) => Err(e),
        };
        if let Err(e) = dropped {
            tracing::warn!("could not drop the run's SQL databases: {e}");
        }
    }
    let _ = (candidate, url);
}

/// A short random tag that makes a run's namespaces unique on shared servers.
pub fn run_tag() -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    u[..8].to_string()
}

/// Resolves a knob: the explicit value, else the quick or the full default.
pub fn knob<T: Copy>(explicit: Option<T>, quick: bool, quick_default: T, full_default: T) -> T {
    explicit.unwrap_or(if quick { quick_default } else { full_default })
}

/// Resolves a list knob the same way.
pub fn list_knob<T: Clone>(explicit: &[T], quick: bool, quick_default: &[T], full_default: &[T]) -> Vec<T> {
    if !explicit.is_empty() {
        explicit.to_vec()
    } else if quick {
        quick_default.to_vec()
    } else {
        full_default.to_vec()
    }
}

/// Prints where the report and chart went.
pub fn print_outputs(json: &std::path::Path, svg: &std::path::Path) {
    println!("\nwrote {} and {}", json.display(), svg.display());
}
