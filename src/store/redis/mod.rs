//! The Redis backend (`redis://` single node, `redis+cluster://` Redis Cluster).
//!
//! The key layout and every Lua script live in `schema/redis/` (see its `README.md`); the
//! scripts are compiled into the binary and sent by EVALSHA. Every tree write is one script
//! that runs atomically on the node owning the tree's keys.
//!
//! One file per concern, as every backend: `config.rs` (URL options), `conn.rs` (the
//! connection pool, scripts and error mapping), `trees.rs` (providers and claims),
//! `feed.rs` (the change feed), `catalog.rs`, `instances.rs`; and Redis's own `keys.rs`
//! (key names and hash-tag shards) and `codec.rs` (stored encodings and script replies).
//! `codec`, `trees` and `placement` are visible to the crate so that the fuzzing checks
//! (`testkit::fuzzing`) decode replies and records with the very functions the store uses.

mod catalog;
pub(crate) mod codec;
mod config;
mod conn;
mod feed;
mod instances;
mod keys;
mod leases;
pub(crate) mod placement;
pub(crate) mod trees;

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::Value;

pub use self::config::RedisConfig;
use self::conn::{Pool, corrupt};
use self::keys::Keys;
pub use self::trees::ClaimEval;
use crate::error::{Error, Result};
use crate::model::*;
use crate::store::StoreUrl;
use crate::store::prelude::*;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn age(ms: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(ms))
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::backend("redis", e))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| corrupt(format!("record: {e}")))
}

/// The store. Cheap to share (`Arc<dyn Store>`); all methods take `&self`.
pub struct RedisStore {
    cfg: RedisConfig,
    pool: Pool,
    keys: Keys,
    /// provider -> root. A provider never changes tree; an entry can only become stale when
    /// the provider is deleted (and perhaps re-created elsewhere), which the scripts detect
    /// (`no_tree` / `not_in_tree`), after which the mapping is read again.
    roots: RwLock<HashMap<ProviderId, ProviderId>>,
    /// This handle's id, random per open: claims and releases record it on the tree
    /// (`lw`), and the change feed leaves out the usage of trees this handle wrote last (its
    /// own process's claims, which its snapshot already holds), so that the server does not
    /// gather usage nobody reads.
    writer: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("url", &self.cfg.url).field("pool", &self.pool).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the server or cluster named by `url` (see [`RedisConfig`] for the forms
    /// and options), loads the scripts and reads (or records) the prefix's shard counts.
    pub async fn open(url: &StoreUrl) -> Result<Self> {
        let cfg = RedisConfig::parse(url)?;
        let pool = Pool::connect(&cfg).await?;
        let meta = Keys::meta(&cfg.prefix);
        for (field, v) in [("tree_shards", cfg.tree_shards), ("instance_shards", cfg.instance_shards)] {
            pool.query::<Value>(redis::cmd("HSETNX").arg(&meta).arg(field).arg(v)).await?;
        }
        let (t, i): (Option<u32>, Option<u32>) =
            pool.query(redis::cmd("HMGET").arg(&meta).arg("tree_shards").arg("instance_shards")).await?;
        let keys = Keys::new(&cfg.prefix, t.unwrap_or(cfg.tree_shards), i.unwrap_or(cfg.instance_shards));
        tracing::debug!(url = %cfg.url, cluster = cfg.cluster, "redis store open");
        let writer = format!("{:016x}", trees::rand_u64());
        Ok(RedisStore { cfg, pool, keys, roots: RwLock::new(HashMap::new()), writer })
    }

    /// The parsed configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    /// Deletes every key under this store's prefix (single node only: on a cluster, keys are
    /// spread over masters this client does not enumerate; use a fresh prefix instead).
    /// For tests and benchmarks that share a server.
    pub async fn purge(&self) -> Result<u64> {
        self.purge_matching(&format!("{}:*", self.cfg.prefix)).await
    }

    /// Deletes every key matching the glob `pattern` (single node only), e.g. all prefixes
    /// of one test run. For tests and benchmarks.
    pub async fn purge_matching(&self, pattern: &str) -> Result<u64> {
        if self.pool.is_cluster() {
            return Err(Error::invalid("purge", "purging a prefix is only supported on a single node"));
        }
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .pool
                .query(redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000))
                .await?;
            if !keys.is_empty() {
                removed += self.pool.query::<u64>(redis::cmd("UNLINK").arg(&keys)).await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn describe(&self) -> String {
        format!("redis {}", self.cfg.url)
    }

    fn leases(&self) -> Option<&dyn crate::store::leases::Leases> {
        Some(self)
    }

    fn placement(&self) -> Option<&dyn crate::store::placement::PlacementStore> {
        Some(self)
    }

    fn tree_shard(&self, root: ProviderId) -> Option<usize> {
        Some(self.keys.tree_shard(root.0))
    }
}
