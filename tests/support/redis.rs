//! Redis backends: one server (`redis`) and a Redis Cluster (`redis-cluster`).
//!
//! One server, first that applies: `REDIS_URL`; a throwaway `redis-server` started from the
//! installed binary ([`unicell::testkit::redis_server`]); a testcontainers Redis when a
//! Docker daemon answers; else the trials are ignored with the reason. Cluster:
//! `REDIS_CLUSTER_URL`, else a three-master cluster started from the installed binaries,
//! else ignored with the reason. `redis-cluster-wait-replicas`: a cluster with a replica per
//! master (`REDIS_CLUSTER_REPLICATED_URL`, else started from the installed binaries) and
//! `wait_replicas=1`, so every claim and release waits for a replica. Every case gets a fresh key prefix under the run's; on a
//! server this binary did not start, the run's prefixes are purged at the end.

use std::any::Any;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use unicell::store::StoreUrl;
use unicell::store::prelude::*;
use unicell::store::redis::RedisStore;
use unicell::testkit::redis_server::{RedisCluster, RedisSingle};

use super::{Backend, Opened, Why, docker_answers, run_id, shared_runtime};

fn kind_waits(kind: Kind) -> bool {
    kind == Kind::ClusterWait
}

/// Which deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One server.
    Single,
    /// A Redis Cluster.
    Cluster,
    /// A Redis Cluster with one replica per master, used with `wait_replicas=1`: every
    /// claim and release goes through Redis `WAIT` (`REDIS_CLUSTER_REPLICATED_URL`, else
    /// three masters and three replicas from the installed binaries).
    ClusterWait,
}

/// A Redis backend; its server starts on first use.
pub struct Redis {
    kind: Kind,
    target: tokio::sync::OnceCell<Result<String, Why>>,
    /// What keeps the server alive (None for a server given by URL).
    guard: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Redis {
    /// A backend of `kind`.
    pub fn new(kind: Kind) -> Arc<Redis> {
        Arc::new(Redis { kind, target: tokio::sync::OnceCell::new(), guard: Mutex::new(None) })
    }

    /// The run's key prefix; every case's prefix starts with it.
    pub fn run_prefix() -> String {
        format!("unicell-test-{}", run_id())
    }

    /// The server's URL (without prefix), starting the server on first use.
    pub async fn url(&self) -> Result<String, Why> {
        self.target.get_or_init(|| async { self.start().await }).await.clone()
    }

    /// The URL with a fresh key prefix of this run.
    pub async fn fresh_url(&self) -> Result<String, Why> {
        let url = self.url().await?;
        Ok(with_param(&url, "prefix", &format!("{}-{}", Self::run_prefix(), uuid::Uuid::new_v4().simple())))
    }

    async fn start(&self) -> Result<String, Why> {
        let env = match self.kind {
            Kind::Single => "REDIS_URL",
            Kind::Cluster => "REDIS_CLUSTER_URL",
            Kind::ClusterWait => "REDIS_CLUSTER_REPLICATED_URL",
        };
        if let Ok(url) = std::env::var(env) {
            return Ok(if kind_waits(self.kind) { with_param(&url, "wait_replicas", "1") } else { url });
        }
        let kind = self.kind;
        let started = tokio::task::spawn_blocking(move || match kind {
            Kind::Single => RedisSingle::start().map(|s| (s.url(), Box::new(s) as Box<dyn Any + Send>)),
            Kind::Cluster => RedisCluster::start(3).map(|c| (c.url(), Box::new(c) as Box<dyn Any + Send>)),
            Kind::ClusterWait => RedisCluster::start_replicated(3, 1, std::time::Duration::from_millis(1000))
                .map(|c| (with_param(&c.url(), "wait_replicas", "1"), Box::new(c) as Box<dyn Any + Send>)),
        })
        .await
        .map_err(|e| Why::Fail(format!("starting redis: {e}")))?;
        let reason = match started {
            Ok((url, guard)) => {
                *self.guard.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
                return Ok(url);
            }
            Err(e) => e.to_string(),
        };
        if kind == Kind::Cluster {
            return Err(Why::Skip(format!("no REDIS_CLUSTER_URL and no cluster could be started: {reason}")));
        }
        if kind == Kind::ClusterWait {
            return Err(Why::Skip(format!(
                "no REDIS_CLUSTER_REPLICATED_URL and no replicated cluster could be started: {reason}"
            )));
        }
        if let Err(docker) = docker_answers() {
            return Err(Why::Skip(format!("no REDIS_URL, no usable redis-server ({reason}), and {docker}")));
        }
        // The container lives on the shared runtime (it is removed asynchronously).
        let container = shared_runtime()
            .spawn(async {
                use testcontainers_modules::testcontainers::runners::AsyncRunner;
                let c = testcontainers_modules::redis::Redis::default().start().await.map_err(|e| e.to_string())?;
                let host = c.get_host().await.map_err(|e| e.to_string())?;
                let port =
                    c.get_host_port_ipv4(testcontainers_modules::redis::REDIS_PORT).await.map_err(|e| e.to_string())?;
                Ok::<_, String>((c, format!("redis://{host}:{port}")))
            })
            .await
            .map_err(|e| Why::Fail(format!("starting the Redis container: {e}")))?;
        match container {
            Ok((c, url)) => {
                *self.guard.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(c));
                Ok(url)
            }
            Err(e) => Err(Why::Skip(format!("testcontainers Redis failed: {e}"))),
        }
    }

    /// Opens a store on `url` (a reachable server: failing to open is a failure).
    pub async fn open(url: &str) -> Result<RedisStore, Why> {
        let parsed = StoreUrl::parse(url).map_err(|e| Why::Fail(e.to_string()))?;
        RedisStore::open(&parsed)
            .await
            .map_err(|e| Why::Fail(format!("the redis server at {parsed} is set up but the store does not open: {e}")))
    }
}

impl Backend for Redis {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Single => "redis",
            Kind::Cluster => "redis-cluster",
            Kind::ClusterWait => "redis-cluster-wait-replicas",
        }
    }

    fn store(&self) -> BoxFuture<'_, Opened> {
        Box::pin(async move {
            let url = self.fresh_url().await?;
            Ok(Arc::new(Self::open(&url).await?) as Arc<dyn Store>)
        })
    }

    fn finish(&self, _failed: bool) {
        let given = self.guard.lock().unwrap_or_else(|e| e.into_inner()).is_none();
        if let (Some(Ok(url)), true, Kind::Single) = (self.target.get(), given, self.kind) {
            // A server this binary did not start: remove the run's keys (single node only;
            // a cluster's keys are spread over masters a client does not enumerate).
            let url = with_param(url, "prefix", &Self::run_prefix());
            shared_runtime().block_on(async move {
                if let Ok(s) = Self::open(&url).await
                    && let Err(e) = s.purge_matching(&format!("{}-*", Self::run_prefix())).await
                {
                    eprintln!("could not purge the run's Redis keys: {e}");
                }
            });
        }
        if let Some(g) = self.guard.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = shared_runtime().block_on(shared_runtime().spawn(async move { drop(g) }));
        }
    }
}

/// `url` with query parameter `key=value` appended.
pub fn with_param(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}
