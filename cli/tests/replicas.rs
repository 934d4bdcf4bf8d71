//! The replicas test of issue 12: three `unicell serve` processes and one `unicell computes`
//! on one store, many concurrent `POST /servers` (some in anti-affinity server groups
//! created through `os-server-groups`) spread over the replicas, one replica killed with
//! SIGKILL mid-run and started again. The build-lease reapers of the live replicas take
//! over the dead one's builds; the test waits (polling, bounded) until no server is
//! BUILDING, then checks:
//!
//! * every server is ACTIVE holding exactly its claim (one tree, its host's, the flavor's
//!   amounts) or ERROR with a fault and no claim;
//! * the store's audit ([`unicell::store::audit`]) is clean;
//! * no anti-affinity group has two ACTIVE members on one host;
//! * listing through each replica (`GET /servers/detail`, admin, `all_tenants`, paged
//!   with `limit`/`marker`) shows every server exactly once: every server whose create
//!   was answered 202, and at most once each one whose answer was lost with the replica.
//!
//! One trial per store: Redis (127.0.0.1:6379, a key prefix of its own), MariaDB
//! (127.0.0.1:3306, root) and PostgreSQL (127.0.0.1:5432, postgres), the SQL baseline in
//! cells mode with databases of their own; each is removed at the end. A store whose
//! server does not accept a TCP connection is reported ignored with the reason; one that
//! answers and misbehaves fails. Memory cannot be shared by separate processes. Apache
//! Cassandra 2.1 is started by the test (`unicell::testkit::cassandra`) behind the v4<->v3
//! protocol proxy, which runs in this process while the replicas use it; ignored with the
//! reason where Java or the package is missing, unless `UNICELL_REQUIRE_CASSANDRA=1` (CI).
//!
//! `UNICELL_REPLICAS_SERVERS` sets the number of servers (default 2,000, as the issue
//! asks). Each run's logs go to a scratch directory, kept and named when a trial fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde_json::{Value, json};
use unicell::model::{ConsumerId, InstanceId};
use unicell::store::Store;
use unicell::store::audit::{AuditScope, audit};

/// The project and user every server belongs to (noauth2 token `user:project`).
const MEMBER: &str = "rep:rep";
/// Simulated hosts: 48 take about 2,900 `m1.small` servers (memory bound), enough room.
const HOSTS: usize = 48;
/// Anti-affinity groups and the members asked in each (at most one per host).
const GROUPS: usize = 20;
const GROUP_SIZE: usize = 5;
/// Client threads sending the creates.
const CLIENTS: usize = 32;
/// Short build leases, so that the dead replica's builds are taken over soon; not shorter,
/// because a replica renews its leases one store call each, and on a loaded machine with a
/// debug build a pass over hundreds of leases on SQL took longer than 4 s: a live replica's
/// builds were taken over while it ran them (the unfenced case `api::builds` documents).
const LEASE_TTL: &str = "15s";
/// Upper bounds of the waits (each is a safeguard against a hang, not a timed check).
const START_WAIT: Duration = Duration::from_secs(180);
const SETTLE_WAIT: Duration = Duration::from_secs(600);

type R<T> = Result<T, String>;

fn main() {
    let args = Arguments::from_args();
    let stores = [
        ("redis", Kind::Redis, "127.0.0.1:6379"),
        ("mariadb-cells", Kind::MariaDb, "127.0.0.1:3306"),
        ("postgres-cells", Kind::Postgres, "127.0.0.1:5432"),
        ("cassandra-2.1", Kind::Cassandra, ""),
    ];
    let trials = stores
        .into_iter()
        .map(|(name, kind, addr)| Trial::ignorable_test(format!("replicas::{name}"), move || trial(name, kind, addr)))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Redis,
    MariaDb,
    Postgres,
    /// Apache Cassandra 2.1 started by this test (`unicell::testkit::cassandra`), behind the
    /// v4<->v3 protocol proxy, which lives in this process while the replicas run.
    Cassandra,
}

fn trial(name: &str, kind: Kind, addr: &str) -> Result<Completion, Failed> {
    // Cassandra is started here; it stops when `cassandra` is dropped, after the cleanup.
    let mut cassandra = None;
    if kind == Kind::Cassandra {
        match unicell::testkit::cassandra::CassandraBehindProxy::start() {
            Ok(c) => cassandra = Some(c),
            // CI sets UNICELL_REQUIRE_CASSANDRA=1: there, a Cassandra that cannot start fails.
            Err(e) if std::env::var("UNICELL_REQUIRE_CASSANDRA").is_ok_and(|v| v == "1") => {
                return Err(format!("starting Cassandra 2.1: {e}").into());
            }
            Err(e) => return Ok(Completion::ignored_with(format!("Cassandra 2.1 cannot start here: {e}"))),
        }
    } else if !answers(addr) {
        return Ok(Completion::ignored_with(format!("nothing accepts a connection at {addr} for {name}")));
    }
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let url = match (kind, &cassandra) {
        (Kind::Cassandra, Some(c)) => c.url(&format!("replicas_{id}")),
        (Kind::Cassandra, None) => return Err("Cassandra was not started".into()),
        (Kind::Redis, _) => format!("redis://{addr}/?prefix=replicas-{id}"),
        // Cells mode with two cell databases; pools small enough for five processes on one
        // server (PostgreSQL allows 100 connections by default).
        (Kind::MariaDb, _) => format!("mysql://root@{addr}/replicas_{id}?cells=2&pool_size=10&cell_pool_size=3"),
        (Kind::Postgres, _) => {
            format!("postgres://postgres@{addr}/replicas_{id}?cells=2&pool_size=10&cell_pool_size=3")
        }
    };
    let servers = std::env::var("UNICELL_REPLICAS_SERVERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000usize);
    let logs = std::env::temp_dir().join(format!("unicell-replicas-{name}-{id}"));
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let outcome = run(&rt, &url, servers, &logs);
    let cleaned = rt.block_on(remove_store(kind, &url));
    match (outcome, cleaned) {
        (Ok(()), Ok(())) => {
            let _ = std::fs::remove_dir_all(&logs);
            Ok(Completion::Completed)
        }
        (Err(e), _) => Err(format!("{e}\n(process logs in {})", logs.display()).into()),
        (Ok(()), Err(e)) => Err(format!("removing the test's store: {e}").into()),
    }
}

/// Whether something accepts a TCP connection at `addr` within a second.
fn answers(addr: &str) -> bool {
    addr.to_socket_addrs()
        .map(|mut a| a.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok()))
        .unwrap_or(false)
}

async fn remove_store(kind: Kind, url: &str) -> R<()> {
    let parsed = unicell::store::StoreUrl::parse(url).map_err(|e| e.to_string())?;
    match kind {
        Kind::Redis => {
            let s = unicell::store::redis::RedisStore::open(&parsed).await.map_err(|e| e.to_string())?;
            s.purge().await.map_err(|e| e.to_string())?;
        }
        Kind::MariaDb | Kind::Postgres => {
            unicell::store::sql::SqlStore::drop_databases(&parsed).await.map_err(|e| e.to_string())?;
        }
        // The throwaway server and its data go when the trial drops it.
        Kind::Cassandra => {}
    }
    Ok(())
}

/// A `unicell` process, killed (SIGKILL) when dropped.
struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    fn start(logs: &Path, name: &str, store: &str, args: &[&str]) -> R<Proc> {
        let stdout = logs.join(format!("{name}.out"));
        let stderr = logs.join(format!("{name}.err"));
        let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
        let child = Command::new(env!("CARGO_BIN_EXE_unicell"))
            .env_remove("UNICELL_STORE")
            .env("RUST_LOG", "warn")
            .arg("--store")
            .arg(store)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file(&stdout)?)
            .stderr(file(&stderr)?)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        Ok(Proc { name: name.to_string(), child, stdout, stderr })
    }

    /// Waits until the process printed a line containing `needle`, and returns it.
    fn wait_for_line(&mut self, needle: &str) -> R<String> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            if let Some(line) = out.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{} exited ({status}) before it was ready: {}", self.name, self.stderr_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!("{} not ready after {START_WAIT:?}: {}", self.name, self.stderr_tail()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stderr_tail(&self) -> String {
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = err.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fails when the process died on its own.
    fn check_alive(&mut self) -> R<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited ({status}): {}", self.name, self.stderr_tail())),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a replica and returns it with the address it listens on.
fn start_replica(logs: &Path, name: &str, store: &str) -> R<(Proc, SocketAddr)> {
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--build-lease-ttl",
        LEASE_TTL,
        "--build-ms",
        "20",
        "--build-failure-rate",
        "0.02",
        "--drain-timeout",
        "1s",
    ];
    let mut p = Proc::start(logs, name, store, &args)?;
    let line = p.wait_for_line("Nova compute API on http://")?;
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("{name} printed no address: {line}"))?;
    Ok((p, addr))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// One HTTP call: status and JSON body (`Null` when the body is empty).
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), ureq::Error> {
    let mut resp = match (method, body) {
        ("POST", Some(b)) => agent
            .post(url)
            .header("X-Auth-Token", token)
            .header("Content-Type", "application/json")
            .send(b.to_string())?,
        _ => agent.get(url).header("X-Auth-Token", token).call()?,
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().with_config().limit(64 << 20).read_to_string()?;
    let v =
        if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    Ok((status, v))
}

/// How one create ended, as the client saw it.
#[derive(Clone, Debug)]
enum Sent {
    /// 202 with this server id.
    Accepted(String),
    /// The replica went away with the request: it may or may not have been recorded.
    Lost(String),
}

/// The replicas' addresses, `None` while one is down.
type Replicas = Arc<RwLock<Vec<Option<SocketAddr>>>>;

fn alive(replicas: &Replicas, preferred: usize) -> Option<(usize, SocketAddr)> {
    let r = replicas.read().unwrap_or_else(|e| e.into_inner());
    (0..r.len()).map(|k| (preferred + k) % r.len()).find_map(|k| r[k].map(|a| (k, a)))
}

/// Sends create `i` to replica `i % 3` (or the next one alive). A connection refused
/// (nothing was sent) goes to another replica; any other transport error is a lost answer.
fn create(agent: &ureq::Agent, replicas: &Replicas, i: usize, group: Option<&str>) -> R<Sent> {
    let mut body = json!({"server": {
        "name": format!("rep-{i:05}"),
        "imageRef": "70a599e0-31e7-49b7-b260-868f441e862b",
        "flavorRef": "m1.small",
    }});
    if let Some(g) = group {
        body["os:scheduler_hints"] = json!({"group": g});
    }
    for attempt in 0..50 {
        let Some((_, addr)) = alive(replicas, i + attempt) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        match call(agent, "POST", &format!("http://{addr}/v2.1/servers"), MEMBER, Some(&body)) {
            Ok((202, v)) => {
                let id = v["server"]["id"].as_str().ok_or_else(|| format!("create {i}: 202 without an id: {v}"))?;
                return Ok(Sent::Accepted(id.to_string()));
            }
            Ok((status, v)) => return Err(format!("create {i} on {addr}: {status}: {v}")),
            Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(ureq::Error::ConnectionFailed) => continue,
            Err(e) => return Ok(Sent::Lost(format!("create {i} on {addr}: {e}"))),
        }
    }
    Err(format!("create {i}: no replica took it"))
}

/// Every server through the replica at `addr`, page by page (admin, all tenants).
fn list_all(agent: &ureq::Agent, addr: SocketAddr) -> R<Vec<Value>> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut url = format!("http://{addr}/v2.1/servers/detail?all_tenants=1&limit=500");
        if let Some(m) = &marker {
            url.push_str(&format!("&marker={m}"));
        }
        let (status, v) = call(agent, "GET", &url, "admin", None).map_err(|e| format!("GET {url}: {e}"))?;
        if status != 200 {
            return Err(format!("GET {url}: {status}: {v}"));
        }
        let page = v["servers"].as_array().cloned().ok_or_else(|| format!("GET {url}: no servers: {v}"))?;
        let next = v["servers_links"].as_array().is_some_and(|l| l.iter().any(|l| l["rel"] == "next"));
        marker = page.last().and_then(|s| s["id"].as_str()).map(str::to_string);
        out.extend(page);
        if !next || marker.is_none() {
            return Ok(out);
        }
    }
}

fn run(rt: &tokio::runtime::Runtime, url: &str, n: usize, logs: &Path) -> R<()> {
    let mut computes =
        Proc::start(logs, "computes", url, &["computes", "--hosts", &HOSTS.to_string(), "--cells", "2"])?;
    computes.wait_for_line("hosts registered")?;
    let mut procs = Vec::new();
    let replicas: Replicas = Arc::new(RwLock::new(Vec::new()));
    for k in 0..3 {
        let (p, addr) = start_replica(logs, &format!("replica{k}"), url)?;
        procs.push(p);
        replicas.write().unwrap_or_else(|e| e.into_inner()).push(Some(addr));
    }
    let agent = agent();

    // Anti-affinity groups, created through the replicas in turn.
    let mut groups = Vec::new();
    for g in 0..GROUPS {
        let (_, addr) = alive(&replicas, g).ok_or("no replica")?;
        let body = json!({"server_group": {"name": format!("aa-{g}"), "policies": ["anti-affinity"]}});
        let (status, v) = call(&agent, "POST", &format!("http://{addr}/v2.1/os-server-groups"), MEMBER, Some(&body))
            .map_err(|e| format!("creating group {g}: {e}"))?;
        let id = v["server_group"]["id"].as_str().filter(|_| status == 200);
        groups.push(id.ok_or_else(|| format!("creating group {g}: {status}: {v}"))?.to_string());
    }
    // Request i asks for group (i / stride) % GROUPS when i is a multiple of the stride, so
    // the group members are spread over the whole run (and over the kill).
    let stride = (n / (GROUPS * GROUP_SIZE)).max(1);
    let group_of =
        move |i: usize| (i.is_multiple_of(stride) && i / stride < GROUPS * GROUP_SIZE).then(|| (i / stride) % GROUPS);

    // The creates, from CLIENTS threads; the main thread kills replica 0 a third of the
    // way through and starts it again at half way.
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<BTreeMap<usize, Sent>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (agent, replicas, next, done) = (agent.clone(), replicas.clone(), next.clone(), done.clone());
            let (results, errors, groups) = (results.clone(), errors.clone(), groups.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return;
                    }
                    let group = group_of(i).map(|g| groups[g].as_str());
                    match create(&agent, &replicas, i, group) {
                        Ok(s) => {
                            results.lock().unwrap_or_else(|e| e.into_inner()).insert(i, s);
                        }
                        Err(e) => errors.lock().unwrap_or_else(|e| e.into_inner()).push(e),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let wait_done = |k: usize| {
        while done.load(Ordering::SeqCst) < k {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_done(n / 3);
    procs[0].kill();
    replicas.write().unwrap_or_else(|e| e.into_inner())[0] = None;
    wait_done(n / 2);
    let (p, addr) = start_replica(logs, "replica0-restarted", url)?;
    procs[0] = p;
    replicas.write().unwrap_or_else(|e| e.into_inner())[0] = Some(addr);
    for c in clients {
        c.join().map_err(|_| "a client thread panicked")?;
    }
    let errors = std::mem::take(&mut *errors.lock().unwrap_or_else(|e| e.into_inner()));
    if !errors.is_empty() {
        return Err(format!("{} creates failed; first: {}", errors.len(), errors[0]));
    }
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    let accepted: HashMap<String, usize> = results
        .iter()
        .filter_map(|(i, s)| match s {
            Sent::Accepted(id) => Some((id.clone(), *i)),
            Sent::Lost(_) => None,
        })
        .collect();
    let lost: Vec<&String> =
        results.values().filter_map(|s| if let Sent::Lost(m) = s { Some(m) } else { None }).collect();
    if accepted.len() + lost.len() != n {
        return Err(format!("{} accepted + {} lost answers != {n} creates", accepted.len(), lost.len()));
    }

    // Wait until nothing is BUILDING (the reapers take over the dead replica's builds).
    let addrs: Vec<SocketAddr> = replicas.read().unwrap_or_else(|e| e.into_inner()).iter().flatten().copied().collect();
    let deadline = Instant::now() + SETTLE_WAIT;
    let servers = loop {
        for p in procs.iter_mut().chain(std::iter::once(&mut computes)) {
            p.check_alive()?;
        }
        let servers = list_all(&agent, addrs[1])?;
        let building = servers.iter().filter(|s| s["status"] == "BUILD").count();
        if building == 0 {
            break servers;
        }
        if Instant::now() > deadline {
            return Err(format!("{building} servers still BUILDING after {SETTLE_WAIT:?}"));
        }
        std::thread::sleep(Duration::from_secs(1));
    };

    // Listing through each replica: every server exactly once, the same set everywhere.
    let expected: HashSet<String> = servers.iter().filter_map(|s| s["id"].as_str().map(str::to_string)).collect();
    for addr in &addrs {
        let listed = list_all(&agent, *addr)?;
        let ids: Vec<&str> = listed.iter().filter_map(|s| s["id"].as_str()).collect();
        let unique: HashSet<&str> = ids.iter().copied().collect();
        if unique.len() != ids.len() {
            return Err(format!("listing through {addr} repeats {} servers", ids.len() - unique.len()));
        }
        if unique.len() != expected.len() || !unique.iter().all(|id| expected.contains(*id)) {
            return Err(format!(
                "listing through {addr} has {} servers, another replica {}",
                unique.len(),
                expected.len()
            ));
        }
        if let Some(missing) = accepted.keys().find(|id| !unique.contains(id.as_str())) {
            return Err(format!("server {missing} (answered 202) is not listed through {addr}"));
        }
    }
    let mut names = HashSet::new();
    for s in &servers {
        let name = s["name"].as_str().unwrap_or_default();
        if !name.starts_with("rep-") || !names.insert(name.to_string()) {
            return Err(format!("unexpected or repeated server name {name:?}"));
        }
    }
    if servers.len() > accepted.len() + lost.len() {
        return Err(format!(
            "{} servers listed, more than {} accepted + {} lost answers",
            servers.len(),
            accepted.len(),
            lost.len()
        ));
    }

    // States, claims, groups, audit.
    let store: Arc<dyn Store> = rt.block_on(unicell::store::open(url)).map_err(|e| format!("opening {url}: {e}"))?;
    let want: BTreeMap<String, i64> =
        [("VCPU", 1), ("MEMORY_MB", 2048), ("DISK_GB", 20)].into_iter().map(|(c, v)| (c.to_string(), v)).collect();
    let mut roots = HashMap::new();
    let mut members: HashMap<(usize, String), usize> = HashMap::new();
    let (mut active, mut error) = (0, 0);
    for s in &servers {
        let id_text = s["id"].as_str().unwrap_or_default();
        let id: InstanceId = id_text.parse().map_err(|e| format!("server id {id_text}: {e}"))?;
        let held = rt.block_on(store.allocations(ConsumerId::from(id))).map_err(|e| format!("allocations: {e}"))?;
        match s["status"].as_str() {
            Some("ACTIVE") => {
                active += 1;
                let host =
                    s["OS-EXT-SRV-ATTR:host"].as_str().ok_or_else(|| format!("ACTIVE {id} without host: {s}"))?;
                if !roots.contains_key(host) {
                    let h = rt.block_on(store.get_host(host)).map_err(|e| format!("host {host}: {e}"))?;
                    roots.insert(host.to_string(), h.root_provider);
                }
                let mut amounts: BTreeMap<String, i64> = BTreeMap::new();
                for a in &held {
                    for r in a.allocations.values() {
                        for (class, v) in r {
                            *amounts.entry(class.as_str().to_string()).or_default() += v;
                        }
                    }
                }
                if held.len() != 1 || held[0].root != roots[host] || amounts != want {
                    return Err(format!("ACTIVE {id} on {host} does not hold exactly its claim: {held:?}"));
                }
                let index: usize = s["name"].as_str().and_then(|n| n[4..].parse().ok()).unwrap_or(usize::MAX);
                if let Some(g) = group_of(index) {
                    let count = members.entry((g, host.to_string())).or_default();
                    *count += 1;
                    if *count > 1 {
                        return Err(format!("anti-affinity group {} has two members on {host}", groups[g]));
                    }
                }
            }
            Some("ERROR") => {
                error += 1;
                let fault = s["fault"]["message"].as_str().unwrap_or_default();
                if fault.is_empty() || !held.is_empty() {
                    return Err(format!("ERROR {id} needs a fault and no claim: fault {fault:?}, holds {held:?}"));
                }
            }
            other => return Err(format!("server {id} is {other:?}, not ACTIVE or ERROR")),
        }
    }
    let report = rt.block_on(audit(&*store, &AuditScope::everything())).map_err(|e| format!("audit: {e}"))?;
    if !report.is_clean() {
        return Err(format!("the audit is not clean: {report}"));
    }
    if active == 0 {
        return Err(format!("no server became ACTIVE ({error} in ERROR)"));
    }
    println!(
        "replicas: {n} creates ({} answered 202, {} answers lost with the killed replica), {active} ACTIVE, {error} ERROR",
        accepted.len(),
        lost.len()
    );
    Ok(())
}
