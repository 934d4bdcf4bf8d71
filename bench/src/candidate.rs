//! The candidate stores of a run: parsing and checking their URLs, starting the throwaway
//! servers some of them ask for, reading each one's durability, giving each run its own
//! namespace on a shared server, and removing it afterwards.
//!
//! Besides store URLs, a candidate can be a server the bench starts from the installed
//! binaries (`unicell::testkit`) and stops at the end of the run:
//!
//! * `testkit:redis?appendfsync=everysec` (or `always`, or `no`; `appendonly=no` for no
//!   persistence at all): a throwaway `redis-server` with the append-only file on;
//! * `testkit:cassandra`: Apache Cassandra 2.1 (package defaults: `commitlog_sync
//!   periodic`) behind the testkit's CQL v4<->v3 proxy;
//! * `cell_servers=K` on a `mysql://`/`postgres://` URL: K extra MariaDB or PostgreSQL
//!   servers are started and the cell databases spread over them round-robin (cell i on
//!   server i mod K), the API database staying on the URL's server: Nova's deployment,
//!   where cell databases live on their own database servers.

use std::sync::Arc;

use crate::durability::{self, Durability};
use crate::error::{Context, Result, bail};
use unicell::store::{self, Scheme, Store, StoreUrl};
use unicell::testkit::cassandra::CassandraBehindProxy;
use unicell::testkit::redis_server::{AppendFsync, Persistence, RedisSingle};
use unicell::testkit::sql_server::{SqlKind, SqlServer};

use crate::Common;

/// One candidate store.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The URL the store is opened with (may hold a password: never print it).
    pub url: String,
    /// The URL with its password masked (or the `testkit:` form as given): what tables,
    /// logs and reports show.
    pub label: String,
    /// The scheme.
    pub scheme: Scheme,
    /// What it keeps on disk, as read from its server(s) at the start of the run.
    pub durability: Durability,
    /// Servers (URLs without a database) the SQL baseline's cell databases are spread over;
    /// empty: the cells live on the URL's own server.
    pub cell_servers: Vec<String>,
    /// Throwaway servers this candidate runs on, stopped with the candidate's last clone.
    servers: Arc<Vec<Launched>>,
}

/// A server the bench started for a candidate (kept only to be dropped, which stops it).
#[derive(Debug)]
#[allow(dead_code)]
enum Launched {
    Redis(RedisSingle),
    Cassandra(CassandraBehindProxy),
    Sql(SqlServer),
}

/// A candidate's durability and launched servers, as reported beside its figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CandidateDurability {
    /// The candidate's label.
    pub candidate: String,
    /// What it keeps on disk.
    pub durability: Durability,
    /// How many throwaway servers the bench started for it (0: servers given by URL).
    pub servers_started: usize,
    /// Servers holding its cell databases, besides the URL's own (SQL cells layout).
    pub cell_servers: usize,
}

/// Every candidate's durability, for the report.
pub fn durabilities(cands: &[Candidate]) -> Vec<CandidateDurability> {
    cands
        .iter()
        .map(|c| CandidateDurability {
            candidate: c.label.clone(),
            durability: c.durability.clone(),
            servers_started: c.servers.len(),
            cell_servers: c.cell_servers.len(),
        })
        .collect()
}

/// One line per candidate, `label: durability`, for chart footers and notes.
pub fn durability_lines(cands: &[Candidate]) -> Vec<String> {
    cands.iter().map(|c| format!("{}: {}", c.label, c.durability.summary)).collect()
}

impl Candidate {
    /// A candidate on a server the bench did not start (its durability already read).
    pub fn new(url: String, label: String, scheme: Scheme, durability: Durability) -> Candidate {
        Candidate { url, label, scheme, durability, cell_servers: Vec::new(), servers: Arc::new(Vec::new()) }
    }

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
/// Every URL is checked before anything runs, so a typo fails fast with its name; then the
/// throwaway servers they ask for are started and each candidate's durability is read from
/// its server(s).
pub fn candidates(global: &str, common: &Common) -> Result<Vec<Candidate>> {
    let urls: Vec<String> = if common.stores.is_empty() {
        vec![global.to_string()]
    } else {
        common.stores.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    };
    if urls.is_empty() {
        bail!(Invalid, "--stores is empty: give at least one store URL");
    }
    let mut specs = Vec::new();
    for url in &urls {
        specs.push(Spec::parse(url)?);
    }
    // The launchers block (and the CQL proxy builds its own runtime), so they run on a
    // plain thread, which also reads the durabilities on a runtime of its own.
    let out = std::thread::scope(|s| s.spawn(move || launch_all(specs)).join())
        .map_err(|_| crate::Error::Failed("starting the candidates' servers panicked".into()))??;
    let mut cands: Vec<Candidate> = Vec::new();
    for mut c in out {
        let same = cands.iter().filter(|x| x.label == c.label).count();
        if same > 0 {
            c.label = format!("{} #{}", c.label, same + 1);
        }
        cands.push(c);
    }
    Ok(cands)
}

/// Splits a comma-separated candidate list. A comma starts a new candidate only when what
/// follows it begins with a URL scheme (`name://` or `testkit:`), so the host lists of CQL
/// URLs (`scylla://h1:9042,h2:9042/ks`) and Redis Cluster seeds (`?seeds=h2:7001,h3:7002`)
/// stay in their URL.
pub fn split_candidates(list: &str) -> Vec<String> {
    let starts_candidate = |p: &str| {
        let p = p.trim_start();
        p.starts_with("testkit:")
            || p.find("://").is_some_and(|i| {
                i > 0 && p[..i].chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            })
    };
    let mut out: Vec<String> = Vec::new();
    for part in list.split(',') {
        match out.last_mut() {
            Some(last) if !starts_candidate(part) => {
                last.push(',');
                last.push_str(part);
            }
            _ => out.push(part.to_string()),
        }
    }
    out.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// What a candidate string asks for.
enum Spec {
    /// A store URL, with `cell_servers` extra SQL servers to start.
    Url { url: String, cell_servers: usize },
    /// `testkit:redis`.
    Redis(Persistence, String),
    /// `testkit:cassandra`.
    Cassandra(String),
}

impl Spec {
    fn parse(text: &str) -> Result<Spec> {
        if let Some(rest) = text.strip_prefix("testkit:") {
            let (what, query) = rest.split_once('?').unwrap_or((rest, ""));
            let params: Vec<(String, String)> =
                url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            let get = |k: &str| params.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
            if let Some((k, _)) = params.iter().find(|(k, _)| !["appendfsync", "appendonly"].contains(&k.as_str())) {
                bail!(
                    Invalid,
                    "bad candidate {text}: unknown option {k} (testkit:redis takes appendfsync, appendonly)"
                );
            }
            return match what {
                "redis" => {
                    let appendfsync = match get("appendfsync") {
                        None => AppendFsync::EverySec,
                        Some(v) => AppendFsync::parse(v).ok_or_else(|| {
                            crate::Error::Invalid(format!(
                                "bad candidate {text}: appendfsync must be always, everysec or no"
                            ))
                        })?,
                    };
                    let appendonly = match get("appendonly") {
                        None | Some("yes") => true,
                        Some("no") => false,
                        Some(v) => bail!(Invalid, "bad candidate {text}: appendonly must be yes or no, not {v:?}"),
                    };
                    Ok(Spec::Redis(Persistence { appendonly, appendfsync }, text.to_string()))
                }
                "cassandra" if params.is_empty() => Ok(Spec::Cassandra(text.to_string())),
                _ => bail!(
                    Invalid,
                    "bad candidate {text}: the bench can start testkit:redis[?appendfsync=always|everysec|no\
                     &appendonly=yes|no] and testkit:cassandra"
                ),
            };
        }
        let parsed = check_store_url(text)?;
        let cell_servers = match parsed.param("cell_servers") {
            None => 0,
            Some(v) => {
                let k = v.parse::<usize>().ok().filter(|k| (1..=64).contains(k)).ok_or_else(|| {
                    crate::Error::Invalid(format!("bad store URL {parsed}: cell_servers must be 1 to 64, not {v:?}"))
                })?;
                if !matches!(parsed.scheme(), Scheme::MySql | Scheme::Postgres) {
                    bail!(Invalid, "bad store URL {parsed}: cell_servers is for mysql:// and postgres:// URLs");
                }
                if parsed.param("mode").as_deref() == Some("single") || parsed.param("cell_url").is_some() {
                    bail!(Invalid, "bad store URL {parsed}: cell_servers needs the cells mode without cell_url=");
                }
                k
            }
        };
        let url = if cell_servers > 0 { without_param(text, "cell_servers")? } else { text.to_string() };
        Ok(Spec::Url { url, cell_servers })
    }
}

fn launch_all(specs: Vec<Spec>) -> Result<Vec<Candidate>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build a runtime to read the candidates' durability")?;
    let mut out = Vec::new();
    for spec in specs {
        let (url, label, servers, cell_servers, cassandra) = match spec {
            Spec::Url { url, cell_servers } => {
                let parsed = StoreUrl::parse(&url)?;
                let kind = if parsed.scheme() == Scheme::MySql { SqlKind::MariaDb } else { SqlKind::Postgres };
                let mut servers = Vec::new();
                let mut urls = Vec::new();
                for i in 0..cell_servers {
                    println!("starting cell server {} of {cell_servers} ({kind:?}) for {parsed}", i + 1);
                    let s = SqlServer::start(kind)
                        .with_context(|| format!("cannot start cell server {} for {parsed}", i + 1))?;
                    urls.push(s.url());
                    servers.push(Launched::Sql(s));
                }
                let label = if cell_servers > 0 {
                    format!("{parsed} ({cell_servers} cell servers)")
                } else {
                    parsed.to_string()
                };
                (url, label, servers, urls, None)
            }
            Spec::Redis(p, label) => {
                println!("starting {label}");
                let r = RedisSingle::start_with(p).with_context(|| format!("cannot start {label}"))?;
                (r.url(), label, vec![Launched::Redis(r)], Vec::new(), None)
            }
            Spec::Cassandra(label) => {
                println!("starting {label} (Cassandra 2.1 behind the CQL proxy; takes a while)");
                let c = CassandraBehindProxy::start().with_context(|| format!("cannot start {label}"))?;
                let setting = |k: &str| {
                    c.cassandra.setting(k).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                };
                let cfg = Some((
                    setting("commitlog_sync").unwrap_or_else(|| "?".into()),
                    setting("commitlog_sync_period_in_ms").unwrap_or_else(|| "?".into()),
                ));
                (c.url("unicell_bench"), label, vec![Launched::Cassandra(c)], Vec::new(), cfg)
            }
        };
        let parsed = check_store_url(&url)?;
        let durability = rt.block_on(durability::read(&url, &cell_servers, cassandra));
        out.push(Candidate {
            scheme: parsed.scheme(),
            url,
            label,
            durability,
            cell_servers,
            servers: Arc::new(servers),
        });
    }
    Ok(out)
}

/// `url` without query parameter `key`.
fn without_param(url: &str, key: &str) -> Result<String> {
    let mut u = url::Url::parse(url).map_err(|e| crate::Error::Invalid(format!("bad store URL: {e}")))?;
    let kept: Vec<(String, String)> =
        u.query_pairs().filter(|(k, _)| k != key).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    u.set_query(None);
    if !kept.is_empty() {
        u.query_pairs_mut().extend_pairs(kept);
    }
    Ok(u.to_string())
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
/// * CQL: the keyspace becomes `<keyspace>_<tag>`;
/// * SQL baseline: the database named in the path (default `unicell`) becomes
///   `<name>_<tag>` (its cell databases `<name>_<tag>_cellN`), unless the URL lists explicit
///   `cell_url=`s; and `cells=<cells>` is added unless the URL sets `cells` (the cells mode
///   needs to know how many cell databases to use; `mode=single` ignores it). With cell
///   servers, cell i goes to server i mod K through `cell_url=`s, each cell pool gets up to
///   8 connections and the API pool 16; on one server, `cell_pool_size=min(4, 96 / cells)`
///   unless set, so that 64 cells stay under MariaDB's default connection limit. Pools
///   queue requests that find every connection busy (they wait their turn, they do not
///   fail).
///
/// `tag` must be unique per run and candidate; it is reduced to `[a-z0-9_]`.
pub fn run_url(candidate: &Candidate, tag: &str, cells: Option<usize>) -> Result<String> {
    let tag: String =
        tag.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    let mut url = candidate.url.clone();
    if candidate.scheme.backend() == "redis" {
        url = with_param(&url, "prefix", &format!("unicell-bench-{tag}"))?;
    }
    if candidate.scheme.backend() == "cql" {
        let parsed = StoreUrl::parse(&url)?;
        let ks = parsed.expose().path().trim_matches('/').to_string();
        let ks = if ks.is_empty() { "unicell".to_string() } else { ks };
        let ks: String = format!("{ks}_{tag}").chars().take(48).collect();
        // Host lists are not valid URL authorities, so only the path is replaced, as text.
        let (head, query) = url.split_once('?').map_or((url.as_str(), None), |(h, q)| (h, Some(q)));
        let base = match head.find("://").map(|i| i + 3).and_then(|i| head[i..].find('/').map(|j| i + j)) {
            Some(slash) => &head[..slash],
            None => head,
        };
        url = match query {
            Some(q) => format!("{base}/{ks}?{q}"),
            None => format!("{base}/{ks}"),
        };
    }
    if candidate.is_sql() {
        let parsed = StoreUrl::parse(&url)?;
        if parsed.param("cell_url").is_none() {
            let mut u = parsed.expose().clone();
            let db = u.path().trim_matches('/').to_string();
            let db = if db.is_empty() { "unicell".to_string() } else { db };
            let db = format!("{db}_{tag}");
            u.set_path(&format!("/{db}"));
            if !candidate.cell_servers.is_empty() && candidate.is_sql_cells() {
                let n = cells.unwrap_or(2);
                for i in 0..n {
                    let server = &candidate.cell_servers[i % candidate.cell_servers.len()];
                    u.query_pairs_mut().append_pair("cell_url", &format!("{server}/{db}_cell{i}"));
                }
            }
            url = u.to_string();
        }
        if let Some(c) = cells {
            url = with_param(&url, "cells", &c.to_string())?;
            if candidate.is_sql_cells() {
                if candidate.cell_servers.is_empty() {
                    // One pool per cell database: keep the total under MariaDB's default
                    // max_connections (151) at 64 cells, leaving room for other clients.
                    let per_cell = (96 / c.max(1)).clamp(1, 4);
                    url = with_param(&url, "cell_pool_size", &per_cell.to_string())?;
                } else {
                    // The throwaway servers allow 1000 connections each.
                    let per_cell = (800 * candidate.cell_servers.len() / c.max(1)).clamp(1, 8);
                    url = with_param(&url, "cell_pool_size", &per_cell.to_string())?;
                    url = with_param(&url, "pool_size", "16")?;
                }
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
    #[cfg(feature = "cql")]
    if candidate.scheme.backend() == "cql" {
        let dropped = async {
            let parsed = StoreUrl::parse(url)?;
            unicell::store::cql::CqlStore::open(&parsed).await?.drop_keyspace().await
        }
        .await;
        if let Err(e) = dropped {
            tracing::warn!("could not drop the run's keyspace: {e}");
        }
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

/// Checks one candidate as [`candidates`] would (a store URL, or a `testkit:` server, with
/// `cell_servers=`), without starting anything: for commands that take candidates but start
/// them later, so that a typo fails before minutes of other work.
pub fn check_candidate(text: &str) -> Result<()> {
    Spec::parse(text).map(|_| ())
}

/// Opens a store, naming it (redacted) when it fails.
pub async fn open_store(url: &str) -> Result<Arc<dyn Store>> {
    let parsed = check_store_url(url)?;
    store::open(url).await.with_context(|| format!("cannot open store {parsed}"))
}

#[cfg(test)]
mod tests {
    use super::split_candidates;

    #[test]
    fn candidate_lists_keep_host_lists_whole() {
        assert_eq!(
            split_candidates(
                "memory://,scylla://a:9042,b:9042,c/ks?x=1,redis+cluster://h:7000?seeds=h:7001,h:7002,testkit:redis"
            ),
            vec![
                "memory://".to_string(),
                "scylla://a:9042,b:9042,c/ks?x=1".to_string(),
                "redis+cluster://h:7000?seeds=h:7001,h:7002".to_string(),
                "testkit:redis".to_string(),
            ]
        );
        assert_eq!(split_candidates("redis://x, mysql://root@h/db"), vec!["redis://x", "mysql://root@h/db"]);
    }
}
