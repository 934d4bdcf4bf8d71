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
        let node_timeout = cluster.then_some(Duration::from_millis(2000));
        Self::start_node(dir, node_timeout, persistence)
    }

    /// Starts a cluster-mode server whose `cluster-node-timeout` is `node_timeout`: how long
    /// a master may be unreachable before the others mark it failed and its replica takes
    /// over (a failover test sets it low to fail over within a second or two).
    pub fn start_cluster_node(
        dir: &Path,
        node_timeout: Duration,
        persistence: Persistence,
    ) -> Result<RedisServer, LaunchError> {
        Self::start_node(dir, Some(node_timeout), persistence)
    }

    fn start_node(
        dir: &Path,
        node_timeout: Option<Duration>,
        persistence: Persistence,
    ) -> Result<RedisServer, LaunchError> {
        let cluster = node_timeout.is_some();
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
        if let Some(t) = node_timeout {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &t.as_millis().max(1).to_string(),
                ]
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

    /// Whether the process was started and not killed since (it may still have died on its
    /// own; [`role`](Self::role) tells whether it answers).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's replication role from `INFO replication`; `None` when it does not answer.
    pub fn role(&self) -> Option<Role> {
        Role::parse(&raw_command(self.port, "INFO replication")?)
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

/// A server's replication role, as `INFO replication` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A master (in a cluster: one that may or may not own slots).
    Master,
    /// A replica of the master on 127.0.0.1:`master_port`.
    Replica {
        /// The master's port.
        master_port: u16,
        /// `master_link_status:up`: the initial sync is done and the link is alive.
        link_up: bool,
    },
}

impl Role {
    /// Parses the text of `INFO replication` (`role:master` or `role:slave` with
    /// `master_port:` and `master_link_status:`).
    pub fn parse(info: &str) -> Option<Role> {
        let field =
            |name: &str| info.lines().find_map(|l| l.trim_end().strip_prefix(name).and_then(|v| v.strip_prefix(':')));
        match field("role")? {
            "master" => Some(Role::Master),
            "slave" => Some(Role::Replica {
                master_port: field("master_port")?.parse().ok()?,
                link_up: field("master_link_status") == Some("up"),
            }),
            _ => None,
        }
    }
}

/// A Redis Cluster created with `redis-cli --cluster create`: masters only
/// ([`start`](Self::start)), or masters each with replicas
/// ([`start_replicated`](Self::start_replicated)) so that a master killed with SIGKILL is
/// replaced by its replica after `cluster-node-timeout`.
///
/// Nodes are addressed by their index in [`nodes`](Self::nodes), which never changes; which
/// of them are masters does (a failover promotes a replica, and a restarted old master comes
/// back as a replica of its successor), so ask [`role`](RedisServer::role) or
/// [`masters`](Self::masters) rather than assuming.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes (dropped before the directory).
    pub nodes: Vec<RedisServer>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts `masters` masters without replicas, creates the cluster and waits until every
    /// node reports it ok.
    pub fn start(masters: usize) -> Result<RedisCluster, LaunchError> {
        Self::create(masters, 0, Duration::from_millis(2000))
    }

    /// Starts `masters` masters and `replicas` replicas of each (`--cluster-replicas`), with
    /// `cluster-node-timeout` `node_timeout`, and waits until the cluster is ok and every
    /// replica has finished its initial sync (so that any master can fail over at once).
    pub fn start_replicated(
        masters: usize,
        replicas: usize,
        node_timeout: Duration,
    ) -> Result<RedisCluster, LaunchError> {
        if replicas == 0 {
            return Err(LaunchError("a replicated cluster needs at least one replica per master".into()));
        }
        Self::create(masters, replicas, node_timeout)
    }

    fn create(masters: usize, replicas: usize, node_timeout: Duration) -> Result<RedisCluster, LaunchError> {
        if masters < 3 {
            return Err(LaunchError(format!("a Redis Cluster needs at least 3 masters, not {masters}")));
        }
        let cli = find_binary("redis-cli").ok_or("redis-cli is not installed (Debian package redis-tools)")?;
        let dir = TempDir::new("redis-cluster")?;
        let mut nodes = Vec::new();
        for i in 0..masters * (1 + replicas) {
            nodes.push(RedisServer::start_cluster_node(
                &dir.path().join(format!("node{i}")),
                node_timeout,
                Persistence::default(),
            )?);
        }
        let mut cmd = Command::new(&cli);
        cmd.arg("--cluster").arg("create");
        for n in &nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = cmd
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
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
        c.wait_ok(Duration::from_secs(60))?;
        let found = c.masters().len();
        if found != masters {
            return Err(LaunchError(format!("the cluster came up with {found} masters instead of {masters}")));
        }
        Ok(c)
    }

    /// Waits until every running node answers `cluster_state:ok` and every running replica
    /// has its link to its master up. Nodes killed with [`kill`](Self::kill) and not
    /// restarted are not asked.
    pub fn wait_ok(&self, timeout: Duration) -> Result<(), LaunchError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut waiting_for = None;
            for (i, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.is_running()) {
                if !raw_command(n.port, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok")) {
                    waiting_for = Some(format!("node {i} (port {}) to report cluster_state:ok", n.port));
                    break;
                }
                if let Some(Role::Replica { link_up: false, .. }) | None = n.role() {
                    waiting_for = Some(format!("replica {i} (port {}) to sync with its master", n.port));
                    break;
                }
            }
            let Some(what) = waiting_for else { return Ok(()) };
            if Instant::now() >= deadline {
                return Err(LaunchError(format!("waited {timeout:?} for {what}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Indexes of the running nodes that report themselves master.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running() && self.nodes[i].role() == Some(Role::Master))
            .collect()
    }

    /// Indexes of the running nodes that replicate node `master`.
    pub fn replicas_of(&self, master: usize) -> Vec<usize> {
        let Some(port) = self.nodes.get(master).map(|n| n.port) else { return Vec::new() };
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].is_running()
                    && matches!(self.nodes[i].role(), Some(Role::Replica { master_port, .. }) if master_port == port)
            })
            .collect()
    }

    /// Kills node `i` with SIGKILL (no shutdown, no final write); the rest of the cluster
    /// notices after `cluster-node-timeout`.
    pub fn kill(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.kill();
        }
    }

    /// Starts node `i` again with its port, data and `nodes.conf`; an old master that was
    /// failed over rejoins as a replica of its successor.
    pub fn restart(&mut self, i: usize) -> Result<(), LaunchError> {
        self.nodes.get_mut(i).ok_or_else(|| LaunchError(format!("no node {i}")))?.restart()
    }

    /// Waits until one of `candidates` (the replicas of a killed master) reports itself
    /// master, and returns its index.
    pub fn wait_promoted(&self, candidates: &[usize], timeout: Duration) -> Result<usize, LaunchError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(&i) =
                candidates.iter().find(|&&i| self.nodes.get(i).and_then(RedisServer::role) == Some(Role::Master))
            {
                return Ok(i);
            }
            if Instant::now() >= deadline {
                return Err(LaunchError(format!("none of the nodes {candidates:?} was promoted within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis+cluster://first?seeds=others` (every node, so the client can find the cluster
    /// whichever nodes are down when it starts).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[1..].iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://127.0.0.1:{}?seeds={}", self.nodes[0].port, seeds.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info_replication() {
        assert_eq!(Role::parse("# Replication\r\nrole:master\r\nconnected_slaves:1\r\n"), Some(Role::Master));
        assert_eq!(
            Role::parse(
                "$120\r\n# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:30001\r\nmaster_link_status:up\r\n"
            ),
            Some(Role::Replica { master_port: 30001, link_up: true })
        );
        assert_eq!(
            Role::parse("role:slave\r\nmaster_port:30001\r\nmaster_link_status:down\r\n"),
            Some(Role::Replica { master_port: 30001, link_up: false })
        );
        assert_eq!(Role::parse("-ERR unknown"), None);
    }
}
