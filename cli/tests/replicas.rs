//! Replicas on one store, with a crash: three `unicell serve` processes and one
//! `unicell computes` on Redis, MariaDB (cells), PostgreSQL (cells) and Cassandra 2.1 (behind
//! the CQL proxy). Concurrent `POST /servers` (a tenth of them in anti-affinity groups) are
//! spread over the replicas; one replica is killed with SIGKILL a third of the way in and
//! started again. At the end:
//!
//! * no server is in BUILD: the killed replica's builds were taken over by the others
//!   through their expired build leases;
//! * every ACTIVE server holds its claim and every ERROR server shows a fault and holds
//!   none, and the whole store audit (`unicell::store::audit`, instances included) is clean;
//! * no anti-affinity group has two members on one host;
//! * listing through any replica (admin, `all_tenants`, paged by 1,000) shows every server
//!   exactly once, the same set on every replica, including every server a POST was
//!   answered for.
//!
//! A store whose server does not answer here is reported ignored with the reason (Cassandra
//! fails instead when `UNICELL_REQUIRE_CASSANDRA=1`, as CI sets). Sizes: 2,000 servers on
//! Redis, fewer on the SQL stores and Cassandra, which build slower on a small machine
//! (`UNICELL_REPLICAS_SERVERS` overrides every store's count).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde_json::{Value, json};
use unicell::model::ConsumerId;
use unicell::store::StoreUrl;
use unicell::store::audit::{AuditScope, audit};

const REPLICAS: usize = 3;
const HOSTS: usize = 40;
const CLIENT_THREADS: usize = 24;
/// One server in this many asks for an anti-affinity group.
const GROUP_EVERY: usize = 10;
/// Members per anti-affinity group (well under the host count, so that all can fit).
const GROUP_SIZE: usize = 8;
const PROJECTS: usize = 4;

fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

fn reachable(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(2)).is_ok()
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A scratch directory for the processes' logs, removed at the end unless the test failed.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Result<Scratch> {
        let p = std::env::temp_dir().join(format!("unicell-replicas-{tag}-{}", run_id()));
        std::fs::create_dir_all(&p)?;
        Ok(Scratch(p))
    }
}

/// A child process that is killed (SIGKILL) when dropped, so a failing test leaves none.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(store: &str, args: &[String], log: PathBuf) -> Result<Proc> {
        let out = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_unicell"))
            .env_remove("UNICELL_STORE")
            .env("RUST_LOG", "warn")
            .arg("--store")
            .arg(store)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning unicell")?;
        Ok(Proc { child, log })
    }

    fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, then waits (SIGKILL after `grace`).
    fn terminate(&mut self, grace: Duration) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// One HTTP call: `Ok((status, body))`, `Err` when the connection failed.
fn call(agent: &ureq::Agent, method: &str, url: &str, token: &str, body: Option<&Value>) -> Result<(u16, Value)> {
    let mut resp = match (method, body) {
        ("GET", _) => {
            agent.get(url).header("X-Auth-Token", token).header("OpenStack-API-Version", "compute 2.71").call()?
        }
        ("POST", Some(b)) => agent
            .post(url)
            .header("X-Auth-Token", token)
            .header("Content-Type", "application/json")
            .header("OpenStack-API-Version", "compute 2.71")
            .send(b.to_string())?,
        _ => bail!("unsupported call {method}"),
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().with_config().limit(64 << 20).read_to_string()?;
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? };
    Ok((status, body))
}

/// A `unicell serve` replica on a fixed port (so that its restart is at the same address).
struct Replica {
    port: u16,
    proc: Option<Proc>,
    logs: PathBuf,
    starts: usize,
}

impl Replica {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}/v2.1", self.port)
    }

    fn start(&mut self, store: &str) -> Result<()> {
        self.starts += 1;
        let log = self.logs.join(format!("serve-{}-{}.log", self.port, self.starts));
        let args: Vec<String> = [
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--build-ms",
            "40",
            "--build-failure-rate",
            "0.03",
            "--build-lease-ttl",
            "3s",
            "--drain-timeout",
            "10s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = Proc::spawn(store, &args, log)?;
        let deadline = Instant::now() + Duration::from_secs(180);
        let agent = agent();
        loop {
            if let Ok((200, _)) = call(&agent, "GET", &format!("http://127.0.0.1:{}/", self.port), "admin", None) {
                break;
            }
            if Instant::now() > deadline {
                bail!("replica on {} did not answer within 180 s:\n{}", self.port, proc.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.proc = Some(proc);
        Ok(())
    }
}

/// Every server (admin, all tenants, detail at 2.71) through one replica, paged by 1,000.
fn list_all(agent: &ureq::Agent, base: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut url = format!("{base}/servers/detail?all_tenants=1&limit=1000");
    loop {
        let (status, body) = call(agent, "GET", &url, "admin", None)?;
        ensure!(status == 200, "listing {url}: {status} {body}");
        let page = body["servers"].as_array().ok_or_else(|| anyhow!("no servers in {body}"))?;
        out.extend(page.iter().cloned());
        match body["servers_links"].as_array().and_then(|l| l.first()).and_then(|l| l["href"].as_str()) {
            Some(next) => {
                let query = next.split_once('?').map(|(_, q)| q).unwrap_or_default();
                url = format!("{base}/servers/detail?{query}");
            }
            None => return Ok(out),
        }
    }
}

struct Outcome {
    accepted: BTreeSet<String>,
    refused_retries: usize,
}

/// `n` concurrent POSTs spread over the replicas (request `i` to replica `i % 3`, the next
/// replica when a connection fails); replica 1 is killed with SIGKILL once a third are
/// answered, and started again.
fn storm(store: &str, replicas: &Arc<Mutex<Vec<Replica>>>, groups: &[(String, String)], n: usize) -> Result<Outcome> {
    let bases: Vec<String> = replicas.lock().map_err(|_| anyhow!("poisoned"))?.iter().map(Replica::base).collect();
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut threads = Vec::new();
    for _ in 0..CLIENT_THREADS {
        let (next, answered, refused, accepted, errors) =
            (next.clone(), answered.clone(), refused.clone(), accepted.clone(), errors.clone());
        let bases = bases.clone();
        let groups = groups.to_vec();
        threads.push(std::thread::spawn(move || {
            let agent = agent();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return;
                }
                let project = i % PROJECTS;
                let token = format!("user{project}:project{project}");
                let mut body = json!({"server": {
                    "name": format!("r{i}"),
                    "imageRef": "70a599e0-31e7-49b7-b260-868f441e862b",
                    "flavorRef": "m1.small",
                    "networks": "none",
                }});
                if i % GROUP_EVERY == 0 {
                    // Groups are owned by a project; pick one of this request's project.
                    let mine: Vec<&(String, String)> = groups.iter().filter(|(p, _)| *p == token).collect();
                    let (_, gid) = mine[(i / GROUP_EVERY / PROJECTS) % mine.len()];
                    body["os:scheduler_hints"] = json!({"group": gid});
                }
                let mut done = false;
                for attempt in 0..30 {
                    let base = &bases[(i + attempt) % bases.len()];
                    match call(&agent, "POST", &format!("{base}/servers"), &token, Some(&body)) {
                        Ok((202, b)) => {
                            if let Some(id) = b["server"]["id"].as_str()
                                && let Ok(mut a) = accepted.lock()
                            {
                                a.insert(id.to_string());
                            }
                            done = true;
                            break;
                        }
                        Ok((status, b)) => {
                            if let Ok(mut e) = errors.lock() {
                                e.push(format!("POST {i}: {status} {b}"));
                            }
                            done = true;
                            break;
                        }
                        Err(_) => {
                            refused.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
                if !done && let Ok(mut e) = errors.lock() {
                    e.push(format!("POST {i}: no replica answered"));
                }
                answered.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // The crash: SIGKILL replica 1 a third of the way in, then start it again.
    while answered.load(Ordering::SeqCst) < n / 3 {
        std::thread::sleep(Duration::from_millis(20));
    }
    {
        let mut r = replicas.lock().map_err(|_| anyhow!("poisoned"))?;
        if let Some(mut p) = r[1].proc.take() {
            p.child.kill().context("SIGKILL replica 1")?;
            let _ = p.child.wait();
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    replicas.lock().map_err(|_| anyhow!("poisoned"))?[1].start(store)?;
    for t in threads {
        t.join().map_err(|_| anyhow!("a client thread panicked"))?;
    }
    let errors = errors.lock().map_err(|_| anyhow!("poisoned"))?;
    ensure!(errors.is_empty(), "{} POSTs failed, first: {:?}", errors.len(), errors.first());
    let accepted = std::mem::take(&mut *accepted.lock().map_err(|_| anyhow!("poisoned"))?);
    Ok(Outcome { accepted, refused_retries: refused.load(Ordering::SeqCst) })
}

fn scenario(name: &str, store: &str, servers: usize, cells: usize) -> Result<()> {
    let scratch = Scratch::new(name)?;
    let started = Instant::now();
    let computes = Proc::spawn(
        store,
        &[
            "computes".into(),
            "--hosts".into(),
            HOSTS.to_string(),
            "--cells".into(),
            cells.to_string(),
            "--heartbeat".into(),
            "2s".into(),
        ],
        scratch.0.join("computes.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !std::fs::read_to_string(&computes.log).unwrap_or_default().contains("hosts registered") {
        if Instant::now() > deadline {
            bail!("computes did not register within 300 s:\n{}", computes.log_tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut list = Vec::new();
    for _ in 0..REPLICAS {
        let mut r = Replica { port: free_port()?, proc: None, logs: scratch.0.clone(), starts: 0 };
        r.start(store)?;
        list.push(r);
    }
    let replicas = Arc::new(Mutex::new(list));
    let bases: Vec<String> = replicas.lock().map_err(|_| anyhow!("poisoned"))?.iter().map(Replica::base).collect();
    let agent = agent();

    // Anti-affinity groups (one member per host), owned by the projects that use them.
    let wanted_groups = (servers / GROUP_EVERY).div_ceil(GROUP_SIZE).max(PROJECTS);
    let mut groups = Vec::new();
    for g in 0..wanted_groups {
        let project = g % PROJECTS;
        let token = format!("user{project}:project{project}");
        let body = json!({"server_group": {"name": format!("aa{g}"), "policy": "anti-affinity"}});
        let (status, out) =
            call(&agent, "POST", &format!("{}/os-server-groups", bases[g % REPLICAS]), &token, Some(&body))?;
        ensure!(status == 200, "creating group {g}: {status} {out}");
        let id = out["server_group"]["id"].as_str().ok_or_else(|| anyhow!("no group id in {out}"))?;
        groups.push((token, id.to_string()));
    }

    let outcome = storm(store, &replicas, &groups, servers)?;
    let posted = started.elapsed();

    // Settle: nothing in BUILD (the dead replica's builds are taken over once their leases
    // expire).
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut listed = loop {
        let l = list_all(&agent, &bases[0])?;
        let building = l.iter().filter(|s| s["status"] == "BUILD").count();
        if building == 0 {
            break l;
        }
        if Instant::now() > deadline {
            bail!("{building} servers still BUILD after 600 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    };

    // Every replica lists every server once, the same set, including every accepted POST.
    let ids = |l: &[Value]| -> Result<BTreeSet<String>> {
        let mut seen = BTreeSet::new();
        for s in l {
            let id = s["id"].as_str().ok_or_else(|| anyhow!("server without id: {s}"))?;
            ensure!(seen.insert(id.to_string()), "server {id} listed twice");
        }
        Ok(seen)
    };
    let all = ids(&listed)?;
    for base in &bases[1..] {
        let other = list_all(&agent, base)?;
        ensure!(ids(&other)? == all, "{base} lists a different set of servers");
    }
    let missing: Vec<&String> = outcome.accepted.difference(&all).collect();
    ensure!(missing.is_empty(), "{} accepted servers are not listed, e.g. {:?}", missing.len(), missing.first());
    ensure!(all.len() >= outcome.accepted.len() && all.len() <= servers, "{} servers for {servers} POSTs", all.len());

    // States and claims, read from the store itself.
    let parsed = StoreUrl::parse(store)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let direct = rt.block_on(unicell::store::open_url(&parsed))?;
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut group_hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &listed {
        let status = s["status"].as_str().unwrap_or_default().to_string();
        let id: uuid::Uuid = s["id"].as_str().unwrap_or_default().parse()?;
        let claims = rt.block_on(direct.allocations(ConsumerId(id)))?;
        match status.as_str() {
            "ACTIVE" => {
                ensure!(claims.len() == 1, "ACTIVE server {id} holds {} claims", claims.len());
                let host = s["OS-EXT-SRV-ATTR:host"].as_str().ok_or_else(|| anyhow!("ACTIVE {id} has no host"))?;
                for g in s["server_groups"].as_array().into_iter().flatten() {
                    group_hosts.entry(g.as_str().unwrap_or_default().to_string()).or_default().push(host.to_string());
                }
            }
            "ERROR" => {
                ensure!(claims.is_empty(), "ERROR server {id} still holds a claim");
                ensure!(
                    s["fault"]["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "ERROR server {id} shows no fault: {s}"
                );
            }
            other => bail!("server {id} is {other}"),
        }
        *by_status.entry(status).or_default() += 1;
    }
    for (g, hosts) in &group_hosts {
        let distinct: BTreeSet<&String> = hosts.iter().collect();
        ensure!(distinct.len() == hosts.len(), "anti-affinity group {g} has two members on one host: {hosts:?}");
    }
    let report = rt.block_on(audit(&*direct, &AuditScope::everything()))?;
    ensure!(report.is_clean(), "store audit: {report}");
    eprintln!(
        "replicas::{name}: {} servers ({by_status:?}), {} in {} groups, {} POSTs retried after connection errors, \
         POSTs done in {:.1?}, settled and checked in {:.1?}",
        all.len(),
        group_hosts.values().map(Vec::len).sum::<usize>(),
        groups.len(),
        outcome.refused_retries,
        posted,
        started.elapsed()
    );
    listed.clear();

    // Graceful stop of everything.
    for r in replicas.lock().map_err(|_| anyhow!("poisoned"))?.iter_mut() {
        if let Some(p) = r.proc.as_mut() {
            p.terminate(Duration::from_secs(20));
        }
    }
    let mut computes = computes;
    computes.terminate(Duration::from_secs(10));
    drop(rt);
    let _ = std::fs::remove_dir_all(&scratch.0);
    Ok(())
}

/// Per-store sizes: `UNICELL_REPLICAS_SERVERS` or the default.
fn servers(default: usize) -> usize {
    std::env::var("UNICELL_REPLICAS_SERVERS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn redis_cleanup(prefix: &str) {
    let script = format!(
        "redis-cli -h 127.0.0.1 -p 6379 --scan --pattern '{prefix}*' | xargs -r -n 500 redis-cli -h 127.0.0.1 -p 6379 del"
    );
    let _ = Command::new("sh").arg("-c").arg(script).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

fn drop_sql(url: &str) {
    if let (Ok(parsed), Ok(rt)) = (StoreUrl::parse(url), tokio::runtime::Runtime::new()) {
        let _ = rt.block_on(unicell::store::sql::SqlStore::drop_databases(&parsed));
    }
}

fn sql_trial(name: &'static str, port: u16, url: String, default_servers: usize) -> Trial {
    Trial::ignorable_test(format!("replicas::{name}"), move || {
        if !reachable(port) {
            return Ok(Completion::ignored_with(format!("nothing answers on 127.0.0.1:{port}")));
        }
        let r = scenario(name, &url, servers(default_servers), 2);
        drop_sql(&url);
        r.map_err(|e| Failed::from(format!("{e:#}")))?;
        Ok(Completion::Completed)
    })
}

fn main() {
    let args = Arguments::from_args();
    let id = run_id();
    let mut trials = Vec::new();
    let prefix = format!("unicell_replicas_{id}");
    trials.push(Trial::ignorable_test("replicas::redis", move || {
        if !reachable(6379) {
            return Ok(Completion::ignored_with("no Redis answers on 127.0.0.1:6379"));
        }
        let r = scenario("redis", &format!("redis://127.0.0.1:6379/?prefix={prefix}"), servers(2000), 1);
        redis_cleanup(&prefix);
        r.map_err(|e| Failed::from(format!("{e:#}")))?;
        Ok(Completion::Completed)
    }));
    trials.push(sql_trial(
        "mariadb",
        3306,
        format!("mysql://root@127.0.0.1:3306/unicell_replicas_{id}?cells=2&pool_size=24&cell_pool_size=8"),
        600,
    ));
    trials.push(sql_trial(
        "postgres",
        5432,
        format!("postgres://postgres@127.0.0.1:5432/unicell_replicas_{id}?cells=2&pool_size=24&cell_pool_size=8"),
        600,
    ));
    let keyspace = format!("unicell_replicas_{id}");
    trials.push(Trial::ignorable_test("replicas::cassandra-2.1", move || {
        let required = std::env::var("UNICELL_REQUIRE_CASSANDRA").is_ok_and(|v| v == "1");
        let cassandra = match unicell::testkit::cassandra::CassandraBehindProxy::start() {
            Ok(c) => c,
            Err(e) if required => return Err(Failed::from(e.to_string())),
            Err(e) => return Ok(Completion::ignored_with(e.to_string())),
        };
        scenario("cassandra", &cassandra.url(&keyspace), servers(200), 1)
            .map_err(|e| Failed::from(format!("{e:#}")))?;
        Ok(Completion::Completed)
    }));
    libtest_mimic::run(&args, trials).exit();
}
