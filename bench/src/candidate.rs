//! The candidate stores of a run: parsing and checking their URLs, giving each run its own
//! namespace on a shared server, and removing it afterwards.

use std::sync::Arc;

use crate::error::{Context, Result, bail};
use unicell::store::{self, Scheme, Store, StoreUrl};

use crate::Common;

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

/// The candidates of a bench: `common.stores`, or the global store URL when none are given.
/// Every URL is checked before anything runs, so a typo fails fast with its name.
pub fn candidates(global: &str, common: &Common) -> Result<Vec<Candidate>> {
    let urls: Vec<String> = if common.stores.is_empty() {
        vec![global.to_string()]
    } else {
        common.stores.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    };
    if urls.is_empty() {
        bail!(Invalid, "--stores is empty: give at least one store URL");
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
    if candidate.scheme == Scheme::Redis {
        purge_redis(url).await;
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

/// Deletes every key of the run's Redis prefix (single node only; a cluster keeps them and a
/// warning says so).
#[cfg(feature = "redis")]
async fn purge_redis(url: &str) {
    let purged = async {
        let parsed = StoreUrl::parse(url)?;
        unicell::store::redis::RedisStore::open(&parsed).await?.purge().await
    }
    .await;
    match purged {
        Ok(n) => tracing::debug!(keys = n, "purged the run's redis prefix"),
        Err(e) => tracing::warn!("could not remove the run's Redis keys: {e}"),
    }
}

/// Checks that `url` parses and names a scheme this build knows, with a message that names
/// the bad URL (its password masked) and the known schemes.
pub fn check_store_url(url: &str) -> Result<StoreUrl> {
    let parsed = StoreUrl::parse(url).map_err(|e| crate::Error::Invalid(format!("bad store URL: {e}")))?;
    if !parsed.scheme().is_enabled() {
        bail!(
            Invalid,
            "bad store URL {parsed}: scheme {} needs a feature this build lacks; this build knows: {}",
            parsed.scheme(),
            store::known_schemes().join(", ")
        );
    }
    Ok(parsed)
}

/// Opens a store, naming it (redacted) when it fails.
pub async fn open_store(url: &str) -> Result<Arc<dyn Store>> {
    let parsed = check_store_url(url)?;
    store::open(url).await.with_context(|| format!("cannot open store {parsed}"))
}
