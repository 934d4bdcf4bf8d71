//! Parsing of `redis://` and `redis+cluster://` store URLs.
//!
//! ```text
//! redis://[user:password@]host:port[/db][?options]
//! redis+cluster://[user:password@]host:port[?seeds=host:port,host:port&options]
//! ```
//!
//! The cluster form names one seed in the authority and any further seeds in `seeds=`
//! (comma-separated, the parameter may repeat): a URL cannot carry several authorities, and
//! one reachable seed is enough for the client to discover the whole cluster.
//!
//! Options (query string):
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `prefix` | `unicell` | prefix of every key, so that deployments and test runs share a server |
//! | `timeout_ms` | 5000 | response timeout of one command (the client's own default is 500 ms, too short under load) |
//! | `connect_timeout_ms` | 2000 | timeout of one connection attempt |
//! | `pool` | 4 | multiplexed connections used round-robin (each is pipelined; several use several client cores) |
//! | `retries` | 2 | cluster mode: redirections/reconnections the cluster client tries before failing |
//! | `tree_shards` | 16 single / 64 cluster | hash-tag shards of provider trees and of the change feed |
//! | `instance_shards` | 1 single / 16 cluster | hash-tag shards of the instance listing indexes |
//! | `grace_ms` | 300000 | age after which an index member or reservation without its object is a leftover (must exceed any request's lifetime) |
//! | `tombstones` | 4096 | deleted-tree tombstones kept per change-feed shard before old cursors get `Resync` |
//! | `wait_replicas` | 0 | after every claim and release (and Placement's allocation writes), Redis `WAIT` until this many replicas of the master that ran it have the write; fewer is a retryable error (below) |
//! | `wait_timeout_ms` | 1000 | how long that `WAIT` may block (must be below `timeout_ms`) |
//!
//! **`wait_replicas`.** Redis replicates asynchronously: a master acknowledges a claim before
//! its replicas have it, so a master lost right after (SIGKILL, a dead machine) can take
//! acknowledged claims with it when its replica is promoted, and capacity they held can be
//! granted twice. With `wait_replicas=N` a claim or release is acknowledged only once `N`
//! replicas of the master that ran its script acknowledged the write: the script, a barrier
//! write in the same slot (so that a replayed claim, which writes nothing, still waits for the
//! write that made it) and `WAIT N wait_timeout_ms` go down one connection to that master as
//! one pipeline. Fewer acknowledgements within the timeout fail the call with a retryable
//! [`Error::Unavailable`]: the write is on the master and may or may not survive a failover;
//! claims and releases are idempotent, so the caller replays the call to find out. In a
//! cluster the consumer's index entry (another slot) is waited for the same way before the
//! script runs. Only writes of allocations wait (claims, releases, Placement's
//! `POST /allocations`); other writes (providers, inventories, instances) do not. `N` must not exceed the replicas each master has, or every claim fails
//! (a master whose replica is down, or just promoted and without one yet, refuses claims
//! until a replica has synced: that is the price of not losing acknowledged claims).
//! Shard counts are fixed by the first store that opens a prefix (they are recorded in the
//! prefix's `meta` hash); later opens use the recorded values.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::{Scheme, StoreUrl};

/// Connection and layout settings parsed from a store URL. Its `Debug` output shows the
/// URL redacted and never the node URLs (which carry the password).
#[derive(Clone)]
pub struct RedisConfig {
    /// Whether this is a Redis Cluster deployment.
    pub cluster: bool,
    /// Node URLs for the client library, credentials included (never printed).
    pub(crate) nodes: Vec<String>,
    /// The URL as given, for logs (redacted when printed).
    pub url: StoreUrl,
    /// Key prefix.
    pub prefix: String,
    /// Response timeout of one command.
    pub timeout: Duration,
    /// Timeout of one connection attempt.
    pub connect_timeout: Duration,
    /// Number of multiplexed connections.
    pub pool: usize,
    /// Cluster client retries.
    pub retries: u32,
    /// Tree shards requested (the prefix's recorded value wins).
    pub tree_shards: u32,
    /// Instance-index shards requested (the prefix's recorded value wins).
    pub instance_shards: u32,
    /// Age after which an index member or a reservation without its object is a leftover.
    pub grace: Duration,
    /// Tombstones kept per change-feed shard.
    pub tombstones: u32,
    /// Replicas that must acknowledge a claim or release before it is acknowledged (0: do not
    /// wait; see the module docs).
    pub wait_replicas: u32,
    /// How long Redis `WAIT` blocks for them.
    pub wait_timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url)
            .field("cluster", &self.cluster)
            .field("nodes", &self.nodes.len())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool", &self.pool)
            .field("retries", &self.retries)
            .field("tree_shards", &self.tree_shards)
            .field("instance_shards", &self.instance_shards)
            .field("grace", &self.grace)
            .field("tombstones", &self.tombstones)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .finish()
    }
}

fn num<T>(url: &StoreUrl, key: &str, default: T, min: T, max: T) -> Result<T>
where
    T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display,
{
    match url.param(key) {
        None => Ok(default),
        Some(v) => {
            let n: T = v
                .parse()
                .map_err(|_| Error::invalid(format!("store url option {key}"), format!("{v:?} is not a number")))?;
            if n < min || n > max {
                return Err(Error::invalid(
                    format!("store url option {key}"),
                    format!("{n} must be between {min} and {max}"),
                ));
            }
            Ok(n)
        }
    }
}

const OPTIONS: &[&str] = &[
    "prefix",
    "timeout_ms",
    "connect_timeout_ms",
    "pool",
    "retries",
    "tree_shards",
    "instance_shards",
    "seeds",
    "grace_ms",
    "tombstones",
    "wait_replicas",
    "wait_timeout_ms",
];

impl RedisConfig {
    /// Parses a `redis://` or `redis+cluster://` URL.
    pub fn parse(url: &StoreUrl) -> Result<Self> {
        let cluster = match url.scheme() {
            Scheme::Redis => false,
            Scheme::RedisCluster => true,
            other => {
                return Err(Error::invalid("store url", format!("scheme {other} is not redis or redis+cluster")));
            }
        };
        let u = url.expose();
        for (k, _) in u.query_pairs() {
            if !OPTIONS.contains(&k.as_ref()) {
                return Err(Error::invalid(
                    "store url",
                    format!("unknown option {k:?} in {url}; known: {}", OPTIONS.join(", ")),
                ));
            }
        }
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::invalid("store url", format!("{url} names no host")))?;
        let port = u.port().unwrap_or(6379);
        let db: i64 = match u.path().trim_matches('/') {
            "" => 0,
            p => p
                .parse()
                .map_err(|_| Error::invalid("store url", format!("database {p:?} in {url} is not a number")))?,
        };
        if cluster && db != 0 {
            return Err(Error::invalid("store url", "Redis Cluster has only database 0"));
        }
        let auth = match (u.username(), u.password()) {
            ("", None) => String::new(),
            (user, None) => format!("{user}@"),
            (user, Some(p)) => format!("{user}:{p}@"),
        };
        let mut nodes = vec![format!("redis://{auth}{host}:{port}/{db}")];
        if cluster {
            nodes[0] = format!("redis://{auth}{host}:{port}");
            for (k, v) in u.query_pairs() {
                if k == "seeds" {
                    for seed in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        if seed.contains('/') || seed.contains('@') {
                            return Err(Error::invalid(
                                "store url option seeds",
                                format!("{seed:?} must be host:port"),
                            ));
                        }
                        nodes.push(format!("redis://{auth}{seed}"));
                    }
                }
            }
        } else if url.param("seeds").is_some() {
            return Err(Error::invalid("store url option seeds", "seeds is only for redis+cluster:// URLs"));
        }
        let prefix = url.param("prefix").unwrap_or_else(|| "unicell".to_string());
        if prefix.is_empty()
            || prefix.len() > 100
            || prefix.contains(['{', '}'])
            || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::invalid(
                "store url option prefix",
                format!("{prefix:?} must be 1 to 100 characters without braces or spaces"),
            ));
        }
        let timeout = Duration::from_millis(num(url, "timeout_ms", 5000, 1, 3_600_000)?);
        let wait_replicas = num(url, "wait_replicas", 0, 0, 64)?;
        // WAIT 0 would block forever; 1 ms is the least wait that terminates.
        let wait_timeout = Duration::from_millis(num(url, "wait_timeout_ms", 1000, 1, 3_600_000)?);
        if wait_replicas > 0 && wait_timeout >= timeout {
            return Err(Error::invalid(
                "store url option wait_timeout_ms",
                format!(
                    "{} ms must be below timeout_ms ({} ms), or the client gives up before WAIT answers",
                    wait_timeout.as_millis(),
                    timeout.as_millis()
                ),
            ));
        }
        Ok(RedisConfig {
            cluster,
            nodes,
            url: url.clone(),
            prefix,
            timeout,
            connect_timeout: Duration::from_millis(num(url, "connect_timeout_ms", 2000, 1, 3_600_000)?),
            pool: num(url, "pool", 4, 1, 64)?,
            retries: num(url, "retries", 2, 0, 100)?,
            tree_shards: num(url, "tree_shards", if cluster { 64 } else { 16 }, 1, 4096)?,
            instance_shards: num(url, "instance_shards", if cluster { 16 } else { 1 }, 1, 1024)?,
            grace: Duration::from_millis(num(url, "grace_ms", 300_000, 0, 86_400_000)?),
            tombstones: num(url, "tombstones", 4096, 1, 10_000_000)?,
            wait_replicas,
            wait_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_cluster_urls() {
        let c = RedisConfig::parse(
            &StoreUrl::parse("redis://u:hunter2@127.0.0.1:6380/3?prefix=t1&pool=2&timeout_ms=900").unwrap(),
        )
        .unwrap();
        assert!(!c.cluster);
        assert_eq!(c.nodes, vec!["redis://u:hunter2@127.0.0.1:6380/3"]);
        assert_eq!((c.prefix.as_str(), c.pool), ("t1", 2));
        assert_eq!(c.timeout, Duration::from_millis(900));
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = RedisConfig::parse(
            &StoreUrl::parse("redis+cluster://10.0.0.1:7000?seeds=10.0.0.2:7001,10.0.0.3:7002").unwrap(),
        )
        .unwrap();
        assert!(c.cluster);
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.tree_shards, 64);
        for bad in [
            "redis://h:1?prefix=a{b}",
            "redis://h:1?pool=0",
            "redis://h:1?nope=1",
            "redis://h:1/x",
            "redis://h:1?seeds=a:1",
            "redis://h:1?wait_replicas=-1",
            "redis://h:1?wait_replicas=65",
            "redis://h:1?wait_replicas=1&wait_timeout_ms=0",
            "redis://h:1?wait_replicas=1&wait_timeout_ms=5000",
            "redis://h:1?wait_replicas=1&timeout_ms=500",
        ] {
            assert!(RedisConfig::parse(&StoreUrl::parse(bad).unwrap()).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn wait_replicas_option() {
        let c = RedisConfig::parse(&StoreUrl::parse("redis://h:1").unwrap()).unwrap();
        assert_eq!((c.wait_replicas, c.wait_timeout), (0, Duration::from_millis(1000)));
        let url = StoreUrl::parse(
            "redis+cluster://u:hunter2@10.0.0.1:7000?seeds=10.0.0.2:7001&wait_replicas=1&wait_timeout_ms=250",
        )
        .unwrap();
        let c = RedisConfig::parse(&url).unwrap();
        assert_eq!((c.wait_replicas, c.wait_timeout), (1, Duration::from_millis(250)));
        // The option stays visible, the password does not, in every printed form.
        for shown in [url.to_string(), format!("{url:?}"), format!("{c:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert!(url.to_string().contains("wait_replicas=1"), "{url}");
        assert!(format!("{c:?}").contains("wait_replicas: 1"));
    }
}
