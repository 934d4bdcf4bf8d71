//! The one support tree of the test binaries: the harness that turns cases into named
//! libtest-mimic trials, and the backends the trials run on.
//!
//! The same rules hold in every binary:
//! * a backend whose server cannot be reached or started here reports its trials IGNORED
//!   with the reason, never passed;
//! * a reachable server that misbehaves, or a store that fails to open on it, is a FAILURE;
//! * servers start lazily, on the first trial that needs them (so `--list` and filtered
//!   runs start nothing they do not use), and stop when the binary ends, after the run's
//!   databases, keyspaces and key prefixes are removed.
//!
//! Cases are the library's [`Case`]s (`unicell::store::conformance::{case, check}` build
//! them), so the conformance suite and the scheduling cases share one harness.
#![allow(dead_code)]

pub mod cql;
pub mod fixtures;
pub mod ops;
pub mod redis;
pub mod sql;
pub mod stores;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use unicell::store::conformance::Case;
use unicell::store::prelude::*;

/// Why a backend gives no store: `Skip` when its server cannot be reached or started here
/// (the trials are ignored with the reason), `Fail` when it is there but misbehaves (the
/// trials fail with the reason).
#[derive(Clone, Debug)]
pub enum Why {
    /// Not available here.
    Skip(String),
    /// Available, but broken.
    Fail(String),
}

impl Why {
    /// Why opening the store at `url` failed with `e`: `Skip` only when no server answers
    /// at any of the URL's hosts (nothing accepts a TCP connection there), `Fail` otherwise,
    /// whatever the error. A retryable error from a server that accepts connections (a
    /// migration stuck on a lock, an authentication or protocol bug that surfaces as a
    /// timeout) is a failure: it must not pass CI as "ignored".
    pub async fn from_open_error(what: &str, url: &str, e: &unicell::Error) -> Why {
        if e.is_retryable() && !answers(url).await {
            Why::Skip(format!("{what}: {e} (nothing answers at {})", unicell::store::redact_text(url)))
        } else {
            Why::Fail(format!("{what}: {e}"))
        }
    }
}

/// Whether something accepts a TCP connection at one of `url`'s hosts (within a second
/// each). `memory://` and URLs that do not parse answer trivially (their errors are never
/// "unreachable").
pub async fn answers(url: &str) -> bool {
    let Ok(parsed) = unicell::store::StoreUrl::parse(url) else { return true };
    let hosts = parsed.host_ports();
    if hosts.is_empty() {
        return true;
    }
    for hp in hosts {
        let connect = tokio::net::TcpStream::connect(hp.clone());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
            return true;
        }
    }
    false
}

/// A store for one case, or why not.
pub type Opened = Result<Arc<dyn Store>, Why>;

/// Where cases run: a named way to get a store for one case.
pub trait Backend: Send + Sync + 'static {
    /// The name in trial names (`redis`, `cassandra-2.1`, `mariadb-cells`, ...).
    fn name(&self) -> &str;

    /// A store for one case: fresh, or shared when cases may share one (they only touch
    /// what they create). Starts the backend's server on first use.
    fn store(&self) -> BoxFuture<'_, Opened>;

    /// Whether trials must run on the harness's [`shared_runtime`] (a driver whose
    /// connections outlive one trial) instead of a runtime of their own.
    fn shared_runtime(&self) -> bool {
        false
    }

    /// After every trial ran: removes what the run created and stops the servers this
    /// binary started. `failed` says whether any trial failed (for diagnostics).
    fn finish(&self, _failed: bool) {}
}

/// A runtime that lives for the whole binary, for servers, proxies and shared stores.
pub fn shared_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("support")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
    })
}

/// Runs `f` to completion on a fresh multi-threaded runtime (what each trial gets), or on
/// the shared one.
pub fn block_on<F: Future>(shared: bool, f: F) -> Result<F::Output, Failed> {
    if shared {
        return Ok(shared_runtime().block_on(f));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
    Ok(rt.block_on(f))
}

/// A trial named `name` that first gets what it needs with `get` (ignored when that is
/// not available here, failed when it is broken), then runs `f` on it.
pub fn trial_on<T, G, GF, F, Fut, E>(name: impl Into<String>, shared: bool, get: G, f: F) -> Trial
where
    G: FnOnce() -> GF + Send + 'static,
    GF: Future<Output = Result<T, Why>>,
    F: FnOnce(T) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    Trial::ignorable_test(name, move || {
        block_on(shared, async move {
            let t = match get().await {
                Ok(t) => t,
                Err(Why::Skip(reason)) => return Ok(Completion::ignored_with(reason)),
                Err(Why::Fail(reason)) => return Err(Failed::from(reason)),
            };
            f(t).await.map_err(|e| Failed::from(e.to_string()))?;
            Ok(Completion::Completed)
        })?
    })
}

/// A trial named `name` that gets a store from `backend` and runs `f` on it.
pub fn trial<F, Fut, E>(name: String, backend: &Arc<dyn Backend>, f: F) -> Trial
where
    F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    let backend = backend.clone();
    let shared = backend.shared_runtime();
    trial_on(name, shared, move || async move { backend.store().await }, f)
}

/// One trial per case on `backend`, named by `name(backend, case)`.
pub fn case_trials(
    backend: &Arc<dyn Backend>,
    cases: impl IntoIterator<Item = Case>,
    name: impl Fn(&str, &str) -> String,
) -> Vec<Trial> {
    cases.into_iter().map(|case| trial(name(backend.name(), case.name), backend, case.run)).collect()
}

/// A trial that needs no backend: `f` runs on a runtime of its own.
pub fn plain_trial<F, Fut, E>(name: impl Into<String>, f: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    Trial::test(name, move || block_on(false, f())?.map_err(|e| Failed::from(e.to_string())))
}

/// Runs the trials, then finishes every backend and drops it (stopping what it started),
/// then exits with the run's status.
pub fn run(trials: Vec<Trial>, backends: Vec<Arc<dyn Backend>>) -> ! {
    let args = Arguments::from_args();
    let conclusion = libtest_mimic::run(&args, trials);
    for b in &backends {
        b.finish(conclusion.has_failed());
    }
    drop(backends);
    conclusion.exit()
}

/// Whether a Docker daemon answers (testcontainers would otherwise fail slowly).
pub fn docker_answers() -> Result<(), String> {
    use std::io::{Read, Write};
    let sock = match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => h.trim_start_matches("unix://").to_string(),
        Ok(h) if !h.is_empty() => return Ok(()), // tcp:// and friends: let testcontainers try
        _ => "/var/run/docker.sock".to_string(),
    };
    let mut s = std::os::unix::net::UnixStream::connect(&sock)
        .map_err(|e| format!("no Docker daemon answers at {sock}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    s.write_all(b"GET /_ping HTTP/1.0\r\n\r\n").map_err(|e| format!("Docker daemon at {sock}: {e}"))?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    if buf.contains("OK") { Ok(()) } else { Err(format!("Docker daemon at {sock} did not answer /_ping")) }
}

/// A short random id for names a run creates (key prefixes, databases, keyspaces).
pub fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_string())
}

/// An environment variable as a number, or `default`.
pub fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
