//! Throwaway Redis servers and clusters started from the installed `redis-server` binary, on
//! free loopback ports, in a temporary directory; killed (and the directory removed) on drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The first of `names` found on PATH (or in /usr/sbin, /usr/bin).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A port whose number and (for cluster nodes) number + 10000 are free on 127.0.0.1.
pub fn free_port(with_bus: bool) -> Option<u16> {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").ok()?;
        let port = l.local_addr().ok()?.port();
        if !with_bus {
            return Some(port);
        }
        if port < 55000 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return Some(port);
        }
    }
    None
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `unicell-redis-<random>` under the system temp dir.
    pub fn new(tag: &str) -> Result<Self, String> {
        let p = std::env::temp_dir().join(format!("unicell-{tag}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends one inline command and returns the raw reply text (enough for PING and INFO).
pub fn raw_command(port: u16, cmd: &str) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&format!("127.0.0.1:{port}").parse().ok()?, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 16384];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One redis-server process.
pub struct Server {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its working directory (AOF, nodes.conf, log).
    pub dir: PathBuf,
    args: Vec<String>,
    binary: PathBuf,
}

impl Server {
    /// Starts a server in `dir` (created) on a free port; `cluster` enables cluster mode;
    /// data is persisted with an append-only file so that a killed server restarts with it.
    pub fn start(dir: &Path, cluster: bool) -> Result<Server, String> {
        let binary = find_binary("redis-server").ok_or("redis-server is not installed")?;
        let port = free_port(cluster).ok_or("no free port")?;
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir: {e}"))?;
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
            "yes",
            "--appendfsync",
            "everysec",
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
        let mut s = Server { child: None, port, dir: dir.to_path_buf(), args, binary };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new(&self.binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
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
                return Err(format!("redis-server exited with {status}: {log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("redis-server on port {} did not answer", self.port))
    }

    /// Kills the process (SIGKILL: no shutdown, no final save).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again with the same port, directory and data.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A single throwaway server with its directory.
pub struct Single {
    /// The server (dropped before the directory).
    pub server: Server,
    _dir: TempDir,
}

impl Single {
    /// Starts one server.
    pub fn start() -> Result<Single, String> {
        let dir = TempDir::new("redis")?;
        let server = Server::start(&dir.0, false)?;
        Ok(Single { server, _dir: dir })
    }
}

/// A Redis Cluster of `masters` masters (no replicas) created with `redis-cli --cluster create`.
pub struct Cluster {
    /// The nodes (dropped before the directory).
    pub nodes: Vec<Server>,
    _dir: TempDir,
}

impl Cluster {
    /// Starts the nodes, creates the cluster and waits until every node reports it ok.
    pub fn start(masters: usize) -> Result<Cluster, String> {
        let cli = find_binary("redis-cli").ok_or("redis-cli is not installed (redis-tools)")?;
        let dir = TempDir::new("redis-cluster")?;
        let mut nodes = Vec::new();
        for i in 0..masters {
            nodes.push(Server::start(&dir.0.join(format!("node{i}")), true)?);
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
            .map_err(|e| format!("redis-cli --cluster create: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let c = Cluster { nodes, _dir: dir };
        c.wait_ok(Duration::from_secs(30))?;
        Ok(c)
    }

    /// Waits until every node answers `cluster_state:ok`.
    pub fn wait_ok(&self, timeout: Duration) -> Result<(), String> {
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
        Err("the cluster did not reach cluster_state:ok".into())
    }

    /// `redis+cluster://first?seeds=others`.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[1..].iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://127.0.0.1:{}?seeds={}", self.nodes[0].port, seeds.join(","))
    }
}
