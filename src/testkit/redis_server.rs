//! Throwaway Redis servers and clusters started from the installed `redis-server` binary
//! (Debian package `redis-server`; a cluster also needs `redis-cli`, package
//! `redis-tools`), on free loopback ports, each in its own temporary directory. Data is
//! persisted with an append-only file, so a killed server restarts with it (the fault
//! tests kill and restart servers under load).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{LaunchError, TempDir, find_binary, free_port};

/// Sends one inline command to 127.0.0.1:`port` and returns the raw reply text (enough for
/// PING and INFO); `None` when the server does not answer.
pub fn raw_command(port: u16, cmd: &str) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&format!("127.0.0.1:{port}").parse().ok()?, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 16384];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// How a throwaway server persists its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persistence {
    /// `appendonly yes|no` (RDB snapshots are always off).
    pub appendonly: bool,
    /// `appendfsync` (only meaningful with `appendonly`).
    pub appendfsync: AppendFsync,
}

impl Default for Persistence {
    /// `appendonly yes`, `appendfsync everysec`: what the tests run with.
    fn default() -> Self {
        Persistence { appendonly: true, appendfsync: AppendFsync::EverySec }
    }
}

/// Redis's `appendfsync` policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendFsync {
    /// fsync after every write, before the reply.
    Always,
    /// fsync once a second (up to a second of acknowledged writes can be lost).
    EverySec,
    /// Leave flushing to the operating system.
    No,
}

impl AppendFsync {
    /// Redis's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            AppendFsync::Always => "always",
            AppendFsync::EverySec => "everysec",
            AppendFsync::No => "no",
        }
    }

    /// Parses Redis's name (`always`, `everysec`, `no`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(AppendFsync::Always),
            "everysec" => Some(AppendFsync::EverySec),
            "no" => Some(AppendFsync::No),
            _ => None,
        }
    }
}

/// One redis-server process, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its working directory (AOF, nodes.conf, log).
    pub dir: PathBuf,
    args: Vec<String>,
    binary: PathBuf,
}

impl RedisServer {
    /// Starts a server in `dir` (created) on a free port; `cluster` enables cluster mode;
    /// data is persisted with an append-only file so that a killed server restarts with it.
    pub fn start(dir: &Path, cluster: bool) -> Result<RedisServer, LaunchError> {
        Self::start_with(dir, cluster, Persistence::default())
    }

    /// As [`start`](Self::start) with the given persistence (benchmarks compare Redis with
    /// the append-only file fsynced every second, on every write, or not at all).
    pub fn start_with(dir: &Path, cluster: bool, persistence: Persistence) -> Result<RedisServer, LaunchError> {
        let binary =
            find_binary("redis-server").ok_or("redis-server is not installed (Debian package redis-server)")?;
        let port = free_port(cluster)?;
        std::fs::create_dir_all(dir).map_err(|e| LaunchError::new(format!("creating {}", dir.display()), e))?;
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.display().to_string(),
            "--save",
            "",
            "--appendonly",
            if persistence.appendonly { "yes" } else { "no" },
            "--appendfsync",
            persistence.appendfsync.as_str(),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--logfile",
            "redis.log",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if cluster {
            args.extend(
                ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
                    .iter()
                    .map(|s| s.to_string()),
            );
        }
        let mut s = RedisServer { child: None, port, dir: dir.to_path_buf(), args, binary };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<(), LaunchError> {
        let child = Command::new(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LaunchError::new("starting redis-server", e))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if raw_command(self.port, "PING").is_some_and(|r| r.starts_with("+PONG")) {
                return Ok(());
            }
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                return Err(LaunchError(format!("redis-server exited with {status}: {log}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(LaunchError(format!("redis-server on port {} did not answer within 15 s", self.port)))
    }

    /// Kills the process (SIGKILL: no shutdown, no final save).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again with the same port, directory and data.
    pub fn restart(&mut self) -> Result<(), LaunchError> {
        self.kill();
        self.spawn()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A single throwaway server with its directory.
#[derive(Debug)]
pub struct RedisSingle {
    /// The server (dropped before the directory).
    pub server: RedisServer,
    _dir: TempDir,
}

impl RedisSingle {
    /// Starts one server.
    pub fn start() -> Result<RedisSingle, LaunchError> {
        Self::start_with(Persistence::default())
    }

    /// Starts one server with the given persistence.
    pub fn start_with(persistence: Persistence) -> Result<RedisSingle, LaunchError> {
        let dir = TempDir::new("redis")?;
        let server = RedisServer::start_with(dir.path(), false, persistence)?;
        Ok(RedisSingle { server, _dir: dir })
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }
}

/// A Redis Cluster of masters only (no replicas) created with `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes (dropped before the directory).
    pub nodes: Vec<RedisServer>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node reports it ok.
    pub fn start(masters: usize) -> Result<RedisCluster, LaunchError> {
        if masters < 3 {
            return Err(LaunchError(format!("a Redis Cluster needs at least 3 masters, not {masters}")));
        }
        let cli = find_binary("redis-cli").ok_or("redis-cli is not installed (Debian package redis-tools)")?;
        let dir = TempDir::new("redis-cluster")?;
        let mut nodes = Vec::new();
        for i in 0..masters {
            nodes.push(RedisServer::start(&dir.path().join(format!("node{i}")), true)?);
        }
        let mut cmd = Command::new(&cli);
        cmd.arg("--cluster").arg("create");
        for n in &nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = cmd
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| LaunchError::new("redis-cli --cluster create", e))?;
        if !out.status.success() {
            return Err(LaunchError(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let c = RedisCluster { nodes, _dir: dir };
        c.wait_ok(Duration::from_secs(30))?;
        Ok(c)
    }

    /// Waits until every node answers `cluster_state:ok`.
    pub fn wait_ok(&self, timeout: Duration) -> Result<(), LaunchError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .nodes
                .iter()
                .all(|n| raw_command(n.port, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok")))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(LaunchError(format!("the cluster did not reach cluster_state:ok within {timeout:?}")))
    }

    /// `redis+cluster://first?seeds=others`.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[1..].iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://127.0.0.1:{}?seeds={}", self.nodes[0].port, seeds.join(","))
    }
}
